"""The sandbox's lean mode (`Sandbox(lean=True)`, `--lean`): same protocol and storage, no line validation.

It exists so that the end-to-end benchmark measures its clients, not this server. These tests pin both
halves: a client (the real Labelbox SDK) works against it and every line is stored by uuid, and it does
*not* check what the full mode checks, so that no one mistakes it for the strict one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import labelbox
import orjson
import pytest

from labelbox_sandbox import Sandbox, SandboxState, read_import, validate_import, validate_line
from labelbox_sandbox.__main__ import parse_args
from tests.integration.test_sandbox import (
    INVALID_LINES,
    KEY,
    MEMBERS,
    MR,
    bbox_line,
    create_import,
    get_lines,
    ndjson,
    new_uuid,
    wait_done,
)
from tests.support.processes import sandbox_cli

#: The full mode's refusals that are about the line's content, not about storing it: lean accepts them.
CONTENT_RULES = [
    case
    for case in INVALID_LINES
    if isinstance(case[1], dict) and case[2] not in ("MissingUuid", "InvalidLine")
]


@pytest.fixture
async def lean() -> AsyncIterator[Sandbox]:
    async with Sandbox(api_key=KEY, processing_delay_s=0.0, task_delay_s=0.0, lean=True) as started:
        started.state.add_data_rows(MR, global_keys=MEMBERS)
        yield started


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.mark.parametrize(("case", "line", "error_name"), CONTENT_RULES, ids=[c[0] for c in CONTENT_RULES])
def test_lean_reading_accepts_what_the_full_mode_refuses(case: str, line: Any, error_name: str) -> None:
    assert error_name in {e["name"] for e in validate_line(line)}, case
    assert [result.errors for result in read_import(orjson.dumps(line))] == [()], case


def test_lean_reading_still_needs_objects_with_unique_uuids() -> None:
    same = new_uuid()
    lines = [bbox_line(same), bbox_line(same), [1, 2], {"dataRow": {"globalKey": "a"}, "bbox": {}}]
    payload = ndjson(lines) + b"\nnot json\n\n"
    results = read_import(payload)
    assert [[e["name"] for e in r.errors] for r in results] == [
        [],
        ["DuplicateUuid"],
        ["InvalidLine"],
        ["MissingUuid"],
        ["InvalidJson"],
    ]
    assert [r.uuid for r in results[:2]] == [same, same]
    assert results[0].data_row == {"globalKey": "img-1.jpg"}
    assert results[0].line == lines[0]


def test_lean_reading_in_one_pass_reads_what_line_by_line_reading_reads() -> None:
    """Every line an object: one msgspec pass reads uuid and data row (the line itself is not parsed);
    the same payload with one line that is not JSON is read line by line: same uuids, rows, errors."""
    same = new_uuid()
    metric = {"dataRow": {"globalKey": "img-1.jpg"}, "metricValue": 0.5, "aggregation": "SUM"}
    lines = [
        bbox_line(same),
        bbox_line(same),
        {"dataRow": {"globalKey": "a"}, "bbox": {}},
        {"uuid": 7, "dataRow": "img-1.jpg"},
        metric,
        {**bbox_line(), "dataRow": {"id": "clrow"}},
        {**bbox_line(), "dataRow": {"globalKey": "x", "id": "y"}, "uuid": new_uuid()},
    ]
    payload = ndjson(lines) + b"\n\n"
    in_one_pass = read_import(payload)
    line_by_line = read_import(payload + b"not json\n")

    def seen(results: list[Any]) -> list[Any]:
        return [(r.line_number, r.uuid, r.data_row, r.errors, r.raw) for r in results]

    assert seen(in_one_pass) == seen(line_by_line[:-1])
    assert [e["name"] for e in line_by_line[-1].errors] == ["InvalidJson"]
    assert [[e["name"] for e in r.errors] for r in in_one_pass] == [
        [],
        ["DuplicateUuid"],
        ["MissingUuid"],
        ["MissingUuid"],
        [],
        [],
        [],
    ]
    assert in_one_pass[0].line is None
    assert line_by_line[0].line == lines[0]
    assert in_one_pass[4].line == metric  # a line without a string uuid is parsed whole


@pytest.mark.parametrize(
    "odd_line",
    [
        b'{"uuid": "u", "dataRow": {"globalKey": "k"}} {"uuid": "v"}',
        b'{"uuid": "u"},{"uuid": "v"}',
        b'{"uuid": "u", "dataRow": {"globalKey": "k"}, "bbox": {"top": 1,}}',
        b'{"uuid": "u"}]',
        b"[]",
    ],
    ids=["two objects", "two objects and a comma", "bad JSON after the head", "a bracket more", "an array"],
)
def test_lean_reading_in_one_pass_falls_back_to_lines_on_anything_but_one_object_a_line(
    odd_line: bytes,
) -> None:
    results = read_import(ndjson([bbox_line()]) + b"\n" + odd_line + b"\n")
    assert results[0].ok
    assert results[0].line is not None  # read line by line
    assert [e["name"] for e in results[1].errors] in (["InvalidJson"], ["InvalidLine"])


def test_lean_metric_lines_without_uuid_get_the_derived_uuid() -> None:
    metric = {"dataRow": {"globalKey": "img-1.jpg"}, "metricValue": 0.5, "aggregation": "SUM"}
    (lean,) = read_import(orjson.dumps(metric))
    (full,) = validate_import(orjson.dumps(metric))
    assert lean.ok
    assert lean.uuid == full.uuid is not None


def test_lean_state_ignores_the_ontology_but_keeps_membership() -> None:
    state = SandboxState(processing_delay_s=0.0, lean=True)
    state.load_ontology(MR, {"tools": [{"name": "other", "tool": "polygon"}], "classifications": []})
    state.add_data_rows(MR, global_keys=["img-1.jpg"])
    kept, outsider = bbox_line(confidence=3), bbox_line(global_key="elsewhere.jpg")
    record = state.create_import(MR, "lean", ndjson([kept, outsider]))
    assert [s["status"] for s in record.statuses] == ["SUCCESS", "FAILURE"]
    assert record.statuses[1]["errors"][0]["name"] == "DataRowNotInModelRun"
    assert state.predictions(MR) == [kept]


async def test_lean_http_import_answers_per_row_and_stores_every_line(
    lean: Sandbox, session: aiohttp.ClientSession
) -> None:
    lines = [bbox_line(global_key=MEMBERS[i % 2], confidence=2 + i) for i in range(50)]
    created = await create_import(session, lean, "lean-1", ndjson(lines))
    assert created.status == 200, created.body
    done = await wait_done(session, lean, "lean-1")
    assert done["state"] == "FINISHED"
    statuses = await get_lines(session, done["statusFileUrl"])
    assert [s["uuid"] for s in statuses] == [line["uuid"] for line in lines]
    assert {s["status"] for s in statuses} == {"SUCCESS"}
    assert lean.state.counts(MR) == {"rows": 50, "uploads": 50, "uuids": 50, "reuploaded_uuids": 0}
    assert sorted(lean.state.predictions(MR), key=lambda p: p["uuid"]) == sorted(
        lines, key=lambda p: p["uuid"]
    )


@pytest.fixture
def sdk_client(lean: Sandbox) -> Iterator[labelbox.Client]:
    client = labelbox.Client(api_key=KEY, endpoint=lean.graphql_url)
    yield client
    client.connection.close()
    client._adv_client.session.close()


async def test_the_labelbox_sdk_imports_into_the_lean_sandbox(
    lean: Sandbox, sdk_client: labelbox.Client
) -> None:
    predictions = [bbox_line(), bbox_line(global_key="img-2.jpg", name="other", confidence=0.5)]

    def run() -> Any:
        imp = labelbox.MEAPredictionImport.create(client=sdk_client, id=MR, name="sdk", labels=predictions)
        imp.wait_till_done(sleep_time_seconds=0.02)
        return imp.state, imp.statuses

    state, statuses = await asyncio.to_thread(run)
    assert state == labelbox.AnnotationImportState.FINISHED
    assert [s["status"] for s in statuses] == ["SUCCESS", "SUCCESS"]
    assert {p["uuid"] for p in lean.state.predictions(MR)} == {p["uuid"] for p in predictions}


def test_cli_lean_flag_and_its_conflict_with_an_ontology(tmp_path: Any) -> None:
    assert parse_args(["--api-key", KEY, "--lean"]).lean is True
    assert parse_args(["--api-key", KEY]).lean is False
    ontology = tmp_path / "o.json"
    ontology.write_text('{"tools": [], "classifications": []}')
    with pytest.raises(SystemExit):
        parse_args(["--api-key", KEY, "--lean", "--ontology", f"{MR}={ontology}"])


async def test_cli_lean_says_so_before_it_is_ready() -> None:
    async with sandbox_cli(KEY, "--lean") as process:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        ready = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        assert first.startswith("Lean mode: uploaded lines are stored without validation")
        assert ready.startswith("Labelbox sandbox ready: http://127.0.0.1:")
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
