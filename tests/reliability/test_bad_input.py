"""Bad input never stops the worker: a corpus of malformed messages, and fuzzing of the decoder.

- Each corpus message decodes to a rejection with its expected reason code (pure, per message).
- The whole corpus, interleaved with valid messages, streams through a real worker process: each bad
  message lands in the DLQ with its reason, the valid ones around them are imported, every offset is
  committed, the process never dies, and its peak RSS stays bounded (see ``rss_bound_bytes``).
- Fuzzing (hypothesis): arbitrary bytes, arbitrary JSON, and mutations of a valid message given to
  ``worker.decode.decode`` give a message or a ``Rejection`` with a known reason code; they never raise.

The stream test prints one greppable line (``pytest -s``)::

    RELIABILITY bad-input: sent=… bad=… imported=… dlq=… lost=0 rss_growth_mib=… …
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import signal
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from devtools.embedded import create_topics
from labelbox_sandbox import Sandbox
from schemas.errors import REASON_CODES
from tests.support.factories import bbox, every_type, message, png_b64, radio
from tests.support.kafka_helpers import DeadLettered, produce, read_dlq
from tests.support.waiting import until
from tests.support.worker_harness import settings_for, wait_committed
from tests.support.workers import read_jsonl, worker_process
from worker.convert import convert
from worker.decode import Rejection, decode
from worker.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_REASON, H_TOPIC, H_TRUNCATED

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

#: Corpus messages whose reason code is wrong today (each still lands in the DLQ: nothing is lost).
KNOWN_BUGS: dict[str, str] = {}  # name -> "BUG: …" for a corpus message whose reason is known wrong


def corpus_params() -> list[Any]:
    return [
        pytest.param(bad, id=bad.name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[bad.name])])
        if bad.name in KNOWN_BUGS
        else pytest.param(bad, id=bad.name)
        for bad in CORPUS
    ]


def test_corpus_is_large_and_distinct() -> None:
    values = [bad.build() for bad in CORPUS]
    assert len(CORPUS) >= 40
    assert len({bad.name for bad in CORPUS}) == len(CORPUS)
    assert len(set(values)) == len(values), "every corpus message is a distinct record"
    assert {bad.reason for bad in CORPUS} <= REASON_CODES


@pytest.mark.parametrize("bad", corpus_params())
def test_each_bad_message_is_rejected_with_its_reason(bad: Bad) -> None:
    outcome = decode(bad.build(), MESSAGE_MAX_BYTES)
    assert isinstance(outcome, Rejection), f"{bad.name} was accepted"
    assert outcome.reason == bad.reason, outcome.errors
    assert outcome.errors, "a rejection says what is wrong"


# --- the corpus through a running worker -----------------------------------------------------------

RUNS = ("bad-run-a", "bad-run-b", "bad-run-c")
_TRUNCATED_DLQ_VALUE_BYTES = 64 * 1024  # what the DLQ keeps of a value the broker refuses (worker.dlq)


#: Peak RSS growth allowed over the worker's idle RSS, for a stream whose largest record has ``largest``
#: bytes. aiokafka holds a record that large about three times at the peak while it reads it (socket
#: buffer, response bytes, record value: a bare aiokafka consumer grows by 143 MiB for 50 MB, the worker
#: by ~155 MiB in all); the DLQ producer refuses it by size before copying it, then sends 64 KiB of it.
#: 64 MiB cover everything else: the other ~5 MB of the corpus parsed and rejected, the valid messages
#: converted and batched, client buffers, the allocator's slack. Decoding the PNG or RLE bomb would take
#: 10 GB, parsing the recursion bombs hundreds of MB, and parsing the 50 MB message instead of rejecting
#: it by size one more copy or more: each breaks the bound.
def rss_bound_bytes(largest: int) -> int:
    return 3 * largest + 64 * 1024 * 1024


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    bad: Bad | None
    run: str | None
    uuids: frozenset[str]


def valid(i: int) -> tuple[str, bytes]:
    run = RUNS[i % len(RUNS)]
    predictions = every_type() if i % 10 == 0 else [bbox(confidence=0.5), radio()]
    return run, js(message(*predictions, model_run_id=run, data_row={"global_key": f"bad-input-{i}.jpg"}))


def interleaved(partitions: int) -> list[Record]:
    """Two valid messages, then one bad one, round-robin over partitions; offsets in production order."""
    planned: list[tuple[bytes | None, bytes | None, Bad | None, str | None]] = []
    for i, bad in enumerate(CORPUS):
        for j in (2 * i, 2 * i + 1):
            run, value = valid(j)
            planned.append((run.encode(), value, None, run))
        planned.append((b"bad", bad.build(), bad, None))
    offsets = Counter[int]()
    records = []
    for i, (key, value, bad, run) in enumerate(planned):
        partition = i % partitions
        uuids = frozenset() if bad is not None else uuids_of(value)
        records.append(Record(partition, offsets[partition], key, value, bad, run, uuids))
        offsets[partition] += 1
    return records


def uuids_of(value: bytes | None) -> frozenset[str]:
    decoded = decode(value)
    assert not isinstance(decoded, Rejection), decoded
    return frozenset(line.uuid for line in convert(decoded))


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def check_dead_letter(record: Record, letters: list[DeadLettered], topic: str) -> None:
    bad = record.bad
    assert bad is not None
    assert len(letters) == 1, f"{bad.name}: dead-lettered {len(letters)} times"
    letter = letters[0]
    if bad.name in KNOWN_BUGS:  # its reason code is checked (xfail) by the per-message test
        assert letter.headers[H_REASON] in REASON_CODES, (bad.name, letter.headers)
    else:
        assert letter.headers[H_REASON] == bad.reason, (bad.name, letter.headers[H_ERROR][:300])
    assert letter.headers[H_TOPIC] == topic
    assert letter.headers[H_ERROR], bad.name
    if record.value is not None and len(record.value) > MESSAGE_MAX_BYTES:
        assert letter.headers[H_TRUNCATED] == str(len(record.value)), "the broker-sized DLQ record says so"
        assert letter.value == record.value[:_TRUNCATED_DLQ_VALUE_BYTES]
    else:
        assert letter.value == record.value, f"{bad.name}: the DLQ keeps the original value"


@pytest.mark.integration
async def test_bad_input_goes_to_the_dlq_valid_input_flows_memory_stays_bounded(
    bootstrap: str, topic: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    partitions = 2
    records = interleaved(partitions)
    ends = {p: sum(1 for r in records if r.partition == p) for p in range(partitions)}
    # Apache Kafka refuses a batch over the topic's max.message.bytes (the broker's message.max.bytes by
    # default); Tansu has no limit. The topic takes the 50 MB record, so the worker must reject it.
    await create_topics(
        bootstrap, {topic: partitions, f"{topic}.dlq": 1}, configs={topic: {"max.message.bytes": "67108864"}}
    )
    settings = settings_for(bootstrap, topic, sandbox, batch_max_rows=200)
    started = time.monotonic()
    stop_timeout_s = settings.shutdown_timeout_s + 10
    async with worker_process(settings, tmp_path, stop_timeout_s=stop_timeout_s) as child:
        worker, log_path = child.process, child.log_path
        joined = await until(
            lambda: any(e.get("event") == "partitions_assigned" for e in read_jsonl(log_path)), 30
        )
        assert joined, log_path.read_text()[-3000:]
        await asyncio.sleep(0.5)
        baseline_kib = status_kib(worker.pid, "VmRSS")
        await produce(bootstrap, topic, [(r.key, r.value, r.partition) for r in records])
        peak_kib = baseline_kib
        deadline = time.monotonic() + 60
        seen: dict[int, int | None] = {}
        while time.monotonic() < deadline and worker.returncode is None:
            peak_kib = max(peak_kib, status_kib(worker.pid, "VmRSS"))
            seen = await wait_committed(bootstrap, settings, ends, timeout_s=0.5)
            if seen == ends:
                break
        assert worker.returncode is None, f"the worker died: {log_path.read_text()[-3000:]}"
        hwm_kib = status_kib(worker.pid, "VmHWM")
        worker.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(worker.wait(), stop_timeout_s)
    elapsed = time.monotonic() - started
    dlq = await read_dlq(bootstrap, f"{topic}.dlq")
    by_origin: dict[tuple[int, int], list[DeadLettered]] = {}
    for letter in dlq:
        origin = (int(letter.headers[H_PARTITION]), int(letter.headers[H_OFFSET]))
        by_origin.setdefault(origin, []).append(letter)
    stored = {run: {line["uuid"] for line in sandbox.state.predictions(run)} for run in RUNS}
    imported = [r for r in records if r.bad is None and r.uuids <= stored[r.run or ""]]
    lost = [r for r in records if (r.partition, r.offset) not in by_origin and r not in imported]
    growth = max(hwm_kib, peak_kib) * 1024 - baseline_kib * 1024
    largest = max(len(r.value or b"") for r in records)
    reasons = Counter(letter.headers[H_REASON] for letter in dlq)
    print(
        f"RELIABILITY bad-input: sent={len(records)} bad={len(CORPUS)} valid={len(records) - len(CORPUS)} "
        f"imported={len(imported)} dlq={len(dlq)} lost={len(lost)} reasons={len(reasons)} "
        f"committed={sum(v or 0 for v in seen.values())}/{len(records)} exit={status} "
        f"rss_baseline_mib={baseline_kib / 1024:.1f} rss_growth_mib={growth / 2**20:.1f} "
        f"rss_bound_mib={rss_bound_bytes(largest) / 2**20:.1f} largest_mb={largest / 1e6:.0f} "
        f"elapsed={elapsed:.1f}s"
    )
    assert status == 0, "the worker never crashed and drained cleanly"
    assert seen == ends, "every offset committed"
    assert not lost, [(r.partition, r.offset, r.bad.name if r.bad else r.run) for r in lost]
    assert len(dlq) == len(CORPUS), "exactly the bad messages are dead-lettered"
    for record in records:
        if record.bad is not None:
            check_dead_letter(record, by_origin.get((record.partition, record.offset), []), topic)
        else:
            assert (record.partition, record.offset) not in by_origin
    assert len(imported) == len(records) - len(CORPUS), "every valid message around them was imported"
    assert growth <= rss_bound_bytes(largest), f"RSS grew by {growth / 2**20:.1f} MiB"


# --- fuzzing the decoder ---------------------------------------------------------------------------

FUZZ = hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["bbox", "radio", "mask", "", "\x00", "\ud800", "NaN", "mr-1", "png", "rle"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=40,
)


ENVELOPE_KEYS = ["model_run_id", "data_row", "message_id", "predictions", "ndjson", "x"]


def dumps(value: Any) -> bytes:
    """JSON as any producer might write it: NaN/Infinity literals, lone surrogates escaped."""
    return json.dumps(value, allow_nan=True).encode()


def assert_decodes_or_rejects(value: bytes | None) -> None:
    outcome = decode(value, MESSAGE_MAX_BYTES)  # must not raise
    event(outcome.reason if isinstance(outcome, Rejection) else "accepted")
    if isinstance(outcome, Rejection):
        assert outcome.reason in REASON_CODES, outcome
        assert outcome.errors
    else:
        convert(outcome)  # a message the decoder accepts converts (else: conversion_error in the DLQ)


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_arbitrary_bytes(value: bytes) -> None:
    assert_decodes_or_rejects(value)


@FUZZ
@given(JSON_VALUES)
def test_fuzz_arbitrary_json(value: Any) -> None:
    assert_decodes_or_rejects(dumps(value))


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["model_run_id", "data_row", "message_id", "predictions", "ndjson", "x"]), JSON_VALUES
    )
)
def test_fuzz_arbitrary_json_with_envelope_keys(value: Json) -> None:
    assert_decodes_or_rejects(dumps(value))


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (dict keys and list indexes), the root excluded."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found += paths(child, (*prefix, key))
    return found


def mutate(document: Any, path: tuple[Any, ...], action: str, replacement: Any) -> Any:
    """A copy of ``document`` with the node at ``path`` deleted, replaced, duplicated or wrapped."""
    result = copy.deepcopy(document)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    elif action == "replace":
        parent[key] = replacement
    elif action == "wrap":
        parent[key] = [parent[key]]
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(key, parent[key])
    return result


VALID_DOCUMENTS = [
    message(*every_type(), message_id="m-1"),
    message(bbox(uuid="0b6f4d6a-2f7e-4e3b-9a6d-1c2b3d4e5f60"), radio(), data_row={"id": "dr-1"}),
    {
        "model_run_id": "mr-1",
        "ndjson": [
            {
                "name": "box",
                "dataRow": {"globalKey": "g"},
                "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
            },
            {"name": "q", "dataRow": {"id": "d"}, "answer": {"name": "a"}},
        ],
    },
]


@FUZZ
@given(st.data())
def test_fuzz_mutations_of_valid_messages(data: st.DataObject) -> None:
    document = data.draw(st.sampled_from(VALID_DOCUMENTS))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        candidates = paths(document)
        if not candidates:
            break
        path = data.draw(st.sampled_from(candidates))
        action = data.draw(st.sampled_from(["delete", "replace", "replace", "wrap", "duplicate"]))
        document = mutate(document, path, action, data.draw(JSON_VALUES))
    assert_decodes_or_rejects(dumps(document))


def test_valid_documents_are_valid() -> None:
    for document in VALID_DOCUMENTS:
        assert not isinstance(decode(dumps(document)), Rejection)
