"""Mask codecs (schemas.masks): the numpy COCO decoder against pycocotools and the pure-Python decoder,
the zlib PNG encoder against Pillow, the 0/1 PNG pass-through, and uuids derived from pixels."""

from __future__ import annotations

import base64
import io
import uuid
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco
from pydantic import ValidationError

from schemas import MESSAGE_ADAPTER, PredictionMessage
from schemas.masks import (
    _RLE_NUMPY_MIN_CHARS,
    PngMask,
    Rle,
    RleMask,
    _rle_counts_python,
    encode_png01,
    mask_to_rle_counts,
    pixel_key,
    rle_counts_from_string,
    rle_to_mask,
)
from tests.support.factories import message, png_b64
from worker.convert import convert, derive_uuid, mask_uuid_content

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

RNG_SEED = 15


def _blobs(count: int) -> list[np.ndarray[Any, Any]]:
    """Random masks of many shapes: noise, ellipses, empty, full, one row, one column."""
    rng = np.random.default_rng(RNG_SEED)
    masks = [np.zeros((1, 1), bool), np.ones((1, 1), bool), np.ones((3, 70), bool), np.zeros((70, 1), bool)]
    for _ in range(count):
        height, width = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        if rng.random() < 0.5:
            masks.append(rng.random((height, width)) < rng.random())
        else:
            rows, cols = np.ogrid[0:height, 0:width]
            cy, cx, ry, rx = rng.random(4) * [height, width, height / 2 + 1, width / 2 + 1]
            masks.append(((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0)
    return masks


def _coco_string(inside: np.ndarray[Any, Any]) -> str:
    encoded: bytes = coco.encode(np.asfortranarray(inside.astype(np.uint8)))["counts"]
    return encoded.decode()


def _decode_or_error(decoder: Any, text: str) -> Any:
    try:
        return ("ok", np.asarray(decoder(text), dtype=object).tolist())
    except ValidationError as exc:  # pragma: no cover - the decoders raise PydanticCustomError
        return ("error", str(exc))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


def test_numpy_rle_decoder_matches_pycocotools_and_the_python_decoder() -> None:
    long_strings = 0
    for inside in _blobs(150):
        text = _coco_string(inside)
        long_strings += len(text) >= _RLE_NUMPY_MIN_CHARS
        counts = rle_counts_from_string(text)
        assert np.asarray(counts).tolist() == _rle_counts_python(text) == mask_to_rle_counts(inside)
        np.testing.assert_array_equal(rle_to_mask(*inside.shape, counts), inside)
        decoded = Rle(size=inside.shape, counts=text).inside()
        np.testing.assert_array_equal(decoded, coco.decode({"size": list(inside.shape), "counts": text}))
    assert long_strings > 50  # the numpy path was exercised, not only the short-string one


def test_large_masks_decode_like_pycocotools() -> None:
    # Heights that are multiples of 128, and huge masks, are transposed tile by tile: shapes that are
    # not multiples of the tile, and one that is not tiled (1000 x 333).
    rng = np.random.default_rng(RNG_SEED)
    for height, width in ((256, 256), (384, 700), (1000, 333), (1024, 1024), (128, 2049), (2100, 2100)):
        inside = rng.random((height, width)) < 0.5
        inside[: height // 2] = rng.random((1, width)) < 0.5  # long runs too
        text = _coco_string(inside)
        mask = Rle(size=(height, width), counts=text).inside()
        assert mask.flags.c_contiguous
        np.testing.assert_array_equal(mask, coco.decode({"size": [height, width], "counts": text}))
        np.testing.assert_array_equal(rle_to_mask(height, width, mask_to_rle_counts(inside)), inside)


def _mangled(rng: np.random.Generator, text: str) -> str:
    """A COCO string with one random defect (or none)."""
    chars = list(text)
    position = int(rng.integers(0, len(chars)))
    defect = int(rng.integers(0, 7))
    if defect == 0:
        chars[position] = chr(int(rng.integers(0, 48)))  # below the alphabet
    elif defect == 1:
        chars[position] = chr(int(rng.integers(112, 300)))  # above it, or not ASCII
    elif defect == 2:
        chars.append(chr(48 + 32 + int(rng.integers(0, 32))))  # ends inside a run
    elif defect == 3:
        chars.insert(position, chr(48 + 32) * int(rng.integers(5, 30)))  # an over-long run
    elif defect == 4:
        chars[position] = chr(48 + 16 + int(rng.integers(0, 16)))  # a negative delta
    elif defect == 5:
        chars[position] = chr(48 + int(rng.integers(0, 64)))  # any other digit
    return "".join(chars)


def test_numpy_rle_decoder_fails_and_succeeds_exactly_like_the_python_one() -> None:
    rng = np.random.default_rng(RNG_SEED)
    outcomes: set[str] = set()
    for inside in _blobs(300):
        text = _mangled(rng, _coco_string(inside))
        ours, python = (
            _decode_or_error(rle_counts_from_string, text),
            _decode_or_error(_rle_counts_python, text),
        )
        assert ours == python, text
        outcomes.add(ours[0] if ours[0] == "ok" else ours[2])
    assert {"ok", "RLE string decodes to a negative run length"} <= outcomes
    assert "RLE string has a character outside the COCO alphabet" in outcomes
    assert "RLE string ends inside a run length" in outcomes


def test_an_rle_sum_check_reports_the_exact_total_even_for_huge_runs() -> None:
    # A 12-character run is 60 bits: far past any mask; the sum in the error is the exact integer.
    huge = chr(48 + 31 + 32) * 11 + chr(48 + 15)
    text = "0" * _RLE_NUMPY_MIN_CHARS + huge
    with pytest.raises(ValidationError) as raised:
        Rle(size=(2, 2), counts=text)
    expected = sum(_rle_counts_python(text))
    assert expected > 2**50
    assert f"RLE counts sum to {expected}," in str(raised.value)


def _png_pixels(data: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        assert (image.mode, image.info.get("interlace", 0)) == ("L", 0)
        return np.asarray(image)


def test_the_zlib_encoder_writes_8_bit_grey_0_1_pngs_pillow_reads_back() -> None:
    for inside in _blobs(40):
        for source in (inside, inside.astype(np.uint8) * 255, inside.astype(np.uint16) * 300):
            data = encode_png01(source)
            pixels = _png_pixels(data)
            assert pixels.dtype == np.uint8
            np.testing.assert_array_equal(pixels, inside.astype(np.uint8))
            assert data[24:26] == b"\x08\x00"  # bit depth 8, grey


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_8_bit_grey_0_1_png_passes_through_and_any_other_is_re_encoded() -> None:
    inside = np.zeros((9, 13), bool)
    inside[2:6, 3:11] = True
    as_01 = png_b64(inside.astype(np.uint8))
    assert PngMask(png=as_01).png01_base64() == as_01
    others = [
        png_b64(inside.astype(np.uint8) * 255),
        png_b64(inside),  # 1-bit
        png_b64(inside.astype(np.uint16)),  # 16-bit, values 0/1
        _b64(_four_bit_grey(inside)),  # 4-bit grey: Pillow opens it as "L" too
    ]
    for other in others:
        mask = PngMask(png=other)
        out = mask.png01_base64()
        assert out != other
        np.testing.assert_array_equal(_png_pixels(base64.b64decode(out)), inside.astype(np.uint8))
        assert mask.pixel_key() == PngMask(png=as_01).pixel_key()
    # Pillow scales 4-bit grey to 8 bits, so only an empty one looks 0/1: it is re-encoded all the same.
    empty = _b64(_four_bit_grey(np.zeros((3, 5), bool)))
    assert PngMask(png=empty).png01_base64() != empty


def _four_bit_grey(inside: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(inside.astype(np.uint8)).save(buffer, format="PNG", bits=4)
    data = buffer.getvalue()
    assert data[24] == 4, "Pillow wrote no 4-bit PNG"
    return data


def test_pixel_keys_are_the_same_for_the_same_pixels_whatever_the_source() -> None:
    for inside in _blobs(20):
        keys = {
            PngMask(png=png_b64(inside.astype(np.uint8))).pixel_key(),
            PngMask(png=png_b64(inside.astype(np.uint8) * 7)).pixel_key(),
            RleMask(rle=Rle(size=inside.shape, counts=_coco_string(inside))).pixel_key(),
            RleMask(rle=Rle(size=inside.shape, counts=mask_to_rle_counts(inside))).pixel_key(),
            pixel_key(inside),
        }
        assert len(keys) == 1
    # The shape is part of the key: 8 pixels inside as 2x4 and as 4x2 pack to the same byte.
    assert pixel_key(np.ones((2, 4), bool)) != pixel_key(np.ones((4, 2), bool))
    assert pixel_key(np.eye(4, dtype=bool)) != pixel_key(np.eye(4, dtype=bool)[::-1])


def _mask_message(source: dict[str, Any], **extra: Any) -> PredictionMessage:
    prediction = {"type": "mask", "name": "mk", "confidence": 0.5, "mask": source, **extra}
    parsed = MESSAGE_ADAPTER.validate_python(message(prediction))
    assert isinstance(parsed, PredictionMessage)
    return parsed


def _sources(inside: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
    return [
        {"png": png_b64(inside.astype(np.uint8))},
        {"png": png_b64(inside.astype(np.uint8) * 255)},
        {"png": png_b64(inside)},
        {"rle": {"size": list(inside.shape), "counts": _coco_string(inside)}},
        {"rle": {"size": list(inside.shape), "counts": mask_to_rle_counts(inside)}},
    ]


def test_a_mask_lines_derived_uuid_depends_on_its_pixels_not_its_png_bytes() -> None:
    inside = np.zeros((20, 30), bool)
    inside[4:15, 6:25] = True
    lines = [convert(_mask_message(source))[0] for source in _sources(inside)]
    assert len({line.uuid for line in lines}) == 1
    # The uuid is the documented function of the line without its PNG and of the pixels.
    line = lines[0]
    rest = {k: v for k, v in line.body.items() if k != "uuid"}
    assert line.uuid == derive_uuid("mr-1", 0, mask_uuid_content(rest, pixel_key(inside)))
    # Other pixels, or another field of the line, give another uuid; a given uuid is kept as it is.
    moved = np.roll(inside, 1, axis=1)
    assert convert(_mask_message({"png": png_b64(moved.astype(np.uint8))}))[0].uuid != line.uuid
    other = {"png": png_b64(inside.astype(np.uint8))}
    assert convert(_mask_message(other, confidence=0.6))[0].uuid != line.uuid
    given = str(uuid.UUID(int=15))
    assert convert(_mask_message(other, uuid=given))[0].uuid == given


def test_an_ndjson_mask_line_gets_the_same_derived_uuid_as_the_typed_one() -> None:
    inside = np.zeros((12, 7), bool)
    inside[3:9, 1:5] = True
    typed = convert(_mask_message({"png": png_b64(inside.astype(np.uint8) * 255)}))[0]
    line = {
        "dataRow": {"globalKey": "img-1.jpg"},
        "name": "mk",
        "confidence": 0.5,
        "classifications": [],
        "mask": {"png": png_b64(inside)},
    }
    ndjson = MESSAGE_ADAPTER.validate_python({"model_run_id": "mr-1", "ndjson": [line]})
    converted = convert(ndjson)[0]
    assert converted.body == typed.body | {"mask": converted.body["mask"]}
    assert converted.uuid == typed.uuid
    np.testing.assert_array_equal(_png_pixels(base64.b64decode(converted.body["mask"]["png"])), inside)
