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
from worker.convert import NdjsonLine


class HasLines(Protocol):
    """What the batcher needs of a message: its NDJSON lines."""

    @property
    def lines(self) -> list[NdjsonLine]: ...


Item = TypeVar("Item", bound=HasLines)


@dataclass(slots=True, eq=False)
class Batch(Generic[Item]):
    """Messages of one model run to upload as one import.

    The per-(data row, feature) counts are only kept once the batch could reach ``MAX_PER_FEATURE``
    rows (a batch of fewer rows cannot break that limit, whatever its features): until then, no
    counting per line."""

    model_run_id: str
    opened_at: float
    items: list[Item] = field(default_factory=list)
    rows: int = 0
    size: int = 0
    _per_feature: Counter[tuple[str, str]] | None = None

    @property
    def per_feature(self) -> Counter[tuple[str, str]]:
        """NDJSON lines per (data row, feature name) in this batch (metrics lines do not count)."""
        if self._per_feature is None:
            self._per_feature = Counter()
            for item in self.items:
                self._per_feature.update(_feature_counts(item))
        return self._per_feature

    def append(self, item: Item, stats: tuple[int, int]) -> None:
        """Add one message whose (rows, bytes) are ``stats``."""
        rows, size = stats
        self.items.append(item)
        self.rows += rows
        self.size += size
        if self._per_feature is not None:
            self._per_feature.update(_feature_counts(item))

    def fits_per_feature(self, item: Item, rows: int) -> bool:
        """Whether adding ``item`` (``rows`` lines) keeps every (data row, feature) within the limit."""
        if self.rows + rows <= MAX_PER_FEATURE:
            return True
        per_feature = self.per_feature
        return all(per_feature[key] + n <= MAX_PER_FEATURE for key, n in _feature_counts(item).items())

    def payload(self) -> bytes:
        """The NDJSON file: every line of every message, the bytes of ``worker.convert.encode`` (one
        join, without a copy of each line to append its newline)."""
        datas = [line.data for item in self.items for line in item.lines]
        return b"\n".join(datas) + b"\n" if datas else b""

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


def _stats(item: HasLines) -> tuple[int, int]:
    lines = item.lines
    return len(lines), sum([len(line.data) for line in lines]) + len(lines)


def _feature_counts(item: HasLines) -> Counter[tuple[str, str]]:
    return Counter((line.data_row, line.feature) for line in item.lines if line.feature is not None)


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
        if batch is not None and not self._fits(batch, item, *stats):
            closed.append(self._open.pop(model_run_id))
            batch = None
        if batch is None:
            batch = self._open[model_run_id] = Batch(model_run_id, now)
        batch.append(item, stats)
        if batch.rows >= self._limits.max_rows or batch.size >= self._limits.max_bytes:
            closed.append(self._open.pop(model_run_id))
        return closed

    def _fits(self, batch: Batch[Item], item: Item, rows: int, size: int) -> bool:
        if batch.rows + rows > self._limits.max_rows or batch.size + size > self._limits.max_bytes:
            return False
        return batch.fits_per_feature(item, rows)

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
