"""The one retry policy for the worker's own loops (Labelbox's requests have theirs in ``labelbox.py``).

``patiently`` retries an operation for as long as it fails with one of ``errors``: exponential backoff
with full jitter between ``first_s`` and ``max_s``, each retry logged as ``event`` (folded by
``worker.logs`` when it repeats). It never gives up by itself: what it guards must not be dropped
(a DLQ write, an ontology a message waits for); the caller's task is cancelled when the worker stops.
"""

from __future__ import annotations

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
    first_s: float,
    max_s: float,
    **fields: object,
) -> T:
    """``await call()`` until it does not raise one of ``errors`` (other exceptions propagate)."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(event, extra=ctx(**fields, error=str(error), attempt=state.attempt_number))

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_random_exponential(multiplier=first_s, max=max_s),
        stop=stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:  # a coroutine function: tenacity calls plain callables synchronously
        return await call()

    result: T = await retrying(attempt)
    return result


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
