"""Validation of uploaded prediction NDJSON, line by line, as Labelbox reports it in a status file.

Pure: bytes in, one `RowResult` per non-blank line out, no I/O and no clock. Each error is a Labelbox-style
`{"name", "message", "additionalInfo"}` dict; `additionalInfo` is `{"path": "<where in the line>"}` or
`{"line": <1-based line number>}`, or null.

Rules (docs/labelbox-api.md and the README's message contract):
- the line is a JSON object with `dataRow` holding exactly one of `id` / `globalKey` (non-empty strings);
- `uuid` is a UUID string, unique within the import; metric lines may omit it, and then get a uuid derived
  from their content (uuid5), so that they can still be stored and counted;
- exactly one payload key: `bbox`, `point`, `line`, `polygon`, `mask`, `answer` or `metricValue`;
- every non-metric line, answer and nested classification has `name`, `schemaId` or both (non-empty
  strings); inside an answer's nested classifications the SDK's snake_case `schema_id` / `custom_metrics`
  are accepted too (the SDK writes them there), but not both spellings of one key on one object;
- geometry is finite numbers; bbox height/width >= 0; line >= 2 points; polygon >= 3 points;
- masks are `{"png": <base64 PNG>}` or `{"instanceURI": str, "colorRGB": [r, g, b]}`;
- metrics: number or {threshold: number} (2-15 thresholds) with a mean/SUM aggregation, or [tp, fp, tn, fn]
  non-negative ints (or {threshold: [4 ints]}) with CONFUSION_MATRIX; reserved scalar metric names refused;
- `confidence`, wherever present, is a number in [0, 1].

Then, only for a line without any of the errors above, the model run's ontology (the sandbox's own
`ontology.py`): the feature exists (a schema id and a name given together must name the same feature), fits
the line's kind, every answer is an option of its question and every nested classification belongs to its
parent. A mismatch is one error `{"name": "OntologyMismatch", "message", "additionalInfo": {"path": <dotted
path>, "code": <ontology.py code>}}`. No ontology, or an empty one
(`{"tools": [], "classifications": []}`, what a model run has until one is loaded), means not checked. A
malformed ontology fails every line that would be checked, with `InvalidOntology`.

`read_import` is the lean mode's reading (`Sandbox(lean=True)`, for benchmarks where the stand-in must not
be the bottleneck): only what storing a line needs — a JSON object (`InvalidJson` / `InvalidLine`), a uuid
(`MissingUuid`; metric lines without one get the derived uuid) unique within the import (`DuplicateUuid`) —
and none of the rules above, nor the ontology.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import orjson

from labelbox_sandbox.ontology import OntologyIndex

Error = dict[str, Any]
Errors = list[Error]
#: A model run's ontology as `normalized` JSON, or already indexed.
OntologyArg = Mapping[str, Any] | OntologyIndex | None

PAYLOAD_KEYS = ("bbox", "point", "line", "polygon", "mask", "answer", "metricValue")
SCALAR_AGGREGATIONS = frozenset({"ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"})
CONFUSION_AGGREGATION = "CONFUSION_MATRIX"
#: The scalar metric names Labelbox computes itself (the SDK refuses them, case and spaces aside).
RESERVED_SCALAR_METRIC_NAMES = frozenset(
    {
        "true_positive_count",
        "false_positive_count",
        "true_negative_count",
        "false_negative_count",
        "precision",
        "recall",
        "f1",
        "iou",
    }
)
MAX_NESTING_DEPTH = 32
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_METRIC_UUID_NAMESPACE = uuid.UUID("6f1c8a52-0c55-4e0e-9d1c-5a1b7e3c2d10")
ONTOLOGY_MISMATCH = "OntologyMismatch"
INVALID_ONTOLOGY = "InvalidOntology"


@dataclass(frozen=True)
class _InvalidOntology:
    reason: str


_Checker = OntologyIndex | _InvalidOntology | None


class RowResult(NamedTuple):
    """The outcome of one uploaded line.

    `uuid` and `data_row` echo the line (None where it had none usable); `line` is the parsed object (None
    if the line is not a JSON object, and in the lean mode, which reads only a line's uuid and data row);
    an empty `errors` means SUCCESS. `raw`: the line's bytes (lean mode only: it stores those, not the
    parsed object). A named tuple: the lean mode makes one per line of every upload, at a fifth of a
    frozen dataclass's cost.
    """

    line_number: int
    uuid: str | None
    data_row: dict[str, Any] | None
    line: dict[str, Any] | None
    errors: tuple[Error, ...]
    raw: bytes | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def error(name: str, message: str, path: str | None = None) -> Error:
    """A Labelbox-style row error."""
    return {"name": name, "message": message, "additionalInfo": {"path": path} if path else None}


def validate_import(payload: bytes, ontology: OntologyArg = None) -> list[RowResult]:
    """Validate every non-blank line of an NDJSON upload, including uuid uniqueness across lines.

    The ontology is indexed once per import, so checking a line against it costs the size of the line.
    """
    results: list[RowResult] = []
    seen: set[str] = set()
    checker = _checker(ontology)
    for number, raw in enumerate(payload.split(b"\n"), start=1):
        if raw.strip():
            result = _validate_raw(raw, number, checker)
            results.append(_mark_duplicate(result, seen))
    return results


class _Head(msgspec.Struct):
    """What the lean mode reads of a line: its uuid and data row (any other key is skipped unparsed)."""

    uuid: Any = None
    dataRow: Any = None


_HEADS = msgspec.json.Decoder(list[_Head])


def read_import(payload: bytes) -> list[RowResult]:
    """The lean mode: read every non-blank line's uuid and data row, without validating it (module doc).

    The lines are read in one pass of msgspec over ``[line,line,...]``: it checks that the whole is JSON
    while skipping, unparsed, every key but ``uuid`` and ``dataRow``. If that array does not hold exactly
    one JSON object per line (a line that is not JSON, not an object, or two values on one line), every
    line is read on its own instead, so that each error names its line as before. A line whose ``uuid``
    is not a string (a metric line gets a uuid derived from its content) is parsed whole."""
    numbered = [(number, raw) for number, raw in enumerate(payload.split(b"\n"), start=1) if raw.strip()]
    try:
        heads = _HEADS.decode(b"[" + b",".join([raw for _, raw in numbered]) + b"]")
    except msgspec.DecodeError:
        heads = []
    results: list[RowResult] = []
    seen: set[str] = set()
    if len(heads) != len(numbered):
        for number, raw in numbered:
            results.append(_mark_duplicate(_read_raw(raw, number), seen))
        return results
    for (number, raw), head in zip(numbered, heads, strict=True):
        row_uuid, data_row = head.uuid, head.dataRow
        if not isinstance(row_uuid, str):
            results.append(_mark_duplicate(_read_raw(raw, number), seen))
            continue
        data_row = data_row if isinstance(data_row, dict) else None
        result = RowResult(number, row_uuid, data_row, None, (), raw)
        if row_uuid in seen:
            result = _mark_duplicate(result, seen)
        else:
            seen.add(row_uuid)
        results.append(result)
    return results


def _read_raw(raw: bytes, number: int) -> RowResult:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return RowResult(number, None, None, None, (_invalid_json(e, number),))
    if not isinstance(line, dict):
        message = f"Each line must be a JSON object, got {type(line).__name__}"
        return RowResult(number, None, None, None, (error("InvalidLine", message),))
    row_uuid = _row_uuid(line)
    data_row = line.get("dataRow")
    data_row = data_row if isinstance(data_row, dict) else None
    errors = () if row_uuid is not None else (error("MissingUuid", "uuid is required", "uuid"),)
    return RowResult(number, row_uuid, data_row, line, errors, raw)


def _invalid_json(e: orjson.JSONDecodeError, number: int) -> Error:
    return {
        "name": "InvalidJson",
        "message": f"Line is not valid JSON: {e}",
        "additionalInfo": {"line": number},
    }


def validate_line(line: Any, ontology: OntologyArg = None) -> Errors:
    """Errors of one parsed line, uuid uniqueness aside (that needs the whole import)."""
    return _line_errors(line, _checker(ontology))


def _line_errors(line: Any, checker: _Checker) -> Errors:
    if not isinstance(line, dict):
        return [error("InvalidLine", f"Each line must be a JSON object, got {type(line).__name__}")]
    kinds = [key for key in PAYLOAD_KEYS if key in line]
    errors = [*_data_row_errors(line.get("dataRow")), *_uuid_errors(line, required=kinds != ["metricValue"])]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        message = f"A line must have exactly one of {', '.join(PAYLOAD_KEYS)}; found {found}"
        return [*errors, error("InvalidAnnotationKind", message)]
    if kinds[0] == "metricValue":
        errors += _metric_errors(line)
    else:
        errors += _annotation_errors(line, kinds[0])
    return errors or _checked_errors(line, checker)


def ontology_errors(line: Mapping[str, Any], ontology: OntologyArg) -> Errors:
    """The error (none or one) of a line against the model run's ontology (`normalized` JSON or indexed).

    Assumes the line is otherwise valid. No ontology, or an empty one, checks nothing.
    """
    return _checked_errors(line, _checker(ontology))


def _checker(ontology: OntologyArg) -> _Checker:
    if ontology is None or isinstance(ontology, OntologyIndex):
        return None if ontology is None or ontology.is_empty else ontology
    if not ontology.get("tools") and not ontology.get("classifications"):
        return None  # what a model run answers before an ontology is loaded: nothing to check against
    try:
        return OntologyIndex.build(ontology)
    except ValueError as e:
        return _InvalidOntology(str(e))


def _checked_errors(line: Mapping[str, Any], checker: _Checker) -> Errors:
    if checker is None:
        return []
    if isinstance(checker, _InvalidOntology):
        return [error(INVALID_ONTOLOGY, f"The model run's ontology is malformed: {checker.reason}")]
    mismatch = checker.check(line)
    if mismatch is None:
        return []
    info = {"path": mismatch.path, "code": mismatch.code}
    return [{"name": ONTOLOGY_MISMATCH, "message": mismatch.message, "additionalInfo": info}]


def derived_uuid(line: Mapping[str, Any]) -> str:
    """The uuid the sandbox gives a metric line that has none: a uuid5 of its canonical JSON."""
    canonical = orjson.dumps(line, option=orjson.OPT_SORT_KEYS).decode()
    return str(uuid.uuid5(_METRIC_UUID_NAMESPACE, canonical))


def _validate_raw(raw: bytes, number: int, checker: _Checker) -> RowResult:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return RowResult(number, None, None, None, (_invalid_json(e, number),))
    errors = tuple(_line_errors(line, checker))
    if not isinstance(line, dict):
        return RowResult(number, None, None, None, errors)
    row_uuid = _row_uuid(line)
    data_row = line.get("dataRow") if isinstance(line.get("dataRow"), dict) else None
    return RowResult(number, row_uuid, data_row, line, errors)


def _row_uuid(line: dict[str, Any]) -> str | None:
    value = line.get("uuid")
    if isinstance(value, str):
        return value
    if value is None and "metricValue" in line:
        return derived_uuid(line)
    return None


def _mark_duplicate(result: RowResult, seen: set[str]) -> RowResult:
    if result.uuid is None:
        return result
    if result.uuid not in seen:
        seen.add(result.uuid)
        return result
    duplicate = error("DuplicateUuid", f"uuid {result.uuid} appears more than once in this import", "uuid")
    return RowResult(
        result.line_number, result.uuid, result.data_row, result.line, (*result.errors, duplicate), result.raw
    )


def _data_row_errors(data_row: Any) -> Errors:
    if not isinstance(data_row, dict):
        return [error("InvalidDataRow", "dataRow must be an object with an id or a globalKey", "dataRow")]
    given = [key for key in ("id", "globalKey") if data_row.get(key) is not None]
    if len(given) != 1:
        return [error("InvalidDataRow", "dataRow must have exactly one of id or globalKey", "dataRow")]
    value = data_row[given[0]]
    if not isinstance(value, str) or not value:
        return [
            error("InvalidDataRow", f"dataRow.{given[0]} must be a non-empty string", f"dataRow.{given[0]}")
        ]
    return []


def _uuid_errors(line: dict[str, Any], required: bool) -> Errors:
    value = line.get("uuid")
    if value is None:
        return [error("MissingUuid", "uuid is required", "uuid")] if required else []
    if isinstance(value, str) and _UUID.fullmatch(value):
        return []
    return [error("InvalidUuid", f"uuid must be a UUID string (8-4-4-4-12 hex), got {value!r}", "uuid")]


def _annotation_errors(line: dict[str, Any], kind: str) -> Errors:
    return [
        *_feature_reference_errors(line, "", nested=False),
        *_confidence_errors(line, ""),
        *_PAYLOAD_CHECKS[kind](line[kind], kind, 0),
        *_classifications_errors(line.get("classifications"), "classifications", 1),
        *_custom_metrics_errors(line, "", nested=False),
    ]


def _feature_reference_errors(obj: dict[str, Any], path: str, *, nested: bool) -> Errors:
    """`name`, `schemaId` (or, nested under an answer, the SDK's `schema_id`) or both, non-empty strings."""
    spellings = ("schemaId", "schema_id") if nested else ("schemaId",)
    given = [key for key in ("name", *spellings) if obj.get(key) is not None]
    if not given:
        message = f"{path or 'line'} must have a name or a schemaId (or both)"
        return [error("InvalidFeatureReference", message, path or None)]
    if "schemaId" in given and "schema_id" in given:
        message = f"{path} has both schemaId and schema_id: give one spelling"
        return [error("InvalidFeatureReference", message, _join(path, "schema_id"))]
    for key in given:
        if not isinstance(obj[key], str) or not obj[key]:
            return [error("InvalidFeatureReference", f"{key} must be a non-empty string", _join(path, key))]
    return []


def _confidence_errors(obj: dict[str, Any], path: str) -> Errors:
    value = obj.get("confidence")
    if value is None or (_is_number(value) and 0.0 <= value <= 1.0):
        return []
    message = f"confidence must be a number in [0, 1], got {value!r}"
    return [error("InvalidConfidence", message, _join(path, "confidence"))]


def _custom_metrics_errors(obj: dict[str, Any], path: str, *, nested: bool) -> Errors:
    """`customMetrics` (or, nested under an answer, the SDK's `custom_metrics`), if present."""
    if nested and "customMetrics" in obj and "custom_metrics" in obj:
        message = f"{path} has both customMetrics and custom_metrics: give one spelling"
        return [error("InvalidCustomMetrics", message, _join(path, "custom_metrics"))]
    key = "custom_metrics" if nested and "custom_metrics" in obj else "customMetrics"
    value = obj.get(key)
    if value is None:
        return []
    if isinstance(value, list) and all(_is_custom_metric(item) for item in value):
        return []
    message = f'{key} must be a list of {{"name": str, "value": number}}'
    return [error("InvalidCustomMetrics", message, _join(path, key))]


def _is_custom_metric(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str) and _is_number(item.get("value"))


def _classifications_errors(value: Any, path: str, depth: int) -> Errors:
    if value is None:
        return []
    if not isinstance(value, list):
        return [error("InvalidClassification", "classifications must be a list", path)]
    return [e for i, item in enumerate(value) for e in _classification_errors(item, f"{path}[{i}]", depth)]


def _classification_errors(item: Any, path: str, depth: int) -> Errors:
    if depth > MAX_NESTING_DEPTH:
        return [error("InvalidClassification", "classifications are nested too deeply", path)]
    if not isinstance(item, dict):
        return [error("InvalidClassification", "a classification must be an object", path)]
    if "answer" not in item:
        return [error("InvalidClassification", "a classification must have an answer", path)]
    return [
        *_feature_reference_errors(item, path, nested=_under_answer(path)),
        *_confidence_errors(item, path),
        *_answer_errors(item["answer"], _join(path, "answer"), depth),
        *_custom_metrics_errors(item, path, nested=_under_answer(path)),
    ]


def _answer_errors(answer: Any, path: str, depth: int) -> Errors:
    if isinstance(answer, str):
        return []
    if isinstance(answer, dict):
        return _option_errors(answer, path, depth)
    if isinstance(answer, list) and answer:
        return [e for i, option in enumerate(answer) for e in _option_errors(option, f"{path}[{i}]", depth)]
    message = "answer must be an object (radio), a non-empty list (checklist) or a string (text)"
    return [error("InvalidAnswer", message, path)]


def _option_errors(option: Any, path: str, depth: int) -> Errors:
    if not isinstance(option, dict):
        return [error("InvalidAnswer", "an answer option must be an object", path)]
    nested = _under_answer(path.rsplit("answer", 1)[0])  # where its question is
    return [
        *_feature_reference_errors(option, path, nested=nested),
        *_confidence_errors(option, path),
        *_classifications_errors(option.get("classifications"), _join(path, "classifications"), depth + 1),
        *_custom_metrics_errors(option, path, nested=nested),
    ]


def _under_answer(path: str) -> bool:
    """Whether the object at `path` is nested under an answer, where the SDK writes snake_case keys."""
    return "answer" in path


def _bbox_errors(value: Any, path: str, depth: int) -> Errors:
    keys = ("top", "left", "height", "width")
    if not isinstance(value, dict) or not all(_is_number(value.get(key)) for key in keys):
        return [error("InvalidGeometry", "bbox must have finite numbers top, left, height, width", path)]
    if value["height"] < 0 or value["width"] < 0:
        return [error("InvalidGeometry", "bbox height and width must be >= 0", path)]
    return []


def _point_errors(value: Any, path: str, depth: int = 0) -> Errors:
    if isinstance(value, dict) and _is_number(value.get("x")) and _is_number(value.get("y")):
        return []
    return [error("InvalidGeometry", "a point must have finite numbers x and y", path)]


def _points_errors(minimum: int) -> Callable[[Any, str, int], Errors]:
    def check(value: Any, path: str, depth: int) -> Errors:
        if not isinstance(value, list) or len(value) < minimum:
            return [error("InvalidGeometry", f"{path} must be a list of at least {minimum} points", path)]
        return [e for i, point in enumerate(value) for e in _point_errors(point, f"{path}[{i}]")]

    return check


def _mask_errors(value: Any, path: str, depth: int) -> Errors:
    if isinstance(value, dict) and "png" in value:
        return _png_errors(value["png"], _join(path, "png"))
    if isinstance(value, dict) and isinstance(value.get("instanceURI"), str) and value["instanceURI"]:
        return (
            []
            if _is_rgb(value.get("colorRGB"))
            else [_mask_error("colorRGB must be [r, g, b] in 0-255", path)]
        )
    return [_mask_error('mask must be {"png": base64} or {"instanceURI": url, "colorRGB": [r, g, b]}', path)]


def _png_errors(value: Any, path: str) -> Errors:
    try:
        decoded = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded.startswith(_PNG_SIGNATURE):
        return []
    return [_mask_error("mask.png must be the base64 of a PNG image (no data-URI prefix)", path)]


def _mask_error(message: str, path: str) -> Error:
    return error("InvalidMask", message, path)


def _is_rgb(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    )


def _metric_errors(line: dict[str, Any]) -> Errors:
    shape = _metric_shape(line["metricValue"])
    if shape is None:
        message = "metricValue must be a number, [tp, fp, tn, fn], or a map of 2-15 thresholds to either"
        return [error("InvalidMetric", message, "metricValue")]
    return [*_aggregation_errors(line.get("aggregation"), shape), *_metric_name_errors(line, shape)]


def _aggregation_errors(aggregation: Any, shape: str) -> Errors:
    allowed = SCALAR_AGGREGATIONS if shape == "scalar" else frozenset({CONFUSION_AGGREGATION})
    if aggregation in allowed:
        return []
    message = (
        f"aggregation of a {shape} metric must be one of {', '.join(sorted(allowed))}, got {aggregation!r}"
    )
    return [error("InvalidMetric", message, "aggregation")]


def _metric_name_errors(line: dict[str, Any], shape: str) -> Errors:
    name = line.get("metricName")
    if shape == "confusion" and not (isinstance(name, str) and name):
        return [error("InvalidMetric", "a confusion matrix metric needs a metricName", "metricName")]
    if name is not None and not isinstance(name, str):
        return [error("InvalidMetric", "metricName must be a string", "metricName")]
    if shape == "scalar" and name is not None and name.lower().strip() in RESERVED_SCALAR_METRIC_NAMES:
        return [error("InvalidMetric", f"metricName {name!r} is reserved", "metricName")]
    return []


def _metric_shape(value: Any) -> str | None:
    """'scalar', 'confusion', or None if `value` is no metric value."""
    flat = _flat_metric_shape(value)
    if flat is not None or not isinstance(value, dict) or not 2 <= len(value) <= 15:
        return flat
    if not all(_is_threshold(key) for key in value):
        return None
    shapes = {_flat_metric_shape(item) for item in value.values()}
    return shapes.pop() if len(shapes) == 1 else None


def _flat_metric_shape(value: Any) -> str | None:
    if _is_number(value):
        return "scalar"
    if isinstance(value, list) and len(value) == 4 and all(_is_count(item) for item in value):
        return "confusion"
    return None


def _is_threshold(key: str) -> bool:
    try:
        return math.isfinite(float(key))
    except ValueError:
        return False


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_PAYLOAD_CHECKS: dict[str, Callable[[Any, str, int], Errors]] = {
    "bbox": _bbox_errors,
    "point": _point_errors,
    "line": _points_errors(2),
    "polygon": _points_errors(3),
    "mask": _mask_errors,
    "answer": _answer_errors,
}
