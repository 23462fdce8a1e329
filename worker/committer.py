"""Settled offsets to the broker: what the ledger says is due is committed, coalesced, retried.

The consumer is reached through :class:`OffsetConsumer` (aiokafka's ``AIOKafkaConsumer`` in the worker,
a fake in unit tests). The commit point also follows the fetch position past offsets that hold no
record (transaction markers, records of aborted transactions): nothing would settle them otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from worker.ledger import Ledger
from worker.logs import ctx
from worker.metrics import Metrics
from worker.retry import patiently

log = logging.getLogger("worker.committer")
#: Settlements that come within this many seconds of a commit wait for the next one.
COALESCE_S = 0.2


class OffsetConsumer(Protocol):
    """What committing needs of the consumer."""

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...

    def assignment(self) -> set[TopicPartition]: ...


class Committer:
    """Commits the ledger's settled offsets; :meth:`wanted` after a settlement, :meth:`run` as a task."""

    def __init__(self, consumer: OffsetConsumer, ledger: Ledger, metrics: Metrics) -> None:
        self._consumer = consumer
        self._ledger = ledger
        self._metrics = metrics
        self._wanted = asyncio.Event()

    def wanted(self) -> None:
        """Something settled (or passed): commit soon."""
        self._wanted.set()

    async def run(self) -> None:
        """Commit whenever something settled, a few settlements at a time; a commit the broker refuses
        is tried again (``worker.retry.patiently``) even if nothing else settles. Runs until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await patiently(self._commit_due, errors=(KafkaError,), event="commit_failed", log=log, max_s=1.0)
            await asyncio.sleep(COALESCE_S)

    async def commit(self, only: Collection[TopicPartition] | None = None) -> bool:
        """Commit every partition's settled offset that moved (or only those in ``only``).

        Returns False if the broker refused the commit (it is logged; the caller may try again)."""
        try:
            await self._commit_due(only)
        except KafkaError as exc:
            log.warning("commit_failed", extra=ctx(error=str(exc)))
            return False
        return True

    async def _commit_due(self, only: Collection[TopicPartition] | None = None) -> None:
        due = self._ledger.due(only)
        if not due:
            return
        await self._consumer.commit(due)
        self._ledger.committed(due)
        for tp, offset in due.items():
            self._metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(offset)
        self._metrics.last_commit.set_to_current_time()

    async def pass_recordless_offsets(self) -> None:
        """Let the commit point follow the fetch position past offsets that hold no record. No record
        settles them, so without this a partition that ends with a marker stays one short (lag 1)."""
        assigned = self._consumer.assignment()
        for tp in self._ledger.partitions():
            if tp not in assigned:
                continue
            with contextlib.suppress(IllegalStateError):
                position = await self._consumer.position(tp)  # known: records came from it
                if self._ledger.pass_to(tp, position):
                    self.wanted()
                highwater = self._consumer.highwater(tp)
                if highwater is not None:
                    self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(highwater - position)

    def uncommitted(self) -> None:
        """Log what is settled but could not be committed (at the end of the drain)."""
        uncommitted = self._ledger.uncommitted()
        if uncommitted:
            log.warning(
                "offsets_not_committed",
                extra=ctx(settled_offsets=sum(uncommitted.values()), partitions=len(uncommitted)),
            )
