"""The Labelbox SDK 7.17.0 as a test oracle (a dev dependency; the worker never imports it).

Two directions:

* forward: :func:`to_sdk` builds the ``labelbox.types`` annotation equivalent to one of our typed
  predictions, and :func:`sdk_lines` serializes annotations with ``NDJsonConverter.serialize``;
* backward: :func:`sdk_model` validates one of our NDJSON lines with the SDK's own NDJSON pydantic
  models, and :func:`sdk_common` turns that model back into ``labelbox.types`` objects (7.17.0 has no
  ``NDJsonConverter.deserialize`` any more; the per-type models' ``to_common`` is what is left of it).

Plus the normalisations the comparisons need: masks compared by decoded pixels, and the SDK bugs that
we deliberately do not copy (see the README, "Tests": the SDK's known bugs).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
from typing import Any

import labelbox.types as lb
import numpy as np
from labelbox.data.mixins import CustomMetric as SdkMetric
from labelbox.data.serialization import NDJsonConverter
from labelbox.data.serialization.ndjson.classification import NDChecklist, NDClassification, NDRadio, NDText
from labelbox.data.serialization.ndjson.label import NDLabel
from labelbox.data.serialization.ndjson.metric import NDConfusionMatrixMetric, NDScalarMetric
from labelbox.data.serialization.ndjson.objects import (
    NDLine,
    NDMask,
    NDObject,
    NDPoint,
    NDPolygon,
    NDRectangle,
)
from PIL import Image
from pycocotools import mask as coco_mask
from pydantic import BaseModel

from schemas import (
    Answer,
    BBoxPrediction,
    Checklist,
    ConfusionMatrixMetric,
    CustomMetric,
    MaskPrediction,
    PointPrediction,
    PolygonPrediction,
    PolylinePrediction,
    Radio,
    ScalarMetric,
    Text,
)
from schemas.masks import PngMask, RleMask, UrlMask

Json = dict[str, Any]

# --- forward: SDK serialization --------------------------------------------------------------------


def sdk_data(global_key: str | None = None, data_row_id: str | None = None) -> Json:
    """The ``Label.data`` of a data row given by global key or by id."""
    return {"global_key": global_key} if global_key is not None else {"uid": data_row_id}


def with_uuid(annotation: Any, uuid: str) -> Any:
    """A copy of an annotation or metric built with ``extra={"uuid": uuid}`` (how the SDK takes one)."""
    fields = dict(annotation)
    fields["extra"] = {**annotation.extra, "uuid": uuid}
    return type(annotation)(**fields)


def sdk_lines(annotations: list[Any], data: Json) -> list[Json]:
    """``NDJsonConverter.serialize`` of one label, as parsed JSON (float keys and tuples as JSON has them)."""
    label = lb.Label(data=data, annotations=annotations)
    return json.loads(json.dumps(list(NDJsonConverter.serialize([label]))))


_SNAKE_TO_CAMEL = {"schema_id": "schemaId", "custom_metrics": "customMetrics"}


def camel_case_keys(value: Any) -> Any:
    """SDK bug 1 undone: under an answer the SDK writes ``schema_id`` / ``custom_metrics``."""
    if isinstance(value, dict):
        return {_SNAKE_TO_CAMEL.get(k, k): camel_case_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_case_keys(v) for v in value]
    return value


def snake_keys_in(value: Any) -> set[str]:
    """The snake_case keys (of SDK bug 1) anywhere in a JSON value."""
    if isinstance(value, dict):
        found = {k for k in value if k in _SNAKE_TO_CAMEL}
        return found.union(*(snake_keys_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(snake_keys_in(v) for v in value))
    return set()


def png_pixels(b64: str) -> list[list[int]]:
    """The pixels of an inline mask, checked to be what Labelbox takes: 8-bit, one channel, 0 or 1."""
    with Image.open(io.BytesIO(base64.b64decode(b64, validate=True)), formats=["PNG"]) as image:
        assert image.mode == "L", image.mode
        pixels = np.asarray(image)
    assert set(np.unique(pixels).tolist()) <= {0, 1}
    return pixels.tolist()


def png_b64(array: np.ndarray[Any, Any]) -> str:
    """Base64 PNG of an array; Pillow picks the mode from the dtype (bool "1", uint8 "L", uint16 "I;16")."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def uncompressed_rle(array: np.ndarray[Any, Any]) -> list[int]:
    """COCO uncompressed RLE counts, computed here independently: column-major runs, background first."""
    runs = [(bool(value), len(list(group))) for value, group in itertools.groupby(array.flatten(order="F"))]
    counts = [n for _, n in runs]
    return [0, *counts] if runs and runs[0][0] else counts


def comparable(line: Json) -> Json:
    """A line with an inline mask's base64 replaced by its decoded pixels (PNG bytes may differ)."""
    mask = line.get("mask")
    if isinstance(mask, dict) and "png" in mask:
        return {**line, "mask": {"pixels": png_pixels(mask["png"])}}
    return line


# --- forward: our typed predictions as labelbox.types objects --------------------------------------


def _ref(item: Any) -> Json:
    return {"name": item.name} if item.name is not None else {"feature_schema_id": item.schema_id}


def _metrics(metrics: list[CustomMetric]) -> list[SdkMetric] | None:
    return [SdkMetric(name=m.name, value=m.value) for m in metrics] or None


def sdk_answer(answer: Answer) -> lb.ClassificationAnswer:
    return lb.ClassificationAnswer(
        **_ref(answer),
        confidence=answer.confidence,
        custom_metrics=_metrics(answer.custom_metrics),
        classifications=[sdk_classification(c) for c in answer.classifications] or None,
    )


def _classification_value(item: Radio | Checklist | Text) -> Any:
    if isinstance(item, Radio):
        return lb.Radio(answer=sdk_answer(item.answer))
    if isinstance(item, Checklist):
        return lb.Checklist(answer=[sdk_answer(a) for a in item.answers])
    # The SDK reads a text's confidence (and custom metrics) from Text, not from the annotation.
    metrics = _metrics(item.custom_metrics)
    return lb.Text(answer=item.answer, confidence=item.confidence, custom_metrics=metrics)


def sdk_classification(item: Radio | Checklist | Text, **extra: Any) -> lb.ClassificationAnnotation:
    """A radio / checklist / text, nested or top level (``extra`` then carries the uuid)."""
    confidence = None if isinstance(item, Text) else item.confidence
    return lb.ClassificationAnnotation(
        **_ref(item), confidence=confidence, value=_classification_value(item), **extra
    )


def _points(points: list[Any]) -> list[lb.Point]:
    return [lb.Point(x=p.x, y=p.y) for p in points]


def inside_of(mask: PngMask | RleMask) -> np.ndarray[Any, Any]:
    """A mask's pixels decoded independently of the converter: Pillow for PNG, pycocotools for RLE."""
    if isinstance(mask, PngMask):
        with Image.open(io.BytesIO(base64.b64decode(mask.png))) as image:
            return np.asarray(image) != 0
    height, width = mask.rle.size
    if isinstance(mask.rle.counts, str):
        rle = {"size": [height, width], "counts": mask.rle.counts.encode()}
        return coco_mask.decode(rle).astype(bool)
    # Uncompressed counts: pycocotools' frPyObjects warns under numpy 2, so expand the runs here.
    values = np.arange(len(mask.rle.counts)) % 2 == 1
    return np.repeat(values, mask.rle.counts).reshape(width, height).T


def sdk_mask(mask: PngMask | UrlMask | RleMask) -> lb.Mask:
    if isinstance(mask, UrlMask):
        return lb.Mask(mask=lb.MaskData(url=mask.url), color=mask.color)
    return lb.Mask(mask=lb.MaskData.from_2D_arr(inside_of(mask).astype(np.uint8)), color=(1, 1, 1))


def sdk_geometry(prediction: Any) -> Any:
    if isinstance(prediction, BBoxPrediction):
        b = prediction.bbox
        end = lb.Point(x=b.left + b.width, y=b.top + b.height)
        return lb.Rectangle(start=lb.Point(x=b.left, y=b.top), end=end)
    if isinstance(prediction, PointPrediction):
        return lb.Point(x=prediction.point.x, y=prediction.point.y)
    if isinstance(prediction, PolylinePrediction):
        return lb.Line(points=_points(prediction.line))
    if isinstance(prediction, PolygonPrediction):
        return lb.Polygon(points=_points(prediction.polygon))
    assert isinstance(prediction, MaskPrediction)
    return sdk_mask(prediction.mask)


def _threshold_value(value: Any, cast: Any) -> Any:
    return {k: cast(v) for k, v in value.items()} if isinstance(value, dict) else cast(value)


def sdk_metric(metric: ScalarMetric | ConfusionMatrixMetric, uuid: str) -> Any:
    names = {
        "metric_name": metric.metric_name,
        "feature_name": metric.feature_name,
        "subclass_name": metric.subclass_name,
        "extra": {"uuid": uuid},
    }
    if isinstance(metric, ScalarMetric):
        aggregation = lb.ScalarMetricAggregation[metric.aggregation]
        return lb.ScalarMetric(value=_threshold_value(metric.value, float), aggregation=aggregation, **names)
    return lb.ConfusionMatrixMetric(value=_threshold_value(metric.value, tuple), **names)


def to_sdk(prediction: Any, uuid: str) -> Any:
    """The ``labelbox.types`` annotation equivalent to one typed prediction, with the same uuid."""
    if isinstance(prediction, ScalarMetric | ConfusionMatrixMetric):
        return sdk_metric(prediction, uuid)
    if isinstance(prediction, Radio | Checklist | Text):
        return sdk_classification(prediction, extra={"uuid": uuid})
    return lb.ObjectAnnotation(
        **_ref(prediction),
        value=sdk_geometry(prediction),
        confidence=prediction.confidence,
        custom_metrics=_metrics(prediction.custom_metrics),
        classifications=[sdk_classification(c) for c in prediction.classifications],
        extra={"uuid": uuid},
    )


# --- backward: our lines through the SDK's NDJSON models ------------------------------------------


def expected_model(line: Json) -> type[BaseModel]:
    """The SDK NDJSON model a line must resolve to, told by its payload key (as Labelbox does)."""
    for key, model in (("bbox", NDRectangle), ("point", NDPoint), ("line", NDLine), ("polygon", NDPolygon)):
        if key in line:
            return model
    if "mask" in line:
        return NDMask
    if "metricValue" in line:
        return NDConfusionMatrixMetric if line.get("aggregation") == "CONFUSION_MATRIX" else NDScalarMetric
    answer = line["answer"]
    return NDText if isinstance(answer, str) else NDChecklist if isinstance(answer, list) else NDRadio


def sdk_model(line: Json) -> BaseModel:
    """Validate one line with the SDK's NDJSON union (``NDLabel``); it must pick the expected model."""
    model = NDLabel.model_validate({"annotations": line}).annotations
    assert type(model) is expected_model(line), (type(model).__name__, line)
    return model


def sdk_dump(model: BaseModel) -> Json:
    """The SDK's own serialization of a validated NDJSON model, as parsed JSON (bug 1 undone)."""
    return camel_case_keys(json.loads(json.dumps(model.model_dump(by_alias=True, exclude_none=True))))


def sdk_common(model: BaseModel) -> Any:
    """The ``labelbox.types`` object an NDJSON model stands for."""
    if isinstance(model, NDScalarMetric | NDConfusionMatrixMetric):
        return model.to_common()
    if isinstance(model, NDRadio | NDChecklist | NDText):
        (common,) = NDClassification.to_common(model)  # a list: one item unless video frames
        return common
    return NDObject.to_common(model)
