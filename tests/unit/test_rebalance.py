"""``worker.rebalance``: a revoke commits what is settled and forgets the rest; fakes, no broker."""

from __future__ import annotations

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from worker.batcher import Batcher, BatchLimits
from worker.buffer import BufferBudget
from worker.committer import Committer
from worker.convert import NdjsonLine
from worker.dlq import DeadLetterWriter
from worker.envelope import Envelope
from worker.intake import Intake
from worker.ledger import Ledger
from worker.metrics import Metrics
from worker.readiness import Readiness
from worker.rebalance import Rebalance
from worker.settlement import Settler

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def position(self, tp: TopicPartition) -> int:
        return 0

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)


async def test_a_revoke_commits_the_settled_part_and_drops_the_rest() -> None:
    consumer, ledger, readiness = FakeConsumer(), Ledger(), Readiness(60)
    metrics = Metrics(CollectorRegistry())
    budget = BufferBudget(max_bytes=10**6, max_records=10)
    batcher: Batcher[Envelope] = Batcher(BatchLimits(100, 10**6, 60))
    committer = Committer(consumer, ledger, metrics)
    settler = Settler(ledger, budget, committer, DeadLetterWriter(None, "dlq"), metrics, fail=print)  # type: ignore[arg-type]
    intake = Intake(ledger, budget, metrics)
    checks: list[bool] = []
    rebalance = Rebalance(
        consumer,
        committer=committer,
        ledger=ledger,
        batcher=batcher,
        settler=settler,
        intake=intake,
        readiness=readiness,
        metrics=metrics,
        checked=lambda: checks.append(readiness.joined),
    )
    rebalance.on_partitions_assigned({TP0, TP1})
    tracker = ledger.tracker(TP0, 0)
    envelopes = []
    for offset in range(2):
        tracker.track(offset)
        line = NdjsonLine(f"u{offset}", "row", "box", b"{}")
        envelopes.append(Envelope(TP0, offset, None, b"v", 100, tracker, lines=[line]))
    budget.add(envelopes)
    settler.settle(envelopes[0])
    batcher.add("run", envelopes[1], now=0)
    await rebalance.on_partitions_revoked({TP0})
    assert consumer.commits == [{TP0: 1}], "the settled offset, on the revoked partition"
    assert budget.buffered == 0, "the batched message's bytes are freed"
    assert batcher.flush() == []
    assert not ledger.owned(envelopes[1])
    assert checks == [True, False]


def test_new_partitions_stay_paused_while_the_buffer_is_full() -> None:
    consumer, ledger = FakeConsumer(), Ledger()
    metrics = Metrics(CollectorRegistry())
    budget = BufferBudget(max_bytes=1, max_records=10)
    intake = Intake(ledger, budget, metrics)
    budget.buffered = 5
    assert intake.pause_change() is True
    committer = Committer(consumer, ledger, metrics)
    rebalance = Rebalance(
        consumer,
        committer=committer,
        ledger=ledger,
        batcher=Batcher(BatchLimits(100, 10**6, 60)),
        settler=Settler(ledger, budget, committer, DeadLetterWriter(None, "dlq"), metrics, fail=print),  # type: ignore[arg-type]
        intake=intake,
        readiness=Readiness(60),
        metrics=metrics,
        checked=lambda: None,
    )
    rebalance.on_partitions_assigned({TP1})
    assert consumer.paused == {TP1}
