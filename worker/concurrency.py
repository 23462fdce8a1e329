"""Adaptive upload concurrency: an AIMD limit on in-flight imports, and an asyncio limiter over it.

Labelbox rate-limits per organisation, so the right number of imports in flight depends on how many
replicas share the key and on what else uses it. Like TCP's congestion window and Vector's adaptive
request concurrency, the limit starts at its maximum (``UPLOAD_CONCURRENCY``), is **halved** on every
overload signal (HTTP 429 or 5xx, or a request's round-trip time jumping over its moving baseline)
and **grows by one** after a run of successes (as many as the limit: one per round of requests; just
one while work waits for a slot and no overload signal came for a while, ``quick_growth_after_s``: the
limit then holds the load back and nothing says the server is short); it never leaves ``[1, maximum]``.

An overload signal from a request that was sent before the last decrease is not counted again: it
tells of the congestion that decrease already answered (the concurrent requests of one burst would
otherwise halve the limit once each, down to 1). Nor is one that comes while more imports are still in
flight than the lowered limit: a lowered limit takes effect only as imports finish, and until then
the imports admitted before it keep sending requests (their polls) at the old rate, so their 429s too
tell of that same congestion (counted, they would halve the limit again and again, down to 1, while
the load has not yet changed).

:class:`AimdController` is pure: no awaits, no I/O; time only from the injected clock.
:class:`AdaptiveLimiter` is the asyncio shell that callers acquire and release around each import.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

#: A round-trip time this many times the baseline is an overload signal.
DEFAULT_RTT_JUMP_FACTOR = 2.0
#: Weight of a new sample in the round-trip baseline (an exponentially weighted moving average).
DEFAULT_BASELINE_WEIGHT = 0.1
#: Samples the baseline needs before a jump over it is believed.
DEFAULT_BASELINE_SAMPLES = 5


class AimdController:
    """The limit, and how it moves. Not thread-safe; pure (no awaits, no I/O, no logging).

    ``maximum``: the starting and highest limit. ``clock``: seconds, monotonic (stamps decreases, so
    that stale signals are recognised). ``adaptive=False`` keeps the limit at ``maximum`` whatever
    is reported (``ADAPTIVE_CONCURRENCY=false``). ``growth_run``: consecutive successes that add one
    to the limit; None (default) means as many as the current limit (one per round of requests,
    TCP's additive increase). ``quick_growth_after_s``: when no overload signal came for this long
    and work waits for a slot (``on_success(waiting=True)``), one success is a run: the limit holds
    the load back, and nothing says the server is short (None, default: never). ``rtt_jump_factor``,
    ``baseline_weight``, ``baseline_samples``: see the module constants.
    """

    def __init__(
        self,
        maximum: int,
        clock: Callable[[], float],
        *,
        adaptive: bool = True,
        growth_run: int | None = None,
        quick_growth_after_s: float | None = None,
        rtt_jump_factor: float = DEFAULT_RTT_JUMP_FACTOR,
        baseline_weight: float = DEFAULT_BASELINE_WEIGHT,
        baseline_samples: int = DEFAULT_BASELINE_SAMPLES,
    ) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, got {maximum}")
        if growth_run is not None and growth_run < 1:
            raise ValueError(f"growth_run must be at least 1, got {growth_run}")
        if rtt_jump_factor <= 1 or not 0 < baseline_weight <= 1:
            raise ValueError("rtt_jump_factor must exceed 1 and baseline_weight be in (0, 1]")
        self.maximum = maximum
        self.adaptive = adaptive
        self._clock = clock
        self._growth_run = growth_run
        self._quick_after_s = quick_growth_after_s
        self._last_overload_at: float | None = None
        self._jump = rtt_jump_factor
        self._weight = baseline_weight
        self._samples_needed = baseline_samples
        self._limit = maximum
        self._run = 0
        self._baseline_s: float | None = None
        self._samples = 0
        self._last_decrease_at: float | None = None

    @property
    def limit(self) -> int:
        """How many requests may be in flight now (1 ≤ limit ≤ maximum)."""
        return self._limit

    @property
    def baseline_s(self) -> float | None:
        """The moving baseline of round-trip times, in seconds (None before the first sample)."""
        return self._baseline_s

    def now(self) -> float:
        """The controller's clock: stamp a request's start with it (``started_at``)."""
        return self._clock()

    def on_success(
        self,
        rtt_s: float | None = None,
        started_at: float | None = None,
        in_flight: int | None = None,
        waiting: bool = False,
    ) -> None:
        """A request succeeded, in ``rtt_s`` seconds if measured. A round-trip time over
        ``rtt_jump_factor`` times the baseline counts as an overload; otherwise it is a success.
        ``waiting``: work waits for a slot (see ``quick_growth_after_s``)."""
        jumped = rtt_s is not None and self._jumped(rtt_s)
        if rtt_s is not None:
            self._fold(rtt_s)
        if jumped:
            self.on_overload(started_at, in_flight)
            return
        self._run += 1
        if self._run >= self._run_needed(waiting):
            self._run = 0
            if self.adaptive:
                self._limit = min(self.maximum, self._limit + 1)

    def on_overload(self, started_at: float | None = None, in_flight: int | None = None) -> None:
        """A 429, a 5xx (or a round-trip jump): halve the limit, unless the request started before
        the last decrease (``started_at`` on this clock; None: always counted) or that decrease has
        not taken effect yet (``in_flight``, the holders now, above the limit; None: not known)."""
        self._run = 0
        self._last_overload_at = self._clock()
        stale = (
            started_at is not None
            and self._last_decrease_at is not None
            and started_at < self._last_decrease_at
        ) or (in_flight is not None and in_flight > self._limit)
        if stale or not self.adaptive:
            return
        self._limit = max(1, self._limit // 2)
        self._last_decrease_at = self._clock()

    def _run_needed(self, waiting: bool) -> int:
        quiet = self._quick_after_s is not None and (
            self._last_overload_at is None or self._clock() - self._last_overload_at >= self._quick_after_s
        )
        return 1 if waiting and quiet else (self._growth_run or self._limit)

    def _jumped(self, rtt_s: float) -> bool:
        return (
            self._baseline_s is not None
            and self._samples >= self._samples_needed
            and rtt_s > self._jump * self._baseline_s
        )

    def _fold(self, rtt_s: float) -> None:
        """Fold a sample into the baseline (a jump too: a lasting change of latency becomes the new
        normal instead of pinning the limit at 1)."""
        self._samples += 1
        if self._baseline_s is None:
            self._baseline_s = rtt_s
        else:
            self._baseline_s += self._weight * (rtt_s - self._baseline_s)


class AdaptiveLimiter:
    """At most ``controller.limit`` holders at once; waiters are served in order (FIFO).

    ``await acquire()`` / ``release()``, or ``async with limiter.slot():``. Report outcomes with
    :meth:`record_success` and :meth:`record_overload`; ``on_change(limit)`` is called whenever the
    limit moves (a gauge). A lowered limit takes effect as holders release: nothing in flight is
    cancelled. Use it from one event loop.
    """

    def __init__(self, controller: AimdController, on_change: Callable[[int], None] | None = None) -> None:
        self.controller = controller
        self._on_change = on_change
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        if on_change is not None:
            on_change(controller.limit)

    @property
    def limit(self) -> int:
        return self.controller.limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def now(self) -> float:
        """The controller's clock, to stamp ``started_at`` and measure round trips."""
        return self.controller.now()

    async def acquire(self) -> None:
        """Wait for a slot (FIFO). Cancellation while waiting takes no slot."""
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as it was cancelled: hand the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back (exactly once per acquire)."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_flight -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``acquire()`` on entry, ``release()`` on exit."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def record_success(self, rtt_s: float | None = None, started_at: float | None = None) -> None:
        """See :meth:`AimdController.on_success` (with the holders now as ``in_flight``)."""
        before = self.limit
        self.controller.on_success(rtt_s, started_at, self._in_flight, waiting=self.waiting > 0)
        self._moved_from(before)

    def record_overload(self, started_at: float | None = None) -> None:
        """See :meth:`AimdController.on_overload` (with the holders now as ``in_flight``)."""
        before = self.limit
        self.controller.on_overload(started_at, self._in_flight)
        self._moved_from(before)

    def _moved_from(self, before: int) -> None:
        if self.limit != before:
            if self._on_change is not None:
                self._on_change(self.limit)
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)
