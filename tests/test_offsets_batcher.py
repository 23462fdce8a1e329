"""Pure stages: the settled-offset tracker and the per-model-run batcher (no I/O, no clock)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import MAX_PER_FEATURE
from worker.batcher import Batcher, BatchLimits
from worker.convert import NdjsonLine
from worker.offsets import PartitionOffsets

# --- offsets ------------------------------------------------------------------------------------


def test_commit_point_waits_for_the_lowest_unsettled_offset() -> None:
    offsets = PartitionOffsets(start=10)
    for offset in range(10, 15):
        offsets.track(offset)
    assert offsets.commit_offset == 10
    offsets.settle(12)
    offsets.settle(11)
    assert offsets.commit_offset == 10  # 10 still unsettled: a gap in acknowledgements
    offsets.settle(10)
    assert offsets.commit_offset == 13
    offsets.settle(14)
    offsets.settle(13)
    assert offsets.commit_offset == 15
    assert offsets.pending == 0


def test_gaps_in_the_log_do_not_block() -> None:
    offsets = PartitionOffsets(start=0)
    for offset in (0, 5, 9):  # compacted topic: offsets 1-4 and 6-8 do not exist
        offsets.track(offset)
    offsets.settle(0)
    assert offsets.commit_offset == 5
    offsets.settle(9)
    assert offsets.commit_offset == 5
    offsets.settle(5)
    assert offsets.commit_offset == 10


def test_the_commit_point_passes_offsets_without_records() -> None:
    """Transaction markers and aborted records are never returned by the consumer: its position passes
    them, and so does the commit point, but never an unsettled record."""
    offsets = PartitionOffsets(start=0)
    offsets.track(0)
    offsets.track(1)
    assert not offsets.pass_to(3), "records 0 and 1 are not settled"
    assert offsets.commit_offset == 0
    offsets.settle(0)
    offsets.settle(1)
    assert offsets.commit_offset == 3, "past the marker at 2"
    assert not offsets.pass_to(3)
    assert not offsets.pass_to(2), "the position never moves back the commit point"
    offsets.track(5)  # 3, 4: an aborted transaction's records
    offsets.settle(5)
    assert offsets.pass_to(7)
    assert offsets.commit_offset == 7


def test_settle_is_idempotent_and_ignores_unknown_offsets() -> None:
    offsets = PartitionOffsets(start=0)
    offsets.track(0)
    assert offsets.settle(0)
    assert not offsets.settle(0)
    assert not offsets.settle(7)
    assert offsets.commit_offset == 1


def test_needs_commit_tracks_what_was_committed() -> None:
    offsets = PartitionOffsets(start=3)
    assert not offsets.needs_commit()
    offsets.track(3)
    offsets.settle(3)
    assert offsets.needs_commit()
    offsets.mark_committed(4)
    assert not offsets.needs_commit()


def test_offsets_must_increase() -> None:
    offsets = PartitionOffsets(start=5)
    with pytest.raises(ValueError, match="tracked after"):
        offsets.track(4)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_commit_point_never_passes_an_unsettled_offset(data: st.DataObject) -> None:
    tracked = sorted(data.draw(st.sets(st.integers(0, 200), min_size=1, max_size=60)))
    offsets = PartitionOffsets(start=tracked[0])
    for offset in tracked:
        offsets.track(offset)
    order = data.draw(st.permutations(tracked))
    settled: set[int] = set()
    for offset in order:
        offsets.settle(offset)
        settled.add(offset)
        unsettled = [o for o in tracked if o not in settled]
        expected = min(unsettled) if unsettled else tracked[-1] + 1
        assert offsets.commit_offset == expected


# --- batcher ------------------------------------------------------------------------------------


@dataclass
class Msg:
    lines: list[NdjsonLine]


def _msg(rows: int = 1, size: int = 9, data_row: str = "dr", feature: str | None = "f") -> Msg:
    return Msg([NdjsonLine(f"u{i}", data_row, feature, b"x" * (size - 1)) for i in range(rows)])


LIMITS = BatchLimits(max_rows=10, max_bytes=1000, linger_s=5.0)


def test_closes_at_max_rows() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    assert batcher.add("run", _msg(rows=6), now=0) == []
    closed = batcher.add("run", _msg(rows=4), now=1)
    assert [b.rows for b in closed] == [10]
    assert batcher.flush() == []


def test_a_message_that_would_overflow_starts_a_new_batch() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    batcher.add("run", _msg(rows=6), now=0)
    closed = batcher.add("run", _msg(rows=6), now=1)
    assert [b.rows for b in closed] == [6]
    assert [b.rows for b in batcher.flush()] == [6]


def test_closes_at_max_bytes() -> None:
    batcher: Batcher[Msg] = Batcher(BatchLimits(max_rows=100, max_bytes=100, linger_s=5))
    assert batcher.add("run", _msg(rows=1, size=60), now=0) == []
    closed = batcher.add("run", _msg(rows=1, size=60), now=0)
    assert [b.size for b in closed] == [60]
    closed = batcher.add("run", _msg(rows=1, size=40), now=0)
    assert [b.size for b in closed] == [100]


def test_an_oversized_message_is_a_batch_of_its_own() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    closed = batcher.add("run", _msg(rows=25), now=0)
    assert [b.rows for b in closed] == [25]


def test_linger_closes_batches_per_model_run() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    batcher.add("a", _msg(), now=0)
    batcher.add("b", _msg(), now=3)
    assert batcher.due(now=4.9) == []
    assert [b.model_run_id for b in batcher.due(now=5)] == ["a"]
    assert [b.model_run_id for b in batcher.due(now=8)] == ["b"]
    assert batcher.flush() == []


def test_model_runs_are_batched_apart() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    for i in range(6):
        batcher.add("ab"[i % 2], _msg(rows=1), now=0)
    batches = batcher.flush()
    assert sorted((b.model_run_id, b.rows) for b in batches) == [("a", 3), ("b", 3)]


def test_never_more_than_5000_per_data_row_per_feature() -> None:
    batcher: Batcher[Msg] = Batcher(BatchLimits(max_rows=100_000, max_bytes=10**9, linger_s=5))
    assert batcher.add("run", _msg(rows=3000), now=0) == []
    assert batcher.add("run", _msg(rows=2000, data_row="other"), now=0) == []  # other data row
    assert batcher.add("run", _msg(rows=1000, feature=None), now=0) == []  # metrics do not count
    closed = batcher.add("run", _msg(rows=2001), now=0)
    assert [b.rows for b in closed] == [6000]
    assert all(n <= MAX_PER_FEATURE for n in closed[0].per_feature.values())


def test_drop_removes_messages_and_keeps_the_rest() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    keep, lose = _msg(rows=2), _msg(rows=3)
    batcher.add("run", keep, now=0)
    batcher.add("run", lose, now=1)
    assert batcher.drop(lambda m: m is lose) == [lose]
    (batch,) = batcher.flush()
    assert batch.items == [keep]
    assert (batch.rows, batch.opened_at) == (2, 0)


def test_payload_is_ndjson_of_every_line() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    batcher.add("run", _msg(rows=2, size=3), now=0)
    (batch,) = batcher.flush()
    assert batch.payload() == b"xx\nxx\n"
    assert len(batch.payload()) == batch.size
