"""Does an NDJSON prediction line fit a model run's ontology (Labelbox ``normalized`` JSON)?

Pure: no I/O, no clock, no logging. ``Ontology.from_normalized`` indexes the ontology once (every tool,
classification and option by name and by featureSchemaId, scope by scope), so that ``Ontology.check``
costs time in the size of the line, not of the ontology.

What a line must satisfy (docs/labelbox-api.md, "Ontologies"):

- its feature exists: ``schemaId`` is a tool's or classification's ``featureSchemaId``, or ``name`` its
  ``name`` (a classification's ``instructions`` in older exports). A line (or answer, or nested
  classification) may carry both, as Labelbox's SDK writes them for annotations taken from an export: then
  the feature is the one ``schemaId`` names, and ``name`` must be that same feature's name (an option's
  ``value``), or the reference is ``conflicting_reference`` at the ``name``;
- its kind fits the feature: bbox -> rectangle, polygon -> polygon, point -> point, line -> line,
  mask -> raster-segmentation; an ``answer`` object -> radio (or the legacy dropdown), a list ->
  checklist, a string -> text. Other tools (named-entity, superpixel, edge, ...) fit no line;
- every answer is an option of its question: ``schemaId`` its ``featureSchemaId``, or ``name`` its
  ``value`` (its ``label`` if it has no value);
- every nested classification is one of its parent's: a tool's ``classifications``, or the ``options`` of
  the answered option, at every depth;
- a metric line (``metricValue``) is not about one feature; only a ``featureName``, if present, must be the
  name of a tool or of a top-level classification (the SDK's own metrics put the annotation's feature name
  there). ``subclassName`` is not checked: Labelbox does not pin down what it names.

``check`` returns the first ``Mismatch`` in document order, depth first (a nested classification's answers
before its next sibling), or None. A ``Mismatch.path`` is dotted from the line to the value that does not
fit: ``name``/``schemaId`` for a feature or answer that is unknown or misplaced (``answer.1.name``,
``classifications.0.answer.classifications.1.schemaId``), the payload key (``bbox``, ``answer``,
``classifications.0.answer``) for a kind that does not fit, ``name`` for a name that disagrees with its
``schemaId``, ``featureName`` for a metric.

Checking the line's shape is not this module's job (``schemas`` and the sandbox's validator do it); a line
it cannot read gives ``malformed_line`` rather than an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

#: The feature (or a nested classification's feature) is nowhere in the ontology.
UNKNOWN_FEATURE: Final = "unknown_feature"
#: An object line's feature is not a tool of its geometry's type (or not a tool at all).
WRONG_TOOL_TYPE: Final = "wrong_tool_type"
#: A classification's answer shape (object, list, string) does not fit the feature's type (or it is a tool).
WRONG_CLASSIFICATION_TYPE: Final = "wrong_classification_type"
#: An answer is not an option of its question.
UNKNOWN_ANSWER: Final = "unknown_answer"
#: The classification exists in the ontology, but not under this parent (or not at the top level).
MISPLACED_CLASSIFICATION: Final = "misplaced_classification"
#: ``name`` and ``schemaId`` are both given and name different features (or ``name`` none).
CONFLICTING_REFERENCE: Final = "conflicting_reference"
#: The line cannot be read as an annotation (no payload key, no name/schemaId, answer of no known shape).
MALFORMED_LINE: Final = "malformed_line"

#: The ontology tool each geometry payload key needs.
TOOL_FOR_KIND: Final[Mapping[str, str]] = {
    "bbox": "rectangle",
    "polygon": "polygon",
    "point": "point",
    "line": "line",
    "mask": "raster-segmentation",
}
_PAYLOAD_KEYS: Final = (*TOOL_FOR_KIND, "answer")
_LISTED: Final = 10  # names listed in a message, at most
_PLACES: Final = 3

Ref = tuple[str, str]
"""A reference as written in a line: ``("name" | "schemaId", value)``."""
_N = TypeVar("_N")


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Why a line does not fit the ontology.

    ``path``: dotted, from the line to the value at fault ("" for the line itself). ``code``: one of
    the codes above (``UNKNOWN_FEATURE``, ...). ``message``: for people; names the feature or answer
    and what the ontology allows there.
    """

    path: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class _Scope(Generic[_N]):
    """Sibling features, by name and by featureSchemaId."""

    by_name: dict[str, _N]
    by_id: dict[str, _N]

    def find(self, ref: Ref) -> _N | None:
        key, value = ref
        return (self.by_id if key == "schemaId" else self.by_name).get(value)


@dataclass(frozen=True, slots=True)
class _Option:
    value: str
    chain: str  # "box > sub > s1": where its nested classifications live, for messages
    classifications: _Scope[_Question]


@dataclass(frozen=True, slots=True)
class _Question:
    type: str
    name: str
    options: _Scope[_Option]


@dataclass(frozen=True, slots=True)
class _Tool:
    tool: str
    name: str
    classifications: _Scope[_Question]


class Ontology:
    """A model run's ontology, indexed for checking NDJSON lines. Build it with ``from_normalized``."""

    __slots__ = ("_classifications", "_placed", "_tools", "_tools_by_type")

    def __init__(
        self,
        tools: _Scope[_Tool],
        classifications: _Scope[_Question],
        placed: Mapping[Ref, tuple[str, ...]],
    ) -> None:
        self._tools = tools
        self._classifications = classifications
        self._placed = placed  # every classification reference -> where it lives ("" = top level)
        self._tools_by_type: dict[str, list[str]] = {}
        for tool in tools.by_name.values():
            self._tools_by_type.setdefault(tool.tool, []).append(tool.name)

    @classmethod
    def from_normalized(cls, data: Mapping[str, Any]) -> Ontology:
        """Index Labelbox ``normalized`` ontology JSON. Raises ValueError, naming the place, if malformed.

        Malformed: not ``{"tools": [...], "classifications": [...]}``; a tool, classification or option
        that is not an object or lacks its type / name / featureSchemaId (as non-empty strings); or two
        siblings (the tools, one level's classifications, one question's options) with the same name or
        featureSchemaId, which would make references ambiguous.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"ontology: expected a JSON object, got {type(data).__name__}")
        builder = _Builder()
        tools = builder.tools(_list(data, "tools", "", required=True))
        classifications = builder.questions(
            _list(data, "classifications", "", required=True), "classifications", ""
        )
        return cls(tools, classifications, {ref: tuple(places) for ref, places in builder.placed.items()})

    @property
    def is_empty(self) -> bool:
        """No tools and no classifications (Labelbox's answer for a model run without an ontology)."""
        return not self._tools.by_name and not self._classifications.by_name

    def check(self, body: Mapping[str, Any]) -> Mismatch | None:
        """The first way the NDJSON line ``body`` does not fit the ontology, or None if it fits."""
        if "metricValue" in body:
            return self._check_metric(body)
        kinds = [key for key in _PAYLOAD_KEYS if key in body]
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            return Mismatch(
                "", MALFORMED_LINE, f"a line needs exactly one of {', '.join(_PAYLOAD_KEYS)}; found {found}"
            )
        if kinds[0] == "answer":
            return self._check_classification(body, self._classifications, "", "")
        return self._check_object(body, kinds[0])

    # --- metrics ---

    def _check_metric(self, body: Mapping[str, Any]) -> Mismatch | None:
        name = body.get("featureName")
        if name is None:
            return None
        if not isinstance(name, str):
            return Mismatch("featureName", MALFORMED_LINE, "featureName must be a string")
        if name in self._tools.by_name or name in self._classifications.by_name:
            return None
        message = (
            f"metric featureName {name!r} is neither a tool nor a top-level classification of the ontology "
            f"(tools: {_listing(self._tools.by_name)}; classifications: "
            f"{_listing(self._classifications.by_name)})"
        )
        return Mismatch("featureName", UNKNOWN_FEATURE, message)

    # --- objects ---

    def _check_object(self, body: Mapping[str, Any], kind: str) -> Mismatch | None:
        ref = _reference(body)
        if ref is None:
            return _no_reference("")
        tool = self._tools.find(ref)
        if tool is None:
            return self._not_a_tool(ref, kind)
        if (conflict := _conflict(body, tool.name, "", f"{tool.tool} tool")) is not None:
            return conflict
        wanted = TOOL_FOR_KIND[kind]
        if tool.tool != wanted:
            message = f"feature {tool.name!r} is a {tool.tool} tool; a {kind} line needs a {wanted} tool"
            return Mismatch(kind, WRONG_TOOL_TYPE, message + f" ({self._tools_of(wanted)})")
        return self._check_nested(
            body.get("classifications"), tool.classifications, "classifications", tool.name
        )

    def _not_a_tool(self, ref: Ref, kind: str) -> Mismatch:
        wanted = TOOL_FOR_KIND[kind]
        if ref in self._placed:
            message = f"feature {_describe(ref)} is a classification; a {kind} line needs a {wanted} tool"
            return Mismatch(kind, WRONG_TOOL_TYPE, f"{message} ({self._tools_of(wanted)})")
        message = f"feature {_describe(ref)} is not in the ontology ({self._tools_of(wanted)})"
        return Mismatch(ref[0], UNKNOWN_FEATURE, message)

    def _tools_of(self, tool_type: str) -> str:
        return f"its {tool_type} tools: {_listing(self._tools_by_type.get(tool_type, ()))}"

    # --- classifications, at any depth ---

    def _check_classification(
        self, item: Mapping[str, Any], scope: _Scope[_Question], prefix: str, parent: str
    ) -> Mismatch | None:
        ref = _reference(item)
        if ref is None:
            return _no_reference(prefix)
        question = scope.find(ref)
        if question is None:
            return self._not_here(ref, scope, prefix, parent)
        conflict = _conflict(item, question.name, prefix, f"{question.type} classification")
        return conflict or self._check_question(item, question, prefix)

    def _not_here(self, ref: Ref, scope: _Scope[_Question], prefix: str, parent: str) -> Mismatch:
        here = f"under {parent}" if parent else "at the top level"
        allowed = f"classifications {here}: {_listing(scope.by_name)}"
        places = self._placed.get(ref)
        if places:
            elsewhere = _places(places)
            message = (
                f"classification {_describe(ref)} does not belong {here}; the ontology has it {elsewhere}"
            )
            message += f" ({allowed})"
            return Mismatch(_join(prefix, ref[0]), MISPLACED_CLASSIFICATION, message)
        if self._tools.find(ref) is not None:
            message = f"feature {_describe(ref)} is a tool, not a classification ({allowed})"
            return Mismatch(_join(prefix, "answer"), WRONG_CLASSIFICATION_TYPE, message)
        message = f"classification {_describe(ref)} is not in the ontology ({allowed})"
        return Mismatch(_join(prefix, ref[0]), UNKNOWN_FEATURE, message)

    def _check_question(self, item: Mapping[str, Any], question: _Question, prefix: str) -> Mismatch | None:
        answer = item.get("answer")
        path = _join(prefix, "answer")
        fits = _types_for_answer(answer)
        if fits is None:
            return Mismatch(
                path, MALFORMED_LINE, "an answer is an object (radio), a list (checklist) or a string"
            )
        if question.type not in fits:
            message = (
                f"classification {question.name!r} is a {question.type}; "
                f"{_answer_shape(answer)} is for a {' or '.join(fits)}"
            )
            return Mismatch(path, WRONG_CLASSIFICATION_TYPE, message)
        if isinstance(answer, dict):
            return self._check_answer(answer, question, path)
        if isinstance(answer, list):
            return _first(self._check_answer(one, question, f"{path}.{i}") for i, one in enumerate(answer))
        return None

    def _check_answer(self, answer: Any, question: _Question, path: str) -> Mismatch | None:
        if not isinstance(answer, Mapping):
            return Mismatch(path, MALFORMED_LINE, "an answer must be an object")
        ref = _reference(answer)
        if ref is None:
            return _no_reference(path)
        option = question.options.find(ref)
        if option is None:
            message = (
                f"answer {_describe(ref)} is not an option of {question.type} {question.name!r} "
                f"(options: {_listing(question.options.by_name)})"
            )
            return Mismatch(_join(path, ref[0]), UNKNOWN_ANSWER, message)
        conflict = _conflict(answer, option.value, path, f"option of {question.type} {question.name!r}")
        if conflict is not None:
            return conflict
        nested = answer.get("classifications")
        return self._check_nested(
            nested, option.classifications, _join(path, "classifications"), option.chain
        )

    def _check_nested(self, items: Any, scope: _Scope[_Question], path: str, parent: str) -> Mismatch | None:
        if items is None:
            return None
        if not isinstance(items, list):
            return Mismatch(path, MALFORMED_LINE, "classifications must be a list")
        return _first(self._check_item(item, scope, f"{path}.{i}", parent) for i, item in enumerate(items))

    def _check_item(self, item: Any, scope: _Scope[_Question], path: str, parent: str) -> Mismatch | None:
        if not isinstance(item, Mapping):
            return Mismatch(path, MALFORMED_LINE, "a classification must be an object")
        return self._check_classification(item, scope, path, parent)


# --- reading a line ---------------------------------------------------------------------------------


def _types_for_answer(answer: Any) -> tuple[str, ...] | None:
    if isinstance(answer, dict):
        return ("radio", "dropdown")
    if isinstance(answer, list):
        return ("checklist",)
    return ("text",) if isinstance(answer, str) else None


def _answer_shape(answer: Any) -> str:
    return (
        "an answer object"
        if isinstance(answer, dict)
        else "an answer list"
        if isinstance(answer, list)
        else "a string"
    )


def _reference(obj: Mapping[str, Any]) -> Ref | None:
    for key in ("schemaId", "name"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return key, value
    return None


def _conflict(obj: Mapping[str, Any], feature: str, path: str, what: str) -> Mismatch | None:
    """``conflicting_reference`` if ``obj`` names, besides its schemaId, another feature than ``feature``.

    Called once the feature was found by ``_reference``: by schemaId when there is one.
    """
    name, schema_id = obj.get("name"), obj.get("schemaId")
    if name is None or schema_id is None or name == feature:
        return None
    message = (
        f"schemaId {schema_id!r} is the {what} {feature!r}, but the name given with it is {name!r}; "
        "give the feature's own name, or only one of the two"
    )
    return Mismatch(_join(path, "name"), CONFLICTING_REFERENCE, message)


def _no_reference(path: str) -> Mismatch:
    return Mismatch(path, MALFORMED_LINE, f"{path or 'the line'} has neither a name nor a schemaId")


def _describe(ref: Ref) -> str:
    key, value = ref
    return f"schemaId {value!r}" if key == "schemaId" else repr(value)


def _listing(names: Iterable[str]) -> str:
    listed = list(names)
    if not listed:
        return "none"
    shown = ", ".join(repr(name) for name in listed[:_LISTED])
    return shown if len(listed) <= _LISTED else f"{shown}, ... ({len(listed)} in all)"


def _places(places: tuple[str, ...]) -> str:
    shown = ", ".join(f"under {place}" if place else "at the top level" for place in places[:_PLACES])
    return shown if len(places) <= _PLACES else f"{shown}, ... ({len(places)} places in all)"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _first(mismatches: Iterator[Mismatch | None]) -> Mismatch | None:
    return next((mismatch for mismatch in mismatches if mismatch is not None), None)


# --- reading the ontology -----------------------------------------------------------------------------


class _Builder:
    """Reads ``normalized`` JSON into scopes, noting where every classification lives."""

    def __init__(self) -> None:
        self.placed: dict[Ref, list[str]] = {}

    def tools(self, items: list[Any]) -> _Scope[_Tool]:
        return _scope([self._tool(item, f"tools.{i}") for i, item in enumerate(items)], "tool")

    def questions(self, items: list[Any], path: str, where: str) -> _Scope[_Question]:
        """The classifications ``items`` at ``path``, which live under ``where`` ("" = top level)."""
        read = [self._question(item, f"{path}.{i}", where) for i, item in enumerate(items)]
        return _scope(read, "classification")

    def _tool(self, item: Any, path: str) -> _Read[_Tool]:
        item = _object(item, path)
        tool, name = _text(item, ("tool",), path), _text(item, ("name",), path)
        schema_id = _text(item, ("featureSchemaId",), path)
        nested = self.questions(_list(item, "classifications", path), f"{path}.classifications", name)
        return path, name, schema_id, _Tool(tool, name, nested)

    def _question(self, item: Any, path: str, where: str) -> _Read[_Question]:
        item = _object(item, path)
        kind, schema_id = _text(item, ("type",), path), _text(item, ("featureSchemaId",), path)
        name = _text(item, ("name", "instructions"), path)
        for ref in (("name", name), ("schemaId", schema_id)):
            self.placed.setdefault(ref, []).append(where)
        chain = f"{where} > {name}" if where else name
        items = enumerate(_list(item, "options", path))
        options = [self._option(option, f"{path}.options.{i}", chain) for i, option in items]
        return path, name, schema_id, _Question(kind, name, _scope(options, "option"))

    def _option(self, item: Any, path: str, question_chain: str) -> _Read[_Option]:
        item = _object(item, path)
        value, schema_id = _text(item, ("value", "label"), path), _text(item, ("featureSchemaId",), path)
        chain = f"{question_chain} > {value}"
        nested = self.questions(_list(item, "options", path), f"{path}.options", chain)
        return path, value, schema_id, _Option(value, chain, nested)


_Read = tuple[str, str, str, _N]  # (path, name, featureSchemaId, node)


def _scope(read: list[_Read[_N]], what: str) -> _Scope[_N]:
    by_name: dict[str, _N] = {}
    by_id: dict[str, _N] = {}
    for path, name, schema_id, node in read:
        for index, key, label in ((by_name, name, "name"), (by_id, schema_id, "featureSchemaId")):
            if key in index:
                raise ValueError(f"{_where(path)}: another {what} at this level has the same {label} {key!r}")
            index[key] = node
    return _Scope(by_name, by_id)


def _object(item: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"{_where(path)}: expected a JSON object, got {type(item).__name__}")
    return item


def _list(data: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> list[Any]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{_where(_join(path, key))}: expected a list, got {type(value).__name__}")
    return value


def _text(item: Mapping[str, Any], keys: tuple[str, ...], path: str) -> str:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"{_where(path)}: {' or '.join(repr(key) for key in keys)} must be a non-empty string")


def _where(path: str) -> str:
    return _join("ontology", path) if path else "ontology"
