"""Reliability: nothing is lost. The worker (``python -m worker run``) and the local Labelbox-compatible
server (``python -m labelbox_sandbox``) run as real subprocesses on loopback; the test kills, stops and
restarts them, then checks what the sandbox holds, the group's committed offsets and the DLQ.

Each scenario prints one greppable line (run pytest with ``-s``)::

    RELIABILITY <scenario>: sent=… valid=… invalid=… predictions=… imported=… reuploaded=… …

``imported`` counts distinct stored uuids; ``reuploaded`` is the sandbox's count of uuids uploaded
more than once (at-least-once duplicates, which carry the same uuids and replace, never duplicate);
``extra_uploads`` is how many uploads were repeats; ``dlq_duplicates`` counts DLQ records beyond one
per origin offset (allowed after a crash, reported).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.embedded import create_topics
from tests.support.kafka_helpers import committed, produce
from tests.support.processes import Processes, SandboxProcess, WorkerProcess, http_text
from tests.support.waiting import until_blocking
from worker.convert import convert
from worker.decode import Rejection, decode
from worker.dlq import H_OFFSET, H_PARTITION, H_REASON

pytestmark = pytest.mark.integration

#: Distinctive, so that any leak into a log or a metric is unmistakable.
API_KEY = "lbsk-RELIABILITY-9f3e1c7a5b2d4e60-SECRET"
RUNS = ("rel-run-a", "rel-run-b", "rel-run-c")
SEED = 20_240_611
SHUTDOWN_TIMEOUT_S = 4.0
SHUTDOWN_SLACK_S = 3.0
#: Log files and /metrics bodies of every scenario of this module, for the secret scan.
SCANNED_LOGS: list[Path] = []
SCANNED_METRICS: list[str] = []
Record = tuple[bytes | None, bytes, int | None]
Origin = tuple[int, int]

INVALID = (
    (b"not json at all", "invalid_json"),
    (b"\xff\xfe\x00garbage", "invalid_utf8"),
    (
        orjson.dumps(
            {
                "model_run_id": RUNS[0],
                "data_row": {"global_key": "bad.jpg"},
                "predictions": [{"type": "radio", "name": "q", "confidence": 7, "answer": {"name": "a"}}],
            }
        ),
        "out_of_range",
    ),
    (
        orjson.dumps(
            {
                "model_run_id": RUNS[1],
                "data_row": {"global_key": "bad.jpg"},
                "predictions": [{"type": "hexagon", "name": "h"}],
            }
        ),
        "unknown_prediction_type",
    ),
)


# --- what was sent, and what must come out -----------------------------------------------------


def valid_message(tag: str, i: int) -> bytes:
    """A small valid message: one box and one radio question (two NDJSON lines)."""
    run = RUNS[i % len(RUNS)]
    box = {"top": i % 500, "left": (7 * i) % 800, "height": 10 + i % 90, "width": 20 + i % 70}
    return orjson.dumps(
        {
            "model_run_id": run,
            "data_row": {"global_key": f"{tag}-img-{i}.jpg"},
            "message_id": f"{tag}-{i}",
            "predictions": [
                {"type": "bbox", "name": "car", "confidence": round((i % 100) / 100, 2), "bbox": box},
                {"type": "radio", "name": "weather", "answer": {"name": ("sun", "rain", "fog")[i % 3]}},
            ],
        }
    )


@dataclass
class Ledger:
    """Every record produced (offset = its index in its partition) and what each one must become."""

    partitions: int
    ends: dict[int, int] = field(default_factory=dict)
    valid: dict[Origin, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    invalid: dict[Origin, str] = field(default_factory=dict)
    invalid_values: dict[Origin, bytes] = field(default_factory=dict)
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: int = 0

    def __post_init__(self) -> None:
        self.ends = dict.fromkeys(range(self.partitions), 0)

    def chunk(self, tag: str, valid: int, invalid: int, rng: random.Random) -> list[Record]:
        """``valid`` new valid messages with ``invalid`` invalid ones at random places, round robin."""
        values: list[tuple[bytes, str | None]] = [
            (valid_message(tag, self.messages + i), None) for i in range(valid)
        ]
        for j in range(invalid):
            values.insert(rng.randrange(len(values) + 1), INVALID[(self.messages + j) % len(INVALID)])
        records: list[Record] = []
        for value, reason in values:
            partition = self.messages % self.partitions
            key = self._note((partition, self.ends[partition]), value, reason)
            self.ends[partition] += 1
            self.messages += 1
            records.append((key, value, partition))
        return records

    def _note(self, origin: Origin, value: bytes, reason: str | None) -> bytes:
        """Record what ``value`` must become; returns its key (the model run id, as producers do)."""
        decoded = decode(value)
        if isinstance(decoded, Rejection):
            assert decoded.reason == reason, "the invalid samples have the reason they are meant to have"
            self.invalid[origin] = decoded.reason
            self.invalid_values[origin] = value
            return b"invalid"
        assert reason is None, "a valid sample"
        lines = convert(decoded)
        self.valid[origin] = (decoded.model_run_id, tuple(line.uuid for line in lines))
        run = self.expected.setdefault(decoded.model_run_id, {})
        for line in lines:
            assert line.uuid not in run, "the stream must not repeat a uuid"
            run[line.uuid] = line.body
        return decoded.model_run_id.encode()

    @property
    def predictions(self) -> int:
        return sum(len(lines) for lines in self.expected.values())


def send(bootstrap: str, topic: str, records: list[Record]) -> None:
    assert asyncio.run(produce(bootstrap, topic, records)) == len(records)


def committed_now(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    seen = asyncio.run(committed(bootstrap, group, topic, partitions))
    return {p: offset or 0 for p, offset in seen.items()}


def wait_committed(
    bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout_s: float
) -> dict[int, int]:
    """Poll the committed offsets (bounded) until they reach ``ends``; returns the last seen."""
    seen: dict[int, int] = {}

    def reached() -> bool:
        nonlocal seen
        seen = committed_now(bootstrap, group, topic, len(ends))
        return all(seen[p] >= end for p, end in ends.items())

    until_blocking(reached, timeout_s, every_s=0.5)
    return seen


@dataclass(frozen=True)
class DeadLetterRecord:
    origin: Origin
    reason: str
    value: bytes | None


async def _read_dlq(bootstrap: str, topic: str, at_least: int, timeout_s: float) -> list[DeadLetterRecord]:
    """Every record of the one-partition DLQ: read until the fetch highwater (bounded in time)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        out: list[DeadLetterRecord] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(tp, timeout_ms=200)
            for record in fetched.get(tp, []):
                headers = {k: v.decode() for k, v in record.headers}
                origin = (int(headers[H_PARTITION]), int(headers[H_OFFSET]))
                out.append(DeadLetterRecord(origin, headers[H_REASON], record.value))
            highwater = consumer.highwater(tp)
            if len(out) >= at_least and highwater is not None and await consumer.position(tp) >= highwater:
                break
        return out
    finally:
        await consumer.stop()


def read_dlq(bootstrap: str, topic: str, at_least: int) -> list[DeadLetterRecord]:
    return asyncio.run(_read_dlq(bootstrap, f"{topic}.dlq", at_least, timeout_s=20.0))


# --- the verdict ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What came out, against the ledger; ``figures()`` is the printed line."""

    sent: int
    valid: int
    invalid: int
    predictions: int
    imported: int = 0
    missing: int = 0
    unexpected: int = 0
    wrong_body: int = 0
    reuploaded: int = 0
    extra_uploads: int = 0
    dlq: int = 0
    dlq_duplicates: int = 0
    dlq_missing: int = 0
    dlq_unexpected: int = 0
    dlq_wrong_reason: int = 0
    dlq_wrong_value: int = 0
    committed: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.missing + self.dlq_missing

    def figures(self, label: str, **extra: object) -> str:
        fields = {
            "sent": self.sent,
            "valid": self.valid,
            "invalid": self.invalid,
            "predictions": self.predictions,
            "imported": self.imported,
            "reuploaded": self.reuploaded,
            "extra_uploads": self.extra_uploads,
            "dlq": self.dlq,
            "dlq_duplicates": self.dlq_duplicates,
            "lost": self.lost,
            "unexpected": self.unexpected + self.dlq_unexpected,
            "committed": sum(self.committed.values()),
            "end": sum(self.ends.values()),
            **extra,
        }
        return f"RELIABILITY {label}: " + " ".join(f"{k}={v}" for k, v in fields.items())

    def assert_nothing_lost(self) -> None:
        assert self.committed == self.ends, "every partition committed to its end"
        assert self.missing == 0, "every valid prediction is stored in the sandbox"
        assert self.unexpected == 0, "the sandbox holds no uuid that was not sent"
        assert self.wrong_body == 0, "what the sandbox holds equals the converter's output"
        assert self.dlq_missing == 0, "every invalid message is in the DLQ"
        assert self.dlq_unexpected == 0, "no valid message was dead-lettered"
        assert self.dlq_wrong_reason == 0, "each invalid message has its reason code"
        assert self.dlq_wrong_value == 0, "the DLQ keeps the original value, byte for byte"


def judge(
    ledger: Ledger, sandbox: SandboxProcess, dlq: list[DeadLetterRecord], seen: dict[int, int]
) -> Verdict:
    verdict = Verdict(
        sent=ledger.messages,
        valid=len(ledger.valid),
        invalid=len(ledger.invalid),
        predictions=ledger.predictions,
        committed=seen,
        ends=dict(ledger.ends),
    )
    _judge_sandbox(verdict, ledger, sandbox)
    _judge_dlq(verdict, ledger, dlq)
    return verdict


def _judge_sandbox(verdict: Verdict, ledger: Ledger, sandbox: SandboxProcess) -> None:
    counts = sandbox.counts()
    for run in set(ledger.expected) | set(counts):
        expected = ledger.expected.get(run, {})
        stored = sandbox.stored(run)
        verdict.imported += len(stored.keys() & expected.keys())
        verdict.missing += len(expected.keys() - stored.keys())
        verdict.unexpected += len(stored.keys() - expected.keys())
        verdict.wrong_body += sum(1 for u, body in expected.items() if u in stored and stored[u] != body)
        run_counts = counts.get(run, {})
        verdict.reuploaded += int(run_counts.get("reuploaded_uuids", 0))
        verdict.extra_uploads += int(run_counts.get("uploads", 0)) - int(run_counts.get("uuids", 0))


def _judge_dlq(verdict: Verdict, ledger: Ledger, dlq: list[DeadLetterRecord]) -> None:
    per_origin = Counter(record.origin for record in dlq)
    verdict.dlq = len(dlq)
    verdict.dlq_duplicates = sum(n - 1 for n in per_origin.values())
    verdict.dlq_missing = len(ledger.invalid.keys() - per_origin.keys())
    verdict.dlq_unexpected = len(per_origin.keys() - ledger.invalid.keys())
    verdict.dlq_wrong_reason = sum(1 for r in dlq if ledger.invalid.get(r.origin, r.reason) != r.reason)
    verdict.dlq_wrong_value = sum(1 for r in dlq if ledger.invalid_values.get(r.origin, r.value) != r.value)


# --- processes --------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One scenario's broker topic, sandbox process and worker settings."""

    bootstrap: str
    topic: str
    procs: Processes
    sandbox: SandboxProcess
    partitions: int
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return f"group-{self.topic}"

    def worker(self, name: str, *, serves: bool = True, **overrides: object) -> WorkerProcess:
        """Start ``python -m worker run``; unless ``serves`` is False (it is expected to refuse to
        start), wait until its ops server serves and scrape /metrics once."""
        settings = {
            "kafka_bootstrap_servers": self.bootstrap,
            "kafka_topic": self.topic,
            "kafka_dlq_topic": f"{self.topic}.dlq",
            "kafka_group_id": self.group,
            "kafka_session_timeout_ms": 6_000,  # the embedded broker holds a join for half of it
            "labelbox_api_key": API_KEY,
            "labelbox_graphql_url": self.sandbox.graphql_url,
            "labelbox_poll_interval_s": 0.1,
            "labelbox_retry_max_s": 10.0,
            "ensure_data_rows": True,  # the sandbox, like Labelbox, FAILs rows not in the model run
            "batch_linger_s": 0.3,
            "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
            "log_format": "json",
            **self.settings,
            **overrides,
        }
        worker = self.procs.worker(name, **settings)
        if not serves:
            return worker
        assert worker.wait_for_event("metrics_serving", 30), f"{worker.name} did not start:\n{worker.tail()}"
        worker.scrape_metrics()
        return worker

    def committed(self) -> dict[int, int]:
        return committed_now(self.bootstrap, self.group, self.topic, self.partitions)

    def wait_committed(self, ledger: Ledger, timeout_s: float) -> dict[int, int]:
        return wait_committed(self.bootstrap, self.group, self.topic, ledger.ends, timeout_s)

    def verdict(self, ledger: Ledger) -> Verdict:
        dlq = read_dlq(self.bootstrap, self.topic, at_least=len(ledger.invalid))
        return judge(ledger, self.sandbox, dlq, self.committed())


def scenario(bootstrap: str, topic: str, procs: Processes, partitions: int, delay_s: float) -> Scenario:
    asyncio.run(create_topics(bootstrap, {topic: partitions, f"{topic}.dlq": 1}))
    sandbox = procs.sandbox(API_KEY, processing_delay_s=delay_s)
    return Scenario(bootstrap, topic, procs, sandbox, partitions)


def collect_for_secret_scan(procs: Processes) -> None:
    """Keep every log and /metrics body (scanned at the end of each test and by the secrets test)."""
    SCANNED_LOGS.extend(procs.log_paths())
    SCANNED_METRICS.extend(scrape for w in procs.workers() for scrape in w.metrics_scrapes)


def assert_no_secret(procs: Processes) -> None:
    for path in procs.log_paths():
        assert API_KEY not in path.read_text(errors="replace"), f"the API key leaked into {path.name}"
    for worker in procs.workers():
        assert worker.metrics_scrapes, f"{worker.name}: /metrics was scraped at least once"
        for body in worker.metrics_scrapes:
            assert API_KEY not in body, f"the API key leaked into {worker.name}'s /metrics"


def worker_summary(worker: WorkerProcess) -> str:
    started, finished = worker.count_events("import_started"), worker.count_events("import_finished")
    return f"imports_started={started} imports_finished={finished}"


# --- 1. crash: kill -9 at different phases, restart each time ------------------------------------


def kill_during_fetch(s: Scenario, rng: random.Random) -> WorkerProcess:
    """Right after the group assigned partitions: fetching, converting, first uploads."""
    worker = s.worker("crash")
    assert worker.wait_for_event("partitions_assigned", 40), worker.tail()
    time.sleep(rng.uniform(0.0, 0.3))
    worker.kill9()
    return worker


def kill_during_upload(s: Scenario, rng: random.Random) -> WorkerProcess:
    """While create_import requests are held by the sandbox (latency before the import exists)."""
    fault = s.sandbox.add_fault(kind="latency", operation="create_import", delay_s=4.0, count=None)
    worker = s.worker("crash")
    assert until_blocking(lambda: s.sandbox.fault(fault)["fired"] >= 1, 40), worker.tail()
    time.sleep(rng.uniform(0.1, 1.5))
    worker.kill9()
    s.sandbox.admin("DELETE", f"faults/{fault}")
    return worker


def kill_during_polling(s: Scenario, rng: random.Random) -> WorkerProcess:
    """While imports report RUNNING (slow_import) and the worker polls them."""
    fault = s.sandbox.add_fault(kind="slow_import", operation="create_import", delay_s=5.0, count=None)
    polls_before = len(s.sandbox.admin("GET", "requests?operation=poll_import"))
    worker = s.worker("crash")

    def polling() -> bool:
        fired = s.sandbox.fault(fault)["fired"] >= 1
        return fired and len(s.sandbox.admin("GET", "requests?operation=poll_import")) > polls_before

    assert until_blocking(polling, 40, every_s=0.1), worker.tail()
    time.sleep(rng.uniform(0.2, 1.5))
    worker.kill9()
    s.sandbox.admin("DELETE", f"faults/{fault}")
    return worker


def kill_after_finished_before_settled(s: Scenario, rng: random.Random) -> WorkerProcess:
    """An import FINISHED on Labelbox's side that the worker has not polled yet (slow polling): its
    messages are not settled, nothing of it is committed."""
    known = {record["name"] for record in s.sandbox.imports()}
    worker = s.worker("crash", labelbox_poll_interval_s=2.0)

    def finished_unseen() -> bool:
        finished = {r["name"] for r in s.sandbox.imports() if r["state"] == "FINISHED"} - known
        seen = {e.get("import_name") for e in worker.events() if e.get("event") == "import_finished"}
        return bool(finished - seen)

    assert until_blocking(finished_unseen, 40, every_s=0.03), worker.tail()
    time.sleep(rng.uniform(0.0, 0.3))  # the worker polls every 2 s
    worker.kill9()
    return worker


def kill_after_settled_before_commit(s: Scenario, rng: random.Random) -> WorkerProcess:
    """The moment the worker logs an import settled: its offsets are about to be committed."""
    worker = s.worker("crash")
    assert worker.wait_for_event("import_finished", 40), worker.tail()
    time.sleep(rng.uniform(0.0, 0.15))  # the commit loop coalesces settlements for 0.2 s
    worker.kill9()
    return worker


KILL_PHASES: dict[str, Callable[[Scenario, random.Random], WorkerProcess]] = {
    "fetch": kill_during_fetch,
    "upload": kill_during_upload,
    "polling": kill_during_polling,
    "finished-not-settled": kill_after_finished_before_settled,
    "settled-not-committed": kill_after_settled_before_commit,
}


def test_kill_9_at_every_phase_loses_nothing(bootstrap: str, topic: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    ledger = Ledger(partitions=4)
    with Processes(tmp_path / "crash") as procs:
        s = scenario(bootstrap, topic, procs, partitions=4, delay_s=0.2)
        s.settings = {"batch_max_rows": 150, "kafka_max_poll_records": 100}
        for number, (name, phase) in enumerate(KILL_PHASES.items(), start=1):
            send(bootstrap, topic, ledger.chunk("crash", valid=480, invalid=4, rng=rng))
            worker = phase(s, rng)
            elapsed = worker.killed_at - worker.started_at
            progress = sum(s.committed().values())
            print(
                f"RELIABILITY crash kill#{number} phase={name} t={elapsed:.1f}s {worker_summary(worker)}"
                f" committed={progress}/{ledger.messages}"
            )
        final = s.worker("crash")
        send(bootstrap, topic, ledger.chunk("crash", valid=200, invalid=4, rng=rng))
        s.wait_committed(ledger, timeout_s=60)
        final.scrape_metrics()
        final.terminate()
        status = final.wait(SHUTDOWN_TIMEOUT_S + 15)
        verdict = s.verdict(ledger)
        collect_for_secret_scan(procs)
        print(verdict.figures("crash", kills=len(KILL_PHASES), final_exit=status))
        verdict.assert_nothing_lost()
        assert status == 0, final.tail()
        assert_no_secret(procs)


# --- 2. scale-out and rebalance: three workers, one killed, one added -----------------------------


def assignment(worker: WorkerProcess) -> list[int]:
    """The partitions of the worker's last assignment (empty before the first or after a revoke)."""
    last: list[int] = []
    for entry in worker.events():
        if entry.get("event") == "partitions_assigned":
            last = list(entry.get("partitions") or [])
        elif entry.get("event") == "partitions_revoked":
            last = []
    return last


def stop_all(workers: list[WorkerProcess]) -> list[int | None]:
    for worker in workers:
        worker.scrape_metrics()
        worker.terminate()
    return [worker.wait(SHUTDOWN_TIMEOUT_S + 15) for worker in workers]


def test_scale_out_kill_and_rebalance_lose_nothing(bootstrap: str, topic: str, tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    ledger = Ledger(partitions=6)
    with Processes(tmp_path / "scale") as procs:
        s = scenario(bootstrap, topic, procs, partitions=6, delay_s=0.2)
        s.settings = {"batch_max_rows": 120, "kafka_max_poll_records": 50}
        send(bootstrap, topic, ledger.chunk("scale", valid=600, invalid=6, rng=rng))
        workers = [s.worker(f"scale{n}") for n in (1, 2, 3)]
        shared = until_blocking(lambda: all(assignment(w) for w in workers), 60, every_s=0.2)
        send(bootstrap, topic, ledger.chunk("scale", valid=600, invalid=6, rng=rng))
        victim = rng.choice([w for w in workers if assignment(w)])
        owned = assignment(victim)
        assert victim.wait_for_event("import_started", 30), victim.tail()
        time.sleep(rng.uniform(0.1, 1.0))
        victim.kill9()
        survivors = [w for w in workers if w is not victim]
        send(bootstrap, topic, ledger.chunk("scale", valid=400, invalid=4, rng=rng))
        taken_over = until_blocking(
            lambda: sorted(p for w in survivors for p in assignment(w)) == list(range(6)), 40
        )
        survivors.append(s.worker("scale4"))
        send(bootstrap, topic, ledger.chunk("scale", valid=400, invalid=4, rng=rng))
        s.wait_committed(ledger, timeout_s=60)
        statuses = stop_all(survivors)
        verdict = s.verdict(ledger)
        collect_for_secret_scan(procs)
        print(
            verdict.figures(
                "scale-out",
                workers=len(procs.workers()),
                killed_owned=",".join(map(str, owned)),
                shared_by_3=shared,
                taken_over=taken_over,
                exits=",".join(map(str, statuses)),
            )
        )
        verdict.assert_nothing_lost()
        assert statuses == [0] * len(survivors), [w.tail() for w in survivors]
        assert_no_secret(procs)


# --- 3. SIGTERM mid-stream: drain within the deadline, commit only settled work, exit 0 ------------


def unsettled_below_commit(ledger: Ledger, s: Scenario, seen: dict[int, int]) -> list[Origin]:
    """Origins below the committed offset that are neither fully stored nor dead-lettered."""
    stored = {run: set(s.sandbox.stored(run)) for run in RUNS}
    dead = {record.origin for record in read_dlq(s.bootstrap, s.topic, at_least=0)}
    bad: list[Origin] = []
    for partition, offset in seen.items():
        for origin in ((partition, o) for o in range(offset)):
            if origin in ledger.invalid:
                settled = origin in dead
            else:
                run, uuids = ledger.valid[origin]
                settled = set(uuids) <= stored[run]
            if not settled:
                bad.append(origin)
    return bad


def test_sigterm_mid_stream_exits_0_commits_only_settled_work(
    bootstrap: str, topic: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 3)
    ledger = Ledger(partitions=4)
    with Processes(tmp_path / "sigterm") as procs:
        s = scenario(bootstrap, topic, procs, partitions=4, delay_s=0.2)
        s.settings = {"batch_max_rows": 100, "kafka_max_poll_records": 50}
        send(bootstrap, topic, ledger.chunk("term", valid=800, invalid=8, rng=rng))
        worker = s.worker("term")
        assert worker.wait_for_event("import_finished", 40, at_least=2), worker.tail()
        # From now on uploads are held (nothing stored): the drain cannot settle them by its deadline.
        held = s.sandbox.add_fault(kind="latency", operation="create_import", delay_s=30.0, count=None)
        send(bootstrap, topic, ledger.chunk("term", valid=400, invalid=4, rng=rng))
        assert until_blocking(lambda: s.sandbox.fault(held)["fired"] >= 1, 30), worker.tail()
        worker.scrape_metrics()
        stopped_at = time.monotonic()
        worker.terminate()
        status = worker.wait(SHUTDOWN_TIMEOUT_S + 15)
        took = time.monotonic() - stopped_at
        seen = s.committed()
        unsettled = unsettled_below_commit(ledger, s, seen)
        s.sandbox.clear_faults()
        print(
            f"RELIABILITY sigterm-stop: exit={status} took={took:.1f}s deadline={SHUTDOWN_TIMEOUT_S}s"
            f" committed={sum(seen.values())}/{ledger.messages} unsettled_below_commit={len(unsettled)}"
        )
        assert status == 0, worker.tail()
        assert took <= SHUTDOWN_TIMEOUT_S + SHUTDOWN_SLACK_S, "exit within SHUTDOWN_TIMEOUT_S"
        assert unsettled == [], "everything below the committed offsets is settled"
        assert sum(seen.values()) < ledger.messages, "the stop happened mid-stream"

        restarted = s.worker("term")
        send(bootstrap, topic, ledger.chunk("term", valid=200, invalid=4, rng=rng))
        s.wait_committed(ledger, timeout_s=60)
        statuses = stop_all([restarted])
        verdict = s.verdict(ledger)
        collect_for_secret_scan(procs)
        print(verdict.figures("sigterm", first_exit=status, restart_exit=statuses[0]))
        verdict.assert_nothing_lost()
        assert statuses == [0], restarted.tail()
        assert_no_secret(procs)


REBALANCE_SESSION_TIMEOUT_MS = 8_000
REBALANCE_SHUTDOWN_TIMEOUT_S = 1.0


def test_sigterm_during_a_rebalance_exits_within_the_deadline(
    bootstrap: str, topic: str, tmp_path: Path
) -> None:
    """Kubernetes sends SIGTERM whenever it likes, often during a rollout's rebalances: the process
    must still be gone within SHUTDOWN_TIMEOUT_S (+ slack), or the kubelet SIGKILLs it."""
    rng = random.Random(SEED + 5)
    ledger = Ledger(partitions=2)
    with Processes(tmp_path / "rebalance") as procs:
        s = scenario(bootstrap, topic, procs, partitions=2, delay_s=0.1)
        s.settings = {"kafka_session_timeout_ms": REBALANCE_SESSION_TIMEOUT_MS}
        send(bootstrap, topic, ledger.chunk("rebalance", valid=100, invalid=2, rng=rng))
        crashed = s.worker("rebalance")
        assert crashed.wait_for_event("partitions_assigned", 40), crashed.tail()
        crashed.kill9()  # its membership lingers until the session times out: the next join waits
        joining = s.worker("rebalance", shutdown_timeout_s=REBALANCE_SHUTDOWN_TIMEOUT_S)
        time.sleep(0.3)
        mid_join = not assignment(joining)
        stopped_at = time.monotonic()
        joining.terminate()
        status = joining.wait(REBALANCE_SHUTDOWN_TIMEOUT_S + 30)
        took = time.monotonic() - stopped_at
        drained = [e["ts"] for e in joining.events() if e.get("event") == "worker_drained"]
        collect_for_secret_scan(procs)
        print(
            f"RELIABILITY sigterm-rebalance: exit={status} took={took:.1f}s"
            f" deadline={REBALANCE_SHUTDOWN_TIMEOUT_S}s mid_join={mid_join} drained_logged={bool(drained)}"
        )
        assert mid_join, "SIGTERM arrived while the group join was pending"
        assert status == 0, joining.tail()
        assert_no_secret(procs)
        assert took <= REBALANCE_SHUTDOWN_TIMEOUT_S + SHUTDOWN_SLACK_S, "exit within SHUTDOWN_TIMEOUT_S"


# --- 4. secrets: the API key never appears in logs or metrics -------------------------------------

WRONG_KEY = "lbsk-RELIABILITY-wrong-0d8b2f6e91a7c354"


def test_api_key_never_in_logs_or_metrics(bootstrap: str, topic: str, tmp_path: Path) -> None:
    rng = random.Random(SEED + 4)
    ledger = Ledger(partitions=2)
    with Processes(tmp_path / "secrets") as procs:
        s = scenario(bootstrap, topic, procs, partitions=2, delay_s=0.1)
        misspelled = s.worker("secrets-misspelled", serves=False, labelbox_apikey=API_KEY)
        wrong_key = s.worker("secrets-wrong-key", serves=False, labelbox_api_key=WRONG_KEY)
        exits = (misspelled.wait(20), wrong_key.wait(20))
        send(bootstrap, topic, ledger.chunk("secrets", valid=150, invalid=4, rng=rng))
        for rule in (
            {"kind": "http_status", "status": 500, "operation": "create_import"},
            {"kind": "rate_limit", "retry_after_s": 0.2, "operation": "poll_import"},
            {"kind": "graphql_error", "operation": "create_import", "skip": 1},
            {"kind": "reset", "operation": "poll_import", "skip": 2},
            {"kind": "http_status", "status": 404, "operation": "status_file"},
        ):
            s.sandbox.add_fault(**rule)
        worker = s.worker("secrets", log_level="DEBUG", log_format="text")
        s.wait_committed(ledger, timeout_s=60)
        probes = [http_text(f"{worker.ops_url}/{path}") for path in ("healthz", "readyz")]
        worker.scrape_metrics()
        exits += tuple(stop_all([worker]))
        fired = sum(int(f["fired"]) for f in s.sandbox.admin("GET", "faults"))
        collect_for_secret_scan(procs)
        files = sorted(set(SCANNED_LOGS))
        leaks = [p.name for p in files if API_KEY in p.read_text(errors="replace")]
        leaks += [f"metrics#{i}" for i, body in enumerate(SCANNED_METRICS) if API_KEY in body]
        wrong = [p.name for p in procs.log_paths() if WRONG_KEY in p.read_text(errors="replace")]
        print(
            f"RELIABILITY secrets: log_files={len(files)} metrics_scrapes={len(SCANNED_METRICS)}"
            f" exits={','.join(map(str, exits))} faults_fired={fired} leaks={len(leaks) + len(wrong)}"
        )
        assert exits == (2, 3, 0), [misspelled.tail(), wrong_key.tail(), worker.tail()]
        assert fired == 5, "every error path was taken (transient errors, reset, status file 404)"
        assert all(probe is not None and probe[0] == 200 for probe in probes), probes
        assert leaks == [], f"the API key appears in {leaks}"
        assert wrong == [], f"the refused API key appears in {wrong}"
