"""``worker.intake``: fetched records tracked, counted and paused on a full buffer; no I/O."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from worker.buffer import RECORD_OVERHEAD_BYTES, BufferBudget
from worker.dlq import H_REPLAYS
from worker.intake import Intake
from worker.ledger import Ledger
from worker.metrics import Metrics

TP = TopicPartition("t", 0)


def record(offset: int, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord:  # type: ignore[type-arg]
    return ConsumerRecord("t", 0, offset, 0, 0, b"k", value, None, 1, len(value), headers or [])


def test_records_are_tracked_counted_and_their_lag_reported() -> None:
    registry, ledger = CollectorRegistry(), Ledger()
    budget = BufferBudget(max_bytes=10**6, max_records=100)
    intake = Intake(ledger, budget, Metrics(registry))
    envelopes = intake.accept(TP, [record(5, b"x" * 100), record(6, b"y", [(H_REPLAYS, b"2")])], highwater=9)
    assert [e.offset for e in envelopes] == [5, 6]
    assert envelopes[1].replays == 2
    assert envelopes[0].raw_size == 101 + RECORD_OVERHEAD_BYTES
    assert all(ledger.owned(e) for e in envelopes)
    assert budget.buffered == sum(e.size for e in envelopes)
    assert registry.get_sample_value("lbworker_buffered_bytes") == budget.buffered
    assert registry.get_sample_value("lbworker_messages_consumed_total", {"topic": "t"}) == 2
    assert registry.get_sample_value("lbworker_consumer_lag", {"topic": "t", "partition": "0"}) == 2


def test_fetching_pauses_on_a_full_buffer_and_resumes_once_it_drains() -> None:
    budget = BufferBudget(max_bytes=1000, max_records=100)
    intake = Intake(Ledger(), budget, Metrics(CollectorRegistry()))
    assert intake.pause_change() is None, "not full, not paused: nothing to do"
    [envelope] = intake.accept(TP, [record(0, b"x" * 2000)], highwater=None)
    assert intake.pause_change() is True
    assert intake.pause_change() is None, "already paused"
    budget.release(envelope)
    assert intake.pause_change() is False
    assert not intake.paused
