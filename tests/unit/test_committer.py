"""``worker.committer``: settled offsets to a fake consumer; metrics read through the registry."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from worker.committer import Committer
from worker.envelope import Envelope
from worker.ledger import Ledger
from worker.metrics import Metrics

TP = TopicPartition("t", 0)


class FakeConsumer:
    def __init__(self, refusals: int = 0) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.refusals = refusals
        self.positions = {TP: 0}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise KafkaConnectionError("broker gone")
        self.commits.append(dict(offsets))

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        return 10

    def assignment(self) -> set[TopicPartition]:
        return {TP}


def settled(ledger: Ledger, offsets: range) -> None:
    tracker = ledger.tracker(TP, offsets[0])
    for offset in offsets:
        tracker.track(offset)
    for offset in offsets:
        ledger.settle(Envelope(TP, offset, None, b"", 0, tracker))


def committed(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("lbworker_committed_offset", {"topic": "t", "partition": "0"})


async def test_commits_what_is_due_and_reports_a_refusal() -> None:
    registry, ledger = CollectorRegistry(), Ledger()
    consumer = FakeConsumer(refusals=1)
    committer = Committer(consumer, ledger, Metrics(registry))
    assert await committer.commit(), "nothing due: nothing to refuse"
    settled(ledger, range(0, 3))
    assert not await committer.commit(), "refused: the caller may try again"
    assert await committer.commit()
    assert consumer.commits == [{TP: 3}]
    assert committed(registry) == 3
    assert await committer.commit()
    assert consumer.commits == [{TP: 3}], "committed once"


async def test_the_loop_retries_a_refused_commit_without_new_settlements() -> None:
    ledger, consumer = Ledger(), FakeConsumer(refusals=2)
    committer = Committer(consumer, ledger, Metrics(CollectorRegistry()))
    settled(ledger, range(0, 2))
    task = asyncio.create_task(committer.run())
    committer.wanted()
    for _ in range(100):
        if consumer.commits:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert consumer.commits == [{TP: 2}]


async def test_the_commit_point_follows_the_position_past_recordless_offsets() -> None:
    registry, ledger, consumer = CollectorRegistry(), Ledger(), FakeConsumer()
    committer = Committer(consumer, ledger, Metrics(registry))
    settled(ledger, range(0, 2))
    consumer.positions[TP] = 3  # offset 2 is a transaction marker
    await committer.pass_recordless_offsets()
    assert ledger.due() == {TP: 3}
    lag = registry.get_sample_value("lbworker_consumer_lag", {"topic": "t", "partition": "0"})
    assert lag == 7
