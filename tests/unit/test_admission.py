"""``worker.admission``: admission decisions (forbidden runs, ontology, parking), pure."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import TopicPartition

from tests.support.factories import bbox, message
from worker.admission import Admit, OntologyGate, Park, Refuse
from worker.envelope import Envelope, process_chunk
from worker.labelbox import RequestRejected
from worker.offsets import PartitionOffsets
from worker.preparation import OntologyCache

ONTOLOGY = {
    "tools": [{"tool": "rectangle", "name": "box", "featureSchemaId": "f1", "classifications": []}],
    "classifications": [],
}


class Ontologies:
    async def fetch_ontology(self, model_run_id: str) -> dict[str, Any]:
        return ONTOLOGY


def converted(name: str, run: str = "run-a", gate: OntologyGate | None = None) -> Envelope:
    """Converted as in the converter thread (checked against the cached ontology, when ``gate`` is given)."""
    value = orjson.dumps(message(bbox(name=name), model_run_id=run))
    envelope = Envelope(TopicPartition("t", 0), 0, None, value, 0, PartitionOffsets(0))
    [(_, rejection)] = process_chunk([envelope], 1 << 20, gate.precheck if gate else None)
    assert rejection is None
    return envelope


async def test_messages_wait_for_their_model_runs_ontology_in_order() -> None:
    cache = OntologyCache(Ontologies(), ttl_s=600)
    gate = OntologyGate(cache, lambda run: None)
    first, second, other = converted("box"), converted("cat"), converted("box", run="run-b")
    assert gate.admit(first) == Park("run-a"), "the first message of a run starts a fetch"
    assert gate.admit(second) == Park(None)
    assert gate.admit(other) == Park("run-b"), "another run is not held up"
    await cache.refresh("run-a")
    decisions = gate.fetched("run-a")
    assert decisions[0] == Admit(first, "run-a")
    assert isinstance(decisions[1], Refuse)
    assert decisions[1].reason == "ontology_mismatch"
    assert isinstance(gate.admit(converted("box", gate=gate)), Admit), "checked in the thread: no parking"
    refused = gate.admit(converted("cat", gate=gate))
    assert isinstance(refused, Refuse), "a mismatch found in the thread"
    assert refused.errors[0].startswith("predictions.0.name: unknown_feature")


def test_a_forbidden_run_is_refused_before_any_ontology_work() -> None:
    gate = OntologyGate(None, lambda run: "no access" if run == "run-x" else None)
    decision = gate.admit(converted("box", run="run-x"))
    assert isinstance(decision, Refuse)
    assert (decision.reason, decision.errors) == ("model_run_forbidden", ("no access",))
    assert isinstance(gate.admit(converted("box")), Admit), "ONTOLOGY_CHECK=off admits the rest"


def test_an_unavailable_run_refuses_what_waited() -> None:
    gate = OntologyGate(OntologyCache(Ontologies(), ttl_s=600), lambda run: None)
    gate.admit(converted("box"))
    gate.admit(converted("box"))
    decisions = gate.unavailable("run-a", RequestRejected("unknown", "RESOURCE_NOT_FOUND"))
    assert [d.reason for d in decisions if isinstance(d, Refuse)] == ["model_run_unavailable"] * 2
