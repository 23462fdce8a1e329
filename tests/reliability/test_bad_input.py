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
import copy
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.embedded import create_topics
from labelbox_sandbox import Sandbox
from schemas.errors import REASON_CODES
from tests.support.bad_corpus import (
    CORPUS,
    MESSAGE_MAX_BYTES,
    Bad,
    Json,
    js,
)
from tests.support.factories import bbox, every_type, message, radio
from tests.support.kafka_helpers import DeadLettered, produce, read_dlq
from tests.support.waiting import until
from tests.support.worker_harness import settings_for, wait_committed
from tests.support.workers import read_jsonl, worker_process
from worker.convert import convert
from worker.decode import Rejection, decode
from worker.dlq import H_ERROR, H_OFFSET, H_PARTITION, H_REASON, H_TOPIC, H_TRUNCATED

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
