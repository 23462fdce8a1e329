"""``worker.offsets``: the settled-offset tracker, pure (no I/O, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.offsets import PartitionOffsets


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
