"""A realistic, deterministic corpus of typed prediction messages (as JSON dicts and Kafka bytes).

Each message is one image's predictions from a detector + classifier: 3-8 boxes with nested
classifications (depth 1-2), 1-2 polygons, a few points, maybe a polyline, image-level radio /
checklist / text questions, metrics on ~30% of messages and, when ``masks`` is on, one 64x64 mask
(inline PNG or COCO RLE string) on ~5% of messages. Confidences are never 0.0 and nested questions
carry theirs on the answers only: the SDK 7.17.0 drops both, and the benchmark compares like with like.

``build_mask_heavy`` is the second corpus of issue 15: the same messages with nested classifications
to depth 3, and 3 of 8 objects masks. Of the masks, 50 % small (8-64 px a side), 35 % medium
(128-512), 15 % large (1024 x 1024); 40 % inline PNG, 40 % COCO RLE (half compressed strings, half
count lists), 20 % URL + colour.
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


def build_mask_heavy(messages: int, runs: int, seed: int = 17) -> Corpus:
    """The mask-heavy corpus (module docstring): ``messages`` messages round-robin over ``runs`` runs."""
    rng = random.Random(seed)
    run_ids = model_run_ids(runs)
    dicts = [_mask_heavy_message(rng, run_ids[i % runs], i) for i in range(messages)]
    return Corpus(dicts, [orjson.dumps(d) for d in dicts], [d["model_run_id"].encode() for d in dicts])


def mask_kinds(corpus: Corpus) -> dict[str, int]:
    """How many masks of each source (``png``, ``rle-string``, ``rle-list``, ``url``) the corpus holds."""
    kinds: dict[str, int] = {}
    for message in corpus.dicts:
        for prediction in message["predictions"]:
            if prediction["type"] == "mask":
                kind = mask_kind(prediction["mask"])
                kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def mask_kind(source: Json) -> str:
    """``png``, ``rle-string``, ``rle-list`` or ``url``."""
    if "rle" in source:
        return "rle-string" if isinstance(source["rle"]["counts"], str) else "rle-list"
    return "png" if "png" in source else "url"


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


def _mask_heavy_message(rng: random.Random, run_id: str, index: int) -> Json:
    objects = [_bbox(rng, depth=3) for _ in range(rng.randint(3, 8))]
    objects += [_polygon(rng) for _ in range(rng.randint(1, 2))]
    objects += [_point(rng) for _ in range(rng.randint(0, 3))]
    objects += [_polyline(rng) for _ in range(rng.randint(0, 1))]
    # 3 of 8 objects masks: 3/5 of a mask per other object, the fraction rounded at random.
    share = 3 * len(objects) / 5
    masks = int(share) + (rng.random() < share - int(share))
    predictions = objects + [_heavy_mask(rng) for _ in range(masks)] + _image_questions(rng)
    if rng.random() < 0.3:
        predictions += _metrics(rng)
    return {
        "model_run_id": run_id,
        "data_row": {"global_key": f"heavy-{index:07d}.jpg"},
        "message_id": f"bench-heavy-{index}",
        "predictions": predictions,
    }


def _heavy_mask(rng: random.Random) -> Json:
    prediction: Json = {"type": "mask", "name": "segment", "confidence": _confidence(rng)}
    if rng.random() < 0.5:
        prediction["classifications"] = [_radio(rng, "material", ("metal", "glass", "fabric"), depth=3)]
    kind = rng.random()
    if kind < 0.2:
        color = [rng.randint(0, 255) for _ in range(3)]
        prediction["mask"] = {
            "url": f"https://masks.example.invalid/{rng.getrandbits(64):016x}.png",
            "color": color,
        }
        return prediction
    size = rng.random()
    if size < 0.5:
        height, width = rng.randint(8, 64), rng.randint(8, 64)
    elif size < 0.85:
        height, width = rng.randint(128, 512), rng.randint(128, 512)
    else:
        height, width = 1024, 1024
    inside = _ellipse(rng, height, width)
    if kind < 0.6:
        prediction["mask"] = {"png": png_b64(inside)}
    else:
        encoded = coco_mask.encode(np.asfortranarray(inside))
        counts: str | list[int] = encoded["counts"].decode()
        if kind >= 0.8:
            counts = rle_counts(inside)
        prediction["mask"] = {"rle": {"size": [height, width], "counts": counts}}
    return prediction


def rle_counts(inside: np.ndarray[Any, Any]) -> list[int]:
    """COCO uncompressed counts of a 0/1 mask: column-major runs, background first."""
    flat = inside.T.reshape(-1).astype(bool)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


def _ellipse(rng: random.Random, height: int, width: int) -> np.ndarray[Any, Any]:
    """A filled ellipse somewhere in a ``height x width`` 0/1 mask."""
    rows, cols = np.ogrid[0:height, 0:width]
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    ry, rx = rng.uniform(0.1, 0.45) * height, rng.uniform(0.1, 0.45) * width
    inside: np.ndarray[Any, Any] = (((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0).astype(np.uint8)
    return inside


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


def _nested(rng: random.Random, depth: int = 2) -> list[Json]:
    nested = [_radio(rng, "color", _COLORS, depth=depth)]
    if rng.random() < 0.4:
        nested.append(_checklist(rng, "attributes", ("moving", "parked", "reflective", "damaged")))
    return nested


def _bbox(rng: random.Random, depth: int = 2) -> Json:
    box = {
        "top": _coordinate(rng),
        "left": _coordinate(rng),
        "height": round(rng.uniform(5, 600), 1),
        "width": round(rng.uniform(5, 600), 1),
    }
    prediction: Json = {"type": "bbox", "name": rng.choice(_CLASSES), "confidence": _confidence(rng)}
    prediction |= {"bbox": box, "classifications": _nested(rng, depth)}
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
