"""Pure conversion: a validated prediction message -> Labelbox NDJSON lines.

A typed message is either the fast path's plain structs (``worker.plain``) or the pydantic models
(when pydantic accepted what the fast path left to it): both have the same attribute names and a
``type`` on every prediction and question, which is all the helpers here read.

No I/O, no clock, no randomness: the same message always yields the same lines, byte for byte.
A prediction without a ``uuid`` gets one derived (UUID v5 layout over SHA-1) from the model run,
its position in the message and its NDJSON content, which includes the data row. For an inline mask
(PNG or RLE) the content is the line without its PNG, then the mask's pixels (shape and packed bits,
``pixel_key``): never the PNG bytes, which an encoder change would change.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from schemas import NdjsonMessage
from schemas import ndjson as nd
from schemas.masks import PngMask, RleMask, UrlMask
from worker.plain import METRIC_KINDS, feature_key

Json = dict[str, Any]
_dumps = orjson.dumps
_sha1 = hashlib.sha1
_UUID_NAMESPACE = uuid.UUID("6f0e7f4e-3b1e-5d2c-9a57-4c1f0d6b2a10").bytes
#: RFC 4122 variant bits (10xx) applied to the hex digit that carries them.
_VARIANT = {digit: format((int(digit, 16) & 0x3) | 0x8, "x") for digit in "0123456789abcdef"}


class NdjsonLine(msgspec.Struct, frozen=True, gc=False):
    """One NDJSON line ready to upload (immutable, hashable; fields in this order, by position or name).

    ``data`` is the line's exact bytes, without a trailing newline; it is all the line keeps of its
    content (the parsed ``body`` is rebuilt on demand), so a buffered message costs little more than
    its NDJSON. ``data_row`` is the data row's global key or id (``data_row_kind`` says which: the
    NDJSON key ``globalKey`` or ``id``). ``feature`` is the name (or ``schemaId:…``) Labelbox counts
    its per-import limit by; ``None`` for metrics. ``kind`` is the prediction type (``bbox``,
    ``radio``, … as in the typed format).
    """

    uuid: str
    data_row: str
    feature: str | None
    data: bytes
    kind: str = "unknown"
    data_row_kind: str = "globalKey"

    @property
    def body(self) -> Json:
        """The line as a dict (parsed from ``data``)."""
        parsed: Json = orjson.loads(self.data)
        return parsed

    @property
    def data_row_ref(self) -> dict[str, str]:
        """The NDJSON ``dataRow`` object."""
        return {self.data_row_kind: self.data_row}


#: ``b"<index>\x1f"`` of the first positions, for the uuid's hash (formatting it per line costs more)
_INDEXED = 1024
_INDEX_BYTES = [b"%d\x1f" % index for index in range(_INDEXED)]


def derive_uuid(model_run_id: str, index: int, content: bytes) -> str:
    """The deterministic uuid of the ``index``-th prediction with NDJSON ``content`` (sans uuid).

    UUID version 5 layout (RFC 4122) over SHA-1 of a namespace, the model run, the position and the
    content; formatted directly, which is several times faster than going through ``uuid.UUID``.
    """
    h = _sha1(_UUID_NAMESPACE + f"{model_run_id}\x1f{index}\x1f".encode() + content).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def _finish(
    model_run_id: str,
    index: int,
    given: uuid.UUID | None,
    body: Json,
    feature: str | None,
    kind: str,
    pixels: Callable[[], bytes] | None = None,
) -> NdjsonLine:
    """The line of ``body``. ``pixels``: an inline mask's ``pixel_key``, called only when the uuid is
    derived, for the mask's place in the uuid's content."""
    content = _dumps(body)
    if given is not None:
        line_uuid = str(given)
    elif pixels is None:
        line_uuid = derive_uuid(model_run_id, index, content)
    else:
        line_uuid = derive_uuid(model_run_id, index, mask_uuid_content(body, pixels()))
    data = b'{"uuid":"' + line_uuid.encode() + b'",' + content[1:]
    [(row_kind, row)] = body["dataRow"].items()
    return NdjsonLine(line_uuid, row, feature, data, kind, row_kind)


def mask_uuid_content(body: Json, pixels: bytes) -> bytes:
    """What a mask line's uuid derives from: its NDJSON without ``mask``, a separator, its pixels."""
    rest = orjson.dumps({key: value for key, value in body.items() if key != "mask"})
    return rest + b"\x1fmask\x1f" + pixels


def _pixels(mask: Any) -> Callable[[], bytes] | None:
    return mask.pixel_key if isinstance(mask, PngMask | RleMask) else None


# --- nested parts -------------------------------------------------------------------------------


def _ref(item: Any) -> Json:
    """The NDJSON feature reference: ``{"name": …}`` or ``{"schemaId": …}``."""
    return {"name": item.name} if item.name is not None else {"schemaId": item.schema_id}


def _metrics(metrics: list[Any]) -> list[Json]:
    return [{"name": m.name, "value": m.value} for m in metrics]


def _answer(answer: Any) -> Json:
    out: Json = {"name": name} if (name := answer.name) is not None else {"schemaId": answer.schema_id}
    if (confidence := answer.confidence) is not None:
        out["confidence"] = confidence
    if nested := answer.classifications:
        out["classifications"] = [classification(c) for c in nested]
    if answer.custom_metrics:
        out["customMetrics"] = _metrics(answer.custom_metrics)
    return out


def classification(item: Any) -> Json:
    """A classification in its nested form (under an object or an answer, or a line's core)."""
    out: Json = {"name": name} if (name := item.name) is not None else {"schemaId": item.schema_id}
    kind = item.type
    if kind == "radio":
        out["answer"] = _answer(item.answer)
    elif kind == "checklist":
        out["answer"] = [_answer(a) for a in item.answers]
    else:
        out["answer"] = item.answer
        if item.custom_metrics:
            out["customMetrics"] = _metrics(item.custom_metrics)
    if (confidence := item.confidence) is not None:
        out["confidence"] = confidence
    return out


def _points(points: list[Any]) -> list[Json]:
    return [{"x": p.x, "y": p.y} for p in points]


def _closed(points: list[Any]) -> list[Json]:
    ring = _points(points)
    return ring if ring[0] == ring[-1] else [*ring, ring[0]]


def _mask(mask: PngMask | UrlMask | RleMask) -> Json:
    if isinstance(mask, UrlMask):
        return {"instanceURI": mask.url, "colorRGB": list(mask.color)}
    return {"png": mask.png01_base64()}


def _threshold_key(threshold: float) -> str:
    return repr(float(threshold))


# --- one line per prediction --------------------------------------------------------------------


def _object_body(data_row: Json, prediction: Any) -> Json:
    if (name := prediction.name) is not None:
        body: Json = {"dataRow": data_row, "name": name}
    else:
        body = {"dataRow": data_row, "schemaId": prediction.schema_id}
    if (confidence := prediction.confidence) is not None:
        body["confidence"] = confidence
    if metrics := prediction.custom_metrics:
        body["customMetrics"] = _metrics(metrics)
    body["classifications"] = (
        [classification(c) for c in nested] if (nested := prediction.classifications) else []
    )
    kind = prediction.type
    if kind == "bbox":
        b = prediction.bbox
        body["bbox"] = {"top": b.top, "left": b.left, "height": b.height, "width": b.width}
    elif kind == "point":
        p = prediction.point
        body["point"] = {"x": p.x, "y": p.y}
    elif kind == "polygon":
        body["polygon"] = _closed(prediction.polygon)
    elif kind == "polyline":
        body["line"] = _points(prediction.line)
    else:
        body["mask"] = _mask(prediction.mask)
    return body


def _classification_body(data_row: Json, prediction: Any) -> Json:
    return {"dataRow": data_row, **classification(prediction)}


def _scalar_body(data_row: Json, metric: Any) -> Json:
    value = metric.value
    body: Json = {
        "dataRow": data_row,
        "metricValue": {_threshold_key(k): v for k, v in value.items()} if isinstance(value, dict) else value,
    }
    return _metric_names(body, metric, metric.aggregation)


def _confusion_body(data_row: Json, metric: Any) -> Json:
    value = metric.value
    body: Json = {
        "dataRow": data_row,
        "metricValue": (
            {_threshold_key(k): list(v) for k, v in value.items()} if isinstance(value, dict) else list(value)
        ),
    }
    return _metric_names(body, metric, "CONFUSION_MATRIX")


def _metric_names(body: Json, metric: Any, aggregation: str) -> Json:
    if metric.metric_name is not None:
        body["metricName"] = metric.metric_name
    if metric.feature_name is not None:
        body["featureName"] = metric.feature_name
    if metric.subclass_name is not None:
        body["subclassName"] = metric.subclass_name
    body["aggregation"] = aggregation
    return body


_BODY: dict[str, Callable[[Json, Any], Json]] = {
    "bbox": _object_body,
    "point": _object_body,
    "polyline": _object_body,
    "polygon": _object_body,
    "mask": _object_body,
    "radio": _classification_body,
    "checklist": _classification_body,
    "text": _classification_body,
    "scalar_metric": _scalar_body,
    "confusion_matrix_metric": _confusion_body,
}
_ND_KINDS: dict[type[Any], str] = {
    nd.NdBBoxLine: "bbox",
    nd.NdPointLine: "point",
    nd.NdLineLine: "polyline",
    nd.NdPolygonLine: "polygon",
    nd.NdMaskLine: "mask",
    nd.NdClassificationLine: "classification",
    nd.NdScalarMetricLine: "scalar_metric",
    nd.NdConfusionMatrixLine: "confusion_matrix_metric",
}


def prediction_line(model_run_id: str, data_row: Json, index: int, prediction: Any) -> NdjsonLine:
    """The NDJSON line of one typed prediction (a plain struct or a pydantic model)."""
    kind: str = prediction.type
    body = _BODY[kind](data_row, prediction)
    feature = None if kind in METRIC_KINDS else feature_key(prediction)
    pixels = _pixels(prediction.mask) if kind == "mask" else None
    return _finish(model_run_id, index, prediction.uuid, body, feature, kind, pixels)


def _ndjson_line(model_run_id: str, index: int, line: Any) -> NdjsonLine:
    body = line.model_dump(mode="json", exclude_unset=True)
    pixels = None
    if isinstance(line, nd.NdMaskLine) and isinstance(line.mask, PngMask):
        body["mask"]["png"] = line.mask.png01_base64()  # Labelbox takes 8-bit PNGs of 0/1 only
        pixels = line.mask.pixel_key
    given = body.pop("uuid", None)
    feature = None if "metricValue" in body else (body.get("name") or f"schemaId:{body.get('schemaId')}")
    kind = _ND_KINDS.get(type(line), "unknown")
    return _finish(model_run_id, index, uuid.UUID(given) if given else None, body, feature, kind, pixels)


def _data_row(ref: Any) -> dict[str, str]:
    """The NDJSON ``dataRow`` object."""
    return {"globalKey": ref.global_key} if ref.global_key is not None else {"id": ref.id}


def convert(message: Any) -> list[NdjsonLine]:
    """All NDJSON lines of one validated message (``worker.decode.Message``), in message order."""
    run = message.model_run_id
    if isinstance(message, NdjsonMessage):
        return [_ndjson_line(run, i, line) for i, line in enumerate(message.ndjson)]
    data_row = _data_row(message.data_row)
    [(row_kind, row)] = data_row.items()
    # derive_uuid and _finish, inlined (the hot path): the hash of the namespace and the run is
    # computed once per message and copied per line
    run_hash = _sha1(_UUID_NAMESPACE + run.encode() + b"\x1f")
    body_of, metric_kinds, dumps, variant, new_line = _BODY, METRIC_KINDS, _dumps, _VARIANT, NdjsonLine
    index_bytes = _INDEX_BYTES
    lines = []
    for index, prediction in enumerate(message.predictions):
        kind: str = prediction.type
        if kind in metric_kinds:
            feature = None
        else:
            feature = name if (name := prediction.name) is not None else f"schemaId:{prediction.schema_id}"
        body = body_of[kind](data_row, prediction)
        content = dumps(body)
        if (given := prediction.uuid) is not None:
            line_uuid = str(given)
        else:
            if kind == "mask" and (pixels := _pixels(prediction.mask)) is not None:
                hashed = mask_uuid_content(body, pixels())
            else:
                hashed = content
            h = run_hash.copy()
            h.update(index_bytes[index] if index < _INDEXED else b"%d\x1f" % index)
            h.update(hashed)
            x = h.hexdigest()
            line_uuid = f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{variant[x[16]]}{x[17:20]}-{x[20:32]}"
        data = b'{"uuid":"' + line_uuid.encode() + b'",' + content[1:]
        lines.append(new_line(line_uuid, row, feature, data, kind, row_kind))
    return lines


def encode(lines: list[NdjsonLine]) -> bytes:
    """The NDJSON file of ``lines``: one line each, newline-terminated."""
    if not lines:
        return b""
    return b"\n".join([line.data for line in lines]) + b"\n"
