"""Which fetched offsets are settled, and what may be committed: one ``PartitionOffsets`` per partition.

Pure: no I/O, no clock. The pipeline tracks every fetched record here, settles it once it is imported
or dead-lettered, and commits what :meth:`Ledger.due` returns.
"""

from __future__ import annotations

from collections.abc import Collection

from aiokafka import TopicPartition

from worker.envelope import Envelope
from worker.offsets import PartitionOffsets


class Ledger:
    """Settlement and commit bookkeeping for the partitions this worker owns."""

    def __init__(self) -> None:
        self._trackers: dict[TopicPartition, PartitionOffsets] = {}

    def tracker(self, tp: TopicPartition, first_offset: int) -> PartitionOffsets:
        """The partition's tracker for records fetched from ``first_offset`` on.

        A new partition, or one whose consumer moved back (an offset reset), starts afresh: records
        still in flight under the old tracker will no longer be committed.
        """
        tracker = self._trackers.get(tp)
        if tracker is None or first_offset < tracker.commit_offset:
            tracker = self._trackers[tp] = PartitionOffsets(first_offset)
        return tracker

    def owned(self, envelope: Envelope) -> bool:
        """Whether the record still belongs to this worker (its partition was not revoked since)."""
        return self._trackers.get(envelope.tp) is envelope.tracker

    def settle(self, envelope: Envelope) -> bool:
        """Mark the record settled; True when it was pending here (a commit may be due now)."""
        return self.owned(envelope) and envelope.tracker.settle(envelope.offset)

    def due(self, only: Collection[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """The offsets to commit: every partition whose settled point moved (or only those in ``only``)."""
        return {
            tp: tracker.commit_offset
            for tp, tracker in self._trackers.items()
            if tracker.needs_commit() and (only is None or tp in only)
        }

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """The broker acknowledged the commit of ``offsets``."""
        for tp, offset in offsets.items():
            tracker = self._trackers.get(tp)
            if tracker is not None:
                tracker.mark_committed(offset)

    def revoke(self, partitions: Collection[TopicPartition]) -> None:
        """Forget revoked partitions: their records in flight are no longer this worker's."""
        for tp in partitions:
            self._trackers.pop(tp, None)

    def uncommitted(self) -> dict[TopicPartition, int]:
        """Per partition, how many settled offsets are not committed yet."""
        return {tp: t.commit_offset - t.committed for tp, t in self._trackers.items() if t.needs_commit()}
