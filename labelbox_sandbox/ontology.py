"""The sandbox's own check of an NDJSON prediction line against a model run's ontology (`normalized` JSON).

The sandbox is an oracle for the worker, so this shares no code with the worker's ontology check. Pure: no
I/O. `OntologyIndex.build` reads the ontology once per import (raises `ValueError` naming the place if it
is malformed); `OntologyIndex.check` gives the first mismatch of a line, or None.

What fits (docs/labelbox-api.md, "Ontologies"):
- a line, nested classification or answer names its feature by `name`, `schemaId`, or both (under an
  answer, the Labelbox SDK writes `schema_id`, accepted there too). With a schema id, the feature is the one
  with that `featureSchemaId`, and a `name` given beside it must be that feature's name (an answer's name is
  its option's `value`); a disagreement fails, naming both values. With a name only, the feature of that
  name;
- an object line's feature is a tool of its payload's type: bbox → rectangle, polygon → polygon, point →
  point, line → line, mask → raster-segmentation;
- a classification's feature is a classification whose type fits the answer: an object → radio (or the
  legacy dropdown), a list → checklist, a string → text; every answer is an option of its question;
- a nested classification is one of its parent's: a tool's `classifications`, or the `options` of the
  answered option, at any depth;
- a metric line's `featureName`, when present, names a tool or a top-level classification.

A mismatch is `(path, code, message)`: `path` dotted from the line to the value at fault, `code` one of
`unknown_feature`, `name_mismatch`, `wrong_tool_type`, `wrong_classification_type`, `unknown_answer`,
`misplaced_classification`, `malformed_line`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

TOOL_FOR_PAYLOAD = {
    "bbox": "rectangle",
    "polygon": "polygon",
    "point": "point",
    "line": "line",
    "mask": "raster-segmentation",
}
_LISTED = 10


class Mismatch(NamedTuple):
    path: str
    code: str
    message: str


@dataclass(frozen=True)
class _Feature:
    """A tool, a classification or an option: what it is, its name, and what may be nested under it."""

    kind: str  # a tool type ("rectangle", ...), a classification type ("radio", ...), or "option"
    name: str
    schema_id: str
    where: str  # for messages: "" at the top level, else "box > sub > s1"
    children: _Scope


@dataclass
class _Scope:
    """Sibling features by name and by featureSchemaId."""

    by_name: dict[str, _Feature] = field(default_factory=dict)
    by_id: dict[str, _Feature] = field(default_factory=dict)

    def add(self, feature: _Feature, path: str) -> None:
        for index, key, label in (
            (self.by_name, feature.name, "name"),
            (self.by_id, feature.schema_id, "id"),
        ):
            if key in index:
                raise ValueError(f"{path}: a sibling has the same {label} {key!r}")
            index[key] = feature

    def listing(self) -> str:
        names = list(self.by_name)
        shown = ", ".join(repr(name) for name in names[:_LISTED])
        return (shown if len(names) <= _LISTED else f"{shown}, … ({len(names)} in all)") or "none"


class OntologyIndex:
    """A model run's ontology, indexed for checking lines."""

    def __init__(self) -> None:
        self.tools = _Scope()
        self.classifications = _Scope()
        #: Every classification by name and by schema id -> where it lives, to explain a misplaced one.
        self.placed: dict[tuple[str, str], list[str]] = {}

    @classmethod
    def build(cls, normalized: Mapping[str, Any]) -> OntologyIndex:
        """Index `{"tools": [...], "classifications": [...]}`. Raises ValueError if it is malformed."""
        index = cls()
        for i, tool in enumerate(_items(normalized, "tools", "ontology")):
            index.tools.add(index._tool(tool, f"ontology.tools.{i}"), f"ontology.tools.{i}")
        for i, item in enumerate(_items(normalized, "classifications", "ontology")):
            path = f"ontology.classifications.{i}"
            index.classifications.add(index._question(item, path, ""), path)
        return index

    @property
    def is_empty(self) -> bool:
        return not self.tools.by_name and not self.classifications.by_name

    # --- reading the ontology ---

    def _tool(self, item: Any, path: str) -> _Feature:
        item = _mapping(item, path)
        name = _text(item, path, "name")
        children = self._questions(item.get("classifications"), f"{path}.classifications", name)
        return _Feature(_text(item, path, "tool"), name, _text(item, path, "featureSchemaId"), "", children)

    def _question(self, item: Any, path: str, where: str) -> _Feature:
        item = _mapping(item, path)
        name = _text(item, path, "name", "instructions")
        schema_id = _text(item, path, "featureSchemaId")
        for ref in (("name", name), ("schemaId", schema_id)):
            self.placed.setdefault(ref, []).append(where)
        chain = f"{where} > {name}" if where else name
        options = _Scope()
        for i, option in enumerate(_items(item, "options", path, required=False)):
            option_path = f"{path}.options.{i}"
            options.add(self._option(option, option_path, chain), option_path)
        return _Feature(_text(item, path, "type"), name, schema_id, where, options)

    def _option(self, item: Any, path: str, question_chain: str) -> _Feature:
        item = _mapping(item, path)
        value = _text(item, path, "value", "label")
        chain = f"{question_chain} > {value}"
        children = self._questions(item.get("options"), f"{path}.options", chain)
        return _Feature("option", value, _text(item, path, "featureSchemaId"), question_chain, children)

    def _questions(self, items: Any, path: str, where: str) -> _Scope:
        scope = _Scope()
        if items is None:
            return scope
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a list")
        for i, item in enumerate(items):
            scope.add(self._question(item, f"{path}.{i}", where), f"{path}.{i}")
        return scope

    # --- checking a line ---

    def check(self, line: Mapping[str, Any]) -> Mismatch | None:
        """The first way `line` (an otherwise well-formed NDJSON line) does not fit, or None."""
        if "metricValue" in line:
            return self._check_metric(line.get("featureName"))
        payload = next((key for key in (*TOOL_FOR_PAYLOAD, "answer") if key in line), None)
        if payload is None:
            return Mismatch("", "malformed_line", "the line has no annotation payload")
        if payload == "answer":
            return self._check_classification(line, self.classifications, "", "", nested=False)
        return self._check_object(line, payload)

    def _check_metric(self, feature_name: Any) -> Mismatch | None:
        if feature_name is None or feature_name in self.tools.by_name:
            return None
        if feature_name in self.classifications.by_name:
            return None
        message = (
            f"metric featureName {feature_name!r} is neither a tool nor a top-level classification "
            f"(tools: {self.tools.listing()}; classifications: {self.classifications.listing()})"
        )
        return Mismatch("featureName", "unknown_feature", message)

    def _check_object(self, line: Mapping[str, Any], payload: str) -> Mismatch | None:
        wanted = TOOL_FOR_PAYLOAD[payload]
        tool, mismatch = _find(line, self.tools, "", "tool", nested=False)
        if mismatch is not None:
            unknown = mismatch.code == "unknown_feature"
            return (self._classification_as_tool(line, payload) if unknown else None) or mismatch
        assert tool is not None
        if tool.kind != wanted:
            message = f"feature {tool.name!r} is a {tool.kind} tool; a {payload} line needs a {wanted} tool"
            return Mismatch(payload, "wrong_tool_type", message)
        return self._check_nested(line.get("classifications"), tool.children, "classifications", tool.name)

    def _classification_as_tool(self, line: Mapping[str, Any], payload: str) -> Mismatch | None:
        ref = _reference(line, nested=False)
        if ref is None or ref not in self.placed:
            return None
        message = f"feature {_show(ref)} is a classification; a {payload} line needs a tool"
        return Mismatch(payload, "wrong_tool_type", message)

    def _check_classification(
        self, item: Mapping[str, Any], scope: _Scope, path: str, parent: str, *, nested: bool
    ) -> Mismatch | None:
        question, mismatch = _find(item, scope, path, "classification", nested=nested)
        if mismatch is not None:
            unknown = mismatch.code == "unknown_feature"
            return (self._misplaced(item, path, parent, nested=nested) if unknown else None) or mismatch
        assert question is not None
        answer = item.get("answer")
        answer_path = _join(path, "answer")
        fits = _question_types(answer)
        if question.kind not in fits:
            message = f"classification {question.name!r} is a {question.kind}; this answer is for a {fits[0]}"
            return Mismatch(answer_path, "wrong_classification_type", message)
        if isinstance(answer, list):
            for i, option in enumerate(answer):
                found = self._check_answer(option, question, f"{answer_path}.{i}")
                if found is not None:
                    return found
            return None
        return self._check_answer(answer, question, answer_path) if isinstance(answer, Mapping) else None

    def _misplaced(self, item: Mapping[str, Any], path: str, parent: str, *, nested: bool) -> Mismatch | None:
        ref = _reference(item, nested=nested)
        places = self.placed.get(ref) if ref is not None else None
        if ref is None or not places:
            return None
        here = f"under {parent}" if parent else "at the top level"
        there = ", ".join(f"under {place}" if place else "at the top level" for place in places)
        message = f"classification {_show(ref)} does not belong {here}; the ontology has it {there}"
        return Mismatch(_join(path, ref[0]), "misplaced_classification", message)

    def _check_answer(self, answer: Any, question: _Feature, path: str) -> Mismatch | None:
        if not isinstance(answer, Mapping):
            return Mismatch(path, "malformed_line", "an answer must be an object")
        option, mismatch = _find(answer, question.children, path, "answer", nested=True)
        if mismatch is not None and mismatch.code == "unknown_feature":
            ref = _reference(answer, nested=True)
            shown = _show(ref) if ref is not None else "?"
            message = (
                f"answer {shown} is not an option of {question.kind} {question.name!r} "
                f"(options: {question.children.listing()})"
            )
            return Mismatch(mismatch.path, "unknown_answer", message)
        if mismatch is not None:
            return mismatch
        assert option is not None
        nested_path = _join(path, "classifications")
        chain = f"{option.where} > {option.name}"
        return self._check_nested(answer.get("classifications"), option.children, nested_path, chain)

    def _check_nested(self, items: Any, scope: _Scope, path: str, parent: str) -> Mismatch | None:
        for i, item in enumerate(items if isinstance(items, list) else ()):
            if isinstance(item, Mapping):
                found = self._check_classification(item, scope, f"{path}.{i}", parent, nested=True)
                if found is not None:
                    return found
        return None


def _find(
    obj: Mapping[str, Any], scope: _Scope, path: str, what: str, *, nested: bool
) -> tuple[_Feature | None, Mismatch | None]:
    """The feature `obj` names in `scope` by schema id and/or name, or why there is none."""
    schema_id = obj.get("schemaId") or (obj.get("schema_id") if nested else None)
    name = obj.get("name")
    if schema_id is None and name is None:
        return None, Mismatch(
            path, "malformed_line", f"{path or 'the line'} has neither a name nor a schemaId"
        )
    if schema_id is None:
        feature = scope.by_name.get(str(name))
        if feature is None:
            message = f"{what} {name!r} is not in the ontology here ({what}s here: {scope.listing()})"
            return None, Mismatch(_join(path, "name"), "unknown_feature", message)
        return feature, None
    feature = scope.by_id.get(str(schema_id))
    if feature is None:
        listing = scope.listing()
        message = f"{what} with schemaId {schema_id!r} is not in the ontology here ({what}s here: {listing})"
        return None, Mismatch(_join(path, "schemaId"), "unknown_feature", message)
    if name is not None and name != feature.name:
        message = (
            f"schemaId {schema_id!r} is the {what} {feature.name!r}, but the name given with it is {name!r}"
        )
        return None, Mismatch(_join(path, "name"), "name_mismatch", message)
    return feature, None


def _reference(obj: Mapping[str, Any], *, nested: bool) -> tuple[str, str] | None:
    schema_id = obj.get("schemaId") or (obj.get("schema_id") if nested else None)
    if isinstance(schema_id, str):
        return "schemaId", schema_id
    name = obj.get("name")
    return ("name", name) if isinstance(name, str) else None


def _question_types(answer: Any) -> tuple[str, ...]:
    if isinstance(answer, Mapping):
        return ("radio", "dropdown")
    if isinstance(answer, list):
        return ("checklist",)
    return ("text",)


def _show(ref: tuple[str, str]) -> str:
    return f"schemaId {ref[1]!r}" if ref[0] == "schemaId" else repr(ref[1])


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(item: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"{path}: expected a JSON object")
    return item


def _items(data: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> list[Any]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{path}.{key}: expected a list")
    return value


def _text(item: Mapping[str, Any], path: str, *keys: str) -> str:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"{path}: {' or '.join(repr(key) for key in keys)} must be a non-empty string")
