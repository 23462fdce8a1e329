"""The import round (``worker.imports.ImportRunner``) over a fake Labelbox client and a fake
settlement: no broker, no HTTP, no sleeping (an injected clock and sleep)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from tests.support.factories import bbox, message
from worker.batcher import Batch, _stats
from worker.convert import NdjsonLine
from worker.envelope import Envelope, process_chunk
from worker.imports import PACING_AFTER_OVERLOAD_S, ImportRunner, _row_problem
from worker.labelbox import (
    AuthenticationError,
    Forbidden,
    ImportState,
    RequestRejected,
    RowStatus,
    StatusUrlExpired,
    TransientError,
)
from worker.metrics import Metrics
from worker.offsets import PartitionOffsets
from worker.settings import Settings

TP = TopicPartition("predictions", 0)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": "127.0.0.1:9",
        "labelbox_api_key": "k",
        "upload_concurrency": 1,
        "labelbox_poll_interval_s": 0.01,
        **overrides,
    }
    return Settings.model_validate(values)


def batch_of(count: int, poison: set[int] = frozenset(), run: str = "run-a") -> Batch[Envelope]:  # type: ignore[assignment]
    tracker = PartitionOffsets(0)
    envelopes = []
    for i in range(count):
        name = "poison" if i in poison else "box"
        value = orjson.dumps(
            message(bbox(name=name, bbox={"top": i, "left": 1, "height": 2, "width": 3}), model_run_id=run)
        )
        tracker.track(i)
        envelopes.append(Envelope(TP, i, None, value, 0, tracker))
    for _, rejection in process_chunk(envelopes, 1 << 20):
        assert rejection is None
    batch: Batch[Envelope] = Batch(run, 0.0)
    for envelope in envelopes:
        batch.append(envelope, _stats(envelope))
    return batch


@dataclass
class FakeLabelbox:
    """Refuses (or FAILs, or keeps failing) any import holding a line of the feature ``poison``."""

    poison: str = "refuse"  # refuse | fail | transient
    error: Exception | None = None  # raised by every create_import when set
    expire_urls: int = 0
    probe_ok: bool = True
    imports: dict[str, bytes] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)  # lines per create_import call

    async def create_import(self, model_run_id: str, name: str, payload: bytes) -> ImportState:
        await asyncio.sleep(0)
        self.created.append(payload.count(b"\n"))
        if self.error is not None:
            raise self.error
        if b'"poison"' in payload and self.poison == "refuse":
            raise RequestRejected(
                "Labelbox refused the request (status 400): bad line", "INTERNAL_SERVER_ERROR"
            )
        if b'"poison"' in payload and self.poison == "transient":
            raise TransientError("Labelbox error INTERNAL_SERVER_ERROR", "graphql")
        self.imports[name] = payload
        state = "FAILED" if b'"poison"' in payload and self.poison == "fail" else "RUNNING"
        return ImportState("id", name, model_run_id, state)

    async def get_import(self, model_run_id: str, name: str) -> ImportState | None:
        failed = b'"poison"' in self.imports[name] and self.poison == "fail"
        return ImportState("id", name, model_run_id, "FAILED" if failed else "FINISHED", status_file_url=name)

    async def fetch_statuses(self, url: str) -> list[RowStatus]:
        if self.expire_urls:
            self.expire_urls -= 1
            raise StatusUrlExpired("status file URL answered HTTP 403")
        lines = self.imports[url].splitlines()
        return [RowStatus(orjson.loads(line)["uuid"], "SUCCESS") for line in lines]

    async def probe(self) -> bool:
        return self.probe_ok


@dataclass
class FakeSettlement:
    settled: list[int] = field(default_factory=list)
    dead: list[tuple[int, str, str | None]] = field(default_factory=list)
    failed: list[BaseException] = field(default_factory=list)

    def settle(self, envelope: Envelope) -> None:
        self.settled.append(envelope.offset)

    async def dead_letter(
        self, envelope: Envelope, reason: str, errors: Sequence[str], import_name: str | None
    ) -> None:
        self.dead.append((envelope.offset, reason, import_name))

    def fail(self, error: BaseException) -> None:
        self.failed.append(error)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def runner(
    client: FakeLabelbox, settlement: FakeSettlement, **overrides: Any
) -> tuple[ImportRunner, Metrics]:
    metrics = Metrics()
    clock = Clock()
    return ImportRunner(
        settings(**overrides), metrics, client, settlement, clock=clock, sleep=clock.sleep
    ), metrics


@pytest.mark.parametrize("poison", ["refuse", "fail"])
async def test_bisection_isolates_the_poison_message_at_concurrency_1(poison: str) -> None:
    client, settlement = FakeLabelbox(poison=poison), FakeSettlement()
    run, metrics = runner(client, settlement)
    await asyncio.wait_for(run.upload(batch_of(16, poison={11})), timeout=5)  # no deadlock on one slot
    reason = "import_rejected" if poison == "refuse" else "import_failed"
    assert [(o, r) for o, r, _ in settlement.dead] == [(11, reason)]
    assert sorted(settlement.settled) == [i for i in range(16) if i != 11]
    bisections = metrics.registry.get_sample_value("lbworker_bisection_imports_total")
    assert bisections == 8, "2 per level, 4 levels for 16 messages"


async def test_the_budget_stops_bisection_and_dead_letters_the_rest() -> None:
    client, settlement = FakeLabelbox(), FakeSettlement()
    run, _ = runner(client, settlement, import_bisect_max_imports=2)
    await run.upload(batch_of(8, poison={0, 7}))
    assert sorted(o for o, _, _ in settlement.dead) == list(range(8)), "both halves refused, budget spent"
    assert settlement.settled == []


async def test_a_request_refusal_that_is_not_about_content_is_not_bisected() -> None:
    client = FakeLabelbox(error=RequestRejected("bad query", "GRAPHQL_VALIDATION_FAILED"))
    settlement = FakeSettlement()
    run, _ = runner(client, settlement)
    await run.upload(batch_of(8))
    assert client.created == [8], "one attempt, no halves"
    assert {r for _, r, _ in settlement.dead} == {"import_rejected"}


async def test_a_forbidden_model_run_is_remembered() -> None:
    client, settlement = (
        FakeLabelbox(error=Forbidden("no access to run-a", "AUTHORIZATION_ERROR")),
        FakeSettlement(),
    )
    run, metrics = runner(client, settlement)
    await run.upload(batch_of(3))
    await run.upload(batch_of(3))
    assert client.created == [3], "the second batch never reached Labelbox"
    assert [r for _, r, _ in settlement.dead] == ["model_run_forbidden"] * 6
    assert run.refusal("run-a") is not None
    assert metrics.registry.get_sample_value("lbworker_forbidden_model_runs") == 1


async def test_an_unknown_model_run_is_unavailable_and_a_bad_key_fails_the_worker() -> None:
    client, settlement = (
        FakeLabelbox(error=RequestRejected("no such run", "RESOURCE_NOT_FOUND")),
        FakeSettlement(),
    )
    run, _ = runner(client, settlement)
    await run.upload(batch_of(2))
    assert [r for _, r, _ in settlement.dead] == ["model_run_unavailable"] * 2
    client.error = AuthenticationError("bad key")
    await run.upload(batch_of(2))
    assert len(settlement.failed) == 1
    assert len(settlement.dead) == 2, "nothing dead-lettered for a bad key"


async def test_a_batch_failing_while_labelbox_is_healthy_ends_as_failed_repeatedly() -> None:
    client, settlement = FakeLabelbox(poison="transient"), FakeSettlement()
    run, _ = runner(client, settlement, import_max_rounds=2)
    await run.upload(batch_of(4, poison={2}))
    assert settlement.dead == [(2, "import_failed_repeatedly", settlement.dead[0][2])]
    assert sorted(settlement.settled) == [0, 1, 3]


async def test_an_outage_keeps_retrying_and_dead_letters_nothing() -> None:
    client, settlement = (
        FakeLabelbox(error=TransientError("HTTP 503", "5xx"), probe_ok=False),
        FakeSettlement(),
    )
    run, _ = runner(client, settlement, import_max_rounds=1)
    task = asyncio.create_task(run.upload(batch_of(4)))
    for _ in range(200):  # bounded: rounds keep coming while the probe fails
        await asyncio.sleep(0)
        if len(client.created) >= 5:
            break
    assert len(client.created) >= 5
    client.error = None
    await asyncio.wait_for(task, timeout=5)
    assert settlement.dead == []
    assert sorted(settlement.settled) == [0, 1, 2, 3]


async def test_an_expired_status_url_is_refreshed_by_polling() -> None:
    client, settlement = FakeLabelbox(expire_urls=2), FakeSettlement()
    run, _ = runner(client, settlement)
    await run.upload(batch_of(3))
    assert sorted(settlement.settled) == [0, 1, 2]
    client.expire_urls = 5
    await run.upload(batch_of(3, run="run-b"))
    assert {r for _, r, _ in settlement.dead} == {"import_status_unavailable"}


@pytest.mark.parametrize("adaptive", [True, False])
def test_labelbox_overloads_halve_the_upload_limit_and_uploads_grow_it(adaptive: bool) -> None:
    client, settlement = FakeLabelbox(), FakeSettlement()
    run, metrics = runner(client, settlement, upload_concurrency=8, adaptive_concurrency=adaptive)

    def limit() -> float | None:
        return metrics.registry.get_sample_value("lbworker_upload_concurrency_limit")

    assert limit() == 8
    run.labelbox_answered("poll_import", "overload", started_at=0.0, rtt_s=0.1)  # any operation's 429
    assert limit() == (4 if adaptive else 8)
    run.labelbox_answered("create_import", "overload", started_at=-1.0, rtt_s=0.1)  # began before: stale
    assert limit() == (4 if adaptive else 8)
    for _ in range(4):  # a run of successful uploads as long as the limit adds one
        run.labelbox_answered("create_import", "ok", started_at=1.0, rtt_s=0.1)
    run.labelbox_answered("status_file", "ok", started_at=1.0, rtt_s=0.1)  # not an upload: no signal
    assert limit() == (5 if adaptive else 8)


def test_a_failed_row_is_explained_by_its_errors_or_else_by_the_status_labelbox_wrote() -> None:
    line = NdjsonLine("u1", "img-1.jpg", "box", b"{}")
    assert _row_problem(line, RowStatus("u1", "SUCCESS")) is None
    assert _row_problem(line, RowStatus("u1", "FAILURE", [], "PARTIAL")) == "u1: PARTIAL"
    errors = [{"name": "ValidationError", "message": "bad box"}]
    assert _row_problem(line, RowStatus("u1", "FAILURE", errors)) == "u1: ValidationError: bad box"
    assert _row_problem(line, None) == "u1: Labelbox reported no status for this row"
    odd = RowStatus("u1", "FAILURE", ["oops", {"message": "no name"}])  # not the shape Labelbox writes
    assert _row_problem(line, odd) == "u1: oops; Error: no name"


@dataclass
class TimedLabelbox(FakeLabelbox):
    """Imports finish ``processing_s`` after their create, on the test's clock; polls are counted."""

    clock: Clock = field(default_factory=Clock)
    processing_s: float = 1.2
    created_at: dict[str, float] = field(default_factory=dict)
    polls: int = 0

    async def create_import(self, model_run_id: str, name: str, payload: bytes) -> ImportState:
        state = await super().create_import(model_run_id, name, payload)
        self.created_at[name] = self.clock.now
        return state

    async def get_import(self, model_run_id: str, name: str) -> ImportState | None:
        self.polls += 1
        if self.clock.now < self.created_at[name] + self.processing_s:
            return ImportState("id", name, model_run_id, "RUNNING")
        return await super().get_import(model_run_id, name)


def timed_runner(
    processing_s: float, **overrides: Any
) -> tuple[ImportRunner, TimedLabelbox, FakeSettlement, Clock, Metrics]:
    """A runner over imports that take ``processing_s`` on a fake clock (which its sleeps move)."""
    clock, metrics = Clock(), Metrics()
    client, settlement = TimedLabelbox(clock=clock, processing_s=processing_s), FakeSettlement()
    run = ImportRunner(settings(**overrides), metrics, client, settlement, clock=clock, sleep=clock.sleep)
    return run, client, settlement, clock, metrics


@pytest.mark.parametrize("adaptive", [True, False])
async def test_under_overload_the_first_poll_waits_for_the_time_imports_took(adaptive: bool) -> None:
    run, client, settlement, clock, metrics = timed_runner(
        1.2, upload_concurrency=4, adaptive_concurrency=adaptive, labelbox_poll_interval_s=0.5
    )
    assert run.first_poll_s() == 0.5, "nothing seen yet"
    await run.upload(batch_of(2))
    assert client.polls == 3, "at the maximum limit: every 0.5 s (0.5, 1.0, 1.5)"
    assert run.first_poll_s() == 0.5, "not overloaded: the configured interval"
    overloaded_at = clock.now
    run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
    await run.upload(batch_of(2, run="run-b"))
    if adaptive:
        assert client.polls == 4, "one poll, at 1.5 s (as long as the imports took), finds it done"
        assert run.first_poll_s() == pytest.approx(1.455), "done at the first poll: 3 % shorter"
    else:
        assert run.first_poll_s() == 0.5
        assert client.polls == 6
    assert len(settlement.settled) == 4
    for _ in range(8):  # successes bring the limit back to its maximum: the rate limit is still near
        run.labelbox_answered("create_import", "ok", started_at=clock.now, rtt_s=0.1)
    assert metrics.registry.get_sample_value("lbworker_upload_concurrency_limit") == 4
    assert run.first_poll_s() == (pytest.approx(1.455) if adaptive else 0.5)
    clock.now = overloaded_at + PACING_AFTER_OVERLOAD_S - 0.1
    assert run.first_poll_s() == (pytest.approx(1.455) if adaptive else 0.5), "within the minute"
    clock.now += 0.1  # a minute without a 429 or 5xx: polls as configured again
    assert run.first_poll_s() == 0.5


async def test_each_429_or_5xx_extends_the_pacing_by_a_minute() -> None:
    run, _client, _settlement, clock, _metrics = timed_runner(
        1.2, upload_concurrency=4, labelbox_poll_interval_s=0.5
    )
    await run.upload(batch_of(2))  # seen done after 1.5 s
    run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
    clock.now += 40.0
    run.labelbox_answered("create_import", "overload", started_at=clock.now, rtt_s=0.1)
    clock.now += 40.0
    assert run.first_poll_s() == 1.5, "40 s after the last one"
    clock.now += 20.0
    assert run.first_poll_s() == 0.5


async def test_a_paced_first_poll_finds_about_nine_imports_in_ten_done() -> None:
    run, client, settlement, clock, _metrics = timed_runner(
        1.2, upload_concurrency=4, labelbox_poll_interval_s=0.5
    )
    await run.upload(batch_of(2))  # polled at 0.5, 1.0, 1.5: seen done after 1.5 s
    run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
    waits = []
    for index in range(40):  # warming up: down from 1.5 s
        run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)  # still paced
        await run.upload(batch_of(2, run=f"warm-{index}"))
    polls_before = client.polls
    for index in range(100):
        run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
        waits.append(run.first_poll_s())
        await run.upload(batch_of(2, run=f"run-{index}"))
    polls = client.polls - polls_before
    assert 100 <= polls <= 120, "about 1.1 polls an import (one in ten needs a second)"
    assert polls > 100, "it keeps probing: some first polls come too early"
    assert all(0.5 <= wait <= 1.2 + 0.5 for wait in waits), waits  # never past one interval late
    assert 1.2 < sum(waits) / len(waits) < 1.2 * 1.25, "on average a little after the imports' 1.2 s"
    assert len(settlement.settled) == 282


async def test_the_paced_first_poll_follows_imports_that_slow_down_or_speed_up() -> None:
    run, client, _settlement, clock, _metrics = timed_runner(
        1.0, upload_concurrency=4, labelbox_poll_interval_s=0.5
    )
    await run.upload(batch_of(2))  # seen done after 1.0 s (at the second poll)
    run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
    assert run.first_poll_s() == 1.0
    client.processing_s = 3.0
    await run.upload(batch_of(2, run="slow-0"))  # polls at 1.0, 1.5, ..., 3.0: running at 2.5
    assert run.first_poll_s() == pytest.approx(2.5), "at least as long as it was seen running"
    for index in range(10):
        run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
        await run.upload(batch_of(2, run=f"slow-{index + 1}"))
    assert 3.0 <= run.first_poll_s() <= 3.5
    slow = run.first_poll_s()
    client.processing_s = 0.6  # found done at every first poll: 3 % shorter each time, no faster
    for index in range(2):
        run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
        await run.upload(batch_of(2, run=f"fast-{index}"))
    assert run.first_poll_s() == pytest.approx(slow * 0.97**2)


async def test_the_first_poll_waits_at_least_the_configured_interval() -> None:
    run, _client, _settlement, clock, _metrics = timed_runner(
        0.1, upload_concurrency=4, labelbox_poll_interval_s=0.5
    )
    await run.upload(batch_of(2))
    run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
    assert run.first_poll_s() == 0.5


async def test_a_round_trip_jump_alone_lowers_the_limit_but_does_not_pace_polls() -> None:
    run, _client, _settlement, clock, metrics = timed_runner(
        1.2, upload_concurrency=4, labelbox_poll_interval_s=0.5
    )
    await run.upload(batch_of(2))
    for _ in range(5):  # a baseline of 0.1 s uploads
        run.labelbox_answered("create_import", "ok", started_at=clock.now, rtt_s=0.1)
    run.labelbox_answered("create_import", "ok", started_at=clock.now, rtt_s=1.0)  # a jump
    assert metrics.registry.get_sample_value("lbworker_upload_concurrency_limit") == 2
    assert run.first_poll_s() == 0.5, "no 429 or 5xx: Labelbox's rate limit is not what was reached"
    run.labelbox_answered("poll_import", "overload", started_at=clock.now, rtt_s=0.1)
    assert run.first_poll_s() == 1.5
