"""OntologyCache and DataRowRegistry over fakes passed through their constructors (no I/O)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import factories
from worker.labelbox import TaskStatus
from worker.ontology import Mismatch
from worker.preparation import DataRowRegistry, NeedsFetch, OntologyCache, RegistrationFailed

ONTOLOGY = factories.ontology_every_type()
BOX = {"dataRow": {"globalKey": "a"}, "name": "box", "classifications": [], "bbox": {}}
TRUCK = {**BOX, "name": "truck"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeOntologies:
    def __init__(self, ontology: dict[str, Any]) -> None:
        self.ontology = ontology
        self.fetches = 0

    async def fetch_ontology(self, model_run_id: str) -> dict[str, Any]:
        self.fetches += 1
        return self.ontology


async def _check(cache: OntologyCache, run: str, bodies: list[dict[str, Any]]) -> tuple[int, Mismatch] | None:
    """What the pipeline does: ask without waiting; fetch when told to, then ask once more."""
    try:
        return cache.verdict(run, bodies)
    except NeedsFetch:
        await cache.refresh(run)
        return cache.verdict(run, bodies, refetch_on_miss=False)


async def test_fetched_once_then_cached_until_the_ttl() -> None:
    source, clock = FakeOntologies(ONTOLOGY), Clock()
    cache = OntologyCache(source, ttl_s=60, min_refetch_s=10, clock=clock)
    assert await _check(cache, "run", [BOX]) is None
    clock.now = 59
    assert await _check(cache, "run", [BOX]) is None
    assert source.fetches == 1
    clock.now = 61
    assert await _check(cache, "run", [BOX]) is None
    assert source.fetches == 2


async def test_a_miss_refetches_at_most_once_per_interval() -> None:
    source, clock = FakeOntologies(ONTOLOGY), Clock()
    cache = OntologyCache(source, ttl_s=600, min_refetch_s=10, clock=clock)
    found = await _check(cache, "run", [BOX, TRUCK])
    assert found is not None
    assert (found[0], found[1].code) == (1, "unknown_feature")
    clock.now = 5
    assert await _check(cache, "run", [TRUCK]) is not None
    assert source.fetches == 1, "no refetch within min_refetch_s"
    source.ontology = {
        **ONTOLOGY,
        "tools": [
            *ONTOLOGY["tools"],
            {**ONTOLOGY["tools"][0], "name": "truck", "featureSchemaId": "cltruck000000000000000001"},
        ],
    }
    clock.now = 11
    assert await _check(cache, "run", [TRUCK]) is None, "the new feature is picked up after a miss"
    assert source.fetches == 2


async def test_empty_or_unreadable_ontologies_are_not_checked() -> None:
    for ontology in ({"tools": [], "classifications": []}, {"tools": "not a list"}):
        cache = OntologyCache(FakeOntologies(ontology), ttl_s=60, clock=Clock())
        assert await _check(cache, "run", [TRUCK]) is None


async def test_bodies_are_read_lazily_none_for_an_empty_ontology_none_past_a_mismatch() -> None:
    read: list[int] = []

    def bodies(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for index, body in enumerate(items):
            read.append(index)
            yield body

    empty = OntologyCache(FakeOntologies({"tools": [], "classifications": []}), ttl_s=60, clock=Clock())
    await empty.refresh("run")
    assert empty.verdict("run", bodies([BOX, TRUCK])) is None
    assert read == []
    checked = OntologyCache(FakeOntologies(ONTOLOGY), ttl_s=60, clock=Clock())
    await checked.refresh("run")
    found = checked.verdict("run", bodies([TRUCK, BOX, BOX]), refetch_on_miss=False)
    assert found is not None
    assert found[0] == 0
    assert read == [0]


class FakeRegistration:
    def __init__(self, outcome: str = "COMPLETE") -> None:
        self.outcome = outcome
        self.calls: list[tuple[list[str], list[str]]] = []
        self.polls = 0

    async def register_data_rows(
        self, model_run_id: str, data_row_ids: list[str], global_keys: list[str]
    ) -> str:
        self.calls.append((data_row_ids, global_keys))
        return f"task-{len(self.calls)}"

    async def task_status(self, kind: str, task_id: str) -> TaskStatus:
        self.polls += 1
        return TaskStatus("RUNNING") if self.polls % 2 else TaskStatus(self.outcome, "boom")


async def test_registers_only_rows_not_yet_known() -> None:
    service = FakeRegistration()
    registry = DataRowRegistry(service, poll_interval_s=0, timeout_s=5)
    rows = [{"globalKey": "a"}, {"id": "x"}, {"globalKey": "a"}]
    assert await registry.ensure("run", rows) == 2
    assert await registry.ensure("run", [*rows, {"globalKey": "b"}]) == 1
    assert await registry.ensure("other-run", [{"globalKey": "a"}]) == 1, "membership is per model run"
    assert service.calls == [(["x"], ["a"]), ([], ["b"]), ([], ["a"])]


async def test_a_failed_task_raises_and_remembers_nothing() -> None:
    registry = DataRowRegistry(FakeRegistration("FAILED"), poll_interval_s=0, timeout_s=5)
    with pytest.raises(RegistrationFailed, match="boom"):
        await registry.ensure("run", [{"globalKey": "a"}])
    assert registry.unknown("run", [{"globalKey": "a"}]) == {("globalKey", "a")}
