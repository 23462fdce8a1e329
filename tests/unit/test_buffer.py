"""``worker.buffer``: backpressure accounting, pure."""

from __future__ import annotations

from aiokafka import TopicPartition

from worker.buffer import LINE_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES, BufferBudget
from worker.convert import NdjsonLine
from worker.envelope import Envelope
from worker.offsets import PartitionOffsets

TP = TopicPartition("t", 0)


def envelope(budget: BufferBudget, value: bytes) -> Envelope:
    raw = budget.raw_size(None, value)
    return Envelope(TP, 0, None, value, budget.admit_size(raw), PartitionOffsets(0), raw_size=raw)


def test_a_record_is_counted_at_the_estimate_then_at_its_converted_size() -> None:
    budget = BufferBudget(max_bytes=1 << 20, max_records=500)
    record = envelope(budget, b"x" * 100)
    assert record.raw_size == 100 + RECORD_OVERHEAD_BYTES
    assert record.size == 16384, "the first estimate: conversion may multiply a record's size"
    budget.add([record])
    record.lines = [NdjsonLine(uuid="u", data_row="d", feature="f", data=b"y" * 50)]
    budget.converted([record])
    assert budget.buffered == record.size == 100 + RECORD_OVERHEAD_BYTES + 50 + LINE_OVERHEAD_BYTES
    budget.release(record)
    budget.release(record)
    assert budget.buffered == 0, "released once"


def test_the_fetch_limit_fits_the_room_left_and_pauses_when_full() -> None:
    budget = BufferBudget(max_bytes=100_000, max_records=500)
    assert budget.fetch_limit() == 100_000 // 16384
    records = [envelope(budget, b"z") for _ in range(7)]
    budget.add(records)
    assert budget.full
    assert budget.fetch_limit() == 1, "always at least one (a paused consumer fetches nothing anyway)"
    for record in records:
        budget.release(record)
    assert not budget.full
