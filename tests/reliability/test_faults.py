"""Reliability: prove that nothing is lost, under Labelbox faults, a broker outage and a slow Labelbox.

Every scenario streams real Kafka records (the broker under test, see conftest.py) through the
real worker to the local Labelbox-compatible sandbox, then judges on what the sandbox holds, what the
dead-letter topic holds and what the group committed:

- nothing lost: every message is either fully stored (all its uuids) or in the DLQ with the reason
  expected for it (an import that ended FAILED: ``import_failed``; a row Labelbox reported FAILURE:
  ``labelbox_rejected``; …), exactly once;
- nothing committed before it settled: the final committed offsets are the ends of the partitions, and
  while the fault is active the committed offsets are sampled: every message below a sampled commit
  point was already stored, or already dead-lettered (DLQ record timestamp before the sample);
- never the same batch uploaded twice: one import per batch content, no uuid uploaded twice.

Each scenario prints one greppable line (``pytest -s``)::

    RELIABILITY faults-<case>: sent=… imported=… reuploaded=… dlq=… lost=0 …
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.embedded import accepts, broker_binary, free_port
from labelbox_sandbox import FaultRule, Sandbox
from labelbox_sandbox.state import ROW_FAILURE_ERROR_NAME
from tests.apache_kafka import ApacheKafka
from tests.conftest import APACHE_KAFKA, API_KEY
from tests.support.factories import bbox, message, radio
from tests.support.kafka_helpers import DeadLettered, committed, produce, read_dlq
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import until
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from tests.support.workers import RunningWorker, read_jsonl, stop_process, worker_process
from worker.convert import convert
from worker.decode import Rejection, decode
from worker.dlq import H_ERROR, H_IMPORT, H_REASON, H_TOPIC
from worker.settings import Settings

pytestmark = [
    pytest.mark.integration,
    # aiohttp's own multipart reader (in the in-process sandbox) calls its deprecated
    # StreamReader.unread_data() on some uploads; as an error it would make the sandbox answer 500.
    pytest.mark.filterwarnings("ignore:unread_data.. is deprecated:DeprecationWarning"),
]

Origin = tuple[int, int]  # (partition, offset)
SAMPLE_EVERY_S = 0.25


# --- what is sent ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One produced record, where it landed, and what the worker must make of it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    run: str | None
    uuids: frozenset[str]  # the NDJSON uuids of a valid message; empty for an invalid one
    invalid_reason: str | None = None  # the reason code of an invalid message

    @property
    def origin(self) -> Origin:
        return self.partition, self.offset


def valid_value(run: str, i: int, tag: str = "") -> bytes:
    """A small valid message (a box and a question): distinct content, hence distinct uuids, per i."""
    predictions = (bbox(bbox={"top": i, "left": 2, "height": 3, "width": 4}), radio(confidence=0.5))
    return orjson.dumps(message(*predictions, model_run_id=run, data_row={"global_key": f"img-{tag}{i}.jpg"}))


def uuids_of(value: bytes) -> frozenset[str]:
    decoded = decode(value)
    assert not isinstance(decoded, Rejection), decoded
    return frozenset(line.uuid for line in convert(decoded))


def stream(
    count: int, partitions: int, runs: tuple[str, ...], invalid: tuple[tuple[bytes, str], ...] = ()
) -> list[Sent]:
    """``count`` valid messages round-robin over runs and partitions, invalid ones spread among them.

    Offsets are computed from the production order (a fresh topic, records sent one after another).
    """
    planned: list[tuple[int, bytes | None, bytes, str | None, str | None]] = []
    spread = max(1, count // (len(invalid) + 1))
    invalid_left = list(invalid)
    for i in range(count):
        run = runs[i % len(runs)]
        planned.append((i % partitions, run.encode(), valid_value(run, i), run, None))
        if invalid_left and i % spread == spread - 1:
            value, reason = invalid_left.pop(0)
            planned.append((i % partitions, b"bad", value, None, reason))
    next_offset = Counter[int]()
    sent = []
    for partition, key, value, run, reason in planned:
        offset = next_offset[partition]
        next_offset[partition] += 1
        uuids = uuids_of(value) if reason is None else frozenset()
        sent.append(Sent(partition, offset, key, value, run, uuids, reason))
    return sent


def ends_of(sent: list[Sent], partitions: int) -> dict[int, int]:
    return {p: sum(1 for s in sent if s.partition == p) for p in range(partitions)}


async def produce_sent(bootstrap: str, topic: str, sent: list[Sent]) -> None:
    await produce(bootstrap, topic, [(s.key, s.value or b"", s.partition) for s in sent])


# --- what the DLQ holds ----------------------------------------------------------------------------


# --- commit sampling while the fault is active -----------------------------------------------------


@dataclass(frozen=True)
class Sample:
    wall_ms: float  # taken after the committed offsets were read
    committed: dict[int, int | None]
    stored: dict[str, frozenset[str]]


class CommitSampler:
    """Samples the group's committed offsets (and what the sandbox holds just after) in the background.

    Never cancelled inside a sample (that would leak the sampling consumer): it is asked to stop.
    """

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, sandbox: Sandbox) -> None:
        self._args = (bootstrap, group, topic, partitions)
        self._sandbox = sandbox
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()

    async def _loop(self) -> None:
        for _ in range(10_000):  # bounded; asked to stop at the end of the scenario
            with contextlib.suppress(Exception):  # a broker hiccup (or outage) only costs a sample
                seen = await asyncio.wait_for(committed(*self._args), timeout=5)
                stored = {run: uuids_stored(self._sandbox, run) for run in self._sandbox.state.model_runs}
                self.samples.append(Sample(time.time() * 1000, seen, stored))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_EVERY_S)
            if self._stop.is_set():
                return

    @contextlib.asynccontextmanager
    async def active(self) -> AsyncIterator[CommitSampler]:
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.wait_for(task, timeout=30)


def uuids_stored(sandbox: Sandbox, run: str) -> frozenset[str]:
    return frozenset(line["uuid"] for line in sandbox.state.predictions(run))


# --- the verdict -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario left behind."""

    case: str
    sent: list[Sent]
    stored: dict[str, frozenset[str]]
    dlq: list[DeadLettered]
    committed: dict[int, int | None]
    ends: dict[int, int]
    samples: list[Sample]
    counts: dict[str, dict[str, Any]]
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def dlq_by_origin(self) -> dict[Origin, list[DeadLettered]]:
        out: dict[Origin, list[DeadLettered]] = {}
        for record in self.dlq:
            out.setdefault(record.origin, []).append(record)
        return out

    def imported(self, s: Sent) -> bool:
        return bool(s.uuids) and s.uuids <= self.stored.get(s.run or "", frozenset())

    def lost(self) -> list[Sent]:
        dead = self.dlq_by_origin()
        return [s for s in self.sent if not self.imported(s) and s.origin not in dead]

    @property
    def reuploaded(self) -> int:
        return sum(c["reuploaded_uuids"] for c in self.counts.values())

    def figures(self) -> str:
        imported = sum(1 for s in self.sent if self.imported(s))
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"RELIABILITY faults-{self.case}: sent={len(self.sent)} imported={imported} "
            f"reuploaded={self.reuploaded} dlq={len(self.dlq)} lost={len(self.lost())} "
            f"committed={sum(v or 0 for v in self.committed.values())}/{sum(self.ends.values())} "
            f"commit_samples={len(self.samples)}{extra} elapsed={self.elapsed_s:.1f}s"
        )


def assert_nothing_lost(outcome: Outcome, expected: dict[Origin, str | None], topic: str) -> None:
    """Each message: imported when ``expected`` says None, else dead-lettered once with that reason."""
    dead = outcome.dlq_by_origin()
    assert not outcome.lost(), f"lost: {[s.origin for s in outcome.lost()]}"
    duplicates = {origin: len(records) for origin, records in dead.items() if len(records) > 1}
    assert not duplicates, f"dead-lettered more than once: {duplicates}"
    known = {s.origin for s in outcome.sent}
    assert set(dead) <= known, f"DLQ records of unknown origin: {set(dead) - known}"
    for s in outcome.sent:
        reason = expected[s.origin]
        if reason is None:
            assert outcome.imported(s), f"{s.origin} should be imported"
            assert s.origin not in dead, f"{s.origin} was imported and dead-lettered: {dead[s.origin]}"
            continue
        assert s.origin in dead, f"{s.origin} should be in the DLQ ({reason})"
        record = dead[s.origin][0]
        assert record.headers[H_REASON] == reason, (s.origin, record.headers)
        assert record.headers[H_TOPIC] == topic
        assert record.headers[H_ERROR]
        assert record.value == s.value, "the DLQ keeps the original value"


def assert_committed_only_settled(outcome: Outcome) -> None:
    """Final commit = end of each partition; every sampled commit point covers only settled messages."""
    assert outcome.committed == outcome.ends, "every offset committed at the end"
    dead = outcome.dlq_by_origin()
    for sample in outcome.samples:
        for s in outcome.sent:
            point = sample.committed.get(s.partition)
            if point is None or s.offset >= point:
                continue
            stored = bool(s.uuids) and s.uuids <= sample.stored.get(s.run or "", frozenset())
            dead_before = any(r.timestamp_ms <= sample.wall_ms for r in dead.get(s.origin, []))
            assert stored or dead_before, f"{s.origin} committed (at {point}) before it was settled"


def assert_one_import_per_batch(sandbox: Sandbox) -> None:
    """No batch uploaded twice under another name: imports hold disjoint uuids, none uploaded twice.

    A FAILED import stored nothing: the halves its batch is split into upload its uuids again, which
    is bisection, not a duplicate; so uuids are counted over the imports that did not fail."""
    seen: dict[str, str] = {}
    uploads = Counter[str]()
    for record in sandbox.state.imports.values():
        if record.failure is not None:
            continue
        for row in record.statuses:
            row_uuid = row["uuid"]
            assert row_uuid not in seen, f"{row_uuid} in imports {seen[row_uuid]!r} and {record.name!r}"
            seen[row_uuid] = record.name
            uploads[row_uuid] += 1
    assert set(uploads.values()) <= {1}


def import_of(sandbox: Sandbox, row_uuid: str) -> Any:
    return next(
        r for r in sandbox.state.imports.values() if any(row["uuid"] == row_uuid for row in r.statuses)
    )


def expected_reasons(sent: list[Sent], sandbox: Sandbox) -> dict[Origin, str | None]:
    """The reason each message must be dead-lettered with, None for imported.

    An import of one message that the sandbox made FAIL: that message is ``import_failed`` (a FAILED
    import of several is split until the failing message stands alone); a row it reported FAILURE:
    ``labelbox_rejected``; an invalid message: its own reason code.
    """
    failed_imports: set[str] = set()
    failed_rows: set[str] = set()
    for record in sandbox.state.imports.values():
        rows = {row["uuid"] for row in record.statuses if row["uuid"]}
        if record.failure is not None and sum(1 for s in sent if s.uuids & rows) == 1:
            failed_imports |= rows
        failed_rows |= {row["uuid"] for row in record.statuses if row["status"] == "FAILURE"}
    expected: dict[Origin, str | None] = {}
    for s in sent:
        if s.invalid_reason is not None:
            expected[s.origin] = s.invalid_reason
        elif s.uuids & failed_imports:
            expected[s.origin] = "import_failed"
        elif s.uuids & failed_rows:
            expected[s.origin] = "labelbox_rejected"
        else:
            expected[s.origin] = None
    return expected


async def run_scenario(
    case: str,
    bootstrap: str,
    topic: str,
    sandbox: Sandbox,
    sent: list[Sent],
    partitions: int,
    *,
    during: Callable[[Any], Any] | None = None,
    **overrides: Any,
) -> Outcome:
    """Produce, run the worker until everything is committed (or it stops), judge nothing yet."""
    await make_topics(bootstrap, topic, partitions)
    await produce_sent(bootstrap, topic, sent)
    settings = settings_for(bootstrap, topic, sandbox, **overrides)
    ends = ends_of(sent, partitions)
    sampler = CommitSampler(bootstrap, settings.kafka_group_id, topic, partitions, sandbox)
    started = time.monotonic()
    extra: dict[str, Any] = {}
    async with sampler.active(), running(settings) as (service, task):
        seen = await wait_committed(bootstrap, settings, ends, timeout_s=60)
        if during is not None:
            extra = await during(service) or {}
        assert not task.done(), f"the worker stopped: {task.result() if not task.cancelled() else task}"
    elapsed = time.monotonic() - started
    return await outcome_of(
        case,
        sandbox,
        bootstrap,
        topic,
        sent=sent,
        committed=seen,
        ends=ends,
        samples=sampler.samples,
        elapsed_s=elapsed,
        runs=list(sandbox.state.model_runs),
        extra=extra,
    )


async def outcome_of(
    case: str,
    sandbox: Sandbox,
    bootstrap: str,
    topic: str,
    *,
    sent: list[Sent],
    committed: dict[int, int | None],
    ends: dict[int, int],
    samples: list[Sample],
    elapsed_s: float,
    runs: Iterable[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Outcome:
    """What a scenario left behind: what the sandbox stores of ``runs`` (default :data:`RUNS`), the DLQ
    topic, the counts."""
    return Outcome(
        case=case,
        sent=sent,
        stored={run: uuids_stored(sandbox, run) for run in (RUNS if runs is None else runs)},
        dlq=await read_dlq(bootstrap, f"{topic}.dlq"),
        committed=committed,
        ends=ends,
        samples=samples,
        counts=sandbox.state.all_counts(),
        elapsed_s=elapsed_s,
        extra=extra or {},
    )


def sandbox_figures(sandbox: Sandbox) -> dict[str, Any]:
    return {
        "imports": len(sandbox.state.imports),
        "faulted_requests": sum(1 for r in sandbox.state.request_log if r.fault),
    }


# --- 1. Labelbox faults, each alone ----------------------------------------------------------------

RUNS = ("rel-a", "rel-b", "rel-c")


def fired(sandbox: Sandbox, operation: str, fault: str) -> int:
    return sum(1 for r in sandbox.state.requests(operation) if r.fault and fault in r.fault.split(","))


def retries_after(sandbox: Sandbox, operation: str, fault: str) -> list[tuple[float, float]]:
    """(time of a faulted request, time of the next request of that operation on the same import)."""
    requests = sorted(sandbox.state.requests(operation), key=lambda r: r.t)
    pairs = []
    for i, r in enumerate(requests):
        if r.fault and fault in r.fault.split(","):
            following = [
                n
                for n in requests[i + 1 :]
                if (n.model_run_id, n.import_name) == (r.model_run_id, r.import_name)
            ]
            assert following, f"the {fault} {operation} request on {r.import_name} was never retried"
            pairs.append((r.t, following[0].t))
    return pairs


def assert_every_fault_fired(sandbox: Sandbox) -> None:
    for fault in sandbox.state.faults.describe():
        wanted = fault["count"] if fault["count"] is not None else 1
        assert fault["fired"] >= wanted, f"the fault never hit as planned: {fault}"


Check = Callable[[Sandbox, Outcome], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """One Labelbox fault: the rules (from the stream, for row-level faults), the stream, a check."""

    faults: Callable[[list[Sent]], list[FaultRule]]
    check: Check
    count: int = 36
    runs: tuple[str, ...] = RUNS
    overrides: dict[str, Any] = field(default_factory=dict)
    every_valid_dead: str | None = None  # all valid messages dead-lettered with this reason
    #: The sandbox logs a request when its handler ends: a hung one only after its hang.
    logged: Callable[[Sandbox], bool] = lambda _: True


def check_5xx(sandbox: Sandbox, _: Outcome) -> dict[str, Any]:
    statuses = {op: [r.status for r in sandbox.state.requests(op) if r.fault] for op in OPS}
    assert statuses == {"create_import": [500] * 3, "poll_import": [502] * 3, "status_file": [503] * 3}
    return {"errors_5xx": sum(len(v) for v in statuses.values())}


RETRY_AFTER_S = 1.0
CONCURRENT_IMPORTS = 8


def check_429(sandbox: Sandbox, _: Outcome) -> dict[str, Any]:
    pairs = retries_after(sandbox, "create_import", "rate_limit")
    assert len(pairs) == CONCURRENT_IMPORTS
    limited_at = [limited for limited, _ in pairs]
    retried_at = sorted(retry for _, retry in pairs)
    assert max(limited_at) < retried_at[0], "every import was rate-limited before the first retry"
    waited = [retry - limited for limited, retry in pairs]
    assert min(waited) >= RETRY_AFTER_S, f"a retry came before Retry-After: {waited}"
    assert max(waited) < RETRY_AFTER_S + 3, (
        f"Retry-After, not the exponential backoff, set the wait: {waited}"
    )
    gaps = [b - a for a, b in itertools.pairwise(retried_at)]
    spread = max(waited) - min(waited)
    # Full jitter on top of Retry-After (up to 0.2 s for 1 s): concurrent retries spread out, not in lockstep.
    assert spread >= 0.02, f"retries synchronized: waits {waited}"
    assert len({round(w, 3) for w in waited}) >= CONCURRENT_IMPORTS // 2, f"waits repeat: {waited}"
    return {
        "retry_after_s": RETRY_AFTER_S,
        "min_wait_s": round(min(waited), 3),
        "jitter_spread_s": round(spread, 3),
        "min_gap_s": round(min(gaps), 4),
    }


HANG_S, CLIENT_TIMEOUT_S = 3.0, 1.0


def check_hang(sandbox: Sandbox, _: Outcome) -> dict[str, Any]:
    waits = []
    for op in OPS:
        pairs = retries_after(sandbox, op, "hang")
        assert len(pairs) == 1, (op, pairs)
        waits += [retry - hung for hung, retry in pairs]
    # The client gave up at its own timeout (its clock starts a moment before the request arrives),
    # well before the server dropped the hung connection.
    assert all(CLIENT_TIMEOUT_S - 0.05 <= w < HANG_S for w in waits), waits
    return {"hung_requests": len(waits), "gave_up_after_s": round(max(waits), 2)}


def check_reset(sandbox: Sandbox, _: Outcome) -> dict[str, Any]:
    resets = {op: fired(sandbox, op, "reset") for op in OPS}
    assert resets == {"create_import": 2, "poll_import": 2, "status_file": 1}
    assert all(r.status == 0 for r in sandbox.state.request_log if r.fault == "reset")
    for op in OPS:
        retries_after(sandbox, op, "reset")  # each reset request was retried
    return {"resets": sum(resets.values())}


def check_import_failed(sandbox: Sandbox, outcome: Outcome) -> dict[str, Any]:
    """One import FAILED once (not about its content): its batch was split and every half imported."""
    failed = [r for r in sandbox.state.imports.values() if r.failure is not None]
    assert len(failed) == 1
    assert len(failed[0].statuses) > 2, "a batch of several messages"
    assert outcome.dlq == [], "the halves went through: nothing dead-lettered"
    failed_uuids = {u["uuid"] for u in failed[0].statuses}
    halves = [
        r
        for r in sandbox.state.imports.values()
        if r.failure is None and {u["uuid"] for u in r.statuses} < failed_uuids
    ]
    assert {u["uuid"] for h in halves for u in h.statuses} == failed_uuids
    return {"bisection_imports": len(halves)}


def poison(sent: list[Sent]) -> Sent:
    """The message the poison faults aim at: the 6th valid one."""
    return [s for s in sent if s.uuids][5]


def poison_key(sent: list[Sent]) -> str:
    value = poison(sent).value
    assert value is not None
    return str(orjson.loads(value)["data_row"]["global_key"])


def check_poison_failed(sandbox: Sandbox, outcome: Outcome) -> dict[str, Any]:
    """Imports holding the poison message end FAILED: bisection leaves it alone, in the DLQ."""
    (dead,) = outcome.dlq
    assert dead.headers[H_REASON] == "import_failed"
    assert (int(dead.headers["dlq.origin.partition"]), int(dead.headers["dlq.origin.offset"])) == (
        poison(outcome.sent).origin
    )
    failed = [r for r in sandbox.state.imports.values() if r.failure is not None]
    alone = min(failed, key=lambda r: len(r.statuses))
    assert dead.headers[H_IMPORT] == alone.name, "named after the import of it alone"
    assert {u["uuid"] for u in alone.statuses} == poison(outcome.sent).uuids
    assert dead.headers[H_ERROR]
    return {"failed_imports": len(failed), "imports": len(sandbox.state.imports)}


def doomed_rows(sent: list[Sent]) -> tuple[str, ...]:
    """One uuid of every 10th valid message: rows Labelbox will report FAILURE."""
    return tuple(sorted(s.uuids)[0] for s in sent[3::10] if s.uuids)


def check_row_failure(sandbox: Sandbox, outcome: Outcome) -> dict[str, Any]:
    doomed = set(doomed_rows(outcome.sent))
    dead = [r for r in outcome.dlq if r.headers[H_REASON] == "labelbox_rejected"]
    assert len(dead) == len(doomed)
    for record in dead:
        row_uuid = next(u for u in doomed if u in record.headers[H_ERROR])
        assert ROW_FAILURE_ERROR_NAME in record.headers[H_ERROR]
        assert record.headers[H_IMPORT] == import_of(sandbox, row_uuid).name
    return {"rejected_rows": len(doomed)}


def check_404_transient(sandbox: Sandbox, _: Outcome) -> dict[str, Any]:
    assert [r.status for r in sandbox.state.requests("status_file") if r.fault] == [404, 404]
    retries_after(sandbox, "status_file", "http_status")
    return {"status_404": 2}


def check_404_persistent(sandbox: Sandbox, outcome: Outcome) -> dict[str, Any]:
    names = {r.name for r in sandbox.state.imports.values()}
    assert {r.headers[H_IMPORT] for r in outcome.dlq} == names
    tries = Counter(r.import_name for r in sandbox.state.requests("status_file"))
    assert all(tries[name] >= 2 for name in names), f"the status file was retried before giving up: {tries}"
    return {"status_404": sum(tries.values())}


def check_graphql(sandbox: Sandbox, _: Outcome) -> dict[str, Any]:
    codes = {op: [r.error_code for r in sandbox.state.requests(op) if r.fault] for op in OPS[:2]}
    assert codes == {op: ["INTERNAL_SERVER_ERROR"] * 2 for op in OPS[:2]}
    return {"graphql_errors": 4}


def check_lost_response(sandbox: Sandbox, _: Outcome) -> dict[str, Any]:
    creates = sandbox.state.requests("create_import")
    lost = [r for r in creates if r.fault == "lost_response"]
    assert len(lost) == 2
    assert all(r.status == 0 for r in lost), "the connection dropped before the answer"
    conflicts = {r.import_name for r in creates if r.error_code == "RESOURCE_CONFLICT"}
    assert {r.import_name for r in lost} <= conflicts, "the retry met the name and adopted the import"
    names = [r.name for r in sandbox.state.imports.values()]
    assert len(names) == len(set(names))
    assert len({r.input for r in sandbox.state.imports.values()}) == len(names), "a batch uploaded twice"
    return {"lost_responses": len(lost), "adopted": len(conflicts)}


OPS = ("create_import", "poll_import", "status_file")


def _rules(*rules: FaultRule) -> Callable[[list[Sent]], list[FaultRule]]:
    return lambda _: list(rules)


CASES: dict[str, Case] = {
    "5xx": Case(
        _rules(
            FaultRule(kind="http_status", status=500, operation="create_import", count=3),
            FaultRule(kind="http_status", status=502, operation="poll_import", count=3),
            FaultRule(kind="http_status", status=503, operation="status_file", count=3),
        ),
        check_5xx,
    ),
    "429": Case(
        _rules(
            FaultRule(
                kind="rate_limit",
                operation="create_import",
                retry_after_s=RETRY_AFTER_S,
                count=CONCURRENT_IMPORTS,
            )
        ),
        check_429,
        count=2 * CONCURRENT_IMPORTS,
        runs=tuple(f"rel-rate-{i}" for i in range(CONCURRENT_IMPORTS)),
        overrides={"upload_concurrency": CONCURRENT_IMPORTS, "batch_max_rows": 1000, "batch_linger_s": 0.5},
    ),
    "hang": Case(
        _rules(*(FaultRule(kind="hang", operation=op, delay_s=HANG_S, count=1) for op in OPS)),
        check_hang,
        logged=lambda sandbox: sum(fired(sandbox, op, "hang") for op in OPS) == len(OPS),
        overrides={"labelbox_request_timeout_s": CLIENT_TIMEOUT_S},
    ),
    "reset": Case(
        _rules(
            FaultRule(kind="reset", operation="create_import", count=2),
            FaultRule(kind="reset", operation="poll_import", count=2),
            FaultRule(kind="reset", operation="status_file", count=1),
        ),
        check_reset,
    ),
    "import-failed": Case(
        _rules(FaultRule(kind="import_failed", count=1, message="Injected: the import FAILED")),
        check_import_failed,
    ),
    "import-failed-poison": Case(
        lambda sent: [FaultRule(kind="import_failed", data_rows=(poison_key(sent),), count=None)],
        check_poison_failed,
    ),
    "row-failure": Case(
        lambda sent: [FaultRule(kind="row_failure", uuids=doomed_rows(sent), count=None)], check_row_failure
    ),
    "status-404-transient": Case(
        _rules(FaultRule(kind="http_status", status=404, operation="status_file", count=2)),
        check_404_transient,
    ),
    "status-404-persistent": Case(
        _rules(FaultRule(kind="http_status", status=404, operation="status_file", count=None)),
        check_404_persistent,
        count=12,
        overrides={"batch_max_rows": 1000, "labelbox_retry_max_s": 3.0},
        every_valid_dead="import_status_unavailable",
    ),
    "graphql-error": Case(
        _rules(
            FaultRule(kind="graphql_error", code="INTERNAL_SERVER_ERROR", operation="create_import", count=2),
            FaultRule(kind="graphql_error", code="INTERNAL_SERVER_ERROR", operation="poll_import", count=2),
        ),
        check_graphql,
    ),
    "lost-response": Case(_rules(FaultRule(kind="lost_response", count=2)), check_lost_response),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_labelbox_fault_loses_nothing(case: str, bootstrap: str, topic: str, sandbox: Sandbox) -> None:
    spec = CASES[case]
    partitions = 2
    sent = stream(spec.count, partitions, spec.runs)
    for rule in spec.faults(sent):
        sandbox.state.add_fault(rule)
    overrides = {"batch_max_rows": 8, **spec.overrides}
    outcome = await run_scenario(case, bootstrap, topic, sandbox, sent, partitions, **overrides)
    await until(lambda: spec.logged(sandbox), timeout_s=HANG_S + 2)
    outcome.extra.update(sandbox_figures(sandbox))
    try:
        outcome.extra.update(spec.check(sandbox, outcome))
        assert_every_fault_fired(sandbox)
        expected = expected_reasons(sent, sandbox)
        if spec.every_valid_dead is not None:
            expected = {origin: spec.every_valid_dead for origin in expected}
        assert_nothing_lost(outcome, expected, topic)
        assert_committed_only_settled(outcome)
        assert_one_import_per_batch(sandbox)
        assert outcome.samples, "the committed offsets were sampled while the fault was active"
    finally:
        print(outcome.figures())


# --- an invalid API key ----------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["at-start", "mid-stream"])
async def test_invalid_api_key_stops_with_status_3_and_commits_only_settled(
    when: str, bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """At start: exit 3 before consuming, nothing committed. Revoked mid-stream (Labelbox answers 401 from
    the 4th import on): exit 3, only settled work committed. Then a worker with a good key finishes."""
    partitions = 2
    sent = stream(36, partitions, RUNS)
    await make_topics(bootstrap, topic, partitions)
    await produce_sent(bootstrap, topic, sent)
    if when == "at-start":
        settings = settings_for(bootstrap, topic, sandbox, labelbox_api_key="revoked-key-0000")
    else:
        settings = settings_for(bootstrap, topic, sandbox, batch_max_rows=8, upload_concurrency=1)
        sandbox.state.add_fault(
            FaultRule(kind="http_status", status=401, operation="create_import", skip=3, count=None)
        )
    ends = ends_of(sent, partitions)
    sampler = CommitSampler(bootstrap, settings.kafka_group_id, topic, partitions, sandbox)
    async with sampler.active(), running(settings) as (_, task):
        status = await asyncio.wait_for(task, timeout=30)
    seen = await committed(bootstrap, settings.kafka_group_id, topic, partitions)
    stored_then = {run: uuids_stored(sandbox, run) for run in RUNS}
    first = sandbox_figures(sandbox)
    assert status == 3, "exit status 3: Labelbox refused the API key"
    if when == "at-start":
        assert seen == {p: None for p in range(partitions)}, "nothing committed"
        assert not sandbox.state.requests("create_import"), "nothing uploaded"
        assert [r.status for r in sandbox.state.requests("user")] == [401]
    else:
        assert sandbox.state.requests("create_import")[-1].status == 401
        assert sum(v or 0 for v in seen.values()) < len(sent), "the unsettled rest was not committed"
    for s in sent:  # whatever was committed was imported
        if s.offset < (seen[s.partition] or 0):
            assert s.uuids <= stored_then[s.run or ""], f"{s.origin} committed but not imported"
    assert await read_dlq(bootstrap, f"{topic}.dlq") == [], "nothing dead-lettered for a refused key"

    sandbox.state.clear_faults()  # a good key: the next worker delivers everything
    good = settings_for(bootstrap, topic, sandbox, batch_max_rows=8)
    started = time.monotonic()
    async with running(good):
        final = await wait_committed(bootstrap, good, ends, timeout_s=60)
    outcome = await outcome_of(
        f"invalid-api-key-{when}",
        sandbox,
        bootstrap,
        topic,
        sent=sent,
        committed=final,
        ends=ends,
        samples=sampler.samples,
        elapsed_s=time.monotonic() - started,
        extra={
            "exit": status,
            "committed_at_exit": sum(v or 0 for v in seen.values()),
            **{f"first_{k}": v for k, v in first.items()},
        },
    )
    try:
        assert_nothing_lost(outcome, {s.origin: None for s in sent}, topic)
        assert_committed_only_settled(outcome)
    finally:
        print(outcome.figures())


# --- every Labelbox fault at once ------------------------------------------------------------------

INVALID = (
    (b"{not json", "invalid_json"),
    (b"\xff\xfe garbage", "invalid_utf8"),
    (orjson.dumps(message(bbox(confidence=7))), "out_of_range"),
    (orjson.dumps(message({"type": "hexagon", "name": "h"})), "unknown_prediction_type"),
)


def mixed_faults(sent: list[Sent]) -> list[FaultRule]:
    return [
        FaultRule(kind="http_status", status=500, operation="create_import", count=2),
        FaultRule(kind="http_status", status=502, operation="poll_import", count=2, skip=1),
        FaultRule(kind="http_status", status=503, operation="status_file", count=2),
        FaultRule(kind="rate_limit", operation="create_import", retry_after_s=0.5, count=2, skip=2),
        FaultRule(kind="hang", operation="poll_import", delay_s=HANG_S, count=1, skip=3),
        FaultRule(kind="reset", operation="create_import", count=1, skip=4),
        FaultRule(kind="reset", operation="status_file", count=1, skip=2),
        FaultRule(kind="graphql_error", operation="poll_import", count=2, skip=4),
        FaultRule(kind="http_status", status=404, operation="status_file", count=2, skip=4),
        FaultRule(kind="latency", operation="any", delay_s=0.3, count=6, skip=2),
        FaultRule(kind="import_failed", count=1, skip=1),  # not about content: the halves go through
        FaultRule(kind="import_failed", data_rows=(poison_key(sent),), count=None),  # about one message
        FaultRule(kind="row_failure", fraction=0.05, count=None),
        FaultRule(kind="lost_response", count=1, skip=3),
        FaultRule(kind="slow_import", delay_s=0.5, count=2, skip=2),
    ]


async def test_all_labelbox_faults_mixed_lose_nothing(bootstrap: str, topic: str, sandbox: Sandbox) -> None:
    partitions = 2
    sent = stream(90, partitions, RUNS, invalid=INVALID)
    for rule in mixed_faults(sent):
        sandbox.state.add_fault(rule)
    outcome = await run_scenario(
        "mixed",
        bootstrap,
        topic,
        sandbox,
        sent,
        partitions,
        batch_max_rows=10,
        labelbox_request_timeout_s=CLIENT_TIMEOUT_S,
    )
    await until(lambda: fired(sandbox, "poll_import", "hang") == 1, timeout_s=HANG_S + 2)
    outcome.extra.update(sandbox_figures(sandbox))
    reasons = Counter(r.headers[H_REASON] for r in outcome.dlq)
    outcome.extra["dlq_reasons"] = ",".join(f"{k}:{v}" for k, v in sorted(reasons.items()))
    try:
        assert_every_fault_fired(sandbox)
        assert {"import_failed", "labelbox_rejected"} <= set(reasons), "both Labelbox verdicts occurred"
        assert_nothing_lost(outcome, expected_reasons(sent, sandbox), topic)
        assert_committed_only_settled(outcome)
        assert_one_import_per_batch(sandbox)
    finally:
        print(outcome.figures())


# --- 2. broker faults: the link to the broker cut mid-stream ---------------------------------------

OUTAGE_S = 10.0
#: Session timeouts the outage runs with. Apache Kafka expires a member whose heartbeats stop for
#: longer than the session timeout, so with the default 45 s it keeps the worker through the 10 s cut
#: and with the tests' 6 s it rebalances; the embedded broker needs the short one (it holds a join for
#: half of it) and keeps the member through the cut all the same.
OUTAGE_SESSIONS_MS = [45_000, 6_000] if APACHE_KAFKA else [6_000]


@contextlib.asynccontextmanager
async def broker_behind_proxy() -> AsyncIterator[tuple[str, TcpProxy]]:
    """A dedicated broker (embedded, or Apache Kafka) that listens on one port and advertises the proxy's.

    Kafka clients connect to the address the metadata advertises, so every connection (the worker's
    consumer, coordinator, DLQ producer, and this test's producer and offset reads) goes through the
    proxy; cutting the proxy cuts the broker off for everybody, as a network partition would.
    """
    listen, advertised = free_port(), free_port()
    if APACHE_KAFKA:
        async with _apache_kafka_behind_proxy(listen, advertised) as behind:
            yield behind
        return
    command = [
        broker_binary(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{listen}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised}",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    proxy = TcpProxy(listen, port=advertised)
    try:
        assert await until(lambda: accepts(listen, 0.2) or process.returncode is not None, timeout_s=20)
        assert process.returncode is None, f"the broker exited with status {process.returncode}"
        await proxy.start()
        yield f"127.0.0.1:{proxy.port}", proxy
    finally:
        await proxy.stop()
        await stop_process(process)


@contextlib.asynccontextmanager
async def _apache_kafka_behind_proxy(listen: int, advertised: int) -> AsyncIterator[tuple[str, TcpProxy]]:
    kafka = ApacheKafka(listen, advertised_port=advertised)
    # Started from this (the main) thread, which the JVM's parent-death signal is tied to; blocks the
    # loop for the few seconds of a start, before anything else runs in it.
    kafka.start()
    proxy = TcpProxy(listen, port=advertised)
    try:
        await proxy.start()
        yield f"127.0.0.1:{proxy.port}", proxy
    finally:
        await proxy.stop()
        kafka.stop()


@dataclass
class Probe:
    t: float
    live: bool
    ready: bool
    readyz: int | None
    running: bool


async def probe(service: Any, task: asyncio.Task[int], http: aiohttp.ClientSession) -> Probe:
    health = service.pipeline.health()
    status = None
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(f"http://127.0.0.1:{service.ops.port}/readyz") as response:
            status = response.status
    return Probe(time.monotonic(), health["live"], health["ready"], status, not task.done())


async def probe_for(
    service: Any, task: asyncio.Task[int], http: aiohttp.ClientSession, seconds: float
) -> list[Probe]:
    probes = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probes.append(await probe(service, task, http))
        await asyncio.sleep(0.25)
    return probes


async def first_true_at(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """When (monotonic) ``condition`` first held, polling every 0.1 s; None if not within the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        await asyncio.sleep(0.1)
    return None


def generation(service: Any) -> tuple[int, str]:
    coordinator = service.pipeline._consumer._coordinator
    return coordinator.generation, coordinator.member_id


@pytest.mark.parametrize("session_ms", OUTAGE_SESSIONS_MS)
async def test_broker_outage_makes_the_worker_unready_then_it_finishes_the_stream(
    topic: str, session_ms: int
) -> None:
    rebalance_expected = APACHE_KAFKA and session_ms < OUTAGE_S * 1000
    partitions = 2
    first = stream(240, partitions, RUNS)
    later_count = 60
    async with (
        broker_behind_proxy() as (bootstrap, proxy),
        Sandbox(api_key=API_KEY, processing_delay_s=0.05) as sandbox,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
    ):
        # Labelbox slow enough that imports are in flight (and rows rejected, DLQ writes due) at the cut.
        sandbox.state.add_fault(FaultRule(kind="latency", operation="create_import", delay_s=0.3, count=None))
        sandbox.state.add_fault(FaultRule(kind="row_failure", fraction=0.05, count=None))
        await make_topics(bootstrap, topic, partitions)
        await produce_sent(bootstrap, topic, first)
        settings = settings_for(
            bootstrap,
            topic,
            sandbox,
            batch_max_rows=10,
            upload_concurrency=2,
            kafka_session_timeout_ms=session_ms,
        )
        sampler = CommitSampler(bootstrap, settings.kafka_group_id, topic, partitions, sandbox)
        started = time.monotonic()
        async with sampler.active(), running(settings) as (service, task):
            mid = await until(lambda: len(sandbox.state.imports) >= 4, timeout_s=30)
            assert mid, "the stream got going"
            assert (await probe(service, task, http)).ready, "ready before the cut"
            before = generation(service)
            committed_at_cut = dict(sampler.samples[-1].committed) if sampler.samples else {}
            await proxy.cut()
            during = await probe_for(service, task, http, OUTAGE_S)
            await proxy.restore()
            restored_at = time.monotonic()
            ready_again = asyncio.create_task(first_true_at(lambda: service.pipeline.health()["ready"], 30))
            rest = stream(len(first) + later_count, partitions, RUNS)[len(first) :]
            await produce_sent(bootstrap, topic, rest)
            sent = first + rest
            ends = ends_of(sent, partitions)
            final = await wait_committed(bootstrap, settings, ends, timeout_s=90)
            ready_at = await ready_again
            assert ready_at is not None, "ready again once the broker is back"
            ready_again_s = ready_at - restored_at
            after = await probe_for(service, task, http, 0.5)
            after_gen = generation(service)
        status = task.result() if task.done() else None
        elapsed = time.monotonic() - started
        outcome = await outcome_of(
            f"broker-outage-session-{session_ms // 1000}s",
            sandbox,
            bootstrap,
            topic,
            sent=sent,
            committed=final,
            ends=ends,
            samples=sampler.samples,
            elapsed_s=elapsed,
        )
        unready = [p for p in during if not p.ready]
        outcome.extra.update(
            {
                "outage_s": OUTAGE_S,
                "committed_at_cut": sum(v or 0 for v in committed_at_cut.values()),
                "unready_probes": f"{len(unready)}/{len(during)}",
                "unready_after_s": round(unready[0].t - during[0].t, 1) if unready else None,
                "ready_again_s": round(ready_again_s, 1),
                "generation": f"{before[0]}->{after_gen[0]}",
                "dlq_duplicates": len(outcome.dlq) - len(outcome.dlq_by_origin()),
            }
        )
        try:
            assert all(p.running and p.live for p in during + after), "the worker never crashed"
            assert status == 0, "a clean exit after the outage"
            assert unready, "the worker reported not ready while cut off from the broker"
            if rebalance_expected:
                assert after_gen[0] > before[0], "Apache Kafka expired the member: a new generation"
            else:
                assert after_gen == before, "no rebalance: the same generation and member id"
            assert all(p.readyz == 503 for p in unready), "/readyz answered 503 while not ready"
            assert_nothing_lost_allowing_redelivery(outcome, expected_reasons(sent, sandbox), topic)
            assert_committed_only_settled(outcome)
        finally:
            print(outcome.figures())


def assert_nothing_lost_allowing_redelivery(
    outcome: Outcome, expected: dict[Origin, str | None], topic: str
) -> None:
    """As ``assert_nothing_lost``, but a message redelivered after a rebalance may be dead-lettered twice
    (at-least-once): every copy must then carry the expected reason."""
    dead = outcome.dlq_by_origin()
    assert not outcome.lost(), f"lost: {[s.origin for s in outcome.lost()]}"
    for s in outcome.sent:
        reason = expected[s.origin]
        if reason is None:
            assert outcome.imported(s), f"{s.origin} should be imported"
            assert s.origin not in dead, f"{s.origin} was imported and dead-lettered"
        else:
            assert s.origin in dead, f"{s.origin} should be in the DLQ ({reason})"
            for record in dead[s.origin]:
                assert (record.headers[H_REASON], record.headers[H_TOPIC]) == (reason, topic)
                assert record.value == s.value


# --- 4. a slow Labelbox: bounded memory, backpressure, no rebalance --------------------------------

SLOW_FOR_S, SLOW_DELAY_S = 60.0, 5.0
BUFFER_MAX_BYTES = 256 * 1024
MAX_POLL_RECORDS = 50
#: What the worker process may grow by, besides the buffer: aiokafka's fetch responses (fetch_max_bytes
#: is 1 MiB here; aiokafka holds a response about three times while decoding it), HTTP and Kafka client
#: buffers, thread stacks, and the allocator keeping freed arenas. About 10 MiB measured. Without
#: backpressure the whole backlog would be fetched and converted during the slow minute, its values
#: and NDJSON lines held in batches waiting for an upload slot: over 32 MiB.
RSS_CONSTANT_BYTES = 24 * 1024 * 1024
BACKLOG = 2000  # messages of ~8.4 KB: a 16 MiB backlog, 64x the buffer


def heavy_value(run: str, i: int) -> bytes:
    """~8.4 KB: a box and an 8000-character caption."""
    text = {"type": "text", "name": "caption", "answer": f"{i:06d} " + "x" * 8000}
    return orjson.dumps(message(bbox(), text, model_run_id=run, data_row={"global_key": f"slow-{i}.jpg"}))


@dataclass
class MonitoredWorker:
    """A worker process running ``tests.support.monitored_worker``: its monitor samples and its JSON log."""

    running: RunningWorker
    monitor_path: Path

    @property
    def log_path(self) -> Path:
        return self.running.log_path

    def samples(self) -> list[dict[str, Any]]:
        return read_jsonl(self.monitor_path)

    def events(self, *names: str) -> list[dict[str, Any]]:
        return self.running.events(*names)

    async def stop(self, timeout_s: float) -> int:
        """SIGTERM and wait for the exit status (graceful drain)."""
        self.running.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.running.process.wait(), timeout_s)


@contextlib.asynccontextmanager
async def monitored_worker(settings: Settings, directory: Path) -> AsyncIterator[MonitoredWorker]:
    """``tests.support.monitored_worker`` as :func:`worker_process` runs a worker, sampling into
    ``directory/monitor.jsonl``."""
    monitor_path = directory / "monitor.jsonl"
    module = ("tests.support.monitored_worker",)
    async with worker_process(
        settings, directory, module=module, reliability_monitor=monitor_path
    ) as running:
        yield MonitoredWorker(running, monitor_path)


@dataclass
class Window:
    """When the slow minute was, on the monotonic clock (monitor samples) and the wall clock (logs)."""

    start: float = 0.0
    end: float = 0.0
    start_wall: float = 0.0
    end_wall: float = 0.0

    def open(self) -> None:
        self.start, self.start_wall = time.monotonic(), time.time()

    def close(self) -> None:
        self.end, self.end_wall = time.monotonic(), time.time()


def slow_settings(bootstrap: str, topic: str, sandbox: Sandbox) -> Settings:
    return settings_for(
        bootstrap,
        topic,
        sandbox,
        buffer_max_bytes=BUFFER_MAX_BYTES,
        kafka_max_poll_records=MAX_POLL_RECORDS,
        batch_max_bytes=64 * 1024,
        batch_linger_s=0.05,
        labelbox_poll_interval_s=0.02,
        labelbox_request_timeout_s=SLOW_DELAY_S * 4,
        labelbox_retry_max_s=60.0,
    )


def buffered_cost(key: bytes, value: bytes) -> int:
    """The most a record may count for in the worker's buffered bytes: its raw bytes plus its converted
    NDJSON lines (they live as long as the record), with 200 bytes per record and 1 KiB per line for
    the bookkeeping around them."""
    decoded = decode(value)
    assert not isinstance(decoded, Rejection)
    lines = convert(decoded)
    return len(key) + len(value) + 200 + sum(len(line.data) + 1024 for line in lines)


def slow_figures(
    worker: MonitoredWorker, window: Window, baseline_kib: int, largest: int, stopped_at: float
) -> dict[str, Any]:
    """``largest``: the largest ``buffered_cost`` of a record; the buffer may exceed its bound by one fetch
    of such records (the fetch that fills it)."""
    samples = [s for s in worker.samples() if s["t"] < stopped_at]
    slow = [s for s in samples if window.start <= s["t"] <= window.end]
    # A resume is followed by a fetch that pauses again within one loop turn: count them in the logs.
    toggles = worker.events("fetch_paused", "fetch_resumed")
    paused_at = [e["buffered_bytes"] for e in toggles if e["event"] == "fetch_paused"]
    buffer_bound = BUFFER_MAX_BYTES + MAX_POLL_RECORDS * largest
    return {
        "buffer_max_kib": BUFFER_MAX_BYTES // 1024,
        "peak_buffered_kib": max([s["buffered"] for s in samples] + paused_at) // 1024,
        "buffer_bound_kib": buffer_bound // 1024,
        "rss_baseline_mib": round(baseline_kib / 1024, 1),
        "rss_growth_mib": round((max(s["hwm_kib"] for s in samples) - baseline_kib) / 1024, 1),
        "rss_bound_mib": round((buffer_bound + RSS_CONSTANT_BYTES) / 2**20, 1),
        "pauses": sum(1 for e in toggles if e["event"] == "fetch_paused"),
        "resumes": sum(1 for e in toggles if e["event"] == "fetch_resumed"),
        "pauses_while_slow": sum(1 for s in slow if s["paused"] > 0),
        "resumes_while_slow": sum(
            1
            for e in toggles
            if e["event"] == "fetch_resumed" and window.start_wall <= e["ts"] <= window.end_wall
        ),
        "consumed_while_slow": int(slow[-1]["consumed"] - slow[0]["consumed"]) if slow else 0,
        "paused_at_end": samples[-1]["paused"],
        "generations": len({(s["generation"], s["member"]) for s in samples if s["joined"]}),
        "revokes": len([e for e in worker.events("partitions_revoked") if e.get("partitions")]),
        "assignments": len(worker.events("partitions_assigned")),
    }


async def test_slow_labelbox_keeps_memory_bounded_pauses_and_never_rebalances(
    bootstrap: str, topic: str, tmp_path: Path
) -> None:
    """Labelbox answers every request after 5 s for a minute, with a 16 MiB backlog and a 256 KiB buffer."""
    partitions = 2
    values = [(RUNS[i % len(RUNS)], heavy_value(RUNS[i % len(RUNS)], i)) for i in range(BACKLOG)]
    sent = [
        Sent(i % partitions, i // partitions, run.encode(), value, run, uuids_of(value))
        for i, (run, value) in enumerate(values)
    ]
    ends = ends_of(sent, partitions)
    window = Window()
    started = time.monotonic()
    async with Sandbox(api_key=API_KEY, processing_delay_s=0.01) as sandbox:
        await make_topics(bootstrap, topic, partitions)
        settings = slow_settings(bootstrap, topic, sandbox)
        async with monitored_worker(settings, tmp_path) as worker:
            joined = await until(lambda: any(s["joined"] for s in worker.samples()), timeout_s=30)
            assert joined, f"the worker joined the group: {worker.log_path.read_text()[-2000:]}"
            await asyncio.sleep(1.0)
            baseline_kib = max(s["rss_kib"] for s in worker.samples()[-10:])
            slow = FaultRule(kind="latency", delay_s=SLOW_DELAY_S, duration_s=SLOW_FOR_S, count=None)
            sandbox.state.add_fault(slow)
            window.open()
            await produce_sent(bootstrap, topic, sent)
            await asyncio.sleep(max(0.0, window.start + SLOW_FOR_S - time.monotonic()))
            window.close()
            final = await wait_committed(bootstrap, settings, ends, timeout_s=90)
            await asyncio.sleep(0.5)  # a few monitor samples of the settled, resumed worker
            stopped_at = time.monotonic()
            status = await worker.stop(settings.shutdown_timeout_s + 10)
        largest = max(buffered_cost(run.encode(), value) for run, value in values)
        figures = slow_figures(worker, window, baseline_kib, largest, stopped_at)
        outcome = await outcome_of(
            "slow-labelbox",
            sandbox,
            bootstrap,
            topic,
            sent=sent,
            committed=final,
            ends=ends,
            samples=[],
            elapsed_s=time.monotonic() - started,
            extra={
                "backlog_mib": round(sum(len(v) for _, v in values) / 2**20, 1),
                **figures,
                "exit": status,
            },
        )
    try:
        assert status == 0
        assert figures["pauses_while_slow"] > 0, "fetching paused while Labelbox was slow"
        assert figures["resumes"] > 0, "and resumed as imports settled"
        assert 0 < figures["consumed_while_slow"] < len(sent), "throttled, not stopped, nor unbounded"
        assert figures["paused_at_end"] == 0, "resumed once Labelbox was fast again"
        assert figures["peak_buffered_kib"] <= figures["buffer_bound_kib"], "buffer plus one fetch at most"
        assert figures["rss_growth_mib"] <= figures["rss_bound_mib"], "RSS bounded by buffer + a constant"
        assert figures["generations"] == 1, "the group generation (and member id) never changed"
        assert (figures["revokes"], figures["assignments"]) == (0, 1), "no rebalance"
        assert_nothing_lost(outcome, {s.origin: None for s in sent}, topic)
        assert outcome.committed == ends
        assert outcome.reuploaded == 0
    finally:
        print(outcome.figures())


# --- one model run's Labelbox trouble must not hold up the others -----------------------------------


async def test_one_model_runs_ontology_outage_does_not_block_other_model_runs(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """DESIGN: "Retrying never blocks other model runs". Run B's ontology is cached; run A's cannot be
    fetched for 20 s (its model run query answers 503). A's message comes first on the partition, B's
    after it: B's must still be imported meanwhile (their commit waits for A's, as offsets must)."""
    partitions = 2
    await make_topics(bootstrap, topic, partitions)
    warm = [(b"hol-b", valid_value("hol-b", i, "warm"), 1) for i in range(5)]
    later_b = [(b"hol-b", valid_value("hol-b", i, "later"), 1) for i in range(10)]
    blocked_a = (b"hol-a", valid_value("hol-a", 0), 1)  # ahead of run B's messages, same partition
    expected_b = frozenset().union(*(uuids_of(v) for _, v, _ in later_b))
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings):
        await produce(bootstrap, topic, warm)
        warmed = await wait_committed(bootstrap, settings, {0: 0, 1: len(warm)}, timeout_s=30)
        assert warmed[1] == len(warm), "run B's ontology is cached and its first messages imported"
        sandbox.state.add_fault(
            FaultRule(kind="http_status", status=503, operation="model_run", count=None, duration_s=20)
        )
        blocked_from = time.monotonic()
        await produce(bootstrap, topic, [blocked_a, *later_b])
        flowed = await until(lambda: expected_b <= uuids_stored(sandbox, "hol-b"), timeout_s=8)
        waited = time.monotonic() - blocked_from
        print(f"RELIABILITY faults-ontology-outage-one-run: other_run_flowed={flowed} waited_s={waited:.1f}")
        assert flowed, f"run B waited {waited:.1f} s behind run A's ontology outage"
        end = len(warm) + 1 + len(later_b)
        seen = await wait_committed(bootstrap, settings, {0: 0, 1: end}, timeout_s=40)
        assert seen[1] == end, "then all of it, once A's ontology is back"
    assert uuids_of(blocked_a[1]) <= uuids_stored(sandbox, "hol-a")
