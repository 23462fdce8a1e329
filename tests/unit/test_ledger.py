"""``worker.ledger``: settlement and commit bookkeeping, pure."""

from __future__ import annotations

from aiokafka import TopicPartition

from worker.envelope import Envelope
from worker.ledger import Ledger

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def fetched(ledger: Ledger, tp: TopicPartition, offsets: range) -> list[Envelope]:
    tracker = ledger.tracker(tp, offsets[0])
    out = []
    for offset in offsets:
        tracker.track(offset)
        out.append(Envelope(tp, offset, None, b"", 0, tracker))
    return out


def test_commits_only_the_contiguous_settled_prefix_per_partition() -> None:
    ledger = Ledger()
    a, b = fetched(ledger, TP0, range(5, 9)), fetched(ledger, TP1, range(0, 2))
    assert ledger.due() == {}
    assert ledger.settle(a[1])
    assert ledger.due() == {}, "offset 6 settled, 5 not: nothing to commit yet"
    assert not ledger.settle(a[1]), "settled once"
    assert ledger.settle(a[0])
    assert ledger.settle(b[0])
    assert ledger.due() == {TP0: 7, TP1: 1}
    assert ledger.due(only={TP1}) == {TP1: 1}
    ledger.committed({TP0: 7})
    assert ledger.due() == {TP1: 1}
    assert ledger.uncommitted() == {TP1: 1}


def test_revoked_partitions_are_forgotten_and_their_records_no_longer_owned() -> None:
    ledger = Ledger()
    (record,) = fetched(ledger, TP0, range(3, 4))
    ledger.revoke({TP0})
    assert not ledger.owned(record)
    assert not ledger.settle(record)
    assert ledger.due() == {}


def test_an_offset_reset_starts_a_fresh_tracker() -> None:
    ledger = Ledger()
    (old,) = fetched(ledger, TP0, range(10, 11))
    ledger.settle(old)
    (new,) = fetched(ledger, TP0, range(2, 3))  # the consumer moved back
    assert not ledger.owned(old)
    assert ledger.owned(new)
    assert ledger.due() == {}
