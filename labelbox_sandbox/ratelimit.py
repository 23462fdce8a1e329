"""A load-dependent rate limit: a token bucket of requests per second per API key, as Labelbox's API has.

Pure bookkeeping with an injected clock; `app.py` answers HTTP 429 with `Retry-After` when `admit` says
to wait. Unlike the `rate_limit` fault (which answers 429 to the requests it is told to, whatever the
load), this one answers 429 only to a client that asks faster than `per_s` on average, after a burst
of `burst` requests: a client that slows down is served again, so adapting to it pays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

#: API keys remembered at once; the oldest bucket is forgotten past it (a forgotten key starts full).
MAX_KEYS = 1024


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class TokenBuckets:
    """One token bucket per API key: `per_s` tokens a second, holding at most `burst` (default: `per_s`,
    at least 1). Each request takes one token. Not thread-safe (the sandbox's event loop only)."""

    def __init__(self, per_s: float, clock: Callable[[], float], burst: float | None = None) -> None:
        if per_s <= 0:
            raise ValueError(f"per_s must be positive, got {per_s}")
        self.per_s = per_s
        self.burst = max(1.0, burst if burst is not None else per_s)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self.admitted = 0
        self.refused = 0

    def admit(self, key: str) -> float:
        """Take a token for `key`: 0.0 if the request may go on, else the seconds until a token is
        there (what `Retry-After` says, rounded up to 0.01 s; a refused request takes no token)."""
        now = self._clock()
        bucket = self._bucket(key, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_at) * self.per_s)
        bucket.updated_at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self.admitted += 1
            return 0.0
        self.refused += 1
        return math.ceil((1.0 - bucket.tokens) / self.per_s * 100) / 100

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        return bucket

    def describe(self) -> dict[str, float | int]:
        return {"per_s": self.per_s, "burst": self.burst, "admitted": self.admitted, "refused": self.refused}
