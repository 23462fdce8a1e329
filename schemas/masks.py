"""Segmentation masks: the three ways a producer sends one, and the codecs behind them.

Pure functions over bytes and numpy arrays. Every decoder checks sizes before it allocates, so a
tiny input that declares a huge image (a decompression bomb) is rejected without being expanded.

COCO RLE strings are decoded with numpy (the pure-Python decoder stays for short strings, where it is
faster, and for every malformed string, so each rejection says exactly what it said before); an RLE's
runs are summed against its size before anything is expanded. A PNG that already is what Labelbox
takes (8-bit grey, pixels 0/1) passes through as the producer sent it; other masks are encoded with
zlib directly (``encode_png01``), without Pillow's per-image overhead.
"""

from __future__ import annotations

import binascii
import io
import struct
import zlib
from typing import Annotated, Any, Self

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError
from pydantic import Discriminator, Field, Tag, model_validator
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
#: IHDR bit depth 8, colour type 0 (grey): with pixels 0/1, the PNG Labelbox takes as it is.
_GREY8 = b"\x08\x00"
#: zlib level of the encoder: 1 measured fastest on 0/1 masks; with the run-length strategy (as fast
#: as the default one) its output is as small as Pillow's (compress_level=1) or up to 3.5x smaller.
_ZLIB_LEVEL = 1
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Shorter COCO strings are decoded in pure Python: numpy's fixed cost (about 27 us) is larger there.
_RLE_NUMPY_MIN_CHARS = 200
#: A run of more characters than this (> 40 bits) is never valid: left to the pure-Python decoder,
#: which reports it as before; it also keeps numpy's int64 sums far from overflowing.
_RLE_MAX_RUN_CHARS = 8

#: When transposing a mask goes tile by tile (``_transposed``), 64 x 64 a tile.
_TILED_MIN_PIXELS = 256 * 256
_ALWAYS_TILED_PIXELS = 4 * 1024 * 1024
_TILE = 64

BoolMask = npt.NDArray[np.bool_]
Counts = npt.NDArray[np.int64]


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


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png01(inside: npt.NDArray[Any]) -> bytes:
    """Encode a mask as the PNG Labelbox expects: 8-bit single channel, pixels 0 or 1.

    ``inside`` is a 2-D array (bool, or integers where nonzero is inside). Written with zlib directly:
    one IHDR, one IDAT of unfiltered rows, IEND (measured faster than Pillow at every size).
    """
    height, width = inside.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # each row starts with filter type 0 (none)
    if inside.dtype == np.bool_:
        rows[:, 1:] = inside
    else:
        np.not_equal(inside, 0, out=rows[:, 1:].view(np.bool_))
    header = struct.pack(">II", width, height) + _GREY8 + b"\x00\x00\x00"
    deflate = zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    idat = deflate.compress(rows.data) + deflate.flush()
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _IEND


def pixel_key(inside: npt.NDArray[Any]) -> bytes:
    """The identity of a mask's pixels: its shape and its inside pixels, row-major, packed to bits.

    What a mask line's derived uuid is computed from (never the PNG bytes, which an encoder may change).
    """
    height, width = inside.shape
    return b"%dx%d:" % (height, width) + np.packbits(inside, axis=None).tobytes()


def rle_counts_from_string(text: str) -> list[int] | Counts:
    """Decode a COCO compressed RLE string (pycocotools' ``rleFrString``) into run lengths.

    Raises ``invalid_rle`` on characters outside the alphabet, a truncated last run, or a
    negative run length. Vectorised with numpy (an int64 array); short strings, every malformed one
    and any with a run longer than a mask can be go through the pure-Python decoder (a list), so
    the errors and the sums are exactly its own.
    """
    if len(text) >= _RLE_NUMPY_MIN_CHARS and text.isascii():
        counts = _rle_counts_numpy(text)
        if counts is not None:
            return counts
    return _rle_counts_python(text)  # (after the numpy arrays are freed: a bomb's peak stays one decoder's)


def _rle_counts_numpy(text: str) -> Counts | None:
    """The runs of an ASCII COCO string, or None when the pure-Python decoder must decide."""
    raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    if int(raw.min()) < 48 or int(raw.max()) >= 48 + 64 or raw[-1] >= 48 + 0x20:
        return None
    digits = raw - np.uint8(48)  # small types throughout: a 4 Mi-character string peaks near 100 MB
    del raw
    ends = np.flatnonzero(digits < 0x20).astype(np.int32)  # the last character of each run
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > _RLE_MAX_RUN_CHARS:
        return None
    values = (digits[starts] & 0x1F).astype(np.int64)
    for k in range(1, longest):  # the k-th character of every run that long: 5 more bits
        longer = np.flatnonzero(lengths > k)
        values[longer] |= (digits[starts[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
    negative = np.flatnonzero(digits[ends] & 0x10)
    values[negative] |= np.left_shift(np.int64(-1), 5 * lengths[negative].astype(np.int64))
    # From the fourth run on, each value is a delta to the run two before: a cumulative sum over
    # the odd runs, and one over the even runs from the third.
    np.cumsum(values[1::2], out=values[1::2])
    np.cumsum(values[2::2], out=values[2::2])
    # |values| < 2**62 here (runs of at most 40 bits, at most 4 Mi of them): no overflow so far. A
    # negative run is an error; a run above the pixel limit can never sum to a valid size.
    if int(values.min()) < 0 or int(values.max()) > MAX_MASK_PIXELS:
        return None
    return values


def _rle_counts_python(text: str) -> list[int]:
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


def rle_to_mask(height: int, width: int, counts: list[int] | Counts) -> BoolMask:
    """Expand column-major runs (background first) to a ``height x width`` boolean mask.

    The caller has checked that the runs sum to ``height * width``.
    """
    values = np.zeros(len(counts), dtype=np.bool_)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    return _transposed(flat.reshape((width, height)))


def _transposed(columns: BoolMask) -> BoolMask:
    """``columns.T`` as a C-contiguous array.

    numpy copies a transposed view element by element, striding ``height`` bytes: when ``height`` is
    a multiple of 128 the strided reads collide in the CPU cache, and a huge mask overflows it either
    way. There, tile by tile is 1.6-7x faster (measured: 1024 x 1024, 768 x 768, 2048 x 1500,
    3000 x 4000); elsewhere numpy's own copy is as fast or faster (1000 x 1000, 1080 x 1920)."""
    width, height = columns.shape
    pixels = height * width
    if pixels < _TILED_MIN_PIXELS or (height % 128 and pixels < _ALWAYS_TILED_PIXELS):
        return np.ascontiguousarray(columns.T)
    out = np.empty((height, width), dtype=np.bool_)
    view = columns.T
    for top in range(0, height, _TILE):
        for left in range(0, width, _TILE):
            out[top : top + _TILE, left : left + _TILE] = view[top : top + _TILE, left : left + _TILE]
    return out


def mask_to_rle_counts(inside: BoolMask) -> list[int]:
    """Column-major run lengths of a boolean mask, starting with background (uncompressed COCO RLE)."""
    flat = np.asarray(inside, dtype=np.bool_).T.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0, *runs] if flat.size and flat[0] else runs) or [0]


class PngMask(Strict):
    """An inline mask: base64 of a single-channel PNG whose nonzero pixels are inside."""

    # Set by the validator. Slots, not pydantic private attributes: those cost about 3 us a model.
    __slots__ = ("_decoded_pixels", "_is_01")

    png: str = Field(max_length=MAX_PNG_CHARS)

    @model_validator(mode="after")
    def _decodes(self) -> Self:
        data = decode_base64(self.png)
        pixels = decode_png(data)
        if pixels.ndim != 2:
            raise _mask_error("mask_not_single_channel", "PNG mask must be single-channel")
        # Pillow also opens 2- and 4-bit grey as "L": only 8-bit grey passes through as it is.
        is_01 = data[24:26] == _GREY8 and pixels.dtype == np.uint8 and int(pixels.max(initial=0)) <= 1
        object.__setattr__(self, "_decoded_pixels", pixels)
        object.__setattr__(self, "_is_01", is_01)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PngMask) and self.png == other.png

    def __hash__(self) -> int:
        return hash(self.png)

    def _decoded(self) -> npt.NDArray[Any]:
        pixels: npt.NDArray[Any] = self._decoded_pixels  # type: ignore[attr-defined]
        return pixels

    def inside(self) -> BoolMask:
        """The decoded mask (True = inside)."""
        inside: BoolMask = self._decoded() != 0
        return inside

    def pixel_key(self) -> bytes:
        """Shape and packed pixels (see :func:`pixel_key`)."""
        return pixel_key(self._decoded())

    def png01_base64(self) -> str:
        """Base64 of a 0/1 PNG: the producer's own bytes when they already are one."""
        if self._is_01:  # type: ignore[attr-defined]
            return self.png
        return binascii.b2a_base64(encode_png01(self._decoded()), newline=False).decode("ascii")


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

    # The decoded runs (set by the validator) and the expanded mask (on first use); slots, not
    # pydantic private attributes, which cost about 3 us a model.
    __slots__ = ("_expanded", "_runs")

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
        if isinstance(self.counts, str):
            runs = rle_counts_from_string(self.counts)
            # An array's runs are each at most MAX_MASK_PIXELS (the decoder): its int64 sum is exact.
            total = int(runs.sum()) if isinstance(runs, np.ndarray) else sum(runs)
        else:
            runs = self.counts
            total = sum(runs)
        if total != height * width:
            raise _mask_error(
                "invalid_rle",
                "RLE counts sum to {total}, expected height x width = {expected}",
                total=total,
                expected=height * width,
            )
        object.__setattr__(self, "_runs", runs)
        object.__setattr__(self, "_expanded", None)
        return self

    def inside(self) -> BoolMask:
        """The decoded mask (True = inside), expanded on first use (the converter asks twice: for the
        PNG and for the uuid) and kept as long as the message."""
        expanded: BoolMask | None = self._expanded  # type: ignore[attr-defined]
        if expanded is None:
            expanded = rle_to_mask(self.size[0], self.size[1], self._runs)  # type: ignore[attr-defined]
            object.__setattr__(self, "_expanded", expanded)
        return expanded


class RleMask(Strict):
    """A mask as COCO RLE, compressed string or list of counts."""

    rle: Rle

    def inside(self) -> BoolMask:
        """The decoded mask (True = inside)."""
        return self.rle.inside()

    def pixel_key(self) -> bytes:
        """Shape and packed pixels (see :func:`pixel_key`)."""
        return pixel_key(self.rle.inside())

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
