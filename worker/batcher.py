"""Pure batching: accepted messages -> one import batch per model run.

A batch closes at ``max_rows`` NDJSON lines, ``max_bytes`` bytes or ``linger_s`` seconds after its
first message, whichever comes first, and never holds more than Labelbox's 5000 predictions per
data row per feature name. Messages are never split across batches. The caller passes the time in
(``now``, seconds on any monotonic clock), so this module has no clock and no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from schemas import MAX_PER_FEATURE
from worker.convert import NdjsonLine, encode


class HasLines(Protocol):
    """What the batcher needs of a message: its NDJSON lines."""

    @property
    def lines(self) -> list[NdjsonLine]: ...


Item = TypeVar("Item", bound=HasLines)


@dataclass(slots=True, eq=False)
class Batch(Generic[Item]):
    """Messages of one model run to upload as one import."""

    model_run_id: str
    opened_at: float
    items: list[Item] = field(default_factory=list)
    rows: int = 0
    size: int = 0
    per_feature: Counter[tuple[str, str]] = field(default_factory=Counter)

    def append(self, item: Item, stats: tuple[int, int, Counter[tuple[str, str]]]) -> None:
        """Add one message whose (rows, bytes, per-feature counts) are ``stats``."""
        rows, size, counts = stats
        self.items.append(item)
        self.rows += rows
        self.size += size
        self.per_feature.update(counts)

    def payload(self) -> bytes:
        """The NDJSON file: every line of every message (``worker.convert.encode``)."""
        return encode([line for item in self.items for line in item.lines])

    def split(self) -> tuple[Batch[Item], Batch[Item]]:
        """Two batches of the first and the second half of the messages (a message is never cut).

        Needs at least two messages; used to isolate what Labelbox refuses (bisection)."""
        if len(self.items) < 2:
            raise ValueError("a batch of fewer than two messages cannot be split")
        middle = len(self.items) // 2
        halves = (
            Batch[Item](self.model_run_id, self.opened_at),
            Batch[Item](self.model_run_id, self.opened_at),
        )
        for index, item in enumerate(self.items):
            halves[index >= middle].append(item, _stats(item))
        return halves


def _stats(item: HasLines) -> tuple[int, int, Counter[tuple[str, str]]]:
    lines = item.lines
    counts = Counter((line.data_row, line.feature) for line in lines if line.feature is not None)
    return len(lines), sum(len(line.data) + 1 for line in lines), counts


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """When a batch closes."""

    max_rows: int
    max_bytes: int
    linger_s: float


class Batcher(Generic[Item]):
    """Open batches, one per model run."""

    def __init__(self, limits: BatchLimits) -> None:
        self._limits = limits
        self._open: dict[str, Batch[Item]] = {}

    def add(self, model_run_id: str, item: Item, now: float) -> list[Batch[Item]]:
        """Add one message; returns the batches this closed (zero, one or two)."""
        closed: list[Batch[Item]] = []
        stats = _stats(item)
        batch = self._open.get(model_run_id)
        if batch is not None and not self._fits(batch, *stats):
            closed.append(self._open.pop(model_run_id))
            batch = None
        if batch is None:
            batch = self._open[model_run_id] = Batch(model_run_id, now)
        batch.append(item, stats)
        if batch.rows >= self._limits.max_rows or batch.size >= self._limits.max_bytes:
            closed.append(self._open.pop(model_run_id))
        return closed

    def _fits(self, batch: Batch[Item], rows: int, size: int, counts: Counter[tuple[str, str]]) -> bool:
        if batch.rows + rows > self._limits.max_rows or batch.size + size > self._limits.max_bytes:
            return False
        return all(batch.per_feature[key] + count <= MAX_PER_FEATURE for key, count in counts.items())

    def due(self, now: float) -> list[Batch[Item]]:
        """Close and return the batches open for ``linger_s`` or longer."""
        expired = [run for run, b in self._open.items() if now - b.opened_at >= self._limits.linger_s]
        return [self._open.pop(run) for run in expired]

    def flush(self) -> list[Batch[Item]]:
        """Close and return every open batch."""
        closed = list(self._open.values())
        self._open.clear()
        return closed

    def drop(self, unwanted: Callable[[Item], bool]) -> list[Item]:
        """Remove the messages ``unwanted`` selects from open batches (for revoked partitions)."""
        dropped: list[Item] = []
        for run, batch in list(self._open.items()):
            keep = [item for item in batch.items if not unwanted(item)]
            if len(keep) == len(batch.items):
                continue
            dropped.extend(item for item in batch.items if unwanted(item))
            del self._open[run]
            if keep:
                self._open[run] = rebuilt = Batch[Item](run, batch.opened_at)
                for item in keep:
                    rebuilt.append(item, _stats(item))
        return dropped
