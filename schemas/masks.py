"""Segmentation masks: the three ways a producer sends one, and the codecs behind them.

Pure functions over bytes and numpy arrays. Every decoder checks sizes before it allocates, so a
tiny input that declares a huge image (a decompression bomb) is rejected without being expanded.
"""

from __future__ import annotations

import binascii
import io
import struct
from typing import Annotated, Any, Self

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError
from pydantic import Discriminator, Field, PrivateAttr, Tag, model_validator
from pydantic_core import PydanticCustomError

from schemas._base import MAX_MESSAGE_BYTES, Strict

#: Largest mask accepted, in pixels (6000 x 6000): bounds the memory one message can claim.
MAX_MASK_PIXELS = 36_000_000
#: Largest base64 PNG accepted, in characters.
MAX_PNG_CHARS = MAX_MESSAGE_BYTES
#: Largest COCO RLE counts string accepted, in characters.
MAX_RLE_CHARS = 4 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L"})

BoolMask = npt.NDArray[np.bool_]


def _mask_error(code: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(code, message, context or None)


def _check_pixels(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise _mask_error("invalid_mask_size", "mask size must be positive, got {h}x{w}", h=height, w=width)
    if height * width > MAX_MASK_PIXELS:
        raise _mask_error(
            "mask_too_large",
            "mask of {h}x{w} pixels exceeds the limit of {limit} pixels",
            h=height,
            w=width,
            limit=MAX_MASK_PIXELS,
        )


def decode_base64(text: str) -> bytes:
    """Strict base64 (no data-URI prefix, no stray characters); raises ``invalid_base64``."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise _mask_error("invalid_base64", "not valid base64: {error}", error=str(exc)) from None


def _png_header_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the PNG signature and IHDR chunk, read before anything is decompressed."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise _mask_error("invalid_png", "not a PNG image (bad signature or header)")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def decode_png(data: bytes) -> npt.NDArray[Any]:
    """Decode a single-channel PNG to a 2-D array.

    Raises ``invalid_png`` (not a PNG, truncated, corrupt), ``mask_too_large`` (checked on the
    header, before decompression) or ``mask_not_single_channel``.
    """
    _check_pixels(*_png_header_size(data))
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _mask_error("invalid_png", "not a PNG image: {error}", error=str(exc)) from None
    with image:
        if image.mode not in _SINGLE_CHANNEL_MODES:
            raise _mask_error(
                "mask_not_single_channel", "PNG mask must be single-channel, got mode {mode}", mode=image.mode
            )
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise _mask_error("invalid_png", "PNG does not decode: {error}", error=str(exc)) from None
        return np.asarray(image)


def encode_png01(inside: BoolMask) -> bytes:
    """Encode a boolean mask as the PNG Labelbox expects: 8-bit single channel, pixels 0 or 1."""
    buffer = io.BytesIO()
    Image.fromarray(inside.astype(np.uint8), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def rle_counts_from_string(text: str) -> list[int]:
    """Decode a COCO compressed RLE string (pycocotools' ``rleFrString``) into run lengths.

    Raises ``invalid_rle`` on characters outside the alphabet, a truncated last run, or a
    negative run length.
    """
    counts: list[int] = []
    value = shift = 0
    for char in text:
        digit = ord(char) - 48
        if not 0 <= digit < 64:
            raise _mask_error("invalid_rle", "RLE string has a character outside the COCO alphabet")
        value |= (digit & 0x1F) << shift
        shift += 5
        if digit & 0x20:
            continue
        if digit & 0x10:
            value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise _mask_error("invalid_rle", "RLE string decodes to a negative run length")
        counts.append(value)
        value = shift = 0
    if shift:
        raise _mask_error("invalid_rle", "RLE string ends inside a run length")
    return counts


def rle_to_mask(height: int, width: int, counts: list[int]) -> BoolMask:
    """Expand column-major runs (background first) to a ``height x width`` boolean mask."""
    values = np.zeros(len(counts), dtype=np.bool_)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    return np.ascontiguousarray(flat.reshape((width, height)).T)


def mask_to_rle_counts(inside: BoolMask) -> list[int]:
    """Column-major run lengths of a boolean mask, starting with background (uncompressed COCO RLE)."""
    flat = np.asarray(inside, dtype=np.bool_).T.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0, *runs] if flat.size and flat[0] else runs) or [0]


class PngMask(Strict):
    """An inline mask: base64 of a single-channel PNG whose nonzero pixels are inside."""

    png: str = Field(max_length=MAX_PNG_CHARS)
    _inside: BoolMask | None = PrivateAttr(default=None)
    _is_01: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _decodes(self) -> Self:
        pixels = decode_png(decode_base64(self.png))
        if pixels.ndim != 2:
            raise _mask_error("mask_not_single_channel", "PNG mask must be single-channel")
        self._inside = pixels != 0
        self._is_01 = pixels.dtype == np.uint8 and int(pixels.max(initial=0)) <= 1
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PngMask) and self.png == other.png

    def __hash__(self) -> int:
        return hash(self.png)

    def inside(self) -> BoolMask:
        """The decoded mask (True = inside)."""
        if self._inside is None:  # pragma: no cover - set by the validator
            raise RuntimeError("mask not validated")
        return self._inside

    def png01_base64(self) -> str:
        """Base64 of a 0/1 PNG: the producer's own bytes when they already are one."""
        if self._is_01:
            return self.png
        return binascii.b2a_base64(encode_png01(self.inside()), newline=False).decode("ascii")


class UrlMask(Strict):
    """A mask by reference: an RGB PNG at ``url``; pixels of ``color`` are inside."""

    url: str = Field(min_length=1, max_length=4096, pattern=r"^https?://[^\s\x00-\x1f]+$")
    color: tuple[
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
    ]


def _counts_form(value: Any) -> str | None:
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else None


class Rle(Strict):
    """COCO run-length encoding: column-major runs starting with background."""

    size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]
    counts: Annotated[
        Annotated[Annotated[str, Field(max_length=MAX_RLE_CHARS)], Tag("string")]
        | Annotated[
            Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_RLE_CHARS)], Tag("list")
        ],
        Discriminator(
            _counts_form,
            custom_error_type="wrong_type",
            custom_error_message="RLE counts are a COCO compressed string or a list of integers",
        ),
    ]

    @model_validator(mode="after")
    def _sums_to_size(self) -> Self:
        height, width = self.size
        _check_pixels(height, width)
        counts = rle_counts_from_string(self.counts) if isinstance(self.counts, str) else self.counts
        if sum(counts) != height * width:
            raise _mask_error(
                "invalid_rle",
                "RLE counts sum to {total}, expected height x width = {expected}",
                total=sum(counts),
                expected=height * width,
            )
        return self

    def inside(self) -> BoolMask:
        """The decoded mask (True = inside)."""
        counts = rle_counts_from_string(self.counts) if isinstance(self.counts, str) else self.counts
        return rle_to_mask(self.size[0], self.size[1], counts)


class RleMask(Strict):
    """A mask as COCO RLE, compressed string or list of counts."""

    rle: Rle

    def png01_base64(self) -> str:
        """Base64 of the 0/1 PNG Labelbox imports."""
        return binascii.b2a_base64(encode_png01(self.rle.inside()), newline=False).decode("ascii")


def _mask_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("png", "url", "rle"):
            if key in value:
                return key
        return None
    return _MASK_KINDS.get(type(value))


_MASK_KINDS: dict[type[Any], str] = {PngMask: "png", UrlMask: "url", RleMask: "rle"}


MaskSource = Annotated[
    Annotated[PngMask, Tag("png")] | Annotated[UrlMask, Tag("url")] | Annotated[RleMask, Tag("rle")],
    Discriminator(
        _mask_kind,
        custom_error_type="invalid_mask_source",
        custom_error_message="mask needs exactly one source: 'png', 'url' (+ 'color') or 'rle'",
    ),
]


def mask_from_array(array: npt.ArrayLike, color: tuple[int, int, int] | None = None) -> PngMask:
    """Build an inline mask from a numpy array.

    ``array`` is 2-D (bool or integer: nonzero is inside), or ``H x W x 3`` with ``color`` naming
    the RGB colour whose pixels are inside. Raises ``ValueError`` on any other shape.
    """
    pixels = np.asarray(array)
    if color is not None:
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f"a colour is (r, g, b) in 0..255, got {color!r}")
        if pixels.ndim != 3 or pixels.shape[2] < 3:
            raise ValueError(f"a colour needs an H x W x 3 array, got shape {pixels.shape}")
        inside = np.all(pixels[:, :, :3] == np.asarray(color, dtype=pixels.dtype), axis=2)
    elif pixels.ndim == 2:
        inside = pixels != 0
    else:
        raise ValueError(f"a mask array must be 2-D (or H x W x 3 with a colour), got shape {pixels.shape}")
    png = binascii.b2a_base64(encode_png01(inside), newline=False).decode("ascii")
    return PngMask(png=png)
