"""What a consumer-group rebalance does to the worker's state (aiokafka calls these hooks).

On revoke: commit what is settled on the revoked partitions, then forget them (their records in flight
will be redelivered to the new owner): offsets, open batches, buffered bytes, lag gauges. On assign:
note it (readiness), and keep new partitions paused while the buffer is full.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from worker.batcher import Batcher
from worker.committer import Committer
from worker.envelope import Envelope
from worker.intake import Intake
from worker.ledger import Ledger
from worker.logs import ctx
from worker.metrics import Metrics
from worker.readiness import Readiness
from worker.settlement import Settler

log = logging.getLogger("worker.pipeline")  # the events of the pipeline's partitions


class Pausable(Protocol):
    """What a rebalance needs of the consumer."""

    def pause(self, *partitions: TopicPartition) -> None: ...


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """The pipeline's rebalance listener; ``checked`` is called when readiness changed (health)."""

    def __init__(
        self,
        consumer: Pausable,
        *,
        committer: Committer,
        ledger: Ledger,
        batcher: Batcher[Envelope],
        settler: Settler,
        intake: Intake,
        readiness: Readiness,
        metrics: Metrics,
        checked: Callable[[], object],
    ) -> None:
        self._consumer = consumer
        self._committer = committer
        self._ledger = ledger
        self._batcher = batcher
        self._settler = settler
        self._intake = intake
        self._readiness = readiness
        self._metrics = metrics
        self._checked = checked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Commit what is settled on the revoked partitions, then forget them."""
        partitions = set(revoked)
        await self._committer.commit(only=partitions)
        self._ledger.revoke(partitions)
        for tp in partitions:
            with contextlib.suppress(KeyError):  # another member owns its lag now
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        for envelope in self._batcher.drop(lambda e: e.tp in partitions):
            self._settler.release(envelope)
        self._readiness.joined = False
        self._checked()
        log.info("partitions_revoked", extra=ctx(partitions=sorted(tp.partition for tp in partitions)))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Note the assignment; new partitions stay paused while the buffer is full."""
        partitions = set(assigned)
        self._readiness.joined = True
        self._checked()  # the lbworker_ready gauge follows at once, not at the next broker check
        if self._intake.paused and partitions:
            self._consumer.pause(*partitions)
        log.info("partitions_assigned", extra=ctx(partitions=sorted(tp.partition for tp in partitions)))
