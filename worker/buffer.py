"""Backpressure accounting: how many bytes the records in flight cost, and how many more may be fetched.

Pure: no I/O, no clock. A record is counted from its fetch until it is settled: first at what records
have cost once converted (an estimate that rises at once and decays slowly), then at its actual size
(its bytes plus its NDJSON lines). Fetching pauses while the total is at ``BUFFER_MAX_BYTES``.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.envelope import Envelope

#: Bytes counted per fetched record besides key and value: Python objects and bookkeeping.
RECORD_OVERHEAD_BYTES = 200
#: Bytes counted per converted NDJSON line besides its bytes: the line object and its strings.
LINE_OVERHEAD_BYTES = 250
#: What a record is assumed to cost once converted, until the first records are.
_FIRST_ESTIMATE_BYTES = 16384.0


class BufferBudget:
    """Bytes buffered but not settled, against ``max_bytes``."""

    def __init__(self, max_bytes: int, max_records: int) -> None:
        self.max_bytes = max_bytes
        self._max_records = max_records
        self.buffered = 0
        self._estimate = _FIRST_ESTIMATE_BYTES

    @property
    def full(self) -> bool:
        """Fetching must pause."""
        return self.buffered >= self.max_bytes

    def fetch_limit(self) -> int:
        """Records to take in one fetch: no more than the buffer has room for (at the estimated size),
        so one fetch cannot overshoot the budget by much; at least 1, at most ``max_records``."""
        room = self.max_bytes - self.buffered
        fitting = int(room / self._estimate) if room > 0 else 1
        return max(1, min(self._max_records, fitting))

    @staticmethod
    def raw_size(key: bytes | None, value: bytes | None) -> int:
        """What a fetched record costs before conversion."""
        return len(value or b"") + len(key or b"") + RECORD_OVERHEAD_BYTES

    def admit_size(self, raw_size: int) -> int:
        """The size to count a just-fetched record at (the estimate, unless it is larger already)."""
        return max(raw_size, int(self._estimate))

    def add(self, envelopes: Sequence[Envelope]) -> None:
        """Count just-fetched records at their ``size``."""
        self.buffered += sum(e.size for e in envelopes)

    def converted(self, envelopes: Sequence[Envelope]) -> None:
        """Count converted records at their actual size (their lines live as long as they do)."""
        for envelope in envelopes:
            lines = envelope.lines
            actual = (
                envelope.raw_size + sum([len(line.data) for line in lines]) + LINE_OVERHEAD_BYTES * len(lines)
            )
            if not envelope.released:
                self.buffered += actual - envelope.size
            envelope.size = actual
        if envelopes:  # what a record costs once converted: rises at once, decays slowly
            average = sum(e.size for e in envelopes) / len(envelopes)
            self._estimate = max(average, 0.8 * self._estimate + 0.2 * average)

    def release(self, envelope: Envelope) -> None:
        """The record is settled or dropped: its bytes are free (once)."""
        if not envelope.released:
            envelope.released = True
            self.buffered -= envelope.size
