"""``worker.batcher``: the per-model-run batcher, pure (no I/O, no clock)."""

from __future__ import annotations

from dataclasses import dataclass

from schemas import MAX_PER_FEATURE
from worker.batcher import Batch, Batcher, BatchLimits
from worker.convert import NdjsonLine, encode


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


def test_payload_is_the_encoded_lines_of_every_message_and_size_counts_them() -> None:
    batcher: Batcher[Msg] = Batcher(LIMITS)
    first = Msg([NdjsonLine("a", "dr", "f", b'{"a":1}'), NdjsonLine("b", "dr", "f", b'{"b":22}')])
    second = Msg([NdjsonLine("c", "dr", None, b"{}")])
    batcher.add("run", first, now=0)
    batcher.add("run", second, now=0)
    (batch,) = batcher.flush()
    assert batch.payload() == encode(first.lines + second.lines) == b'{"a":1}\n{"b":22}\n{}\n'
    assert batch.size == len(batch.payload())
    assert Batch[Msg]("run", 0.0).payload() == encode([]) == b""


def test_per_feature_counts_start_when_a_batch_could_reach_the_limit() -> None:
    batch = Batch[Msg]("run", 0.0)
    batch.append(_msg(rows=3), (3, 27))
    assert batch.fits_per_feature(_msg(rows=MAX_PER_FEATURE - 3), MAX_PER_FEATURE - 3)
    assert not batch.fits_per_feature(_msg(rows=MAX_PER_FEATURE - 2), MAX_PER_FEATURE - 2)
    assert batch.fits_per_feature(_msg(rows=MAX_PER_FEATURE, data_row="other"), MAX_PER_FEATURE)
    batch.append(_msg(rows=2, data_row="other"), (2, 18))
    assert batch.per_feature == {("dr", "f"): 3, ("other", "f"): 2}
