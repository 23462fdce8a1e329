"""worker.concurrency: the AIMD controller (pure, fake clock) and the asyncio limiter (no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from worker.concurrency import AdaptiveLimiter, AimdController


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def controller(maximum: int = 16, **kwargs: object) -> tuple[AimdController, Clock]:
    clock = Clock()
    return AimdController(maximum, clock, **kwargs), clock  # type: ignore[arg-type]


def test_starts_at_the_maximum_and_halves_on_each_overload_down_to_1() -> None:
    aimd, clock = controller(16)
    seen = [aimd.limit]
    for _ in range(6):
        clock.t += 1
        aimd.on_overload()
        seen.append(aimd.limit)
    assert seen == [16, 8, 4, 2, 1, 1, 1]


def test_grows_by_one_after_a_run_of_successes_and_never_past_the_maximum() -> None:
    aimd, _ = controller(4, growth_run=3)
    aimd.on_overload()
    aimd.on_overload()
    assert aimd.limit == 1
    limits = []
    for _ in range(15):
        aimd.on_success()
        limits.append(aimd.limit)
    assert limits == [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4]


def test_by_default_a_run_is_as_long_as_the_limit() -> None:
    aimd, _ = controller(8)
    aimd.on_overload()  # 4
    for _ in range(3):
        aimd.on_success()
    assert aimd.limit == 4
    aimd.on_success()
    assert aimd.limit == 5
    for _ in range(5):
        aimd.on_success()
    assert aimd.limit == 6


def test_an_overload_breaks_the_run() -> None:
    aimd, clock = controller(8, growth_run=2)
    aimd.on_overload()  # 4
    aimd.on_success()
    clock.t += 1
    aimd.on_overload()  # 2, and the run starts again
    aimd.on_success()
    assert aimd.limit == 2
    aimd.on_success()
    assert aimd.limit == 3


def test_signals_from_requests_sent_before_the_last_decrease_count_once() -> None:
    aimd, clock = controller(16)
    burst_started = clock.t
    clock.t += 0.5
    for _ in range(8):  # eight requests of one burst all answer 429
        aimd.on_overload(started_at=burst_started)
    assert aimd.limit == 8, "one congestion episode, one halving"
    clock.t += 0.5
    aimd.on_overload(started_at=clock.t)  # a request sent after that decrease
    assert aimd.limit == 4


def test_signals_while_the_last_decrease_is_still_draining_count_once() -> None:
    """Imports admitted before a decrease keep polling until they finish: their 429s, even from requests
    sent after the decrease, tell of the congestion it answered (the bench's fleet under a token bucket
    otherwise fell to 1 import in flight per replica and left the bucket unused)."""
    aimd, clock = controller(8)
    aimd.on_overload(in_flight=8)
    assert aimd.limit == 4
    clock.t += 0.5
    for in_flight in (8, 7, 5):  # polls of the old imports, sent after the decrease
        aimd.on_overload(started_at=clock.t, in_flight=in_flight)
    assert aimd.limit == 4, "the lowered limit has not taken effect yet"
    aimd.on_overload(started_at=clock.t, in_flight=4)
    assert aimd.limit == 2, "at the lowered limit, a 429 halves it again"
    clock.t += 0.5
    aimd.on_success(rtt_s=0.01, started_at=clock.t, in_flight=3)
    assert aimd.limit == 2, "a success while draining is still a success (no overload from it)"


async def test_the_limiter_reports_its_holders_with_each_signal() -> None:
    slots, changes = limiter(4)
    for _ in range(4):
        await slots.acquire()
    slots.record_overload()
    slots.record_overload(started_at=slots.now() + 1)  # sent after the decrease, but 4 still hold slots
    assert slots.limit == 2
    for _ in range(2):
        slots.release()
    slots.record_overload(started_at=slots.now() + 2)
    assert slots.limit == 1
    assert changes == [4, 2, 1]


def test_a_round_trip_jump_over_the_baseline_halves_it() -> None:
    aimd, clock = controller(8, growth_run=100)
    for _ in range(5):
        aimd.on_success(rtt_s=0.2, started_at=clock.t)
    assert aimd.baseline_s == pytest.approx(0.2)
    aimd.on_success(rtt_s=0.39, started_at=clock.t)
    assert aimd.limit == 8, "under twice the baseline: a success"
    clock.t += 1
    aimd.on_success(rtt_s=1.0, started_at=clock.t)
    assert aimd.limit == 4


def test_no_jump_is_believed_before_the_baseline_has_samples() -> None:
    aimd, _ = controller(8, growth_run=100)
    aimd.on_success(rtt_s=0.1)
    aimd.on_success(rtt_s=5.0)
    assert aimd.limit == 8


def test_a_lasting_latency_change_becomes_the_baseline() -> None:
    aimd, clock = controller(64, growth_run=1)
    for _ in range(10):
        aimd.on_success(rtt_s=0.1)
    assert aimd.limit == 64
    limits = []
    for _ in range(60):  # latency is now 0.5 s for good; one sample per "round"
        clock.t += 1
        aimd.on_success(rtt_s=0.5, started_at=clock.t)
        limits.append(aimd.limit)
    assert min(limits) >= 1
    assert limits[-1] > min(limits), "once the baseline caught up the limit grows again"
    assert aimd.baseline_s == pytest.approx(0.5, rel=0.05)


def test_not_adaptive_keeps_the_maximum() -> None:
    aimd, _ = controller(6, adaptive=False)
    aimd.on_overload()
    aimd.on_success(rtt_s=1.0)
    assert aimd.limit == 6


@pytest.mark.parametrize("kwargs", [{"growth_run": 0}, {"rtt_jump_factor": 1.0}, {"baseline_weight": 0}])
def test_invalid_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        controller(4, **kwargs)
    with pytest.raises(ValueError, match="maximum"):
        controller(0)


# --- the asyncio limiter ---------------------------------------------------------------------------


def limiter(maximum: int, **kwargs: object) -> tuple[AdaptiveLimiter, list[int]]:
    changes: list[int] = []
    aimd, _ = controller(maximum, **kwargs)
    return AdaptiveLimiter(aimd, on_change=changes.append), changes


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_holders_never_exceed_the_limit_and_waiters_go_in_order() -> None:
    slots, _ = limiter(2)
    order: list[int] = []
    peak = 0

    async def work(i: int) -> None:
        nonlocal peak
        async with slots.slot():
            order.append(i)
            peak = max(peak, slots.in_flight)
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(10))), timeout=5)
    assert peak == 2
    assert order == list(range(10))
    assert slots.in_flight == 0


async def test_a_lowered_limit_applies_as_holders_release_and_a_raised_one_at_once() -> None:
    slots, changes = limiter(4, growth_run=1)
    for _ in range(4):
        await slots.acquire()
    slots.record_overload()
    assert (slots.limit, slots.in_flight) == (2, 4), "nothing in flight is taken back"
    waiter = asyncio.create_task(slots.acquire())
    await _settle()
    for _ in range(2):
        slots.release()
    await _settle()
    assert not waiter.done(), "2 holders: the waiter waits until one more releases"
    slots.release()
    await _settle()
    assert waiter.done()
    assert slots.in_flight == 2
    blocked = asyncio.create_task(slots.acquire())
    await _settle()
    assert not blocked.done()
    slots.record_success()  # the limit grows to 3: the waiter gets its slot without a release
    await _settle()
    assert blocked.done()
    assert changes == [4, 2, 3]


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    slots, _ = limiter(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await _settle()
    waiter.cancel()
    await _settle()
    assert waiter.cancelled()
    assert slots.waiting == 0
    slots.release()
    assert slots.in_flight == 0
    await asyncio.wait_for(slots.acquire(), timeout=1)


def test_release_without_acquire_is_a_bug() -> None:
    slots, _ = limiter(1)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        slots.release()


def test_while_work_waits_and_no_overload_came_for_a_while_each_success_adds_one() -> None:
    aimd, clock = controller(16, quick_growth_after_s=1.0)
    aimd.on_overload()
    aimd.on_overload()
    assert aimd.limit == 4
    for _ in range(3):
        aimd.on_success(waiting=True)
    assert aimd.limit == 4, "an overload came just now: one per round of 4 successes"
    clock.t += 1.0
    aimd.on_success(waiting=True)
    assert aimd.limit == 5, "quiet for 1 s and work waiting: one success is a run"
    for _ in range(4):
        aimd.on_success(waiting=False)
    assert aimd.limit == 5, "nothing waits (the limit does not hold the load back): a run of 5"
    for _ in range(3):
        aimd.on_success(waiting=True)
    assert aimd.limit == 8
    aimd.on_overload()  # stale or not, an overload restarts the quiet period
    assert aimd.limit == 4
    aimd.on_success(waiting=True)
    assert aimd.limit == 4


def test_without_quick_growth_waiting_work_changes_nothing() -> None:
    aimd, clock = controller(16)
    aimd.on_overload()
    clock.t += 100.0
    for _ in range(7):
        aimd.on_success(waiting=True)
    assert aimd.limit == 8, "7 successes of a run of 8"


async def test_the_limiter_tells_the_controller_when_work_waits() -> None:
    slots, changes = limiter(4, quick_growth_after_s=0.0)
    slots.record_overload()
    assert slots.limit == 2
    for _ in range(2):
        await slots.acquire()
    slots.record_success()
    assert slots.limit == 2, "nothing waits: one per run of 2"
    waiter = asyncio.create_task(slots.acquire())
    await _settle()
    slots.record_success()
    assert slots.limit == 3, "a waiter: one success is a run"
    await _settle()
    assert waiter.done()
    assert changes == [4, 2, 3]
