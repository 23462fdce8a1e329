"""Ontology check before upload, and data rows registered in the model run (real broker + sandbox)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from labelbox_sandbox import Sandbox
from tests.conftest import API_KEY
from tests.support.factories import (
    bbox,
    every_type,
    message,
    misplaced_at_depth_2,
    ontology_every_type,
    point,
    radio,
)
from tests.support.kafka_helpers import produce, read_all
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.convert import convert
from worker.decode import decode

pytestmark = pytest.mark.integration
ONTOLOGY = ontology_every_type()
RUN = "run-onto"


def _msg(*predictions: dict[str, Any], key: str = "img") -> bytes:
    return orjson.dumps(message(*predictions, model_run_id=RUN, data_row={"global_key": f"{key}.jpg"}))


def _uuids(value: bytes) -> set[str]:
    return {line.uuid for line in convert(decode(value))}  # type: ignore[arg-type]


MISMATCHES = [
    ("unknown feature", bbox(name="truck"), "predictions.0.name: unknown_feature"),
    (
        "wrong tool type",
        {"type": "point", "name": "box", "point": point()},
        "predictions.0.point: wrong_tool_type",
    ),
    ("unknown answer", radio(answer={"name": "zzz"}), "predictions.0.answer.name: unknown_answer"),
    (
        "nested under the wrong parent, depth 1",
        bbox(classifications=[{"type": "radio", "name": "cl_reason", "answer": {"name": "r1"}}]),
        "predictions.0.classifications.0.name: misplaced_classification",
    ),
    (
        "nested under the wrong parent, depth 2",
        misplaced_at_depth_2(),
        "predictions.0.classifications.0.answer.classifications.0.name: misplaced_classification",
    ),
]


async def test_mismatches_go_to_the_dlq_before_upload_and_fitting_predictions_import(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 1)
    sandbox.state.load_ontology(RUN, ONTOLOGY)
    good = _msg(*every_type(), key="good")
    bad = [_msg(prediction, key=f"bad-{i}") for i, (_, prediction, _) in enumerate(MISMATCHES)]
    await produce(bootstrap, topic, [(RUN.encode(), v, 0) for v in [good, *bad]])
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: 1 + len(bad)}) == {0: 1 + len(bad)}
    stored = {p["uuid"] for p in sandbox.state.predictions(RUN)}
    assert stored == _uuids(good)
    uploaded = set(sandbox.state.upload_counts(RUN))
    dlq = {r.value: r for r in await read_all(bootstrap, f"{topic}.dlq", expected=len(bad))}
    for value, (name, _, expected) in zip(bad, MISMATCHES, strict=True):
        assert not _uuids(value) & uploaded, f"{name}: never uploaded"
        assert dlq[value].headers["dlq.reason"] == "ontology_mismatch", name
        assert dlq[value].headers["dlq.error"].startswith(expected), (name, dlq[value].headers["dlq.error"])


async def test_a_feature_added_to_the_ontology_is_picked_up_after_a_miss(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 1)
    sandbox.state.load_ontology(RUN, ONTOLOGY)
    settings = settings_for(bootstrap, topic, sandbox, ontology_min_refetch_s=0.0)
    first = _msg(bbox(name="truck"), key="first")
    async with running(settings):
        await produce(bootstrap, topic, [(RUN.encode(), first, 0)])
        assert await wait_committed(bootstrap, settings, {0: 1}) == {0: 1}
        truck = {**ONTOLOGY["tools"][0], "name": "truck", "featureSchemaId": "cltruck000000000000000001"}
        extended = {**ONTOLOGY, "tools": [*ONTOLOGY["tools"], {**truck, "classifications": []}]}
        sandbox.state.load_ontology(RUN, extended)
        second = _msg(bbox(name="truck"), key="second")
        await produce(bootstrap, topic, [(RUN.encode(), second, 0)])
        assert await wait_committed(bootstrap, settings, {0: 2}) == {0: 2}
    (dead,) = await read_all(bootstrap, f"{topic}.dlq", expected=1)
    assert dead.value == first
    assert {p["uuid"] for p in sandbox.state.predictions(RUN)} == _uuids(second)


async def test_ensure_data_rows_registers_each_row_once(
    bootstrap: str, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    await make_topics(bootstrap, topic, 1)
    first = [_msg(bbox(), key=f"row-{i}") for i in range(3)]
    second = [_msg(bbox(confidence=0.5), key=f"row-{i}") for i in range(4)]  # rows 0-2 again, and row 3
    caplog.set_level(logging.INFO, logger="worker.imports")
    async with Sandbox(api_key=API_KEY, processing_delay_s=0.05) as sandbox:
        settings = settings_for(bootstrap, topic, sandbox, ensure_data_rows=True)
        async with running(settings):
            await produce(bootstrap, topic, [(RUN.encode(), v, 0) for v in first])
            assert await wait_committed(bootstrap, settings, {0: 3}) == {0: 3}
            await produce(bootstrap, topic, [(RUN.encode(), v, 0) for v in second])
            assert await wait_committed(bootstrap, settings, {0: 7}) == {0: 7}
        stored = {p["uuid"] for p in sandbox.state.predictions(RUN)}
        assert stored == set().union(*(_uuids(v) for v in first + second))
        assert sandbox.state.model_run(RUN).global_keys == {f"row-{i}.jpg" for i in range(4)}
        registered = [r.ctx["data_rows"] for r in caplog.records if r.getMessage() == "data_rows_registered"]
        assert registered == [3, 1], "each data row registered once"
        assert len([r for r in sandbox.state.requests("register_data_rows") if r.status == 200]) == 2


async def test_without_ensure_data_rows_unregistered_rows_fail_into_the_dlq(
    bootstrap: str, topic: str
) -> None:
    await make_topics(bootstrap, topic, 1)
    value = _msg(bbox(), key="stranger")
    async with Sandbox(api_key=API_KEY, processing_delay_s=0.05) as sandbox:  # membership checked by default
        settings = settings_for(bootstrap, topic, sandbox, ensure_data_rows=False)
        await produce(bootstrap, topic, [(RUN.encode(), value, 0)])
        async with running(settings):
            assert await wait_committed(bootstrap, settings, {0: 1}) == {0: 1}
        assert sandbox.state.predictions(RUN) == []
    (dead,) = await read_all(bootstrap, f"{topic}.dlq", expected=1)
    assert dead.headers["dlq.reason"] == "labelbox_rejected"
    assert "DataRowNotInModelRun" in dead.headers["dlq.error"]
