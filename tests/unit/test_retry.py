"""``worker.retry``: ``patiently`` (the one retry policy) and ``until_done`` (the one polling loop),
over a fake clock and sleep."""

from __future__ import annotations

import logging

import pytest

from worker.retry import patiently, until_done

log = logging.getLogger("test.retry")


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.calls, self.failures, self.error = 0, failures, error

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "done"


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_retries_the_listed_errors_until_it_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    call, sleep = Flaky(failures=3), Sleeps()
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        result = await patiently(
            call, errors=(ConnectionError,), event="op_retry", log=log, first_s=1, max_s=4, sleep=sleep
        )
    assert (result, call.calls) == ("done", 4)
    assert len(sleep.slept) == 3
    assert all(0 <= s <= 4 for s in sleep.slept), "full jitter within the cap"
    assert [r.getMessage() for r in caplog.records] == ["op_retry"] * 3


async def test_other_errors_propagate_at_once() -> None:
    call = Flaky(failures=1, error=ValueError)
    with pytest.raises(ValueError, match="failure 1"):
        await patiently(call, errors=(ConnectionError,), event="op_retry", log=log, sleep=Sleeps())
    assert call.calls == 1


async def test_give_up_raises_the_last_error_and_pause_s_sets_the_wait() -> None:
    call, sleep = Flaky(failures=10), Sleeps()
    asked: list[int] = []

    async def give_up(error: BaseException, attempts: int) -> bool:
        asked.append(attempts)
        return attempts >= 3

    with pytest.raises(ConnectionError, match="failure 3"):
        await patiently(
            call,
            errors=(ConnectionError,),
            event="op_retry",
            log=log,
            pause_s=lambda: 0.5,
            give_up=give_up,
            sleep=sleep,
        )
    assert (asked, sleep.slept) == ([1, 2, 3], [0.5, 0.5])


async def test_until_done_polls_until_done_or_the_deadline() -> None:
    now = [0.0]
    states = iter(["RUNNING", "RUNNING", "FINISHED"])

    async def poll() -> str:
        return next(states)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    seen: list[str] = []
    state = await until_done(
        poll,
        lambda s: s == "FINISHED",
        interval_s=1,
        timeout_s=10,
        clock=lambda: now[0],
        sleep=sleep,
        seen=seen.append,
    )
    assert (state, seen, now[0]) == ("FINISHED", ["RUNNING", "RUNNING", "FINISHED"], 2)

    async def never() -> str:
        return "RUNNING"

    now[0] = 0.0
    last = await until_done(
        never, lambda s: False, interval_s=1, timeout_s=3, clock=lambda: now[0], sleep=sleep
    )
    assert last == "RUNNING"
    assert now[0] == 4, "gives the state as it was at the deadline"
