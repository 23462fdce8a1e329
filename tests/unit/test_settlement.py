"""``worker.settlement``: imported or dead-lettered, a message is settled once; a fake DLQ producer."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from worker.buffer import BufferBudget
from worker.committer import Committer
from worker.dlq import H_REASON, DeadLetterWriter
from worker.envelope import Envelope
from worker.ledger import Ledger
from worker.metrics import Metrics
from worker.settlement import Settler

TP = TopicPartition("t", 0)


class FakeProducer:
    def __init__(self, refusals: int = 0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refusals = refusals

    async def send_and_wait(self, topic: str, **record: Any) -> None:
        if self.refusals:
            self.refusals -= 1
            raise KafkaConnectionError("broker gone")
        self.sent.append({"topic": topic, **record})


class NoCommits:
    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    async def position(self, tp: TopicPartition) -> int:
        return 0

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set()


def setup(producer: FakeProducer) -> tuple[Settler, Ledger, BufferBudget, CollectorRegistry, list[Envelope]]:
    registry, ledger = CollectorRegistry(), Ledger()
    metrics = Metrics(registry)
    budget = BufferBudget(max_bytes=10**6, max_records=10)
    tracker = ledger.tracker(TP, 0)
    envelopes = []
    for offset in range(2):
        tracker.track(offset)
        envelopes.append(Envelope(TP, offset, b"k", b"v", 100, tracker))
    budget.add(envelopes)
    committer = Committer(NoCommits(), ledger, metrics)
    writer = DeadLetterWriter(producer, "t.dlq")  # type: ignore[arg-type]
    settler = Settler(ledger, budget, committer, writer, metrics, fail=lambda error: None)
    return settler, ledger, budget, registry, envelopes


async def test_settled_messages_free_their_bytes_and_become_committable() -> None:
    settler, ledger, budget, registry, (first, _) = setup(FakeProducer())
    settler.settle(first)
    settler.settle(first)
    assert budget.buffered == 100, "released once"
    assert ledger.due() == {TP: 1}
    assert registry.get_sample_value("lbworker_buffered_bytes") == 100


async def test_a_dead_letter_is_retried_until_written_then_settled() -> None:
    producer = FakeProducer(refusals=1)
    settler, ledger, budget, registry, (first, _) = setup(producer)
    await settler.dead_letter(first, "invalid_json", ["bad"])
    assert [dict(r["headers"])[H_REASON] for r in producer.sent] == [b"invalid_json"]
    assert registry.get_sample_value("lbworker_dlq_records_total", {"reason": "invalid_json"}) == 1
    assert ledger.due() == {TP: 1}
    assert budget.buffered == 100
