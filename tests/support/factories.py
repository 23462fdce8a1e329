"""Builders of valid prediction messages, shared by tests and the benchmark."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

Json = dict[str, Any]


def png_b64(array: np.ndarray[Any, Any], mode: str | None = None) -> str:
    """Base64 PNG of an array (Pillow picks the mode from the dtype/shape unless given)."""
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def point(x: float = 1.0, y: float = 2.0) -> Json:
    return {"x": x, "y": y}


def bbox(**extra: Any) -> Json:
    return {"type": "bbox", "name": "box", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}, **extra}


def radio(**extra: Any) -> Json:
    return {"type": "radio", "name": "q", "answer": {"name": "a"}, **extra}


def message(*predictions: Json, **extra: Any) -> Json:
    return {
        "model_run_id": "mr-1",
        "data_row": {"global_key": "img-1.jpg"},
        "predictions": list(predictions) or [bbox()],
        **extra,
    }


def every_type() -> list[Json]:
    """One valid prediction of every type, nested classifications included."""
    nested = {"type": "radio", "name": "sub", "answer": {"name": "s1", "confidence": 0.4}}
    square = np.zeros((6, 5), dtype=np.uint8)
    square[1:4, 1:3] = 1
    return [
        bbox(confidence=0.9, classifications=[nested], custom_metrics=[{"name": "iou2", "value": 0.5}]),
        {"type": "point", "name": "pt", "point": point()},
        {"type": "polyline", "name": "ln", "line": [point(), point(3, 4)]},
        {"type": "polygon", "name": "pg", "polygon": [point(), point(3, 4), point(5, 1)]},
        {"type": "mask", "name": "mk", "mask": {"png": png_b64(square)}},
        {
            "type": "mask",
            "name": "mk",
            "mask": {"url": "https://example.invalid/m.png", "color": [255, 0, 0]},
        },
        {"type": "mask", "name": "mk", "mask": {"rle": {"size": [2, 2], "counts": [1, 2, 1]}}},
        radio(confidence=0.5, answer={"name": "a", "classifications": [nested]}),
        {"type": "checklist", "name": "cl", "answers": [{"name": "a", "confidence": 0.7}, {"name": "b"}]},
        {"type": "text", "name": "tx", "answer": "free text", "confidence": 0.3},
        {"type": "scalar_metric", "metric_name": "m", "value": 0.5, "feature_name": "box"},
        {"type": "scalar_metric", "value": {"0.1": 0.2, "0.5": 0.7}, "aggregation": "SUM"},
        {"type": "confusion_matrix_metric", "metric_name": "cm", "value": [1, 2, 3, 4]},
        {
            "type": "confusion_matrix_metric",
            "metric_name": "cm2",
            "value": {"0.1": [1, 2, 3, 4], "0.9": [0, 0, 0, 1]},
        },
    ]


#: The ontology every :func:`every_type` prediction fits (Labelbox's ``normalized`` JSON).
ONTOLOGY_EVERY_TYPE_FILE = Path(__file__).parents[1] / "data" / "ontology_every_type.json"


def ontology_every_type() -> Json:
    """tests/data/ontology_every_type.json, parsed (a fresh copy: callers may change it)."""
    loaded: Json = orjson.loads(ONTOLOGY_EVERY_TYPE_FILE.read_bytes())
    return loaded


def misplaced_at_depth_2() -> Json:
    """A box whose ``sub`` answer ``s1`` holds ``box_flags``, a classification of the box itself: it
    does not fit :func:`ontology_every_type` (misplaced, two levels down)."""
    flags = {"type": "checklist", "name": "box_flags", "answers": [{"name": "occluded"}]}
    return bbox(
        classifications=[
            {"type": "radio", "name": "sub", "answer": {"name": "s1", "classifications": [flags]}}
        ]
    )
