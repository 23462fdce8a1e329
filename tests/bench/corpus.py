"""A realistic, deterministic corpus of typed prediction messages (as JSON dicts and Kafka bytes).

Each message is one image's predictions from a detector + classifier: 3-8 boxes with nested
classifications (depth 1-2), 1-2 polygons, a few points, maybe a polyline, image-level radio /
checklist / text questions, metrics on ~30% of messages and, when ``masks`` is on, one 64x64 mask
(inline PNG or COCO RLE string) on ~5% of messages. Confidences are never 0.0 and nested questions
carry theirs on the answers only: the SDK 7.17.0 drops both, and the benchmark compares like with like.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pycocotools import mask as coco_mask

from tests.support.factories import png_b64

Json = dict[str, Any]
MASK_SIDE = 64
_CLASSES = ("car", "person", "bicycle", "truck")
_COLORS = ("red", "green", "blue", "black", "white")


@dataclass(frozen=True, slots=True)
class Corpus:
    """Messages as parsed JSON and as the bytes a producer sends; ``predictions`` in total."""

    dicts: list[Json]
    values: list[bytes]
    keys: list[bytes]

    @property
    def predictions(self) -> int:
        return sum(len(m["predictions"]) for m in self.dicts)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.values)

    def head(self, count: int) -> Corpus:
        """The first ``count`` messages."""
        return Corpus(self.dicts[:count], self.values[:count], self.keys[:count])


def model_run_ids(count: int) -> list[str]:
    """Cuid-like model run ids."""
    return [f"clbenchrun{index:015d}" for index in range(count)]


def build(messages: int, runs: int, *, masks: bool, seed: int = 7) -> Corpus:
    """``messages`` messages spread round-robin over ``runs`` model runs."""
    rng = random.Random(seed)
    run_ids = model_run_ids(runs)
    dicts = [_message(rng, run_ids[i % runs], i, masks) for i in range(messages)]
    return Corpus(dicts, [orjson.dumps(d) for d in dicts], [d["model_run_id"].encode() for d in dicts])


def replicate(pool: Corpus, count: int, tag: str) -> Corpus:
    """``count`` messages cycling over ``pool``, each on its own data row (so uuids stay unique)."""
    dicts = []
    for index in range(count):
        source = pool.dicts[index % len(pool.dicts)]
        dicts.append({**source, "data_row": {"global_key": f"{tag}-{index:07d}.jpg"}})
    return Corpus(dicts, [orjson.dumps(d) for d in dicts], [d["model_run_id"].encode() for d in dicts])


# --- one message ------------------------------------------------------------------------------------


def _message(rng: random.Random, run_id: str, index: int, masks: bool) -> Json:
    predictions = [_bbox(rng) for _ in range(rng.randint(3, 8))]
    predictions += [_polygon(rng) for _ in range(rng.randint(1, 2))]
    predictions += [_point(rng) for _ in range(rng.randint(0, 3))]
    predictions += [_polyline(rng) for _ in range(rng.randint(0, 1))]
    predictions += _image_questions(rng)
    if rng.random() < 0.3:
        predictions += _metrics(rng)
    if masks and rng.random() < 0.05:
        predictions.append(_mask(rng))
    return {
        "model_run_id": run_id,
        "data_row": {"global_key": f"img-{index:07d}.jpg"},
        "message_id": f"bench-{index}",
        "predictions": predictions,
    }


def _confidence(rng: random.Random) -> float:
    return round(rng.uniform(0.05, 1.0), 4)


def _coordinate(rng: random.Random) -> float:
    return round(rng.uniform(0.0, 4000.0), 1)


def _xy(rng: random.Random) -> Json:
    return {"x": _coordinate(rng), "y": _coordinate(rng)}


def _answer(rng: random.Random, name: str, depth: int) -> Json:
    answer: Json = {"name": name, "confidence": _confidence(rng)}
    if depth > 1 and rng.random() < 0.5:
        answer["classifications"] = [_radio(rng, "occlusion", ("none", "partial", "heavy"), depth - 1)]
    return answer


def _radio(rng: random.Random, name: str, options: tuple[str, ...], depth: int) -> Json:
    """A nested radio: confidences on its answers only (the SDK drops a nested question's own)."""
    return {"type": "radio", "name": name, "answer": _answer(rng, rng.choice(options), depth)}


def _checklist(rng: random.Random, name: str, options: tuple[str, ...]) -> Json:
    chosen = rng.sample(options, rng.randint(1, min(3, len(options))))
    return {"type": "checklist", "name": name, "answers": [_answer(rng, o, 1) for o in chosen]}


def _nested(rng: random.Random) -> list[Json]:
    nested = [_radio(rng, "color", _COLORS, depth=2)]
    if rng.random() < 0.4:
        nested.append(_checklist(rng, "attributes", ("moving", "parked", "reflective", "damaged")))
    return nested


def _bbox(rng: random.Random) -> Json:
    box = {
        "top": _coordinate(rng),
        "left": _coordinate(rng),
        "height": round(rng.uniform(5, 600), 1),
        "width": round(rng.uniform(5, 600), 1),
    }
    prediction: Json = {"type": "bbox", "name": rng.choice(_CLASSES), "confidence": _confidence(rng)}
    prediction |= {"bbox": box, "classifications": _nested(rng)}
    if rng.random() < 0.2:
        prediction["custom_metrics"] = [{"name": "iou_to_gt", "value": _confidence(rng)}]
    return prediction


def _polygon(rng: random.Random) -> Json:
    points = [_xy(rng) for _ in range(rng.randint(8, 24))]
    prediction: Json = {"type": "polygon", "name": "road", "confidence": _confidence(rng), "polygon": points}
    if rng.random() < 0.5:
        prediction["classifications"] = [_radio(rng, "surface", ("asphalt", "gravel", "dirt"), depth=1)]
    return prediction


def _point(rng: random.Random) -> Json:
    return {"type": "point", "name": "keypoint", "confidence": _confidence(rng), "point": _xy(rng)}


def _polyline(rng: random.Random) -> Json:
    line = [_xy(rng) for _ in range(rng.randint(4, 12))]
    return {"type": "polyline", "name": "lane", "confidence": _confidence(rng), "line": line}


def _image_questions(rng: random.Random) -> list[Json]:
    questions = [
        {**_radio(rng, "weather", ("sunny", "rain", "fog", "snow"), depth=1), "confidence": _confidence(rng)},
        _checklist(rng, "tags", ("urban", "highway", "night", "tunnel", "crowded")),
    ]
    if rng.random() < 0.5:
        text = f"a {rng.choice(_COLORS)} {rng.choice(_CLASSES)} near the crossing"
        questions.append({"type": "text", "name": "caption", "answer": text, "confidence": _confidence(rng)})
    return questions


def _metrics(rng: random.Random) -> list[Json]:
    scalar = {
        "type": "scalar_metric",
        "metric_name": "map50",
        "value": _confidence(rng),
        "feature_name": "car",
    }
    thresholds = {"0.25": _confidence(rng), "0.5": _confidence(rng), "0.75": _confidence(rng)}
    by_threshold = {"type": "scalar_metric", "metric_name": "recall_at", "value": thresholds}
    matrix = [rng.randint(0, 50) for _ in range(4)]
    confusion = {
        "type": "confusion_matrix_metric",
        "metric_name": "cm",
        "value": matrix,
        "feature_name": "car",
    }
    return [scalar, by_threshold, confusion]


def _mask(rng: random.Random) -> Json:
    inside = _blob(rng)
    if rng.random() < 0.5:
        source: Json = {"png": png_b64(inside)}
    else:
        encoded = coco_mask.encode(np.asfortranarray(inside))
        source = {"rle": {"size": [MASK_SIDE, MASK_SIDE], "counts": encoded["counts"].decode()}}
    return {"type": "mask", "name": "segment", "confidence": _confidence(rng), "mask": source}


def _blob(rng: random.Random) -> np.ndarray[Any, Any]:
    """A filled ellipse, 0/1 valued, as a detector's mask head would give."""
    rows, cols = np.mgrid[0:MASK_SIDE, 0:MASK_SIDE]
    cy, cx = rng.uniform(16, 48), rng.uniform(16, 48)
    ry, rx = rng.uniform(6, 20), rng.uniform(6, 20)
    inside: np.ndarray[Any, Any] = (((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0).astype(np.uint8)
    return inside
