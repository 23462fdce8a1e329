"""Timing on a noisy machine: warm up, then interleave the candidates and keep each one's best round."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def best_of(
    cases: Mapping[str, Callable[[], object]], rounds: int, repeats: Mapping[str, int] | None = None
) -> dict[str, float]:
    """Best wall time (s) of each case over ``rounds`` rounds, the cases interleaved within a round.

    A case listed in ``repeats`` runs that many times per round (cheap cases get more samples for
    the same wall time). Interleaving spreads a noisy neighbour's bursts over every case instead of
    one; the minimum is the run least disturbed by it.
    """
    times = {name: (repeats or {}).get(name, 1) for name in cases}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for turn in range(max(times.values())):
            for name in (name for name, count in times.items() if count > turn):
                best[name] = min(best[name], _timed(cases[name]))
    return best


def _timed(case: Callable[[], object]) -> float:
    started = time.perf_counter()
    case()
    return time.perf_counter() - started


def rate(count: int, seconds: float) -> float:
    """``count`` per second (0 when no time was measured)."""
    return count / seconds if seconds > 0 else 0.0
