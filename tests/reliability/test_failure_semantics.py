"""Labelbox's real failure semantics, end to end over the embedded broker and the local server: no
error shape stalls the stream or stops the worker; one bad model run or one bad message costs only
itself. Each scenario prints a ``RELIABILITY failure-<case>: …`` line (``pytest -s``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from labelbox_sandbox import FaultRule, Sandbox
from tests.support.factories import bbox, message, radio
from tests.support.kafka_helpers import produce, read_dlq
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.convert import convert
from worker.decode import decode
from worker.dlq import H_ERROR, H_IMPORT, H_OFFSET, H_PARTITION, H_REASON
from worker.service import Service

pytestmark = pytest.mark.integration
RUNS = ("run-a", "run-b", "run-c")
PARTITIONS = 2


@dataclass(frozen=True)
class Stream:
    records: list[tuple[bytes, bytes, int]]
    offsets: list[tuple[int, int]]  # (partition, offset) of each record

    @property
    def ends(self) -> dict[int, int]:
        return {p: sum(1 for r in self.records if r[2] == p) for p in range(PARTITIONS)}

    def global_key(self, index: int) -> str:
        return str(orjson.loads(self.records[index][1])["data_row"]["global_key"])

    def uuids(self, where: Callable[[int], bool]) -> dict[str, set[str]]:
        """model run -> the uuids of the records whose index ``where`` accepts."""
        out: dict[str, set[str]] = {}
        for i, (_, value, _) in enumerate(self.records):
            if where(i):
                decoded = decode(value)
                lines = convert(decoded)  # type: ignore[arg-type]
                out.setdefault(decoded.model_run_id, set()).update(line.uuid for line in lines)  # type: ignore[union-attr]
        return out


def stream(count: int, runs: tuple[str, ...] = RUNS) -> Stream:
    records, offsets, next_offset = [], [], [0] * PARTITIONS
    for i in range(count):
        run, partition = runs[i % len(runs)], i % PARTITIONS
        value = message(
            bbox(bbox={"top": i, "left": 1, "height": 2, "width": 3}),
            radio(confidence=0.5),
            model_run_id=run,
            data_row={"global_key": f"fs-{i}.jpg"},
        )
        records.append((run.encode(), orjson.dumps(value), partition))
        offsets.append((partition, next_offset[partition]))
        next_offset[partition] += 1
    return Stream(records, offsets)


@dataclass
class Result:
    dlq: list[Any]
    elapsed_s: float
    metrics: Service


async def run_stream(
    bootstrap: str, topic: str, sandbox: Sandbox, sent: Stream, case: str, **overrides: Any
) -> Result:
    """Produce, run the worker until every offset is committed, check it is still running and ready."""
    await make_topics(bootstrap, topic, PARTITIONS)
    await produce(bootstrap, topic, sent.records)
    settings = settings_for(bootstrap, topic, sandbox, batch_max_rows=16, **overrides)
    started = time.monotonic()
    async with running(settings) as (service, task):
        committed = await wait_committed(bootstrap, settings, sent.ends, timeout_s=60)
        elapsed = time.monotonic() - started
        assert committed == sent.ends, f"{case}: offsets committed to the end of every partition"
        assert not task.done(), f"{case}: the worker is still running"
        assert service.pipeline is not None
        health = service.pipeline.health()
        assert health["live"], (case, health)
        assert health["ready"], (case, health)
    dlq = await read_dlq(bootstrap, f"{topic}.dlq")
    return Result(dlq, elapsed, service)


def assert_stored(sandbox: Sandbox, expected: dict[str, set[str]]) -> int:
    """Every expected uuid stored in its model run, and nothing else."""
    for run in RUNS:
        stored = {line["uuid"] for line in sandbox.state.predictions(run)}
        assert stored == expected.get(run, set()), run
    return sum(len(u) for u in expected.values())


def dead_origins(result: Result, reason: str) -> set[tuple[int, int]]:
    assert {r.headers[H_REASON] for r in result.dlq} <= {reason}, [r.headers for r in result.dlq]
    return {(int(r.headers[H_PARTITION]), int(r.headers[H_OFFSET])) for r in result.dlq}


def sample(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    return service.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def report(case: str, sent: Stream, result: Result, **figures: Any) -> None:
    extra = " ".join(f"{k}={v}" for k, v in figures.items())
    print(
        f"RELIABILITY failure-{case}: sent={len(sent.records)} dlq={len(result.dlq)} lost=0 "
        f"elapsed={result.elapsed_s:.1f}s {extra}"
    )


@pytest.mark.parametrize(
    ("case", "status", "ontology_check"), [("graphql", 200, "strict"), ("http403", 403, "off")]
)
async def test_one_forbidden_model_run_costs_only_its_own_messages(
    case: str, status: int, ontology_check: str, bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """A model run the key may not access (ontology path with the check on, import path without)."""
    sent = stream(24)
    sandbox.state.add_fault(FaultRule(kind="forbidden", model_run_id="run-b", status=status))
    result = await run_stream(
        bootstrap, topic, sandbox, sent, f"forbidden-{case}", ontology_check=ontology_check
    )
    forbidden = {sent.offsets[i] for i in range(24) if sent.records[i][0] == b"run-b"}
    assert dead_origins(result, "model_run_forbidden") == forbidden
    assert all("run-b" in r.headers[H_ERROR] for r in result.dlq), "Labelbox's message in dlq.error"
    imported = assert_stored(sandbox, sent.uuids(lambda i: sent.records[i][0] != b"run-b"))
    service = result.metrics
    assert sample(service, "lbworker_forbidden_model_runs") == 1
    asked = [
        r for r in sandbox.state.requests() if r.model_run_id == "run-b" and r.operation != "status_file"
    ]
    assert len(asked) <= 3, "later messages of the run go straight to the DLQ, not to Labelbox"
    report(
        f"forbidden-{case}", sent, result, imported_predictions=imported, labelbox_requests_for_run=len(asked)
    )


async def test_an_import_refused_whole_is_bisected_down_to_the_poison_message(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    sent = stream(30, runs=("run-a",))
    poison = 13
    sandbox.state.add_fault(
        FaultRule(kind="import_refused", data_rows=(sent.global_key(poison),), count=None, message="bad line")
    )
    started = time.monotonic()
    result = await run_stream(bootstrap, topic, sandbox, sent, "import-refused", batch_linger_s=1.0)
    assert dead_origins(result, "import_rejected") == {sent.offsets[poison]}
    (dead,) = result.dlq
    assert "bad line" in dead.headers[H_ERROR]
    assert dead.headers[H_IMPORT]
    imported = assert_stored(sandbox, sent.uuids(lambda i: i != poison))
    bisections = sample(result.metrics, "lbworker_bisection_imports_total")
    assert 2 <= bisections <= 2 * 5, "about 2 log2(n) extra imports for one isolated message"
    report(
        "import-refused",
        sent,
        result,
        imported_predictions=imported,
        bisection_imports=int(bisections),
        isolated_after_s=round(time.monotonic() - started, 1),
    )


async def test_bisection_stops_at_its_budget_when_the_refusal_is_not_about_content(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    sent = stream(16, runs=("run-a",))
    sandbox.state.add_fault(FaultRule(kind="import_refused", count=None, message="refused whatever it holds"))
    result = await run_stream(
        bootstrap, topic, sandbox, sent, "bisection-budget", import_bisect_max_imports=4, batch_linger_s=1.0
    )
    assert dead_origins(result, "import_rejected") == set(sent.offsets), "all of it, once the budget is spent"
    assert sample(result.metrics, "lbworker_bisection_imports_total") <= 4 * 2  # per batch, at most 2 batches
    report(
        "bisection-budget",
        sent,
        result,
        bisection_imports=int(sample(result.metrics, "lbworker_bisection_imports_total")),
    )


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        (
            "conflict-409",
            FaultRule(
                kind="graphql_error",
                status=409,
                code="INTERNAL_SERVER_ERROR",
                operation="create_import",
                count=2,
            ),
        ),
        (
            "status-500-in-body",
            FaultRule(
                kind="graphql_error",
                code="INTERNAL_SERVER_ERROR",
                exception_status=500,
                operation="poll_import",
                count=2,
            ),
        ),
        ("empty-body", FaultRule(kind="empty_body", operation="graphql", count=4)),
        ("expired-url", FaultRule(kind="expired_url", operation="status_file", count=2)),
        (
            "rate-limit-text",
            FaultRule(
                kind="graphql_error",
                status=400,
                code="BAD_REQUEST",
                message="You have exceeded the rate limit",
                operation="create_import",
                count=2,
            ),
        ),
    ],
)
async def test_transient_error_shapes_are_retried_and_lose_nothing(
    case: str, rule: FaultRule, bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    sent = stream(12)
    sandbox.state.add_fault(rule)
    result = await run_stream(bootstrap, topic, sandbox, sent, case)
    assert result.dlq == [], [r.headers for r in result.dlq]
    imported = assert_stored(sandbox, sent.uuids(lambda i: True))
    fired = sum(f["fired"] for f in sandbox.state.faults.describe())
    assert fired == rule.count, "the fault hit as often as asked"
    report(case, sent, result, imported_predictions=imported, faults_fired=fired)


async def test_a_batch_that_keeps_failing_while_labelbox_is_healthy_is_dead_lettered(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """run-c's imports always fail transiently while run-a's and run-b's succeed."""
    sent = stream(12)
    sandbox.state.add_fault(
        FaultRule(
            kind="graphql_error",
            code="INTERNAL_SERVER_ERROR",
            operation="create_import",
            model_run_id="run-c",
            count=None,
        )
    )
    result = await run_stream(
        bootstrap,
        topic,
        sandbox,
        sent,
        "failing-repeatedly",
        import_max_rounds=2,
        labelbox_retry_max_s=0.3,
        batch_linger_s=0.5,
    )
    failing = {sent.offsets[i] for i in range(12) if sent.records[i][0] == b"run-c"}
    assert dead_origins(result, "import_failed_repeatedly") == failing
    imported = assert_stored(sandbox, sent.uuids(lambda i: sent.records[i][0] != b"run-c"))
    report(
        "failing-repeatedly",
        sent,
        result,
        imported_predictions=imported,
        bisection_imports=int(sample(result.metrics, "lbworker_bisection_imports_total")),
    )


async def test_an_outage_pauses_the_stream_and_fills_no_dlq(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """Everything (the probe too) fails for 6 s: rounds run out, but Labelbox is not healthy."""
    sent = stream(12)
    sandbox.state.add_fault(
        FaultRule(kind="http_status", status=503, operation="any", count=None, duration_s=6)
    )
    result = await run_stream(
        bootstrap,
        topic,
        sandbox,
        sent,
        "outage",
        import_max_rounds=1,
        labelbox_retry_max_s=0.3,
        ontology_check="off",
    )
    assert result.dlq == []
    imported = assert_stored(sandbox, sent.uuids(lambda i: True))
    assert result.elapsed_s >= 5, "nothing settled during the outage"
    report("outage", sent, result, imported_predictions=imported)


async def test_an_unexpected_exception_in_a_task_exits_1_not_0(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 1)
    await produce(bootstrap, topic, [(b"run-a", orjson.dumps(message(bbox(), model_run_id="run-a")), 0)])
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings) as (service, task):

        async def boom() -> None:
            raise RuntimeError("a bug")

        for _ in range(200):  # bounded: the pipeline runs once the key is checked
            if service.pipeline is not None and service.pipeline.health()["joined"]:
                break
            await asyncio.sleep(0.05)
        assert service.pipeline is not None
        service.pipeline._spawn(boom())
        assert await asyncio.wait_for(task, timeout=20) == 1
