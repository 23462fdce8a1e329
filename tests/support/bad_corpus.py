"""The bad-input corpus: malformed messages, each with the reason code it must be rejected with.

Shared by ``tests/reliability/test_bad_input.py`` (each is rejected with its reason; the whole corpus
streams through a real worker) and ``tests/unit/test_fast_path.py`` (the fast path never accepts one).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from PIL import Image

from tests.support.factories import bbox, message, png_b64, radio

Json = dict[str, Any]
MESSAGE_MAX_BYTES = 16 * 1024 * 1024  # the worker's default MESSAGE_MAX_BYTES
MILLION = 1_000_000


# --- the corpus ------------------------------------------------------------------------------------


def js(value: Any) -> bytes:
    return orjson.dumps(value)


def typed(*predictions: Json, **extra: Any) -> bytes:
    """A typed message around ``predictions`` (otherwise valid)."""
    return js(message(*predictions, **extra))


def mask(source: Json) -> bytes:
    return typed({"type": "mask", "name": "m", "mask": source})


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> str:
    """A ~60-byte PNG that declares a width x height 8-bit grayscale image (10 gigapixels by default)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # the start of the first scanline; the rest is never there
    png = (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


def truncated_png() -> str:
    """A real single-channel PNG cut in the middle of its image data."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 2, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    return base64.b64encode(data[: len(data) - 40]).decode()


def text(answer: str) -> Json:
    return {"type": "text", "name": "caption", "answer": answer}


def nested_radio(depth: int, leaf: Json) -> Json:
    """A radio question whose answer nests ``depth`` radios, the innermost classification ``leaf``."""
    node: Json = leaf
    for level in range(depth):
        node = {"type": "radio", "name": f"q{level}", "answer": {"name": "a", "classifications": [node]}}
    return node


def nd_line(**changes: Any) -> Json:
    line = {
        "name": "box",
        "dataRow": {"globalKey": "img-1.jpg"},
        "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
    }
    line.update(changes)
    return {key: value for key, value in line.items() if value is not None}


def deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@dataclass(frozen=True)
class Bad:
    """One malformed record: its value (built on demand: some are large) and the reason it must get."""

    name: str
    build: Callable[[], bytes | None]
    reason: str


CORPUS: list[Bad] = [
    # the record and its encoding
    Bad("tombstone", lambda: None, "empty_message"),
    Bad("empty-value", lambda: b"", "empty_message"),
    Bad("invalid-utf8", lambda: b"\xff\xfe\xfd binary", "invalid_utf8"),
    Bad(
        "invalid-utf8-in-string",
        lambda: typed(bbox(name="car")).replace(b"car", b"c\xc3\x28r"),
        "invalid_utf8",
    ),
    Bad("utf8-bom", lambda: b"\xef\xbb\xbf" + typed(), "invalid_json"),
    Bad("not-json", lambda: b"model_run_id=mr-1, predictions=[]", "invalid_json"),
    Bad("truncated-json", lambda: typed()[:-7], "invalid_json"),
    Bad("trailing-garbage", lambda: typed() + b" }{", "invalid_json"),
    Bad("whitespace-only", lambda: b" \n\t ", "invalid_json"),
    Bad(
        "raw-null-byte-in-string", lambda: typed(bbox(name="car")).replace(b"car", b"c\x00r"), "invalid_json"
    ),
    Bad("lone-surrogate-escape", lambda: typed(bbox(name="car")).replace(b"car", b"\\ud800"), "invalid_json"),
    Bad("json-array", lambda: js([message()]), "not_an_object"),
    Bad("json-string", lambda: b'"a prediction"', "not_an_object"),
    Bad("json-number", lambda: b"42", "not_an_object"),
    Bad("json-null", lambda: b"null", "not_an_object"),
    Bad("nan-literal", lambda: typed(bbox(confidence=0.5)).replace(b"0.5", b"NaN"), "non_finite_number"),
    Bad(
        "infinity-literal", lambda: typed(bbox()).replace(b'"top":1', b'"top":Infinity'), "non_finite_number"
    ),
    Bad(
        "minus-infinity-literal",
        lambda: typed({"type": "point", "name": "p", "point": {"x": 1, "y": 2}}).replace(
            b'"y":2', b'"y":-Infinity'
        ),
        "non_finite_number",
    ),
    Bad(
        "nan-in-custom-metric",
        lambda: typed(bbox(custom_metrics=[{"name": "m", "value": 0.5}])).replace(b"0.5", b"NaN"),
        "non_finite_number",
    ),
    Bad("recursion-bomb-object", lambda: deep_object(100_000), "nesting_too_deep"),
    Bad("recursion-bomb-array", lambda: b"[" * 100_000, "nesting_too_deep"),
    Bad(
        "recursion-bomb-in-predictions",
        lambda: typed().replace(b'"predictions":[', b'"predictions":[' + b"[" * 5000, 1) + b"]" * 5000,
        "nesting_too_deep",
    ),
    Bad("fifty-megabytes", lambda: typed(text("x" * 50_000_000)), "message_too_large"),
    # the envelope
    Bad(
        "missing-model-run-id",
        lambda: js({k: v for k, v in message().items() if k != "model_run_id"}),
        "missing_field",
    ),
    Bad("model-run-id-number", lambda: typed(model_run_id=12345), "wrong_type"),
    Bad("model-run-id-empty", lambda: typed(model_run_id=""), "empty_string"),
    Bad("model-run-id-million-chars", lambda: typed(model_run_id="r" * MILLION), "string_too_long"),
    Bad("model-run-id-null-byte", lambda: typed(model_run_id="mr\x00-1"), "invalid_string"),
    Bad("global-key-million-chars", lambda: typed(data_row={"global_key": "k" * MILLION}), "string_too_long"),
    Bad("data-row-both-refs", lambda: typed(data_row={"global_key": "a", "id": "b"}), "one_of_required"),
    Bad("data-row-no-ref", lambda: typed(data_row={}), "one_of_required"),
    Bad("data-row-string", lambda: typed(data_row="img-1.jpg"), "wrong_type"),
    Bad(
        "no-payload", lambda: js({"model_run_id": "mr-1", "data_row": {"id": "d"}}), "unknown_payload_format"
    ),
    Bad("both-payloads", lambda: typed(ndjson=[nd_line()]), "unknown_payload_format"),
    Bad("unknown-top-level-field", lambda: typed(priority="high"), "unknown_field"),
    Bad("predictions-empty", lambda: js({**message(), "predictions": []}), "too_few_items"),
    Bad("predictions-object", lambda: js({**message(), "predictions": {"type": "bbox"}}), "wrong_type"),
    # predictions
    Bad("prediction-number", lambda: js({**message(), "predictions": [7]}), "wrong_type"),
    Bad(
        "prediction-without-type",
        lambda: typed({"name": "box", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}),
        "missing_field",
    ),
    Bad(
        "prediction-unknown-type", lambda: typed({"type": "hexagon", "name": "h"}), "unknown_prediction_type"
    ),
    Bad("prediction-unknown-field", lambda: typed(bbox(colour="red")), "unknown_field"),
    Bad("confidence-above-one", lambda: typed(bbox(confidence=1.5)), "out_of_range"),
    Bad("confidence-string", lambda: typed(bbox(confidence="high")), "wrong_type"),
    Bad(
        "bbox-negative-width",
        lambda: typed(bbox(bbox={"top": 1, "left": 2, "height": 3, "width": -4})),
        "out_of_range",
    ),
    Bad(
        "bbox-coordinate-word",
        lambda: typed(bbox(bbox={"top": "top", "left": 2, "height": 3, "width": 4})),
        "wrong_type",
    ),
    Bad("bbox-as-list", lambda: typed(bbox(bbox=[1, 2, 3, 4])), "wrong_type"),
    Bad(
        "polyline-one-point",
        lambda: typed({"type": "polyline", "name": "l", "line": [{"x": 1, "y": 2}]}),
        "too_few_points",
    ),
    Bad(
        "polygon-two-points",
        lambda: typed({"type": "polygon", "name": "p", "polygon": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}),
        "too_few_points",
    ),
    Bad("text-answer-million-chars", lambda: typed(text("t" * MILLION)), "string_too_long"),
    Bad("text-answer-null-byte", lambda: typed(text("nul\x00here")), "invalid_string"),
    Bad("name-null-byte", lambda: typed(bbox(name="car\x00")), "invalid_string"),
    Bad("name-newline", lambda: typed(bbox(name="car\nbus")), "invalid_string"),
    Bad("name-2000-chars", lambda: typed(bbox(name="n" * 2000)), "string_too_long"),
    Bad("radio-answer-no-ref", lambda: typed(radio(answer={"confidence": 0.5})), "one_of_required"),
    Bad(
        "checklist-no-answers",
        lambda: typed({"type": "checklist", "name": "c", "answers": []}),
        "too_few_items",
    ),
    Bad(
        "deep-classification-bad-leaf", lambda: typed(nested_radio(20, text("bad\x01leaf"))), "invalid_string"
    ),
    Bad("uuid-not-a-uuid", lambda: typed(bbox(uuid="not-a-uuid")), "invalid_uuid"),
    Bad(
        "uuid-twice",
        lambda: typed(
            bbox(uuid="5b3b1a2e-1c1d-4f3e-9a7b-2c4d5e6f7a8b"),
            radio(uuid="5b3b1a2e-1c1d-4f3e-9a7b-2c4d5e6f7a8b"),
        ),
        "duplicate_uuid",
    ),
    Bad("too-many-per-feature", lambda: typed(*[bbox()] * 5001), "too_many_predictions"),
    # masks
    Bad("mask-base64-garbage", lambda: mask({"png": "!!not*base64??"}), "invalid_base64"),
    Bad(
        "mask-base64-not-png",
        lambda: mask({"png": base64.b64encode(b"GIF89a" + b"\x00" * 40).decode()}),
        "invalid_png",
    ),
    Bad("mask-png-decompression-bomb", lambda: mask({"png": png_bomb()}), "mask_too_large"),
    Bad("mask-png-truncated", lambda: mask({"png": truncated_png()}), "invalid_png"),
    Bad(
        "mask-png-rgb",
        lambda: mask({"png": png_b64(np.zeros((4, 4, 3), dtype=np.uint8))}),
        "mask_not_single_channel",
    ),
    Bad("mask-no-source", lambda: mask({}), "invalid_mask_source"),
    Bad(
        "mask-url-not-http", lambda: mask({"url": "file:///etc/passwd", "color": [1, 2, 3]}), "invalid_string"
    ),
    Bad(
        "mask-colour-out-of-range",
        lambda: mask({"url": "https://x.invalid/m.png", "color": [256, 0, 0]}),
        "out_of_range",
    ),
    Bad("rle-counts-do-not-sum", lambda: mask({"rle": {"size": [3, 3], "counts": [1, 2]}}), "invalid_rle"),
    Bad("rle-string-bad-alphabet", lambda: mask({"rle": {"size": [3, 3], "counts": "~~ ~~"}}), "invalid_rle"),
    Bad(
        "rle-huge-size-matching-counts",
        lambda: mask({"rle": {"size": [100_000, 100_000], "counts": [10**10]}}),
        "mask_too_large",
    ),
    Bad("rle-zero-size", lambda: mask({"rle": {"size": [0, 5], "counts": [0]}}), "out_of_range"),
    Bad("rle-negative-count", lambda: mask({"rle": {"size": [2, 2], "counts": [5, -1]}}), "out_of_range"),
    # metrics
    Bad(
        "metric-reserved-name",
        lambda: typed({"type": "scalar_metric", "metric_name": "IoU", "value": 0.5}),
        "reserved_metric_name",
    ),
    Bad(
        "metric-one-threshold",
        lambda: typed({"type": "scalar_metric", "value": {"0.5": 0.1}}),
        "invalid_metric_thresholds",
    ),
    Bad(
        "metric-sixteen-thresholds",
        lambda: typed({"type": "scalar_metric", "value": {f"0.{i:02d}": 0.1 for i in range(16)}}),
        "invalid_metric_thresholds",
    ),
    Bad(
        "confusion-negative",
        lambda: typed({"type": "confusion_matrix_metric", "metric_name": "cm", "value": [1, -2, 3, 4]}),
        "out_of_range",
    ),
    # the NDJSON format
    Bad("ndjson-empty", lambda: js({"model_run_id": "mr-1", "ndjson": []}), "too_few_items"),
    Bad(
        "ndjson-line-without-data-row",
        lambda: js({"model_run_id": "mr-1", "ndjson": [nd_line(dataRow=None)]}),
        "missing_field",
    ),
    Bad("ndjson-line-not-object", lambda: js({"model_run_id": "mr-1", "ndjson": ["a line"]}), "wrong_type"),
    Bad(
        "ndjson-snake-case-key",
        lambda: js({"model_run_id": "mr-1", "ndjson": [nd_line(data_row={"id": "x"})]}),
        "unknown_field",
    ),
]
