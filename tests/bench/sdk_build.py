"""What a user does today: a message's JSON -> ``labelbox.types`` objects -> the SDK's NDJSON.

``sdk_label`` builds one ``lb.Label`` per message (ObjectAnnotation, ClassificationAnnotation,
metrics, masks decoded to arrays as ``MaskData.from_2D_arr`` wants them); ``sdk_ndjson`` is the
whole path the conversion benchmark times against ours: ``json.loads`` of the record value, build,
``NDJsonConverter.serialize``, ``json.dumps`` of each line.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import labelbox.types as lb
import numpy as np
from labelbox.data.mixins import CustomMetric as SdkMetric
from labelbox.data.serialization import NDJsonConverter
from PIL import Image
from pycocotools import mask as coco_mask

Json = dict[str, Any]


def sdk_ndjson(value: bytes) -> bytes:
    """One message's NDJSON file, the SDK way."""
    lines = NDJsonConverter.serialize([sdk_label(json.loads(value))])
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def sdk_label(message: Json) -> lb.Label:
    """The ``lb.Label`` of one typed message (data row by global key or id)."""
    row = message["data_row"]
    data = {"global_key": row["global_key"]} if "global_key" in row else {"uid": row["id"]}
    return lb.Label(data=data, annotations=[sdk_annotation(p) for p in message["predictions"]])


def sdk_annotation(prediction: Json) -> Any:
    """The SDK object of one typed prediction."""
    return _BUILDERS[prediction["type"]](prediction)


# --- classifications ---------------------------------------------------------------------------


def _ref(item: Json) -> Json:
    return {"name": item["name"]} if "name" in item else {"feature_schema_id": item["schema_id"]}


def _custom(item: Json) -> list[SdkMetric] | None:
    return [SdkMetric(name=m["name"], value=m["value"]) for m in item.get("custom_metrics", ())] or None


def _answer(answer: Json) -> lb.ClassificationAnswer:
    nested = [_classification(c) for c in answer.get("classifications", ())] or None
    return lb.ClassificationAnswer(
        **_ref(answer),
        confidence=answer.get("confidence"),
        custom_metrics=_custom(answer),
        classifications=nested,
    )


def _value(item: Json) -> Any:
    kind = item["type"]
    if kind == "radio":
        return lb.Radio(answer=_answer(item["answer"]))
    if kind == "checklist":
        return lb.Checklist(answer=[_answer(a) for a in item["answers"]])
    return lb.Text(answer=item["answer"], confidence=item.get("confidence"), custom_metrics=_custom(item))


def _classification(item: Json) -> lb.ClassificationAnnotation:
    confidence = None if item["type"] == "text" else item.get("confidence")
    return lb.ClassificationAnnotation(**_ref(item), confidence=confidence, value=_value(item))


# --- objects -----------------------------------------------------------------------------------


def _points(points: list[Json]) -> list[lb.Point]:
    return [lb.Point(x=p["x"], y=p["y"]) for p in points]


def _rectangle(item: Json) -> lb.Rectangle:
    b = item["bbox"]
    end = lb.Point(x=b["left"] + b["width"], y=b["top"] + b["height"])
    return lb.Rectangle(start=lb.Point(x=b["left"], y=b["top"]), end=end)


def _mask_pixels(source: Json) -> np.ndarray[Any, Any]:
    """The pixels of an inline (PNG or COCO RLE, string or counts) mask, 0/1."""
    if "png" in source:
        with Image.open(io.BytesIO(base64.b64decode(source["png"]))) as image:
            pixels: np.ndarray[Any, Any] = (np.asarray(image) != 0).astype(np.uint8)
        return pixels
    rle = source["rle"]
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):  # pycocotools takes count lists as "uncompressed RLE" only via frPyObjects
        encoded = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        encoded = {"size": [height, width], "counts": counts.encode()}
    decoded: np.ndarray[Any, Any] = coco_mask.decode(encoded)
    return decoded


def _mask(item: Json) -> lb.Mask:
    source = item["mask"]
    if "url" in source:
        return lb.Mask(mask=lb.MaskData(url=source["url"]), color=tuple(source["color"]))
    return lb.Mask(mask=lb.MaskData.from_2D_arr(_mask_pixels(source)), color=(1, 1, 1))


_GEOMETRY: dict[str, Callable[[Json], Any]] = {
    "bbox": _rectangle,
    "point": lambda item: lb.Point(**item["point"]),
    "polyline": lambda item: lb.Line(points=_points(item["line"])),
    "polygon": lambda item: lb.Polygon(points=_points(item["polygon"])),
    "mask": _mask,
}


def _object(item: Json) -> lb.ObjectAnnotation:
    return lb.ObjectAnnotation(
        **_ref(item),
        value=_GEOMETRY[item["type"]](item),
        confidence=item.get("confidence"),
        custom_metrics=_custom(item),
        classifications=[_classification(c) for c in item.get("classifications", ())],
    )


# --- metrics -----------------------------------------------------------------------------------


def _metric_names(item: Json) -> Json:
    return {k: item.get(k) for k in ("metric_name", "feature_name", "subclass_name")}


def _scalar(item: Json) -> lb.ScalarMetric:
    value = item["value"]
    value = {float(k): v for k, v in value.items()} if isinstance(value, dict) else value
    aggregation = lb.ScalarMetricAggregation[item.get("aggregation", "ARITHMETIC_MEAN")]
    return lb.ScalarMetric(value=value, aggregation=aggregation, **_metric_names(item))


def _confusion(item: Json) -> lb.ConfusionMatrixMetric:
    value = item["value"]
    value = {float(k): tuple(v) for k, v in value.items()} if isinstance(value, dict) else tuple(value)
    return lb.ConfusionMatrixMetric(value=value, **_metric_names(item))


_BUILDERS: dict[str, Callable[[Json], Any]] = {
    "bbox": _object,
    "point": _object,
    "polyline": _object,
    "polygon": _object,
    "mask": _object,
    "radio": _classification,
    "checklist": _classification,
    "text": _classification,
    "scalar_metric": _scalar,
    "confusion_matrix_metric": _confusion,
}
