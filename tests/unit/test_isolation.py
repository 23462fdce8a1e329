"""``worker.isolation``: the forbidden-model-run verdicts, the bisection budget and the batch split.
Pure, no I/O. How Labelbox's answers are classified (the README's table) is in ``test_labelbox.py``."""

from __future__ import annotations

from typing import Any

import pytest

from worker.batcher import Batch, _stats
from worker.convert import NdjsonLine
from worker.isolation import BisectionBudget, ForbiddenRuns


def test_forbidden_runs_expire_after_their_ttl() -> None:
    runs = ForbiddenRuns(ttl_s=300)
    runs.forbid("run-x", "no access", now=10.0)
    assert runs.refusal("run-x", 11.0) == "no access"
    assert runs.refusal("run-y", 11.0) is None
    assert runs.count(309.9) == 1
    assert runs.refusal("run-x", 310.0) is None, "re-checked after the TTL"
    assert runs.count(310.0) == 0


def test_the_bisection_budget_is_spent_in_pairs_and_never_overdrawn() -> None:
    budget = BisectionBudget(5)
    assert budget.take(2)
    assert budget.take(2)
    assert not budget.take(2)
    assert budget.left == 1


class _Message:
    def __init__(self, n: int, rows: int) -> None:
        self.lines = [
            NdjsonLine(uuid=f"{n}-{i}", data_row=f"img-{n}", feature="box", data=b'{"n":%d,"i":%d}' % (n, i))
            for i in range(rows)
        ]


def test_a_batch_splits_into_halves_of_whole_messages() -> None:
    batch: Batch[Any] = Batch("run-a", 0.0)
    messages = [_Message(n, rows=n + 1) for n in range(5)]
    for message in messages:
        batch.append(message, _stats(message))
    left, right = batch.split()
    assert left.items == messages[:2]
    assert right.items == messages[2:]
    assert left.rows + right.rows == batch.rows
    assert left.payload() + right.payload() == batch.payload()
    with pytest.raises(ValueError, match="fewer than two"):
        Batch[Any]("run-a", 0.0).split()
