"""Conversion benchmark: record bytes -> NDJSON bytes on one core, against the SDK and against orjson.

- ours:  ``worker.decode.decode`` (validation included) + ``worker.convert.convert`` + the lines' bytes
         (also timed apart: decode alone, and convert + bytes of already decoded messages);
- SDK:   ``json.loads`` + ``labelbox.types`` objects + ``NDJsonConverter.serialize`` + ``json.dumps``;
- limit: ``orjson.loads`` of the record + ``orjson.dumps`` of our output lines (dicts built beforehand).

Before timing, the SDK's output is checked to be the same predictions as ours on a sample (parsed
JSON, uuids dropped, floats rounded, masks by pixels, the SDK's snake_case bug undone), so that the
comparison is between equivalent work.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from PIL import Image

from tests.bench.corpus import Corpus, mask_kind
from tests.bench.sdk_build import sdk_ndjson
from tests.bench.timing import best_of
from tests.support.sdk_oracle import camel_case_keys
from worker.convert import convert, encode
from worker.decode import Message, Rejection, decode

WARMUP_MESSAGES = 50
#: Runs per round of the cases much cheaper than the SDK's (more samples, little extra time).
CHEAP_REPEATS = {"ours_s": 3, "decode_s": 3, "convert_s": 3, "limit_s": 5}
EQUIVALENCE_SAMPLE = 60
#: Messages checked per mask source (png, rle-string, rle-list, url) besides the first ones: every
#: mask message of the mixed corpus (93), 93 of the mask-heavy one's 240 (4 s).
EQUIVALENCE_MASKS_PER_KIND = 60


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """Best times (s) over the whole corpus: the three paths, and ours split in its two stages."""

    messages: int
    predictions: int
    ours_s: float
    sdk_s: float
    limit_s: float
    decode_s: float
    convert_s: float


def ours_message(value: bytes) -> Message:
    """Our validated message (raises if the corpus holds an invalid one)."""
    message = decode(value)
    if isinstance(message, Rejection):
        raise ValueError(f"the corpus holds an invalid message: {message.reason} {message.errors}")
    return message


def run_conversion(corpus: Corpus, rounds: int) -> ConversionResult:
    """Check equivalence, warm up, then time every path interleaved, ``rounds`` times."""
    check_equivalent(corpus)
    messages = [ours_message(value) for value in corpus.values]
    bodies = [[line.body for line in convert(message)] for message in messages]
    best_of(_cases(corpus.values[:WARMUP_MESSAGES], messages, bodies), rounds=1)
    gc.collect()
    gc.freeze()  # the inputs are long-lived: keep them out of the collections the timed code triggers
    try:
        best = best_of(_cases(corpus.values, messages, bodies), rounds, CHEAP_REPEATS)
    finally:
        gc.unfreeze()
    return ConversionResult(len(corpus.values), corpus.predictions, **best)


def _cases(
    values: list[bytes], messages: list[Message], bodies: list[list[dict[str, Any]]]
) -> dict[str, Callable[[], None]]:
    """The timed paths over ``values`` (``messages`` and ``bodies``: the same, decoded / converted)."""
    return {
        "ours_s": lambda: _ours(values),
        "sdk_s": lambda: _sdk(values),
        "limit_s": lambda: _limit(values, bodies),
        "decode_s": lambda: _decode(values),
        "convert_s": lambda: _convert(messages[: len(values)]),
    }


def _ours(values: list[bytes]) -> None:
    for value in values:
        encode(convert(ours_message(value)))


def _decode(values: list[bytes]) -> None:
    for value in values:
        ours_message(value)


def _convert(messages: list[Message]) -> None:
    for message in messages:
        encode(convert(message))


def _sdk(values: list[bytes]) -> None:
    for value in values:
        sdk_ndjson(value)


def _limit(values: list[bytes], bodies: list[list[dict[str, Any]]]) -> None:
    for value, lines in zip(values, bodies, strict=False):
        orjson.loads(value)
        b"".join(orjson.dumps(body) + b"\n" for body in lines)


# --- equivalence ---------------------------------------------------------------------------------


def check_equivalent(corpus: Corpus) -> None:
    """Raise AssertionError unless the SDK path gives the same predictions as ours on a sample."""
    for index in _sample(corpus):
        value = corpus.values[index]
        ours = _normalized(encode(convert(ours_message(value))))
        sdk = _normalized(sdk_ndjson(value))
        if ours != sdk:
            raise AssertionError(f"message {index}: the SDK baseline is not equivalent to ours")


def _sample(corpus: Corpus) -> Iterator[int]:
    """The first messages, and the first messages with a mask of each source (up to 60 each)."""
    chosen = set(range(min(EQUIVALENCE_SAMPLE, len(corpus.dicts))))
    per_kind: dict[str, int] = {}
    for index, message in enumerate(corpus.dicts):
        kinds = {mask_kind(p["mask"]) for p in message["predictions"] if p["type"] == "mask"}
        if any(per_kind.get(kind, 0) < EQUIVALENCE_MASKS_PER_KIND for kind in kinds):
            chosen.add(index)
            for kind in kinds:
                per_kind[kind] = per_kind.get(kind, 0) + 1
    yield from sorted(chosen)


def _normalized(ndjson: bytes) -> list[str]:
    lines = [camel_case_keys(json.loads(raw)) for raw in ndjson.splitlines()]
    for line in lines:
        line.pop("uuid", None)
    return sorted(json.dumps(_rounded(_by_pixels(line)), sort_keys=True) for line in lines)


def _by_pixels(line: dict[str, Any]) -> dict[str, Any]:
    """An inline mask's base64 replaced by its shape and a digest of its pixels, checked to be an
    8-bit single-channel PNG of 0/1 (PNG bytes may differ; the pixels may not)."""
    mask = line.get("mask")
    if not (isinstance(mask, dict) and "png" in mask):
        return line
    with Image.open(io.BytesIO(base64.b64decode(mask["png"], validate=True)), formats=["PNG"]) as image:
        if image.mode != "L":
            raise AssertionError(f"an inline mask is a {image.mode} PNG, not 8-bit grey")
        pixels = np.asarray(image)
    if pixels.size and int(pixels.max()) > 1:
        raise AssertionError("an inline mask has pixels other than 0 and 1")
    digest = hashlib.sha256(np.packbits(pixels, axis=None).tobytes()).hexdigest()
    return {**line, "mask": {"shape": list(pixels.shape), "pixels": digest}}


def _rounded(value: Any) -> Any:
    """Floats rounded to 6 decimals (the SDK's Rectangle gives height as bottom - top)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
