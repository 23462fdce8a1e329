"""The sandbox checks uploads against the model run's ontology, once one is loaded, with its own code
(``labelbox_sandbox.ontology``, which shares nothing with ``worker.ontology``).

The lines are the worker's own (``worker.convert`` of ``tests.support.factories`` messages) and the
Labelbox SDK's (``NDJsonConverter``: name and schema id together, snake_case under answers); the ontology is
tests/data/ontology_every_type.json, which every ``factories.every_type`` prediction fits.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from labelbox_sandbox import Sandbox, SandboxState, validate_import, validate_line
from labelbox_sandbox.ontology import OntologyIndex
from labelbox_sandbox.validate import ontology_errors
from schemas import PredictionMessage
from tests.conftest import API_KEY
from tests.support import factories
from worker.convert import convert, encode
from worker.labelbox import ImportState, LabelboxClient

Json = dict[str, Any]
MR = "clmodelrun000000000000001"
NORMALIZED: Json = factories.ontology_every_type()
EMPTY: Json = {"tools": [], "classifications": []}
UNKNOWN_ANSWER = factories.radio(answer={"name": "zz"})
MISPLACED = factories.misplaced_at_depth_2()


def payload(*predictions: Json) -> bytes:
    message = PredictionMessage.model_validate(factories.message(*predictions, model_run_id=MR))
    return encode(convert(message))


def names(errors: Any) -> list[str]:
    return [e["name"] for e in errors]


# --- the pure validator ------------------------------------------------------------------------------


@pytest.mark.parametrize("ontology", [NORMALIZED, OntologyIndex.build(NORMALIZED)], ids=["json", "indexed"])
def test_fitting_lines_pass(ontology: Any) -> None:
    results = validate_import(payload(*factories.every_type()), ontology)
    assert len(results) == len(factories.every_type())
    assert [r.errors for r in results] == [()] * len(results)


def test_lines_that_do_not_fit_fail_with_a_labelbox_style_error() -> None:
    bad_metric = {"type": "scalar_metric", "value": 0.5, "feature_name": "car"}
    results = validate_import(payload(factories.bbox(), UNKNOWN_ANSWER, MISPLACED, bad_metric), NORMALIZED)
    assert [r.ok for r in results] == [True, False, False, False]
    assert [list(r.errors) for r in results[1:]] == [
        [
            {
                "name": "OntologyMismatch",
                "message": "answer 'zz' is not an option of radio 'q' (options: 'a', 'b')",
                "additionalInfo": {"path": "answer.name", "code": "unknown_answer"},
            }
        ],
        [
            {
                "name": "OntologyMismatch",
                "message": "classification 'box_flags' does not belong under box > sub > s1; the ontology "
                "has it under box",
                "additionalInfo": {
                    "path": "classifications.0.answer.classifications.0.name",
                    "code": "misplaced_classification",
                },
            }
        ],
        [
            {
                "name": "OntologyMismatch",
                "message": "metric featureName 'car' is neither a tool nor a top-level classification "
                "(tools: 'box', 'pg', 'pt', 'ln', 'mk'; classifications: 'q', 'cl', 'tx')",
                "additionalInfo": {"path": "featureName", "code": "unknown_feature"},
            }
        ],
    ]


@pytest.mark.parametrize(
    "ontology", [None, EMPTY, {}, OntologyIndex.build(EMPTY)], ids=["none", "empty", "{}", "indexed"]
)
def test_no_ontology_or_an_empty_one_checks_nothing(ontology: Any) -> None:
    results = validate_import(payload(factories.bbox(name="anything"), UNKNOWN_ANSWER, MISPLACED), ontology)
    assert [r.ok for r in results] == [True, True, True]


def test_shape_errors_come_first_and_alone() -> None:
    line = orjson.loads(payload(factories.bbox(name="car")))
    line["confidence"] = 2
    assert names(validate_line(line, NORMALIZED)) == ["InvalidConfidence"]
    del line["confidence"]
    assert names(validate_line(line, NORMALIZED)) == ["OntologyMismatch"]


def test_a_malformed_ontology_fails_every_checked_line() -> None:
    broken = {"tools": [{"tool": "rectangle", "name": "box"}], "classifications": []}
    results = validate_import(payload(factories.bbox(), factories.bbox(confidence=0.5)), broken)
    assert [names(r.errors) for r in results] == [["InvalidOntology"], ["InvalidOntology"]]
    assert "ontology.tools.0: 'featureSchemaId' must be a non-empty string" in results[0].errors[0]["message"]


def _with_schema_ids(line: Json, *, snake: bool = False) -> Json:
    """The line with each feature's featureSchemaId beside its name, found by walking the ontology along
    the line (names repeat at different places); `schema_id` under answers when `snake`, as the SDK does."""
    line = json.loads(json.dumps(line))
    if "name" not in line:  # a metric, or a line by schema id already
        return line
    if "answer" in line:
        _question_ids(line, NORMALIZED["classifications"], snake=snake, under_answer=False)
        return line
    tool = next(t for t in NORMALIZED["tools"] if t["name"] == line["name"])
    line["schemaId"] = tool["featureSchemaId"]
    for item in line.get("classifications") or []:
        _question_ids(item, tool.get("classifications") or [], snake=snake, under_answer=False)
    return line


def _question_ids(item: Json, scope: list[Json], *, snake: bool, under_answer: bool) -> None:
    if "name" not in item:
        return
    question = next(q for q in scope if q["name"] == item["name"])
    item["schema_id" if snake and under_answer else "schemaId"] = question["featureSchemaId"]
    answer = item["answer"]
    options = answer if isinstance(answer, list) else [answer] if isinstance(answer, dict) else []
    for option_line in (o for o in options if "name" in o):
        option = next(o for o in question["options"] if o["value"] == option_line["name"])
        option_line["schema_id" if snake and under_answer else "schemaId"] = option["featureSchemaId"]
        for nested in option_line.get("classifications") or []:
            _question_ids(nested, option.get("options") or [], snake=snake, under_answer=True)


def _ids() -> dict[str, str]:
    found = {t["name"]: t["featureSchemaId"] for t in NORMALIZED["tools"]}
    radio = next(c for c in NORMALIZED["classifications"] if c["name"] == "q")
    return {**found, **{o["value"]: o["featureSchemaId"] for o in radio["options"]}}


def test_name_and_schema_id_together_fit_when_they_name_one_feature() -> None:
    lines = [orjson.loads(raw) for raw in payload(*factories.every_type()).splitlines()]
    for snake in (False, True):
        both = [_with_schema_ids(line, snake=snake) for line in lines]
        assert [validate_line(line, NORMALIZED) for line in both] == [[]] * len(both)
    schema_only = [_with_schema_ids(line) for line in lines]
    for line in schema_only:
        line.pop("name", None)
    assert [validate_line(line, NORMALIZED) for line in schema_only] == [[]] * len(lines)


def test_a_name_that_disagrees_with_its_schema_id_fails_naming_both() -> None:
    ids = _ids()
    (line,) = [orjson.loads(raw) for raw in payload(factories.bbox()).splitlines()]
    line["schemaId"], line["name"] = ids["box"], "pg"
    (found,) = validate_line(line, NORMALIZED)
    assert found["additionalInfo"] == {"path": "name", "code": "name_mismatch"}
    assert ids["box"] in found["message"]
    assert "'pg'" in found["message"]
    assert "'box'" in found["message"]
    (radio,) = [orjson.loads(raw) for raw in payload(factories.radio()).splitlines()]
    radio["answer"]["schemaId"], radio["answer"]["name"] = ids["a"], "b"
    (found,) = validate_line(radio, NORMALIZED)
    assert (found["additionalInfo"]["path"], found["additionalInfo"]["code"]) == (
        "answer.name",
        "name_mismatch",
    )


def test_ontology_errors_hook() -> None:
    (line,) = [orjson.loads(raw) for raw in payload(UNKNOWN_ANSWER).splitlines()]
    assert names(ontology_errors(line, NORMALIZED)) == ["OntologyMismatch"]
    assert ontology_errors(line, EMPTY) == []
    assert ontology_errors(line, None) == []


# --- the state: statuses and what is stored --------------------------------------------------------


def test_state_fails_rows_that_do_not_fit_and_stores_the_rest() -> None:
    state = SandboxState(processing_delay_s=0.0, require_data_row_membership=False)
    state.load_ontology(MR, NORMALIZED)
    record = state.create_import(MR, "first", payload(factories.bbox(), UNKNOWN_ANSWER))
    assert [s["status"] for s in record.statuses] == ["SUCCESS", "FAILURE"]
    assert names(record.errors()[0]["errors"]) == ["OntologyMismatch"]
    assert [line["name"] for line in state.predictions(MR)] == ["box"]
    other = state.create_import("clmodelrun000000000000002", "first", payload(UNKNOWN_ANSWER))
    assert [s["status"] for s in other.statuses] == ["SUCCESS"]  # a model run without an ontology


# --- over HTTP, with the worker's own client ------------------------------------------------------


async def wait_done(client: LabelboxClient, name: str) -> ImportState:
    for _ in range(200):
        state = await client.get_import(MR, name)
        if state is not None and state.done:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"import {name} is not done")


async def test_loaded_ontology_over_http(sandbox: Sandbox) -> None:
    sandbox.state.require_data_row_membership = False  # not about membership
    async with aiohttp.ClientSession() as session:
        url = f"{sandbox.base_url}/_sandbox/model-runs/{MR}/ontology"
        async with session.put(url, json=NORMALIZED) as response:
            assert response.status == 200, await response.text()
    async with LabelboxClient(sandbox.graphql_url, SecretStr(API_KEY), retry_max_s=5.0) as client:
        await client.create_import(MR, "checked", payload(*factories.every_type(), UNKNOWN_ANSWER, MISPLACED))
        done = await wait_done(client, "checked")
        assert done.state == "FINISHED"
        assert done.status_file_url is not None
        statuses = await client.fetch_statuses(done.status_file_url)
    assert [s.status for s in statuses] == ["SUCCESS"] * len(factories.every_type()) + ["FAILURE"] * 2
    assert [s.errors[0]["additionalInfo"]["code"] for s in statuses[-2:]] == [
        "unknown_answer",
        "misplaced_classification",
    ]


def test_cli_loads_an_ontology_per_model_run(tmp_path: Path) -> None:
    from labelbox_sandbox.__main__ import parse_args

    source = tmp_path / "ontology.json"
    source.write_text(json.dumps({"tools": [], "classifications": []}))
    args = parse_args(["--api-key", "k", "--ontology", f"run-1={source}"])
    assert args.ontologies == {"run-1": {"tools": [], "classifications": []}}
    with pytest.raises(SystemExit):
        parse_args(["--api-key", "k", "--ontology", "run-1"])
