"""GraphQL for the sandbox: every document parsed and validated against Labelbox's schema (`schema.py`).

Pure: no I/O. graphql-core parses and validates a document (cached by its text, as the same few texts
arrive again and again); then a request is reduced to a list of `RootField`s, each with its arguments
coerced against the schema and resolved against the request's (coerced) variables, so a resolver reads plain
Python values whether the client wrote `where: {id: $id}` or `where: $where`, and with its selection as a
tree that `project` applies to the resolver's answer. Fragments, aliases and `@skip`/`@include` work;
introspection (`__schema`, `__type`) is not served.

Errors, as Apollo-based GraphQL servers (Labelbox's) answer them, with HTTP 400:
- a document that does not parse: `GRAPHQL_PARSE_FAILED`, graphql-core's "Syntax Error: …" message;
- a document the schema refuses (unknown field, type or argument; an undeclared, unused or mistyped
  variable; a missing required argument; a field on the wrong operation type): `GRAPHQL_VALIDATION_FAILED`,
  graphql-core's message (e.g. `Cannot query field "nope" on type "ModelRun".`);
- variable values that do not fit their declared types (a null `ID!`, a string for an `Int!`, a missing
  file for an `Upload!`): `GRAPHQL_VALIDATION_FAILED` too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import graphql
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLNonNull,
    GraphQLObjectType,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionNode,
    SelectionSetNode,
    VariableNode,
)

from labelbox_sandbox.schema import SDL

VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
_CACHED_DOCUMENTS = 512


class GraphQLError(Exception):
    """An error answered as `{"errors": [{"message", "extensions": {"code"[, "exception"]}}], "data": null}`.

    `http_status`: the HTTP status of the answer (200 for resolver errors, 400 for requests that cannot be
    parsed or validated, as Apollo servers do). `exception_status`: put in `extensions.exception.status`
    when given (Labelbox's way of telling a client error inside an `INTERNAL_SERVER_ERROR`).
    """

    def __init__(
        self, message: str, code: str, http_status: int = 200, exception_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status
        self.exception_status = exception_status


@dataclass(frozen=True)
class Upload:
    """A file part of a GraphQL multipart request, put where the `map` part pointed."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Selected:
    """One selected field: `key` (alias or name) in the answer, `name` in the type, and what is selected
    under it (`type_name` is the object type of its value; empty for a scalar or enum)."""

    key: str
    name: str
    type_name: str = ""
    fields: tuple[Selected, ...] = ()


@dataclass(frozen=True)
class RootField:
    """One root field of an operation: `alias: name(arguments) { selection }`; `type_name` is the object
    type of its value (empty for a scalar such as a mutation's task id)."""

    name: str
    alias: str
    arguments: dict[str, Any]
    selection: tuple[Selected, ...] = field(default=())
    type_name: str = ""


def _build_schema() -> graphql.GraphQLSchema:
    schema = graphql.build_schema(SDL)
    upload = schema.type_map["Upload"]
    assert isinstance(upload, graphql.GraphQLScalarType)
    upload.parse_value = _parse_upload  # type: ignore[method-assign]
    upload.parse_literal = _upload_literal  # type: ignore[method-assign]
    return schema


def _parse_upload(value: Any) -> Upload:
    if not isinstance(value, Upload):
        raise graphql.GraphQLError("Upload value invalid: expected a file part of a multipart request")
    return value


def _upload_literal(node: Any, variables: Any = None) -> Any:
    raise graphql.GraphQLError("Upload literal unsupported: send the file as a multipart request part")


SCHEMA = _build_schema()


def error_body(message: str, code: str, exception_status: int | None = None) -> dict[str, Any]:
    """The JSON body Labelbox answers for one GraphQL error."""
    extensions: dict[str, Any] = {"code": code}
    if exception_status is not None:
        extensions["exception"] = {"status": exception_status}
    return {"errors": [{"message": message, "extensions": extensions}], "data": None}


def parse_request(
    query: str, variables: Mapping[str, Any] | None, operation_name: str | None = None
) -> list[RootField]:
    """Parse, validate and resolve an operation into its root fields.

    Raises GraphQLError (HTTP 400): `GRAPHQL_PARSE_FAILED` for text that is not GraphQL,
    `GRAPHQL_VALIDATION_FAILED` for a document or variables the schema refuses.
    """
    document = validated_document(query)
    operation = _operation(document, operation_name)
    root_type = _root_type(operation)
    values = _variable_values(operation, variables or {})
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    collector = _Collector(fragments, values)
    return [
        _root_field(root_type, key, nodes, collector)
        for key, nodes in collector.fields([operation.selection_set]).items()
    ]


def project(value: Any, selection: tuple[Selected, ...], type_name: str) -> Any:
    """Keep the selected fields of `value` (a dict, a list of them, or a scalar), as a GraphQL server does."""
    if value is None or not selection:
        return value
    if isinstance(value, list):
        return [project(item, selection, type_name) for item in value]
    return {
        s.key: type_name if s.name == "__typename" else project(value.get(s.name), s.fields, s.type_name)
        for s in selection
    }


def root_field_names(query: str) -> list[str]:
    """The root field names of a document that parses, valid or not (to log what a refused request was
    about); [] if it does not parse."""
    document = _parsed(query)
    if isinstance(document, str):
        return []
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    selections = operations[0].selection_set.selections if operations else ()
    return [node.name.value for node in selections if isinstance(node, FieldNode)]


@functools.lru_cache(maxsize=_CACHED_DOCUMENTS)
def _parsed(query: str) -> DocumentNode | str:
    """The document, or graphql-core's syntax error message."""
    try:
        return graphql.parse(query)
    except graphql.GraphQLError as e:
        return e.message


@functools.lru_cache(maxsize=_CACHED_DOCUMENTS)
def _checked(query: str) -> tuple[DocumentNode | None, str, str]:
    """(document, "", "") if `query` is valid against the schema, else (None, error code, message)."""
    document = _parsed(query)
    if isinstance(document, str):
        return None, PARSE_FAILED, document
    errors = graphql.validate(SCHEMA, document)
    if errors:
        return None, VALIDATION_FAILED, errors[0].message
    return document, "", ""


def validated_document(query: str) -> DocumentNode:
    """The parsed document, validated against the schema (cached by text). Raises GraphQLError (400)."""
    document, code, message = _checked(query)
    if document is None:
        raise GraphQLError(message, code, 400)
    return document


def _invalid(message: str) -> GraphQLError:
    return GraphQLError(message, VALIDATION_FAILED, 400)


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        if len(operations) != 1:
            raise _invalid("Must provide operation name if query contains multiple operations.")
        return operations[0]
    found = next((o for o in operations if o.name is not None and o.name.value == name), None)
    if found is None:
        raise _invalid(f'Unknown operation named "{name}".')
    return found


def _root_type(operation: OperationDefinitionNode) -> GraphQLObjectType:
    root = SCHEMA.query_type if operation.operation == OperationType.QUERY else None
    if operation.operation == OperationType.MUTATION:
        root = SCHEMA.mutation_type
    if root is None:
        raise _invalid(f"Schema is not configured to execute {operation.operation.value} operation.")
    return root


def _variable_values(operation: OperationDefinitionNode, inputs: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        var_type = graphql.type_from_ast(SCHEMA, definition.type)
        declared = graphql.print_ast(definition.type)
        assert graphql.is_input_type(var_type)  # validation saw to it
        if name not in inputs:
            if definition.default_value is not None:
                values[name] = graphql.value_from_ast(definition.default_value, var_type)
            elif isinstance(var_type, GraphQLNonNull):
                raise _invalid(f'Variable "${name}" of required type "{declared}" was not provided.')
            continue
        if inputs[name] is None and isinstance(var_type, GraphQLNonNull):
            raise _invalid(f'Variable "${name}" of non-null type "{declared}" must not be null.')
        try:
            values[name] = graphql.coerce_input_value(inputs[name], var_type)
        except graphql.GraphQLError as e:
            raise _invalid(f'Variable "${name}" got invalid value: {e.message}') from e
    return values


class _Collector:
    """Fields selected by selection sets, through fragments, minding `@skip` and `@include`."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode], variables: dict[str, Any]) -> None:
        self._fragments = fragments
        self.variables = variables

    def fields(self, selection_sets: Iterable[SelectionSetNode]) -> dict[str, list[FieldNode]]:
        found: dict[str, list[FieldNode]] = {}
        for selection_set in selection_sets:
            self._collect(selection_set, found, set())
        return found

    def _collect(
        self, selection_set: SelectionSetNode, found: dict[str, list[FieldNode]], seen: set[str]
    ) -> None:
        for node in selection_set.selections:
            if not self._included(node):
                continue
            if isinstance(node, FieldNode):
                found.setdefault(node.alias.value if node.alias else node.name.value, []).append(node)
            elif isinstance(node, InlineFragmentNode):
                self._collect(node.selection_set, found, seen)
            elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
                seen.add(node.name.value)
                self._collect(self._fragments[node.name.value].selection_set, found, seen)

    def _included(self, node: SelectionNode) -> bool:
        for directive in node.directives or ():
            name = directive.name.value
            if name in ("skip", "include"):
                condition = next(a.value for a in directive.arguments or () if a.name.value == "if")
                value = graphql.value_from_ast(
                    condition, GraphQLNonNull(graphql.GraphQLBoolean), self.variables
                )
                if bool(value) == (name == "skip"):
                    return False
        return True


def _root_field(
    root_type: GraphQLObjectType, key: str, nodes: list[FieldNode], collector: _Collector
) -> RootField:
    name = nodes[0].name.value
    if name == "__typename":
        return RootField(name=name, alias=key, arguments={}, type_name=root_type.name)
    if name.startswith("__"):
        raise _invalid(f"GraphQL introspection is not allowed, but the query contained {name}.")
    field_def = root_type.fields[name]
    type_name, selection = _selection(field_def, nodes, collector)
    arguments = _arguments(field_def, nodes[0], collector.variables)
    return RootField(name=name, alias=key, arguments=arguments, selection=selection, type_name=type_name)


def _selection(
    field_def: GraphQLField, nodes: list[FieldNode], collector: _Collector
) -> tuple[str, tuple[Selected, ...]]:
    named = graphql.get_named_type(field_def.type)
    if not isinstance(named, GraphQLObjectType):
        return "", ()
    sets = [node.selection_set for node in nodes if node.selection_set is not None]
    selected = []
    for key, sub_nodes in collector.fields(sets).items():
        name = sub_nodes[0].name.value
        if name == "__typename":
            selected.append(Selected(key, name))
            continue
        type_name, fields = _selection(named.fields[name], sub_nodes, collector)
        selected.append(Selected(key, name, type_name, fields))
    return named.name, tuple(selected)


def _arguments(field_def: GraphQLField, node: FieldNode, variables: dict[str, Any]) -> dict[str, Any]:
    given = {argument.name.value: argument.value for argument in node.arguments or ()}
    arguments: dict[str, Any] = {}
    for name, definition in field_def.args.items():
        value_node = given.get(name)
        missing = value_node is None or (
            isinstance(value_node, VariableNode) and value_node.name.value not in variables
        )
        if missing:
            if definition.default_value is not graphql.Undefined:
                arguments[name] = definition.default_value
            continue
        assert value_node is not None
        value = graphql.value_from_ast(value_node, definition.type, variables)
        if value is graphql.Undefined:
            raise _invalid(f'Argument "{name}" has invalid value {graphql.print_ast(value_node)}.')
        arguments[name] = value
    return arguments
