"""The one retry policy for the worker's own loops (Labelbox's requests have theirs in ``labelbox.py``).

``patiently`` retries an operation for as long as it fails with one of ``errors``: exponential backoff
with full jitter between ``first_s`` and ``max_s`` (or ``pause_s()`` seconds), each retry logged as
``event`` (folded by ``worker.logs`` when it repeats). It gives up only when ``give_up`` says so: what it
guards must not be dropped (a DLQ write, an ontology a message waits for, a commit); the caller's task
is cancelled when the worker stops. ``until_done`` is the one polling loop (an import, a task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from worker.logs import ctx

T = TypeVar("T")


async def patiently(
    call: Callable[[], Awaitable[T]],
    *,
    errors: tuple[type[BaseException], ...],
    event: str,
    log: logging.Logger,
    first_s: float = 1.0,
    max_s: float = 30.0,
    pause_s: Callable[[], float] | None = None,
    give_up: Callable[[BaseException, int], Awaitable[bool]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **fields: object,
) -> T:
    """``await call()`` until it does not raise one of ``errors`` (other exceptions propagate).

    ``give_up(error, attempts)`` is asked after each failure; when it says yes, that error is raised."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(event, extra=ctx(**fields, error=str(error), attempt=state.attempt_number))

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=(lambda _: pause_s()) if pause_s else wait_random_exponential(multiplier=first_s, max=max_s),
        stop=stop_never,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    attempts = 0

    async def attempt() -> T:  # a coroutine function: tenacity calls plain callables synchronously
        nonlocal attempts
        try:
            return await call()
        except errors as exc:
            attempts += 1
            if give_up is not None and await give_up(exc, attempts):
                raise _GaveUp(exc) from None
            raise

    try:
        result: T = await retrying(attempt)
    except _GaveUp as stop:
        error = stop.error
    else:
        return result
    raise error


class _GaveUp(Exception):
    """``give_up`` said so: not retried; ``error`` is raised to the caller."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


S = TypeVar("S")


async def until_done(
    poll: Callable[[], Awaitable[S]],
    done: Callable[[S], bool],
    *,
    interval_s: float,
    timeout_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    first: S | None = None,
    seen: Callable[[S], None] | None = None,
) -> S:
    """Poll a Labelbox task or import every ``interval_s`` until ``done`` or ``timeout_s`` passed.

    Returns the last state, done or not (the caller decides what a timeout means). ``first``: a state
    already known (polled only if it is not done); ``seen``: called with every state (progress)."""
    deadline = clock() + timeout_s
    state = first if first is not None else await poll()
    while True:
        if seen is not None:
            seen(state)
        if done(state) or clock() > deadline:
            return state
        await sleep(interval_s)
        state = await poll()
