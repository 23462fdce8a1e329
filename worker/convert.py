"""Pure conversion: a validated prediction message -> Labelbox NDJSON lines.

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
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import (
    Answer,
    BBoxPrediction,
    Checklist,
    ChecklistPrediction,
    ConfusionMatrixMetric,
    CustomMetric,
    MaskPrediction,
    NdjsonMessage,
    PointPrediction,
    PolygonPrediction,
    PolylinePrediction,
    PredictionMessage,
    Radio,
    RadioPrediction,
    ScalarMetric,
    TextPrediction,
)
from schemas import ndjson as nd
from schemas.masks import PngMask, RleMask, UrlMask
from schemas.predictions import Classification, Point, Prediction

Json = dict[str, Any]
_UUID_NAMESPACE = uuid.UUID("6f0e7f4e-3b1e-5d2c-9a57-4c1f0d6b2a10").bytes
#: RFC 4122 variant bits (10xx) applied to the hex digit that carries them.
_VARIANT = {digit: format((int(digit, 16) & 0x3) | 0x8, "x") for digit in "0123456789abcdef"}


@dataclass(frozen=True, slots=True)
class NdjsonLine:
    """One NDJSON line ready to upload.

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


def derive_uuid(model_run_id: str, index: int, content: bytes) -> str:
    """The deterministic uuid of the ``index``-th prediction with NDJSON ``content`` (sans uuid).

    UUID version 5 layout (RFC 4122) over SHA-1 of a namespace, the model run, the position and the
    content; formatted directly, which is several times faster than going through ``uuid.UUID``.
    """
    h = hashlib.sha1(
        _UUID_NAMESPACE + f"{model_run_id}\x1f{index}\x1f".encode() + content, usedforsecurity=False
    ).hexdigest()
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
    content = orjson.dumps(body)
    if given is not None:
        line_uuid = str(given)
    elif pixels is None:
        line_uuid = derive_uuid(model_run_id, index, content)
    else:
        line_uuid = derive_uuid(model_run_id, index, mask_uuid_content(body, pixels()))
    data = b'{"uuid":"' + line_uuid.encode() + b'",' + content[1:]
    row_kind, row = next(iter(body["dataRow"].items()))
    return NdjsonLine(line_uuid, row, feature, data, kind, row_kind)


def mask_uuid_content(body: Json, pixels: bytes) -> bytes:
    """What a mask line's uuid derives from: its NDJSON without ``mask``, a separator, its pixels."""
    rest = orjson.dumps({key: value for key, value in body.items() if key != "mask"})
    return rest + b"\x1fmask\x1f" + pixels


def _pixels(mask: Any) -> Callable[[], bytes] | None:
    return mask.pixel_key if isinstance(mask, PngMask | RleMask) else None


# --- nested parts -------------------------------------------------------------------------------


def _metrics(metrics: list[CustomMetric]) -> list[Json]:
    return [{"name": m.name, "value": m.value} for m in metrics]


def _answer(answer: Answer) -> Json:
    out = answer.ref_json()
    if answer.confidence is not None:
        out["confidence"] = answer.confidence
    if answer.classifications:
        out["classifications"] = [classification(c) for c in answer.classifications]
    if answer.custom_metrics:
        out["customMetrics"] = _metrics(answer.custom_metrics)
    return out


def classification(item: Classification) -> Json:
    """A classification in its nested form (under an object or an answer, or a line's core)."""
    out = item.ref_json()
    if isinstance(item, Radio):
        out["answer"] = _answer(item.answer)
    elif isinstance(item, Checklist):
        out["answer"] = [_answer(a) for a in item.answers]
    else:
        out["answer"] = item.answer
        if item.custom_metrics:
            out["customMetrics"] = _metrics(item.custom_metrics)
    if item.confidence is not None:
        out["confidence"] = item.confidence
    return out


def _points(points: list[Point]) -> list[Json]:
    return [{"x": p.x, "y": p.y} for p in points]


def _closed(points: list[Point]) -> list[Json]:
    ring = _points(points)
    return ring if ring[0] == ring[-1] else [*ring, ring[0]]


def _mask(mask: PngMask | UrlMask | RleMask) -> Json:
    if isinstance(mask, UrlMask):
        return {"instanceURI": mask.url, "colorRGB": list(mask.color)}
    return {"png": mask.png01_base64()}


def _geometry(prediction: Any) -> tuple[str, Any]:
    if isinstance(prediction, BBoxPrediction):
        b = prediction.bbox
        return "bbox", {"top": b.top, "left": b.left, "height": b.height, "width": b.width}
    if isinstance(prediction, PointPrediction):
        return "point", {"x": prediction.point.x, "y": prediction.point.y}
    if isinstance(prediction, PolylinePrediction):
        return "line", _points(prediction.line)
    if isinstance(prediction, PolygonPrediction):
        return "polygon", _closed(prediction.polygon)
    return "mask", _mask(prediction.mask)


def _threshold_key(threshold: float) -> str:
    return repr(float(threshold))


# --- one line per prediction --------------------------------------------------------------------


def _object_body(data_row: Json, prediction: Any) -> Json:
    body: Json = {"dataRow": data_row, **prediction.ref_json()}
    if prediction.confidence is not None:
        body["confidence"] = prediction.confidence
    if prediction.custom_metrics:
        body["customMetrics"] = _metrics(prediction.custom_metrics)
    body["classifications"] = [classification(c) for c in prediction.classifications]
    key, value = _geometry(prediction)
    body[key] = value
    return body


def _classification_body(data_row: Json, prediction: Any) -> Json:
    return {"dataRow": data_row, **classification(prediction)}


def _scalar_body(data_row: Json, metric: ScalarMetric) -> Json:
    value = metric.value
    body: Json = {
        "dataRow": data_row,
        "metricValue": {_threshold_key(k): v for k, v in value.items()} if isinstance(value, dict) else value,
    }
    return _metric_names(body, metric, metric.aggregation)


def _confusion_body(data_row: Json, metric: ConfusionMatrixMetric) -> Json:
    value = metric.value
    body: Json = {
        "dataRow": data_row,
        "metricValue": (
            {_threshold_key(k): list(v) for k, v in value.items()} if isinstance(value, dict) else list(value)
        ),
    }
    return _metric_names(body, metric, "CONFUSION_MATRIX")


def _metric_names(body: Json, metric: ScalarMetric | ConfusionMatrixMetric, aggregation: str) -> Json:
    if metric.metric_name is not None:
        body["metricName"] = metric.metric_name
    if metric.feature_name is not None:
        body["featureName"] = metric.feature_name
    if metric.subclass_name is not None:
        body["subclassName"] = metric.subclass_name
    body["aggregation"] = aggregation
    return body


_BODY: dict[type[Any], Callable[[Json, Any], Json]] = {
    BBoxPrediction: _object_body,
    PointPrediction: _object_body,
    PolylinePrediction: _object_body,
    PolygonPrediction: _object_body,
    MaskPrediction: _object_body,
    RadioPrediction: _classification_body,
    ChecklistPrediction: _classification_body,
    TextPrediction: _classification_body,
    ScalarMetric: _scalar_body,
    ConfusionMatrixMetric: _confusion_body,
}
_METRICS = (ScalarMetric, ConfusionMatrixMetric)
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


def prediction_line(model_run_id: str, data_row: Json, index: int, prediction: Prediction) -> NdjsonLine:
    """The NDJSON line of one typed prediction."""
    body = _BODY[type(prediction)](data_row, prediction)
    feature = None if isinstance(prediction, _METRICS) else prediction.feature_key()
    pixels = _pixels(prediction.mask) if isinstance(prediction, MaskPrediction) else None
    return _finish(model_run_id, index, prediction.uuid, body, feature, prediction.type, pixels)


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


def convert(message: PredictionMessage | NdjsonMessage) -> list[NdjsonLine]:
    """All NDJSON lines of one validated message, in message order."""
    run = message.model_run_id
    if isinstance(message, NdjsonMessage):
        return [_ndjson_line(run, i, line) for i, line in enumerate(message.ndjson)]
    data_row = message.data_row.to_json()
    return [prediction_line(run, data_row, i, p) for i, p in enumerate(message.predictions)]


def encode(lines: list[NdjsonLine]) -> bytes:
    """The NDJSON file of ``lines``: one line each, newline-terminated."""
    return b"".join(line.data + b"\n" for line in lines)
