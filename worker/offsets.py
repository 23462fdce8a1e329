"""Pure per-partition offset bookkeeping: which offset is safe to commit.

Messages of one partition settle out of order (batches of different model runs finish at different
times). Everything below the lowest unsettled offset is settled (or was never in the log: offsets
may have gaps), so that offset is the commit point; with nothing unsettled it is one past the last
offset tracked. No I/O, no clock.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Tracks the fetched offsets of one partition, starting at the fetch position ``start``."""

    __slots__ = ("_committed", "_next", "_order", "_pending")

    def __init__(self, start: int) -> None:
        self._order: deque[int] = deque()  # tracked offsets, increasing; settled ones trimmed lazily
        self._pending: set[int] = set()
        self._next = start
        self._committed = start

    def track(self, offset: int) -> None:
        """Register a fetched offset as unsettled. Raises ``ValueError`` unless offsets increase."""
        if offset < self._next:
            raise ValueError(f"offset {offset} tracked after {self._next - 1}")
        self._order.append(offset)
        self._pending.add(offset)
        self._next = offset + 1

    def pass_to(self, position: int) -> bool:
        """The consumer's fetch position moved to ``position`` past offsets that hold no record for us
        (transaction markers; records of aborted transactions under read_committed): nothing there
        will settle, so the commit point may pass them. Returns whether the commit point moved."""
        if position <= self._next:
            return False
        before = self.commit_offset
        self._next = position
        return self.commit_offset != before

    def settle(self, offset: int) -> bool:
        """Mark a tracked offset settled; returns False (and does nothing) if it was not pending."""
        if offset not in self._pending:
            return False
        self._pending.remove(offset)
        order = self._order
        while order and order[0] not in self._pending:
            order.popleft()
        return True

    @property
    def commit_offset(self) -> int:
        """The offset to commit (Kafka semantics: the next offset to read)."""
        return self._order[0] if self._order else self._next

    def needs_commit(self) -> bool:
        """Whether the commit point moved past the last committed offset."""
        return self.commit_offset > self._committed

    def mark_committed(self, offset: int) -> None:
        """Record that ``offset`` was committed to Kafka."""
        self._committed = max(self._committed, offset)

    @property
    def committed(self) -> int:
        """The last offset recorded as committed."""
        return self._committed

    @property
    def pending(self) -> int:
        """How many tracked offsets are not settled yet."""
        return len(self._pending)
