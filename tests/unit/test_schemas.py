"""Every rule of contract v1: valid messages pass, each violation is rejected with its code and path."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from schemas import (
    MAX_PER_FEATURE,
    MESSAGE_ADAPTER,
    REASON_CODES,
    BBox,
    BBoxPrediction,
    DataRowRef,
    MaskPrediction,
    NdjsonMessage,
    PredictionMessage,
    mask_from_array,
)
from schemas.masks import mask_to_rle_counts, rle_counts_from_string, rle_to_mask
from tests.support.factories import bbox, every_type, message, png_b64, point, radio
from worker.convert import convert
from worker.decode import Rejection, decode
from worker.plain import PredictionMessage as PlainMessage

Json = dict[str, Any]


def _reject(payload: Json | bytes) -> Rejection:
    result = decode(payload if isinstance(payload, bytes) else orjson.dumps(payload))
    assert isinstance(result, Rejection), f"accepted: {result!r}"
    assert result.reason in REASON_CODES
    return result


def test_every_type_is_accepted() -> None:
    result = decode(orjson.dumps(message(*every_type())))
    assert isinstance(result, PlainMessage)  # the fast path's struct
    assert len(result.predictions) == len(every_type())


def _bomb_png() -> str:
    """A ~100-byte PNG whose header declares 100000 x 100000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    raw = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(raw).decode()


def _truncated_png() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 2, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()[:-40]).decode()


RGB = np.zeros((4, 4, 3), dtype=np.uint8)
MASK = {"type": "mask", "name": "m"}
CASES: list[tuple[str, Json, str, str]] = [
    (
        "negative width",
        message(bbox(bbox={"top": 0, "left": 0, "height": 1, "width": -1})),
        "out_of_range",
        "predictions.0.bbox.width",
    ),
    (
        "negative height",
        message(bbox(bbox={"top": 0, "left": 0, "height": -2, "width": 1})),
        "out_of_range",
        "predictions.0.bbox.height",
    ),
    (
        "polyline of 1 point",
        message({"type": "polyline", "name": "l", "line": [point()]}),
        "too_few_points",
        "predictions.0.line",
    ),
    (
        "polygon of 2 points",
        message({"type": "polygon", "name": "g", "polygon": [point(), point(2, 2)]}),
        "too_few_points",
        "predictions.0.polygon",
    ),
    ("confidence above 1", message(bbox(confidence=1.01)), "out_of_range", "predictions.0.confidence"),
    (
        "confidence below 0",
        message(radio(answer={"name": "a", "confidence": -0.1})),
        "out_of_range",
        "predictions.0.answer.confidence",
    ),
    ("unknown type", message({"type": "cuboid", "name": "c"}), "unknown_prediction_type", "predictions.0"),
    ("missing type", message({"name": "c"}), "missing_field", "predictions.0"),
    ("both name and schema_id", message(bbox(schema_id="ckabc")), "one_of_required", "predictions.0"),
    (
        "neither name nor schema_id",
        message({"type": "point", "point": point()}),
        "one_of_required",
        "predictions.0",
    ),
    (
        "answer with both name and schema_id",
        message(radio(answer={"name": "a", "schema_id": "x"})),
        "one_of_required",
        "predictions.0.answer",
    ),
    ("data row with both", message(data_row={"global_key": "a", "id": "b"}), "one_of_required", "data_row"),
    ("data row with neither", message(data_row={}), "one_of_required", "data_row"),
    (
        "one threshold",
        message({"type": "scalar_metric", "value": {"0.5": 1}}),
        "invalid_metric_thresholds",
        "predictions.0.value",
    ),
    (
        "16 thresholds",
        message(
            {
                "type": "confusion_matrix_metric",
                "metric_name": "cm",
                "value": {str(i / 20): [1, 1, 1, 1] for i in range(16)},
            }
        ),
        "invalid_metric_thresholds",
        "predictions.0.value",
    ),
    (
        "threshold above 1",
        message({"type": "scalar_metric", "value": {"0.5": 1, "1.5": 2}}),
        "out_of_range",
        "predictions.0.value",
    ),
    (
        "reserved metric name",
        message({"type": "scalar_metric", "metric_name": " IOU", "value": 0.5}),
        "reserved_metric_name",
        "predictions.0.metric_name",
    ),
    (
        "negative confusion count",
        message({"type": "confusion_matrix_metric", "metric_name": "c", "value": [1, -1, 0, 0]}),
        "out_of_range",
        "predictions.0.value",
    ),
    (
        "confusion of 3 counts",
        message({"type": "confusion_matrix_metric", "metric_name": "c", "value": [1, 1, 0]}),
        "missing_field",
        "predictions.0.value",
    ),
    (
        "png not base64",
        message({**MASK, "mask": {"png": "not base64!"}}),
        "invalid_base64",
        "predictions.0.mask",
    ),
    (
        "png not a png",
        message({**MASK, "mask": {"png": base64.b64encode(b"GIF89a" * 10).decode()}}),
        "invalid_png",
        "predictions.0.mask",
    ),
    (
        "png truncated",
        message({**MASK, "mask": {"png": _truncated_png()}}),
        "invalid_png",
        "predictions.0.mask",
    ),
    (
        "png RGB",
        message({**MASK, "mask": {"png": png_b64(RGB)}}),
        "mask_not_single_channel",
        "predictions.0.mask",
    ),
    (
        "png decompression bomb",
        message({**MASK, "mask": {"png": _bomb_png()}}),
        "mask_too_large",
        "predictions.0.mask",
    ),
    (
        "rle counts do not sum",
        message({**MASK, "mask": {"rle": {"size": [3, 3], "counts": [1, 2]}}}),
        "invalid_rle",
        "predictions.0.mask.rle",
    ),
    (
        "rle string does not sum",
        message({**MASK, "mask": {"rle": {"size": [30, 30], "counts": "0c0"}}}),
        "invalid_rle",
        "predictions.0.mask.rle",
    ),
    (
        "rle string bad alphabet",
        message({**MASK, "mask": {"rle": {"size": [3, 3], "counts": "~~~"}}}),
        "invalid_rle",
        "predictions.0.mask.rle",
    ),
    (
        "mask with no source",
        message({**MASK, "mask": {"colour": [1, 2, 3]}}),
        "invalid_mask_source",
        "predictions.0.mask",
    ),
    (
        "url mask colour out of range",
        message({**MASK, "mask": {"url": "https://x.invalid/m.png", "color": [0, 0, 256]}}),
        "out_of_range",
        "predictions.0.mask.color.2",
    ),
    ("unknown field", message(bbox(colour="red")), "unknown_field", "predictions.0.colour"),
    (
        "missing model run id",
        {k: v for k, v in message().items() if k != "model_run_id"},
        "missing_field",
        "model_run_id",
    ),
    ("null byte in a name", message(bbox(name="a\u0000b")), "invalid_string", "predictions.0.name"),
    (
        "million-character string",
        message(bbox(name="x" * 1_000_000)),
        "string_too_long",
        "predictions.0.name",
    ),
    ("bad uuid", message(bbox(uuid="not-a-uuid")), "invalid_uuid", "predictions.0.uuid"),
    (
        "duplicate uuid",
        message(
            bbox(uuid="3f1c2a9e-8d4b-4c6f-9a1e-2b7d5e8f0c11"),
            bbox(uuid="3f1c2a9e-8d4b-4c6f-9a1e-2b7d5e8f0c11"),
        ),
        "duplicate_uuid",
        "",
    ),
    (
        "wrong type",
        message(bbox(bbox={"top": "high", "left": 0, "height": 1, "width": 1})),
        "wrong_type",
        "predictions.0.bbox.top",
    ),
    ("empty predictions", message() | {"predictions": []}, "too_few_items", "predictions"),
    (
        "empty checklist",
        message({"type": "checklist", "name": "c", "answers": []}),
        "too_few_items",
        "predictions.0.answers",
    ),
    ("neither format", {"model_run_id": "m", "data_row": {"id": "x"}}, "unknown_payload_format", ""),
    (
        "nested classification bad",
        message(bbox(classifications=[{"type": "radio", "name": "s", "answer": {}}])),
        "one_of_required",
        "predictions.0.classifications.0.answer",
    ),
    (
        "ndjson line without payload",
        {"model_run_id": "m", "ndjson": [{"dataRow": {"id": "x"}, "name": "n"}]},
        "unknown_prediction_type",
        "ndjson.0",
    ),
    (
        "ndjson line without dataRow",
        {"model_run_id": "m", "ndjson": [{"name": "n", "point": point()}]},
        "missing_field",
        "ndjson.0.dataRow",
    ),
]


@pytest.mark.parametrize(("payload", "reason", "path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_rejects_with_reason_and_path(payload: Json, reason: str, path: str) -> None:
    rejection = _reject(payload)
    assert rejection.reason == reason, rejection.errors
    assert rejection.errors[0].startswith(path), rejection.errors


# --- the NDJSON format: name, schemaId or both; other media ------------------------------------------

ROW = {"globalKey": "img-1.jpg"}
REFS: dict[str, Json] = {
    "name": {"name": "f"},
    "schemaId": {"schemaId": "ckrb1sfkn099c0y910wbo0p1a"},
    "both": {"name": "f", "schemaId": "ckrb1sfkn099c0y910wbo0p1a"},
    "neither": {},
}


def nd_message(*lines: Json) -> Json:
    return {"model_run_id": "mr-1", "ndjson": list(lines)}


def under_answers(depth: int, leaf: Json) -> Json:
    """A radio line whose answer nests radios ``depth`` levels deep, the innermost classification ``leaf``."""
    node = leaf
    for level in range(depth, 0, -1):
        node = {"name": f"q{level}", "answer": {"name": f"a{level}", "classifications": [node]}}
    return {"dataRow": ROW, **node}


def nd_places(ref: Json) -> dict[str, tuple[Json, str]]:
    """A line with ``ref`` at one place (everything else named): (line, path of that place)."""
    box = {"dataRow": ROW, "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}
    deep = "ndjson.0" + ".answer.classifications.0" * 3
    return {
        "object line": ({**box, **ref}, "ndjson.0"),
        "classification line": ({"dataRow": ROW, **ref, "answer": "x"}, "ndjson.0"),
        "radio answer": ({"dataRow": ROW, "name": "q", "answer": ref}, "ndjson.0.answer"),
        "checklist answer": (
            {"dataRow": ROW, "name": "q", "answer": [{"name": "a"}, ref]},
            "ndjson.0.answer.1",
        ),
        "object classification": (
            {**box, "name": "b", "classifications": [{**ref, "answer": "x"}]},
            "ndjson.0.classifications.0",
        ),
        "depth 3 under answers": (under_answers(3, {**ref, "answer": "x"}), deep),
        "depth 3 answer": (under_answers(3, {"name": "c", "answer": [ref]}), f"{deep}.answer.0"),
    }


@pytest.mark.parametrize("ref", ["name", "schemaId", "both"])
@pytest.mark.parametrize("place", list(nd_places({})))
def test_ndjson_takes_name_schema_id_or_both_anywhere_and_passes_them_on(ref: str, place: str) -> None:
    line, _ = nd_places(REFS[ref])[place]
    result = decode(orjson.dumps(nd_message(line)))
    assert isinstance(result, NdjsonMessage), result
    (out,) = convert(result)
    assert {k: v for k, v in out.body.items() if k != "uuid"} == line


@pytest.mark.parametrize("place", list(nd_places({})))
def test_ndjson_needs_name_or_schema_id_anywhere(place: str) -> None:
    line, path = nd_places(REFS["neither"])[place]
    rejection = _reject(nd_message(line))
    assert rejection.reason == "one_of_required", rejection.errors
    assert rejection.errors[0] == f"{path}: at least one of 'name' or 'schemaId' is required (neither given)"


def test_typed_format_keeps_exactly_one_reference() -> None:
    for payload in (message(bbox(schema_id="ckabc")), message(radio(answer={"name": "a", "schema_id": "x"}))):
        assert "(both given)" in _reject(payload).errors[0]


def test_snake_case_hint_is_for_ndjson_lines_only() -> None:
    typed = _reject(message(radio(custom_metrics=[])))
    assert typed.errors == ["predictions.0.custom_metrics: Extra inputs are not permitted"]
    line = {"dataRow": ROW, "name": "q", "answer": "x", "custom_metrics": []}
    ndjson = _reject(nd_message(line))
    assert ndjson.reason == "unknown_field"
    assert ndjson.errors[0].endswith("where Labelbox's SDK writes it, and not together with 'customMetrics')")


OTHER_MEDIA: list[tuple[str, Json]] = [
    ("frames", {"name": "q", "answer": {"name": "a"}, "frames": [{"start": 1, "end": 5}]}),
    ("segments", {"name": "b", "segments": [{"keyframes": [{"frame": 1, "bbox": {}}]}]}),
    ("keyframe", {"name": "b", "keyframe": True, "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}}),
    ("location", {"name": "ner", "location": {"start": 0, "end": 4}}),
    ("messageId", {"name": "ner", "location": {"start": 0, "end": 4}, "messageId": "m-1"}),
    ("textSelections", {"name": "ner", "textSelections": [{"tokenIds": ["t"], "groupId": "g", "page": 1}]}),
    (
        "page",
        {"name": "b", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}, "page": 1, "unit": "POINTS"},
    ),
    ("unit", {"name": "b", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}, "unit": "PERCENT"}),
]


@pytest.mark.parametrize(("key", "line"), OTHER_MEDIA, ids=[key for key, _ in OTHER_MEDIA])
def test_ndjson_line_of_another_media_is_unsupported_media(key: str, line: Json) -> None:
    good = {"dataRow": ROW, "name": "b", "point": point()}
    rejection = _reject(nd_message(good, {"dataRow": ROW, **line}))
    assert rejection.reason == "unsupported_media", rejection.errors
    assert rejection.errors[0].startswith(f"ndjson.1: '{key}' belongs to ")
    assert rejection.errors[0].endswith("annotations; this worker takes image data rows only")


def test_more_than_5000_per_feature_is_rejected() -> None:
    predictions = [{"type": "point", "name": "p", "point": point(i, i)} for i in range(MAX_PER_FEATURE + 1)]
    rejection = _reject(message(*predictions))
    assert rejection.reason == "too_many_predictions"
    assert "'p'" in rejection.errors[0]


def test_5000_per_feature_is_accepted_and_other_features_do_not_count() -> None:
    predictions = [{"type": "point", "name": "p", "point": point(i, i)} for i in range(MAX_PER_FEATURE)]
    predictions.append({"type": "point", "name": "q", "point": point()})
    assert isinstance(decode(orjson.dumps(message(*predictions))), PlainMessage)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b"null", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"a":' * 500 + b"1" + b"}" * 500, "nesting_too_deep"),
        (orjson.dumps(message(bbox(confidence=0.123))).replace(b"0.123", b"NaN"), "non_finite_number"),
        (orjson.dumps(message(bbox(confidence=0.123))).replace(b"0.123", b"Infinity"), "non_finite_number"),
        (orjson.dumps(message(bbox(confidence=0.123))).replace(b"0.123", b"-Infinity"), "non_finite_number"),
        (b"", "empty_message"),
    ],
)
def test_undecodable_bytes(raw: bytes, reason: str) -> None:
    assert _reject(raw).reason == reason


def test_too_large_is_rejected_before_parsing() -> None:
    result = decode(b"{" + b" " * 100 + b"}", max_bytes=50)
    assert isinstance(result, Rejection)
    assert result.reason == "message_too_large"


def test_rejection_carries_model_run_and_message_id() -> None:
    rejection = _reject(message(bbox(confidence=2), message_id="producer-7"))
    assert (rejection.model_run_id, rejection.message_id) == ("mr-1", "producer-7")


# --- producer helpers ---------------------------------------------------------------------------


def test_mask_from_bool_and_int_arrays() -> None:
    array = np.zeros((5, 7), dtype=np.int32)
    array[1:3, 2:6] = 42
    for source in (array, array.astype(bool)):
        mask = mask_from_array(source)
        np.testing.assert_array_equal(mask.inside(), array != 0)


def test_mask_from_rgb_array_selects_one_colour() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[0, :] = (255, 0, 0)
    image[1, :] = (0, 255, 0)
    mask = mask_from_array(image, color=(0, 255, 0))
    assert mask.inside().sum() == 4
    assert mask.inside()[1].all()


def test_mask_from_array_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_from_array(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="H x W x 3"):
        mask_from_array(np.zeros((2, 2)), color=(1, 2, 3))


def test_bbox_from_corners_in_any_order() -> None:
    assert BBox.from_corners(10, 20, 4, 2) == BBox(top=2, left=4, height=18, width=6)


def test_to_kafka_round_trips() -> None:
    original = PredictionMessage(
        model_run_id="mr-9",
        data_row=DataRowRef(id="dr-1"),
        predictions=[
            BBoxPrediction(type="bbox", name="car", bbox=BBox.from_corners(0, 0, 5, 5)),
            MaskPrediction(type="mask", name="m", mask=mask_from_array(np.eye(3, dtype=bool))),
        ],
    )
    key, value = original.to_kafka()
    assert key == b"mr-9"
    assert MESSAGE_ADAPTER.validate_json(value) == original
    decoded = decode(value)  # the fast path's struct: the same lines as the model
    assert isinstance(decoded, PlainMessage)
    assert [line.data for line in convert(decoded)] == [line.data for line in convert(original)]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_rle_string_and_list_decode_to_the_same_mask() -> None:
    from pycocotools import mask as coco

    rng = np.random.default_rng(7)
    for _ in range(20):
        inside = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < 0.3
        encoded = coco.encode(np.asfortranarray(inside.astype(np.uint8)))
        counts = rle_counts_from_string(encoded["counts"].decode())
        assert counts == mask_to_rle_counts(inside)
        np.testing.assert_array_equal(rle_to_mask(*inside.shape, counts), inside)
        np.testing.assert_array_equal(coco.decode(encoded).astype(bool), inside)
