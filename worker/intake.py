"""Fetched records into the worker: each one tracked in the ledger and counted in the buffer budget
(and the intake metrics), and when fetching must pause or may resume. No I/O, no clock: the pipeline
acts on the answers."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import ConsumerRecord, TopicPartition

from worker.buffer import BufferBudget
from worker.dlq import replay_count
from worker.envelope import Envelope
from worker.ledger import Ledger
from worker.metrics import Metrics


class Intake:
    """Admits fetched records; ``paused`` says whether fetching is paused now."""

    def __init__(self, ledger: Ledger, budget: BufferBudget, metrics: Metrics) -> None:
        self._ledger = ledger
        self._budget = budget
        self._metrics = metrics
        self.paused = False

    def accept(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]], highwater: int | None
    ) -> list[Envelope]:
        """Envelopes for one partition's fetched records (in offset order), tracked and counted;
        ``highwater``: the partition's, for its lag."""
        tracker = self._ledger.tracker(tp, records[0].offset)
        envelopes = []
        for record in records:
            tracker.track(record.offset)
            raw = self._budget.raw_size(record.key, record.value)
            envelope = Envelope(
                tp,
                record.offset,
                record.key,
                record.value,
                self._budget.admit_size(raw),
                tracker,
                raw_size=raw,
            )
            envelope.replays = replay_count(record.headers) if record.headers else 0
            envelope.headers = tuple(record.headers or ())
            envelopes.append(envelope)
        self._budget.add(envelopes)
        self._metrics.buffered_bytes.set(self._budget.buffered)
        self._metrics.messages_consumed.labels(tp.topic).inc(len(records))
        if highwater is not None:
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                highwater - records[-1].offset - 1
            )
        return envelopes

    def converted(self, envelopes: Sequence[Envelope]) -> None:
        """The records are converted: count them at their actual size."""
        self._budget.converted(envelopes)
        self._metrics.buffered_bytes.set(self._budget.buffered)

    def pause_change(self) -> bool | None:
        """True: pause fetching now (the buffer is full); False: resume it; None: leave it as it is."""
        full = self._budget.full
        if full == self.paused:
            return None
        self.paused = full
        return full
