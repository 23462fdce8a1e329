"""Just enough GraphQL for the sandbox: root fields, their arguments, their selected sub-fields.

Pure: no I/O. A request is reduced to a list of `RootField`s, each with its arguments already resolved
against the request's variables, so a resolver reads plain Python values whether the client wrote
`where: {id: $id}` or `where: $where`. Fragments, directives and nested arguments are not supported:
none of the operations the sandbox serves needs them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"""(?P<skip>[\s,]+|\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
      | (?P<punct>\.\.\.|[{}()\[\]:!$=@|&])""",
    re.VERBOSE,
)
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}
_MAX_DEPTH = 64


class GraphQLError(Exception):
    """An error answered as `{"errors": [{"message", "extensions": {"code"}}]}`.

    `http_status` is the HTTP status of the answer: 200 for resolver errors, 400 for requests that
    cannot be parsed or validated (as Apollo servers do).
    """

    def __init__(self, message: str, code: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.http_status = http_status


@dataclass(frozen=True)
class RootField:
    """One root field of an operation: `alias: name(arguments) { selection }`."""

    name: str
    alias: str
    arguments: dict[str, Any]
    selection: tuple[str, ...] = field(default=())


def error_body(message: str, code: str) -> dict[str, Any]:
    """The JSON body Labelbox answers for one GraphQL error."""
    return {"errors": [{"message": message, "extensions": {"code": code}}], "data": None}


def parse_request(query: str, variables: dict[str, Any] | None) -> list[RootField]:
    """Parse an operation into its root fields.

    Raises GraphQLError(GRAPHQL_PARSE_FAILED, HTTP 400) if the text is not a GraphQL operation.
    """
    parser = _Parser(_tokenize(query), variables or {})
    try:
        return parser.document()
    except (IndexError, ValueError) as e:
        raise GraphQLError(
            f"Syntax Error: {e or 'unexpected end of document'}", "GRAPHQL_PARSE_FAILED", 400
        ) from e


def project(obj: dict[str, Any], selection: tuple[str, ...], type_name: str) -> dict[str, Any]:
    """Keep the selected fields of `obj`, like a GraphQL server does (all fields if none is selected).

    Raises GraphQLError(GRAPHQL_VALIDATION_FAILED, HTTP 400) for a field the type does not have.
    """
    if not selection:
        return obj
    unknown = [name for name in selection if name not in obj and name != "__typename"]
    if unknown:
        message = f'Cannot query field "{unknown[0]}" on type "{type_name}".'
        raise GraphQLError(message, "GRAPHQL_VALIDATION_FAILED", 400)
    return {name: (type_name if name == "__typename" else obj[name]) for name in selection}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise GraphQLError(
                f"Syntax Error: unexpected character {text[position]!r}", "GRAPHQL_PARSE_FAILED", 400
            )
        kind = match.lastgroup or "skip"
        if kind != "skip":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], variables: dict[str, Any]) -> None:
        self._tokens = tokens
        self._position = 0
        self._variables = variables

    def document(self) -> list[RootField]:
        if self._peek() in ("query", "mutation", "subscription"):
            self._position += 1
            if self._kind() == "name":
                self._position += 1
            if self._peek() == "(":
                self._skip_balanced("(", ")")
        fields = self._root_selection()
        if self._position != len(self._tokens):
            raise ValueError(f"unexpected {self._peek()!r} after the operation")
        return fields

    def _root_selection(self) -> list[RootField]:
        self._expect("{")
        fields: list[RootField] = []
        while self._peek() != "}":
            fields.append(self._root_field())
        self._expect("}")
        if not fields:
            raise ValueError("empty selection set")
        return fields

    def _root_field(self) -> RootField:
        alias = name = self._name()
        if self._peek() == ":":
            self._position += 1
            name = self._name()
        arguments = self._arguments() if self._peek() == "(" else {}
        selection = self._selection() if self._peek() == "{" else ()
        return RootField(name=name, alias=alias, arguments=arguments, selection=selection)

    def _arguments(self) -> dict[str, Any]:
        self._expect("(")
        arguments: dict[str, Any] = {}
        while self._peek() != ")":
            key = self._name()
            self._expect(":")
            arguments[key] = self._value(0)
        self._expect(")")
        return arguments

    def _selection(self) -> tuple[str, ...]:
        """Names of the sub-fields one level down; deeper selections are skipped."""
        self._expect("{")
        names: list[str] = []
        while self._peek() != "}":
            names.append(self._selected_name())
            if self._peek() == "(":
                self._skip_balanced("(", ")")
            if self._peek() == "{":
                self._skip_balanced("{", "}")
        self._expect("}")
        return tuple(names)

    def _selected_name(self) -> str:
        name = self._name()
        if self._peek() == ":":  # an alias: the answer is keyed by the field name anyway
            self._position += 1
            name = self._name()
        return name

    def _value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError("value nested too deeply")
        kind, text = self._tokens[self._position]
        self._position += 1
        if text == "$":
            return self._variables.get(self._name())
        if text == "[":
            return self._list(depth)
        if text == "{":
            return self._object(depth)
        return _scalar(kind, text)

    def _list(self, depth: int) -> list[Any]:
        items: list[Any] = []
        while self._peek() != "]":
            items.append(self._value(depth + 1))
        self._position += 1
        return items

    def _object(self, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while self._peek() != "}":
            key = self._name()
            self._expect(":")
            result[key] = self._value(depth + 1)
        self._position += 1
        return result

    def _skip_balanced(self, opening: str, closing: str) -> None:
        depth = 0
        while True:
            text = self._tokens[self._position][1]
            self._position += 1
            depth += (text == opening) - (text == closing)
            if depth == 0:
                return

    def _name(self) -> str:
        kind, text = self._tokens[self._position]
        if kind != "name":
            raise ValueError(f"expected a name, found {text!r}")
        self._position += 1
        return text

    def _expect(self, text: str) -> None:
        found = self._tokens[self._position][1]
        if found != text:
            raise ValueError(f"expected {text!r}, found {found!r}")
        self._position += 1

    def _peek(self) -> str:
        return self._tokens[self._position][1] if self._position < len(self._tokens) else ""

    def _kind(self) -> str:
        return self._tokens[self._position][0] if self._position < len(self._tokens) else ""


def _scalar(kind: str, text: str) -> Any:
    if kind == "string":
        return json.loads(text)
    if kind == "number":
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "name":
        return _LITERALS.get(text, text)  # an enum value reads as its name
    raise ValueError(f"unexpected {text!r}")
