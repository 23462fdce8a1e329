"""The local Labelbox-compatible server: pure validator and parser units, then real HTTP over 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import labelbox
import orjson
import pydantic
import pytest
from lbox import exceptions as lbox_exceptions
from PIL import Image

from labelbox_sandbox import FaultRule, Sandbox, SandboxState, validate_import, validate_line
from labelbox_sandbox.faults import FaultBook
from labelbox_sandbox.graphql import GraphQLError, Selected, parse_request, project, validated_document
from labelbox_sandbox.state import data_row_id_for_global_key
from tests.support.processes import sandbox_cli

KEY = "sandbox-test-key"
MR = "clmodelrun000000000000001"
DELAY_S = 0.05

CREATE_BY_FILE = """
mutation createMEAPredictionImportByFile($modelRunId: ID!, $name: String!, $file: Upload!,
                                         $contentLength: Int!) {
  createModelErrorAnalysisPredictionImport(data: {
    modelRunId: $modelRunId name: $name filePayload: {file: $file, contentLength: $contentLength}
  }) { id name modelRunId state progress inputFileUrl errorFileUrl statusFileUrl }
}"""
CREATE_BY_URL = """
mutation createMEAPredictionImportByUrl($modelRunId: ID!, $name: String!, $fileUrl: String!) {
  createModelErrorAnalysisPredictionImport(data: {modelRunId: $modelRunId, name: $name, fileUrl: $fileUrl}) {
    id name modelRunId state progress inputFileUrl errorFileUrl statusFileUrl }
}"""
POLL = """
query getMEAPredictionImport($modelRunId: ID!, $name: String!) {
  modelErrorAnalysisPredictionImport(where: {modelRunId: $modelRunId, name: $name}) {
    id name modelRunId state progress inputFileUrl errorFileUrl statusFileUrl }
}"""


# --- helpers ---


def new_uuid() -> str:
    return str(uuid.uuid4())


def bbox_line(row_uuid: str | None = None, global_key: str = "img-1.jpg", **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "uuid": row_uuid or new_uuid(),
        "dataRow": {"globalKey": global_key},
        "name": "bounding_box",
        "bbox": {"top": 977.0, "left": 1690.0, "height": 330.0, "width": 225.0},
        "classifications": [],
    }
    return {**line, **extra}


def ndjson(lines: list[Any]) -> bytes:
    return b"\n".join(orjson.dumps(line) for line in lines)


def png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), 1).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def data(self) -> Any:
        return self.body["data"]

    @property
    def error_code(self) -> str:
        return str(self.body["errors"][0]["extensions"]["code"])


async def _answer(response: aiohttp.ClientResponse) -> Answer:
    text = await response.text()
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    return Answer(response.status, body, dict(response.headers))


async def post_graphql(
    session: aiohttp.ClientSession, sandbox: Sandbox, query: str, variables: dict[str, Any], key: str = KEY
) -> Answer:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"query": query, "variables": variables}
    async with session.post(sandbox.graphql_url, json=body, headers=headers) as response:
        return await _answer(response)


async def create_import(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    name: str,
    payload: bytes,
    *,
    model_run_id: str = MR,
    content_length: int | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """A GraphQL multipart create, as docs/labelbox-api.md describes it."""
    file_name = f"{model_run_id}__{name}.ndjson"
    variables = {
        "file": None,
        "contentLength": len(payload) if content_length is None else content_length,
        "modelRunId": model_run_id,
        "name": name,
    }
    form = aiohttp.FormData()
    form.add_field("operations", json.dumps({"query": CREATE_BY_FILE, "variables": variables}))
    form.add_field("map", json.dumps({file_name: ["variables.file"]}))
    form.add_field(file_name, payload, filename=file_name, content_type="application/x-ndjson")
    all_headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    async with session.post(sandbox.graphql_url, data=form, headers=all_headers) as response:
        return await _answer(response)


async def poll(session: aiohttp.ClientSession, sandbox: Sandbox, name: str, model_run_id: str = MR) -> Answer:
    return await post_graphql(session, sandbox, POLL, {"modelRunId": model_run_id, "name": name})


async def wait_done(
    session: aiohttp.ClientSession, sandbox: Sandbox, name: str, model_run_id: str = MR
) -> dict[str, Any]:
    """Poll until the import leaves RUNNING: at most 100 polls, 20 ms apart."""
    for _ in range(100):
        answer = await poll(session, sandbox, name, model_run_id)
        found = answer.data["modelErrorAnalysisPredictionImport"]
        if found["state"] != "RUNNING":
            return dict(found)
        await asyncio.sleep(0.02)
    raise AssertionError(f"import {name} still RUNNING after 100 polls")


async def get_lines(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return [json.loads(line) for line in (await response.text()).splitlines() if line]


async def admin(
    session: aiohttp.ClientSession, sandbox: Sandbox, method: str, path: str, body: Any = None
) -> Any:
    async with session.request(method, f"{sandbox.base_url}/_sandbox/{path}", json=body) as response:
        assert response.status < 300, await response.text()
        return await response.json()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


#: The data rows the tests' lines are on, registered in MR (membership is checked, as on Labelbox).
MEMBERS = ("img-1.jpg", "img-2.jpg")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    # Registration tasks complete at once: the SDK sleeps 5 s between task polls.
    async with Sandbox(api_key=KEY, processing_delay_s=DELAY_S, task_delay_s=0.0) as started:
        started.state.add_data_rows(MR, global_keys=MEMBERS)
        yield started


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked(clock: FakeClock) -> AsyncIterator[Sandbox]:
    """A sandbox on a fake clock: imports and tasks take 1 s of it, which a test advances by hand."""
    async with Sandbox(api_key=KEY, state=SandboxState(processing_delay_s=1.0, clock=clock)) as started:
        yield started


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


# --- validator (pure) ---


VALID_LINES = {
    "radio": {
        "name": "radio_question",
        "confidence": 0.9,
        "answer": {"name": "first_radio_answer", "confidence": 0.81},
    },
    "checklist": {"name": "checklist_question", "answer": [{"name": "a", "confidence": 0.7}, {"name": "b"}]},
    "text": {"schemaId": "ckrb1sfl8099g0y91cxbd5ftb", "answer": "sample text", "confidence": 0.5},
    "bbox_nested": {
        "name": "bbox_with_radio_subclass",
        "confidence": 0.0,
        "bbox": {"top": 977.0, "left": 1690.0, "height": 330.0, "width": 225.0},
        "classifications": [
            {
                "name": "sub_radio_question",
                "answer": {
                    "name": "first_sub_radio_answer",
                    "classifications": [{"name": "deeper", "answer": [{"name": "x"}]}],
                },
            }
        ],
        "customMetrics": [{"name": "iou", "value": 0.5}],
    },
    "point": {"name": "point", "point": {"x": 1166.6, "y": 1441.7}, "classifications": []},
    "line": {"name": "polyline", "line": [{"x": 2534.3, "y": 249.4}, {"x": 2429.4, "y": 182.0}]},
    "polygon": {"name": "polygon", "polygon": [{"x": 1, "y": 2}, {"x": 3, "y": 4}, {"x": 5, "y": 1}]},
    "mask_url": {
        "name": "mask",
        "mask": {"instanceURI": "https://example.com/m.png", "colorRGB": [255, 0, 0]},
    },
    "name_and_schema_id": {
        "name": "polyline",
        "schemaId": "ckx",
        "line": [{"x": 1, "y": 2}, {"x": 3, "y": 4}],
    },
    "sdk_snake_case_under_answers": {
        "name": "q",
        "answer": {
            "schemaId": "cka",
            "classifications": [
                {
                    "schema_id": "cksub",
                    "answer": {"schema_id": "cks1", "custom_metrics": [{"name": "iou", "value": 0.5}]},
                }
            ],
        },
    },
}
VALID_METRICS = {
    "scalar": {"metricValue": 0.5, "metricName": "custom_iou", "aggregation": "ARITHMETIC_MEAN"},
    "scalar_thresholds": {"metricValue": {"0.1": 0.2, "0.5": 0.7}, "aggregation": "SUM"},
    "confusion": {"metricValue": [1, 2, 3, 4], "metricName": "cm", "aggregation": "CONFUSION_MATRIX"},
    "confusion_thresholds": {
        "metricValue": {"0.1": [1, 2, 3, 4], "0.5": [0, 1, 0, 1]},
        "metricName": "cm",
        "aggregation": "CONFUSION_MATRIX",
    },
}


@pytest.mark.parametrize("kind", sorted(VALID_LINES))
def test_valid_annotation_lines_pass(kind: str) -> None:
    line = {"uuid": new_uuid(), "dataRow": {"globalKey": "img-1.jpg"}, **VALID_LINES[kind]}
    assert validate_line(line) == []


def test_inline_png_mask_passes() -> None:
    line = {"uuid": new_uuid(), "dataRow": {"id": "cldatarow"}, "name": "mask", "mask": {"png": png_base64()}}
    assert validate_line(line) == []


@pytest.mark.parametrize("kind", sorted(VALID_METRICS))
def test_valid_metric_lines_pass_without_uuid(kind: str) -> None:
    assert validate_line({"dataRow": {"globalKey": "img-1.jpg"}, **VALID_METRICS[kind]}) == []


def _invalid(**changes: Any) -> dict[str, Any]:
    line = bbox_line()
    for key, value in changes.items():
        if value is None:
            line.pop(key, None)
        else:
            line[key] = value
    return line


INVALID_LINES: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "InvalidLine"),
    ("no dataRow", _invalid(dataRow=None), "InvalidDataRow"),
    ("id and globalKey", _invalid(dataRow={"id": "a", "globalKey": "b"}), "InvalidDataRow"),
    ("empty dataRow", _invalid(dataRow={}), "InvalidDataRow"),
    ("dataRow id not a string", _invalid(dataRow={"id": 3}), "InvalidDataRow"),
    ("no uuid", _invalid(uuid=None), "MissingUuid"),
    ("uuid not a UUID", _invalid(uuid="not-a-uuid"), "InvalidUuid"),
    ("schemaId not a string", _invalid(schemaId=3), "InvalidFeatureReference"),
    (
        "schema_id at the top level",
        _invalid(name=None, schema_id="ckx"),
        "InvalidFeatureReference",
    ),
    (
        "both spellings under an answer",
        _invalid(
            classifications=[
                {
                    "name": "q",
                    "answer": {
                        "name": "a",
                        "classifications": [{"schemaId": "x", "schema_id": "x", "answer": "t"}],
                    },
                }
            ]
        ),
        "InvalidFeatureReference",
    ),
    ("neither name nor schemaId", _invalid(name=None), "InvalidFeatureReference"),
    ("no payload", _invalid(bbox=None), "InvalidAnnotationKind"),
    ("two payloads", _invalid(point={"x": 1, "y": 2}), "InvalidAnnotationKind"),
    ("bbox without width", _invalid(bbox={"top": 1, "left": 1, "height": 1}), "InvalidGeometry"),
    (
        "bbox negative width",
        _invalid(bbox={"top": 1, "left": 1, "height": 1, "width": -1}),
        "InvalidGeometry",
    ),
    ("bbox boolean", _invalid(bbox={"top": True, "left": 1, "height": 1, "width": 1}), "InvalidGeometry"),
    ("line of one point", _invalid(bbox=None, line=[{"x": 1, "y": 1}]), "InvalidGeometry"),
    ("polygon of two", _invalid(bbox=None, polygon=[{"x": 1, "y": 1}, {"x": 2, "y": 2}]), "InvalidGeometry"),
    ("point without y", _invalid(bbox=None, point={"x": 1}), "InvalidGeometry"),
    ("mask not base64", _invalid(bbox=None, mask={"png": "%%%"}), "InvalidMask"),
    (
        "mask not a PNG",
        _invalid(bbox=None, mask={"png": base64.b64encode(b"GIF89a").decode()}),
        "InvalidMask",
    ),
    ("mask url without color", _invalid(bbox=None, mask={"instanceURI": "https://x/m.png"}), "InvalidMask"),
    ("answer a number", _invalid(bbox=None, answer=3), "InvalidAnswer"),
    ("empty checklist", _invalid(bbox=None, answer=[]), "InvalidAnswer"),
    ("radio answer unnamed", _invalid(bbox=None, answer={"confidence": 0.5}), "InvalidFeatureReference"),
    ("confidence above 1", _invalid(confidence=1.5), "InvalidConfidence"),
    ("confidence a string", _invalid(confidence="0.5"), "InvalidConfidence"),
    (
        "nested confidence",
        _invalid(classifications=[{"name": "q", "answer": "t", "confidence": -1}]),
        "InvalidConfidence",
    ),
    ("nested without answer", _invalid(classifications=[{"name": "q"}]), "InvalidClassification"),
    ("classifications not a list", _invalid(classifications={"name": "q"}), "InvalidClassification"),
    ("bad customMetrics", _invalid(customMetrics=[{"name": "iou"}]), "InvalidCustomMetrics"),
]
INVALID_METRICS: list[tuple[str, dict[str, Any], str]] = [
    ("scalar without aggregation", {"metricValue": 0.5}, "InvalidMetric"),
    ("scalar as confusion", {"metricValue": 0.5, "aggregation": "CONFUSION_MATRIX"}, "InvalidMetric"),
    ("reserved name", {"metricValue": 0.5, "metricName": "iou", "aggregation": "SUM"}, "InvalidMetric"),
    ("one threshold", {"metricValue": {"0.5": 0.1}, "aggregation": "SUM"}, "InvalidMetric"),
    ("bad threshold", {"metricValue": {"a": 0.1, "b": 0.2}, "aggregation": "SUM"}, "InvalidMetric"),
    ("confusion unnamed", {"metricValue": [1, 2, 3, 4], "aggregation": "CONFUSION_MATRIX"}, "InvalidMetric"),
    (
        "confusion negative",
        {"metricValue": [1, -2, 3, 4], "aggregation": "CONFUSION_MATRIX"},
        "InvalidMetric",
    ),
    ("confusion of three", {"metricValue": [1, 2, 3], "aggregation": "CONFUSION_MATRIX"}, "InvalidMetric"),
]


@pytest.mark.parametrize(("case", "line", "error_name"), INVALID_LINES, ids=[c[0] for c in INVALID_LINES])
def test_invalid_annotation_lines_fail(case: str, line: Any, error_name: str) -> None:
    errors = validate_line(line)
    assert error_name in {e["name"] for e in errors}, (case, errors)
    assert all(set(e) == {"name", "message", "additionalInfo"} for e in errors)


@pytest.mark.parametrize(
    ("case", "metric", "error_name"), INVALID_METRICS, ids=[c[0] for c in INVALID_METRICS]
)
def test_invalid_metric_lines_fail(case: str, metric: dict[str, Any], error_name: str) -> None:
    errors = validate_line({"dataRow": {"globalKey": "img-1.jpg"}, **metric})
    assert [e["name"] for e in errors] == [error_name], case


def test_validate_import_reports_every_line() -> None:
    first = new_uuid()
    metric = {"dataRow": {"globalKey": "img-1.jpg"}, **VALID_METRICS["confusion"]}
    payload = ndjson([bbox_line(first), bbox_line(first), metric]) + b"\n\n{not json\n"
    results = validate_import(payload)
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[1].errors[-1]["name"] == "DuplicateUuid"
    assert results[3].errors[0]["name"] == "InvalidJson"
    assert results[3].errors[0]["additionalInfo"] == {"line": 5}
    assert results[2].uuid == validate_import(ndjson([metric]))[0].uuid  # derived uuids are deterministic
    assert str(uuid.UUID(results[2].uuid or "")) == results[2].uuid


# --- GraphQL parsing and fault bookkeeping (pure) ---


def test_parse_request_resolves_inline_and_variable_arguments() -> None:
    query = """query Q($where: WhereUniqueIdInput!) {
      s: MEADataRowRegistrationTaskStatus(where: $where) { status } }"""
    (root,) = parse_request(query, {"where": {"id": "t1"}})
    assert (root.name, root.alias, root.arguments, root.selection) == (
        "MEADataRowRegistrationTaskStatus",
        "s",
        {"where": {"id": "t1"}},
        (Selected("status", "status"),),
    )
    (root,) = parse_request('{ run: modelRun(where: {id: "m"}) { modelId __typename } }', None)
    assert (root.arguments, root.type_name) == ({"where": {"id": "m"}}, "ModelRun")
    assert project({"modelId": "x", "id": "m"}, root.selection, root.type_name) == {
        "modelId": "x",
        "__typename": "ModelRun",
    }


@pytest.mark.parametrize(
    ("query", "variables", "code"),
    [
        ("mutation { createThing(data: {a: 1}", {}, "GRAPHQL_PARSE_FAILED"),
        ('{ modelRun(where: {id: "m"}) { modelId nope } }', {}, "GRAPHQL_VALIDATION_FAILED"),
        ('{ modelRun(where: {id: "m", n: 1}) { modelId } }', {}, "GRAPHQL_VALIDATION_FAILED"),
        ('{ modelRun(where: {id: "m"}, first: 1) { modelId } }', {}, "GRAPHQL_VALIDATION_FAILED"),
        ("query { modelRun(where: {id: $id}) { modelId } }", {"id": "m"}, "GRAPHQL_VALIDATION_FAILED"),
        (
            "query($id: Int!) { modelRun(where: {id: $id}) { modelId } }",
            {"id": 1},
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (
            "query($id: ID!) { modelRun(where: {id: $id}) { modelId } }",
            {"id": None},
            "GRAPHQL_VALIDATION_FAILED",
        ),
        ("query($id: ID!) { modelRun(where: {id: $id}) { modelId } }", {}, "GRAPHQL_VALIDATION_FAILED"),
        (
            "query($id: ID!, $unused: ID) { modelRun(where: {id: $id}) { id } }",
            {},
            "GRAPHQL_VALIDATION_FAILED",
        ),
        ('mutation { modelRun(where: {id: "m"}) { modelId } }', {}, "GRAPHQL_VALIDATION_FAILED"),
        ("{ modelRun(where: {id: 1.5}) { modelId } }", {}, "GRAPHQL_VALIDATION_FAILED"),
        ("{ user }", {}, "GRAPHQL_VALIDATION_FAILED"),
        ("{ __schema { types { name } } }", {}, "GRAPHQL_VALIDATION_FAILED"),
    ],
)
def test_documents_the_schema_refuses(query: str, variables: dict[str, Any], code: str) -> None:
    with pytest.raises(GraphQLError) as refused:
        parse_request(query, variables)
    assert (refused.value.code, refused.value.http_status) == (code, 400)


def test_fragments_aliases_and_directives_are_served() -> None:
    query = """query Q($skip: Boolean!) { user { ...who email @skip(if: $skip) } }
    fragment who on User { id me: name }"""
    (root,) = parse_request(query, {"skip": True}, "Q")
    user = {"id": "u", "name": "n", "email": "e"}
    assert project(user, root.selection, root.type_name) == {"id": "u", "me": "n"}


def test_fault_book_counts_skips_and_expires() -> None:
    clock = FakeClock()
    book = FaultBook(clock)
    book.add(FaultRule(kind="http_status", operation="create_import", count=2, skip=1))
    book.add(FaultRule(kind="rate_limit", count=None, duration_s=1.0))
    taken = [book.take("create_import", {"http_status"}) for _ in range(4)]
    assert [rule is not None for rule in taken] == [False, True, True, False]
    assert book.take("poll_import", {"http_status"}) is None
    assert book.take("poll_import", {"rate_limit"}) is not None
    clock.now += 1.0
    assert book.take("poll_import", {"rate_limit"}) is None


def test_row_failure_fraction_is_deterministic() -> None:
    rule = FaultRule(kind="row_failure", fraction=0.5, uuids=("listed",))
    uuids = [str(uuid.UUID(int=i)) for i in range(400)]
    failed = [u for u in uuids if rule.fails_row(u)]
    assert failed == [u for u in uuids if rule.fails_row(u)]
    assert 120 < len(failed) < 280
    assert rule.fails_row("listed")


def test_import_faults_only_target_create_import() -> None:
    with pytest.raises(pydantic.ValidationError):
        FaultRule(kind="lost_response", operation="poll_import")
    with pytest.raises(pydantic.ValidationError):
        FaultRule.model_validate({"kind": "latency", "typo": 1})


def test_state_processes_imports_on_its_clock() -> None:
    clock = FakeClock()
    state = SandboxState(processing_delay_s=2.0, clock=clock)
    state.add_data_rows(MR, global_keys=["img-1.jpg"])
    record = state.create_import(MR, "a", ndjson([bbox_line()]))
    assert (record.state_at(clock()), record.progress_at(clock())) == ("RUNNING", "0%")
    clock.now += 1.0
    assert record.progress_at(clock()) == "50%"
    clock.now += 1.0
    assert record.state_at(clock()) == "FINISHED"
    assert state.counts(MR) == {"rows": 1, "uploads": 1, "uuids": 1, "reuploaded_uuids": 0}


# --- HTTP: imports ---


async def test_multipart_create_poll_and_status_files(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    good, bad = new_uuid(), new_uuid()
    payload = ndjson([bbox_line(good), bbox_line(bad, confidence=3), "not an object"]) + b"\nnot json\n"
    created = await create_import(session, sandbox, "batch-1", payload)
    assert created.status == 200, created.body
    fields = created.data["createModelErrorAnalysisPredictionImport"]
    assert (fields["state"], fields["name"], fields["modelRunId"]) == ("RUNNING", "batch-1", MR)
    assert fields["progress"].endswith("%")
    assert fields["statusFileUrl"] is None
    done = await wait_done(session, sandbox, "batch-1")
    assert (done["state"], done["progress"], done["id"]) == ("FINISHED", "100%", fields["id"])
    statuses = await get_lines(session, done["statusFileUrl"])
    assert [s["status"] for s in statuses] == ["SUCCESS", "FAILURE", "FAILURE", "FAILURE"]
    assert statuses[0] == {
        "uuid": good,
        "dataRow": {"id": data_row_id_for_global_key("img-1.jpg"), "globalKey": "img-1.jpg"},
        "status": "SUCCESS",
    }
    assert statuses[1]["errors"][0]["name"] == "InvalidConfidence"
    assert [s["errors"][0]["name"] for s in statuses[2:]] == ["InvalidLine", "InvalidJson"]
    assert await get_lines(session, done["errorFileUrl"]) == statuses[1:]
    async with session.get(done["inputFileUrl"]) as response:
        assert await response.read() == payload
    assert [p["uuid"] for p in sandbox.state.predictions(MR)] == [good]


async def test_content_length_must_match(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    payload = ndjson([bbox_line()])
    wrong = await create_import(session, sandbox, "a", payload, content_length=len(payload) + 1)
    assert (wrong.status, wrong.error_code) == (200, "MALFORMED_REQUEST")
    assert "contentLength" in wrong.body["errors"][0]["message"]
    sdk_style = await create_import(session, sandbox, "a", payload, content_length=len(str(payload)))
    assert sdk_style.error_code == "MALFORMED_REQUEST"
    from_sdk = {"X-User-Agent": "python-sdk 7.17.0"}
    tolerated = await create_import(
        session, sandbox, "a", payload, content_length=len(str(payload)), headers=from_sdk
    )
    assert tolerated.data["createModelErrorAnalysisPredictionImport"]["state"] == "RUNNING"


async def test_duplicate_import_name_is_a_conflict(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    assert (await create_import(session, sandbox, "same", ndjson([bbox_line()]))).status == 200
    again = await create_import(session, sandbox, "same", ndjson([bbox_line()]))
    assert (again.status, again.error_code) == (200, "RESOURCE_CONFLICT")
    assert again.body["errors"][0]["message"] == f"Import with name 'same' already exists in model run '{MR}'"
    other_run = await create_import(session, sandbox, "same", ndjson([bbox_line()]), model_run_id="clother")
    assert other_run.status == 200
    assert "errors" not in other_run.body


async def test_malformed_requests_are_rejected(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(sandbox.graphql_url, data=b"{not json", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["errors"][0]["extensions"]["code"] == "MALFORMED_REQUEST"
    unparsable = await post_graphql(session, sandbox, "mutation { modelRun(where: {id: ", {})
    assert (unparsable.status, unparsable.error_code) == (400, "GRAPHQL_PARSE_FAILED")
    no_file = await post_graphql(
        session, sandbox, CREATE_BY_FILE, {"modelRunId": MR, "name": "n", "file": None, "contentLength": 0}
    )
    assert (no_file.status, no_file.error_code) == (400, "GRAPHQL_VALIDATION_FAILED")
    form = aiohttp.FormData()
    form.add_field("operations", json.dumps({"query": CREATE_BY_FILE, "variables": {"file": None}}))
    form.add_field("map", json.dumps({"0": ["variables.file"]}))
    async with session.post(sandbox.graphql_url, data=form, headers=headers) as response:
        assert response.status == 400
    unknown = await post_graphql(session, sandbox, "{ createProject { id } }", {})
    assert (unknown.status, unknown.error_code) == (400, "GRAPHQL_VALIDATION_FAILED")


async def test_unknown_import_name_is_not_found(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    answer = await poll(session, sandbox, "never-created")
    assert answer.error_code == "RESOURCE_NOT_FOUND"


async def test_reupload_replaces_by_uuid_and_counts(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    row = new_uuid()
    await create_import(session, sandbox, "first", ndjson([bbox_line(row), bbox_line()]))
    await create_import(session, sandbox, "second", ndjson([bbox_line(row, confidence=0.25)]))
    await wait_done(session, sandbox, "second")
    stored = await admin(session, sandbox, "GET", f"model-runs/{MR}/predictions")
    assert len(stored) == 2
    assert next(p for p in stored if p["uuid"] == row)["confidence"] == 0.25
    counts = await admin(session, sandbox, "GET", f"model-runs/{MR}/counts")
    assert (counts["rows"], counts["uploads"], counts["reuploaded_uuids"]) == (2, 3, 1)
    assert counts["uploads_by_uuid"][row] == 2
    assert (await admin(session, sandbox, "GET", "counts"))[MR]["rows"] == 2
    assert list(await admin(session, sandbox, "GET", "predictions")) == [MR]


async def test_bad_or_missing_key_is_an_authentication_error(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    wrong = await post_graphql(session, sandbox, POLL, {"modelRunId": MR, "name": "x"}, key="wrong")
    assert (wrong.status, wrong.error_code) == (401, "AUTHENTICATION_ERROR")
    async with session.post(sandbox.graphql_url, json={"query": POLL, "variables": {}}) as response:
        assert response.status == 401
    assert [r.status for r in sandbox.state.requests("poll_import")] == [401, 401]


async def test_file_url_import(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    row = new_uuid()
    async with session.put(
        f"{sandbox.base_url}/_sandbox/blobs/preds.ndjson", data=ndjson([bbox_line(row)])
    ) as put:
        path = (await put.json())["path"]
    variables = {"modelRunId": MR, "name": "by-url", "fileUrl": f"{sandbox.base_url}{path}"}
    created = await post_graphql(session, sandbox, CREATE_BY_URL, variables)
    assert created.data["createModelErrorAnalysisPredictionImport"]["state"] == "RUNNING"
    done = await wait_done(session, sandbox, "by-url")
    assert [s["uuid"] for s in await get_lines(session, done["statusFileUrl"])] == [row]
    remote = {**variables, "name": "remote", "fileUrl": "https://storage.example.com/preds.ndjson"}
    await post_graphql(session, sandbox, CREATE_BY_URL, remote)
    failed = await wait_done(session, sandbox, "remote")
    assert failed["state"] == "FAILED"
    assert "loopback" in (await get_lines(session, failed["errorFileUrl"]))[0]["errors"][0]["message"]


# --- HTTP: model runs, ontologies, registration tasks ---


MODEL_RUN_QUERY = "query($id: ID!) { modelRun(where: {id: $id}) { modelId } }"
MODEL_QUERY = "query($id: ID!) { model(where: {id: $id}) { ontologyId } }"
ONTOLOGY_QUERY = "query($id: ID!) { ontology(where: {id: $id}) { normalized } }"


async def ontology_of(session: aiohttp.ClientSession, sandbox: Sandbox, model_run_id: str) -> Any:
    """modelRun → model → ontology, as a client finds a model run's ontology."""
    run = await post_graphql(session, sandbox, MODEL_RUN_QUERY, {"id": model_run_id})
    model = await post_graphql(session, sandbox, MODEL_QUERY, {"id": run.data["modelRun"]["modelId"]})
    ontology = await post_graphql(session, sandbox, ONTOLOGY_QUERY, {"id": model.data["model"]["ontologyId"]})
    return ontology.data["ontology"]["normalized"]


async def test_model_run_model_ontology_chain(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    ontology = {
        "tools": [{"tool": "rectangle", "name": "bounding_box", "featureSchemaId": "f1"}],
        "classifications": [],
    }
    await admin(session, sandbox, "PUT", f"model-runs/{MR}/ontology", ontology)
    assert await ontology_of(session, sandbox, MR) == ontology
    assert await ontology_of(session, sandbox, "clnew") == {"tools": [], "classifications": []}
    unknown_field = await post_graphql(session, sandbox, '{ modelRun(where: {id: "x"}) { nope } }', {})
    assert (unknown_field.status, unknown_field.error_code) == (400, "GRAPHQL_VALIDATION_FAILED")


async def test_fixed_model_runs_and_membership() -> None:
    async with (
        Sandbox(
            api_key=KEY, processing_delay_s=0.0, model_run_ids=[MR], require_data_row_membership=True
        ) as sandbox,
        aiohttp.ClientSession() as session,
    ):
        unknown = await create_import(session, sandbox, "a", ndjson([bbox_line()]), model_run_id="clunknown")
        assert unknown.error_code == "RESOURCE_NOT_FOUND"
        await admin(session, sandbox, "PUT", f"model-runs/{MR}/data-rows", {"globalKeys": ["img-1.jpg"]})
        payload = ndjson([bbox_line(), bbox_line(global_key="img-2.jpg")])
        await create_import(session, sandbox, "b", payload)
        done = await wait_done(session, sandbox, "b")
        statuses = await get_lines(session, done["statusFileUrl"])
        assert [s["status"] for s in statuses] == ["SUCCESS", "FAILURE"]
        assert statuses[1]["errors"][0]["name"] == "DataRowNotInModelRun"


CREATE_DATA_ROW_TASK = """
mutation($modelRunId: ID!, $dataRowIds: [ID!], $globalKeys: [ID!]) {
  createMEAModelRunDataRowRegistrationTask(where: {id: $modelRunId},
                                           data: {dataRowIds: $dataRowIds, globalKeys: $globalKeys}) }"""
DATA_ROW_TASK_STATUS = """
query($where: WhereUniqueIdInput!) {
  MEADataRowRegistrationTaskStatus(where: $where) { status errorMessage } }"""
REGISTER_LABELS = """mutation($modelRunId: ID!, $labelIds: [ID!]!) {
  createMEAModelRunLabelRegistrationTask(where: {id: $modelRunId}, data: {labelIds: $labelIds}) }"""
LABEL_TASK_STATUS = """
query($where: WhereUniqueIdInput!) {
  MEALabelRegistrationTaskStatus(where: $where) { status errorMessage } }"""


async def test_data_row_registration_task(
    clocked: Sandbox, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    variables = {"modelRunId": MR, "dataRowIds": ["cldatarow1"], "globalKeys": ["img-1.jpg"]}
    created = await post_graphql(session, clocked, CREATE_DATA_ROW_TASK, variables)
    where = {"where": {"id": created.data["createMEAModelRunDataRowRegistrationTask"]}}
    status = await post_graphql(session, clocked, DATA_ROW_TASK_STATUS, where)
    assert status.data["MEADataRowRegistrationTaskStatus"] == {"status": "RUNNING", "errorMessage": None}
    clock.now += 1.0
    status = await post_graphql(session, clocked, DATA_ROW_TASK_STATUS, where)
    assert status.data["MEADataRowRegistrationTaskStatus"]["status"] == "COMPLETE"
    members = await admin(session, clocked, "GET", f"model-runs/{MR}/data-rows")
    assert members["globalKeys"] == ["img-1.jpg"]
    assert set(members["dataRowIds"]) == {"cldatarow1", data_row_id_for_global_key("img-1.jpg")}


async def test_label_registration_tasks(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    by_ids = """mutation($modelRunId: ID!, $labelIds: [ID!]!) {
      createMEAModelRunLabelRegistrationTask(where: {id: $modelRunId}, data: {labelIds: $labelIds}) }"""
    by_project = """mutation($modelRunId: ID!, $projectId: ID!) {
      createMEAModelRunProjectLabelRegistrationTask(
        where: {modelRunId: $modelRunId, projectId: $projectId}) }"""
    first = await post_graphql(session, sandbox, by_ids, {"modelRunId": MR, "labelIds": ["l1", "l2"]})
    second = await post_graphql(session, sandbox, by_project, {"modelRunId": MR, "projectId": "p1"})
    task_ids = [
        first.data["createMEAModelRunLabelRegistrationTask"],
        second.data["createMEAModelRunProjectLabelRegistrationTask"],
    ]
    await asyncio.sleep(DELAY_S)
    for task_id in task_ids:
        status = await post_graphql(session, sandbox, LABEL_TASK_STATUS, {"where": {"id": task_id}})
        assert status.data["MEALabelRegistrationTaskStatus"]["status"] == "COMPLETE"
    run = sandbox.state.model_runs[MR]
    assert (run.label_ids, run.project_ids) == ({"l1", "l2"}, {"p1"})


# --- HTTP: faults, seen from a client ---


async def test_http_status_burst_then_success(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    await admin(
        session,
        sandbox,
        "POST",
        "faults",
        [{"kind": "http_status", "operation": "create_import", "count": 2, "status": 503}],
    )
    sandbox.state.add_fault(FaultRule(kind="http_status", operation="poll_import", status=502))
    answers = [await create_import(session, sandbox, "burst", ndjson([bbox_line()])) for _ in range(3)]
    assert [a.status for a in answers] == [503, 503, 200]
    assert (await poll(session, sandbox, "burst")).status == 502
    assert (await poll(session, sandbox, "burst")).status == 200
    log = sandbox.state.requests("create_import")
    assert [(r.status, r.fault) for r in log] == [(503, "http_status"), (503, "http_status"), (200, None)]
    faults = await admin(session, sandbox, "GET", "faults")
    assert [(f["fired"], f["in_force"]) for f in faults] == [(2, False), (1, False)]


async def test_rate_limit_with_retry_after(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    sandbox.state.add_fault(FaultRule(kind="rate_limit", operation="graphql", retry_after_s=0.5))
    limited = await create_import(session, sandbox, "limited", ndjson([bbox_line()]))
    assert (limited.status, limited.headers["Retry-After"]) == (429, "0.5")
    assert limited.body["message"].startswith("You have exceeded")
    assert sandbox.state.imports == {}


async def test_latency_delays_the_answer(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    sandbox.state.add_fault(FaultRule(kind="latency", operation="poll_import", delay_s=0.2))
    started = time.monotonic()
    answer = await poll(session, sandbox, "x")
    assert time.monotonic() - started >= 0.2
    assert answer.error_code == "RESOURCE_NOT_FOUND"


async def test_hang_outlasts_the_client_timeout_and_ends_on_stop(session: aiohttp.ClientSession) -> None:
    sandbox = Sandbox(api_key=KEY)
    await sandbox.start()
    sandbox.state.add_fault(FaultRule(kind="hang", operation="poll_import"))
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.3):
            await poll(session, sandbox, "x")
    started = time.monotonic()
    await sandbox.stop()
    assert time.monotonic() - started < 2.0
    assert [(r.status, r.fault) for r in sandbox.state.request_log] == [(0, "hang")]


async def test_reset_drops_the_connection(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    sandbox.state.add_fault(FaultRule(kind="reset", operation="create_import"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await create_import(session, sandbox, "reset", ndjson([bbox_line()]))
    assert sandbox.state.imports == {}
    assert (await create_import(session, sandbox, "reset", ndjson([bbox_line()]))).status == 200


async def test_graphql_error_fault(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    sandbox.state.add_fault(FaultRule(kind="graphql_error", operation="poll_import", message="boom"))
    answer = await poll(session, sandbox, "x")
    assert (answer.status, answer.error_code, answer.body["errors"][0]["message"]) == (
        200,
        "INTERNAL_SERVER_ERROR",
        "boom",
    )
    assert sandbox.state.requests("poll_import")[0].error_code == "INTERNAL_SERVER_ERROR"


async def test_import_failed_fault(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    await create_import(session, sandbox, "fine", ndjson([bbox_line()]))
    sandbox.state.add_fault(FaultRule(kind="import_failed", message="storage unavailable"))
    conflict = await create_import(session, sandbox, "fine", ndjson([bbox_line()]))
    assert conflict.error_code == "RESOURCE_CONFLICT"  # only imports actually created use up a fault
    await create_import(session, sandbox, "doomed", ndjson([bbox_line()]))
    done = await wait_done(session, sandbox, "doomed")
    assert (done["state"], done["statusFileUrl"]) == ("FAILED", None)
    errors = await get_lines(session, done["errorFileUrl"])
    assert errors[0]["errors"][0] == {
        "name": "ImportFailed",
        "message": "storage unavailable",
        "additionalInfo": None,
    }
    assert len(sandbox.state.predictions(MR)) == 1
    assert [r.fault for r in sandbox.state.requests("create_import")] == [None, None, "import_failed"]


async def test_row_failure_fault(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    doomed, fine = new_uuid(), new_uuid()
    await admin(session, sandbox, "POST", "faults", {"kind": "row_failure", "uuids": [doomed]})
    await create_import(session, sandbox, "rows", ndjson([bbox_line(doomed), bbox_line(fine)]))
    done = await wait_done(session, sandbox, "rows")
    statuses = {s["uuid"]: s for s in await get_lines(session, done["statusFileUrl"])}
    assert statuses[fine]["status"] == "SUCCESS"
    assert statuses[doomed]["errors"][0]["name"] == "InjectedRowFailure"
    assert [p["uuid"] for p in sandbox.state.predictions(MR)] == [fine]


async def test_status_file_404_fault(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    await create_import(session, sandbox, "files", ndjson([bbox_line()]))
    done = await wait_done(session, sandbox, "files")
    sandbox.state.add_fault(FaultRule(kind="http_status", operation="status_file", status=404))
    async with session.get(done["statusFileUrl"]) as response:
        assert response.status == 404
    assert len(await get_lines(session, done["statusFileUrl"])) == 1


async def test_lost_response_then_retry_meets_the_name(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.state.add_fault(FaultRule(kind="lost_response"))
    payload = ndjson([bbox_line()])
    with pytest.raises(aiohttp.ClientConnectionError):
        await create_import(session, sandbox, "lost", payload)
    retry = await create_import(session, sandbox, "lost", payload)
    assert retry.error_code == "RESOURCE_CONFLICT"
    assert (await wait_done(session, sandbox, "lost"))["state"] == "FINISHED"
    assert len(sandbox.state.predictions(MR)) == 1
    log = [(r.status, r.fault, r.error_code) for r in sandbox.state.requests("create_import")]
    assert log == [(0, "lost_response", None), (200, None, "RESOURCE_CONFLICT")]


async def test_slow_import_fault(clocked: Sandbox, clock: FakeClock, session: aiohttp.ClientSession) -> None:
    clocked.state.add_fault(FaultRule(kind="slow_import", delay_s=2.0))
    await create_import(session, clocked, "slow", ndjson([bbox_line()]))
    clock.now += 2.5
    still = (await poll(session, clocked, "slow")).data["modelErrorAnalysisPredictionImport"]
    assert (still["state"], still["progress"]) == ("RUNNING", "83%")
    clock.now += 0.5
    assert (await poll(session, clocked, "slow")).data["modelErrorAnalysisPredictionImport"][
        "state"
    ] == "FINISHED"


async def test_fault_with_a_duration_stops_by_itself(
    clocked: Sandbox, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    clocked.state.add_fault(
        FaultRule(kind="http_status", operation="blob", status=500, count=None, duration_s=5)
    )
    for _ in range(3):
        async with session.get(f"{clocked.base_url}/blobs/none") as response:
            assert response.status == 500
    clock.now += 5.0
    async with session.get(f"{clocked.base_url}/blobs/none") as response:
        assert response.status == 404


OTHER = "clmodelrun000000000000002"


async def test_forbidden_model_run(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    await admin(session, sandbox, "POST", "faults", {"kind": "forbidden", "model_run_id": MR})
    sandbox.state.add_data_rows(OTHER, global_keys=MEMBERS)
    answers = {
        "create_import": await create_import(session, sandbox, "a", ndjson([bbox_line()])),
        "poll_import": await poll(session, sandbox, "a"),
        "model_run": await post_graphql(session, sandbox, MODEL_RUN_QUERY, {"id": MR}),
        "model": await post_graphql(
            session, sandbox, MODEL_QUERY, {"id": sandbox.state.model_run(MR).model_id}
        ),
        "ontology": await post_graphql(
            session, sandbox, ONTOLOGY_QUERY, {"id": sandbox.state.model_run(MR).ontology_id}
        ),
        "register_data_rows": await post_graphql(
            session,
            sandbox,
            CREATE_DATA_ROW_TASK,
            {"modelRunId": MR, "dataRowIds": None, "globalKeys": ["k"]},
        ),
        "register_labels": await post_graphql(
            session, sandbox, REGISTER_LABELS, {"modelRunId": MR, "labelIds": ["l1"]}
        ),
    }
    for operation, answer in answers.items():
        assert (answer.status, answer.body) == (
            200,
            {
                "data": None,
                "errors": [
                    {
                        "message": f"You do not have access to model run {MR}",
                        "extensions": {"code": "AUTHORIZATION_ERROR"},
                    }
                ],
            },
        ), operation
    assert sandbox.state.imports == {}
    assert (
        await create_import(session, sandbox, "a", ndjson([bbox_line()]), model_run_id=OTHER)
    ).status == 200
    assert (await post_graphql(session, sandbox, "{ user { id } }", {})).status == 200
    invalid = await post_graphql(session, sandbox, '{ modelRun(where: {id: "x"}) { nope } }', {})
    assert invalid.error_code == "GRAPHQL_VALIDATION_FAILED"  # validation comes first
    (fault,) = await admin(session, sandbox, "GET", "faults")
    assert (fault["fired"], fault["count"], fault["in_force"], fault["status"]) == (7, None, True, 200)


async def test_forbidden_as_http_403_and_the_sdk_reads_it(
    sandbox: Sandbox, sdk_client: labelbox.Client
) -> None:
    sandbox.state.add_fault(FaultRule(kind="forbidden", model_run_id=MR, status=403, message="no access"))
    with pytest.raises(lbox_exceptions.AuthorizationError, match="no access"):
        await asyncio.to_thread(sdk_client.get_model_run, MR)
    assert [(r.status, r.error_code, r.fault) for r in sandbox.state.requests("model_run")] == [
        (403, "AUTHORIZATION_ERROR", "forbidden")
    ]
    with pytest.raises(pydantic.ValidationError, match="model_run_id"):
        FaultRule(kind="forbidden")


async def test_import_refused_for_a_chosen_row(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    poison = new_uuid()
    await admin(
        session,
        sandbox,
        "POST",
        "faults",
        {
            "kind": "import_refused",
            "uuids": [poison],
            "data_rows": ["img-2.jpg"],
            "count": 2,
            "message": "bad",
        },
    )
    assert (await create_import(session, sandbox, "clean", ndjson([bbox_line()]))).status == 200
    refused = [
        await create_import(session, sandbox, "by-uuid", ndjson([bbox_line(), bbox_line(poison)])),
        await create_import(session, sandbox, "by-row", ndjson([bbox_line(global_key="img-2.jpg")])),
    ]
    for answer in refused:
        assert (answer.status, answer.body) == (
            200,
            {
                "data": None,
                "errors": [
                    {
                        "message": "bad",
                        "extensions": {"code": "INTERNAL_SERVER_ERROR", "exception": {"status": 400}},
                    }
                ],
            },
        )
    assert [r.name for r in sandbox.state.imports.values()] == ["clean"]
    again = await create_import(session, sandbox, "by-row", ndjson([bbox_line(global_key="img-2.jpg")]))
    assert again.status == 200  # count 2: used up by the two refusals only
    assert "errors" not in again.body


async def test_the_sdk_reads_a_refusal_as_an_invalid_query(
    sandbox: Sandbox, sdk_client: labelbox.Client
) -> None:
    sandbox.state.add_fault(FaultRule(kind="import_refused", data_rows=("img-1.jpg",), message="refused"))
    with pytest.raises(lbox_exceptions.InvalidQueryError, match="refused"):
        await asyncio.to_thread(_sdk_import, sdk_client, "refused", [bbox_line()])


async def test_import_failed_for_a_chosen_row(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    chosen = data_row_id_for_global_key("img-2.jpg")
    sandbox.state.add_fault(FaultRule(kind="import_failed", data_rows=(chosen,), message="poison"))
    await create_import(session, sandbox, "clean", ndjson([bbox_line()]))
    await create_import(
        session, sandbox, "poisoned", ndjson([bbox_line(), bbox_line(global_key="img-2.jpg")])
    )
    await create_import(session, sandbox, "later", ndjson([bbox_line(global_key="img-2.jpg")]))
    states = [(await wait_done(session, sandbox, name))["state"] for name in ("clean", "poisoned", "later")]
    assert states == ["FINISHED", "FAILED", "FINISHED"]


async def test_graphql_error_with_a_status_and_an_exception_status(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.state.add_fault(
        FaultRule(kind="graphql_error", operation="create_import", status=409, code="RESOURCE_CONFLICT")
    )
    sandbox.state.add_fault(FaultRule(kind="graphql_error", operation="poll_import", exception_status=400))
    conflict = await create_import(session, sandbox, "x", ndjson([bbox_line()]))
    assert (conflict.status, conflict.error_code) == (409, "RESOURCE_CONFLICT")
    refused = await poll(session, sandbox, "x")
    assert (refused.status, refused.body["errors"][0]["extensions"]) == (
        200,
        {"code": "INTERNAL_SERVER_ERROR", "exception": {"status": 400}},
    )


async def test_empty_body_and_scoping_to_a_model_run(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    sandbox.state.add_fault(FaultRule(kind="empty_body", operation="graphql", model_run_id=OTHER))
    assert (await poll(session, sandbox, "x")).error_code == "RESOURCE_NOT_FOUND"  # MR: not in scope
    assert (await post_graphql(session, sandbox, "{ user { id } }", {})).status == 200  # names no run
    empty = await poll(session, sandbox, "x", model_run_id=OTHER)
    assert (empty.status, empty.body) == (200, {})


async def test_expired_status_file_url(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    await create_import(session, sandbox, "files", ndjson([bbox_line()]))
    done = await wait_done(session, sandbox, "files")
    await admin(session, sandbox, "POST", "faults", {"kind": "expired_url", "count": 2})
    for _ in range(2):
        async with session.get(done["statusFileUrl"]) as response:
            body = await response.text()
            assert (response.status, response.content_type) == (403, "application/xml")
            assert "<Code>AccessDenied</Code>" in body
            assert "Request has expired" in body
    assert len(await get_lines(session, done["statusFileUrl"])) == 1
    with pytest.raises(pydantic.ValidationError):
        FaultRule(kind="expired_url", operation="poll_import")


# --- admin API, lifecycle, CLI ---


async def test_admin_inspection_and_reset(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    ids = await admin(
        session, sandbox, "POST", "faults", [{"kind": "latency", "delay_s": 0}, {"kind": "reset", "count": 5}]
    )
    await admin(session, sandbox, "DELETE", f"faults/{ids['ids'][1]}")
    await create_import(session, sandbox, "a", ndjson([bbox_line(), "x"]))
    imports = await admin(session, sandbox, "GET", f"imports?model_run_id={MR}")
    assert [(i["name"], i["rows"], i["failedRows"]) for i in imports] == [("a", 2, 1)]
    requests = await admin(session, sandbox, "GET", "requests?operation=create_import")
    assert [(r["model_run_id"], r["import_name"], r["status"], r["fault"]) for r in requests] == [
        (MR, "a", 200, "latency")
    ]
    async with session.post(f"{sandbox.base_url}/_sandbox/faults", json={"kind": "nope"}) as response:
        assert response.status == 400
    await admin(session, sandbox, "POST", "reset")
    assert await admin(session, sandbox, "GET", "imports") == []
    assert await admin(session, sandbox, "GET", "faults") == []
    assert sandbox.state.request_log == []


async def test_lifecycle_is_idempotent() -> None:
    sandbox = Sandbox(api_key=KEY)
    with pytest.raises(RuntimeError):
        _ = sandbox.base_url
    await sandbox.start()
    url = sandbox.graphql_url
    await sandbox.start()
    assert sandbox.graphql_url == url
    assert url.startswith("http://127.0.0.1:")
    await sandbox.stop()
    await sandbox.stop()
    with pytest.raises(ValueError, match="api_key"):
        Sandbox(api_key="")


async def test_cli_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    async with sandbox_cli(KEY, "--processing-delay-s", "0") as process:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        graphql_url = line.rsplit(" ", 1)[-1].strip()
        assert line.startswith("Labelbox sandbox ready: http://127.0.0.1:")
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"query": POLL, "variables": {"modelRunId": MR, "name": "x"}}
        async with session.post(graphql_url, json=body, headers=headers) as response:
            assert (await response.json())["errors"][0]["extensions"]["code"] == "RESOURCE_NOT_FOUND"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0


# --- the real Labelbox SDK against the sandbox ---


@pytest.fixture
def sdk_client(sandbox: Sandbox) -> Iterator[labelbox.Client]:
    client = labelbox.Client(api_key=KEY, endpoint=sandbox.graphql_url)
    yield client
    client.connection.close()
    client._adv_client.session.close()


def _sdk_import(client: labelbox.Client, name: str, predictions: list[dict[str, Any]]) -> Any:
    imp = labelbox.MEAPredictionImport.create(client=client, id=MR, name=name, labels=predictions)
    imp.wait_till_done(sleep_time_seconds=0.02)
    return imp


async def test_labelbox_sdk_end_to_end(sandbox: Sandbox, sdk_client: labelbox.Client) -> None:
    good, bad = new_uuid(), new_uuid()
    predictions = [
        bbox_line(good),
        {
            "uuid": bad,
            "dataRow": {"globalKey": "img-2.jpg"},
            "name": "q",
            "answer": {"name": "a"},
            "confidence": 7,
        },
        {"dataRow": {"globalKey": "img-1.jpg"}, **VALID_METRICS["confusion"]},
    ]
    imp = await asyncio.to_thread(_sdk_import, sdk_client, "sdk-import", predictions)
    assert imp.state == labelbox.AnnotationImportState.FINISHED
    statuses = await asyncio.to_thread(lambda: imp.statuses)
    assert [s["status"] for s in statuses] == ["SUCCESS", "FAILURE", "SUCCESS"]
    errors = await asyncio.to_thread(lambda: imp.errors)
    assert [e["uuid"] for e in errors] == [bad]
    assert len(sandbox.state.predictions(MR)) == 2
    run = await asyncio.to_thread(sdk_client.get_model_run, MR)
    assert run.model_id == sandbox.state.model_runs[MR].model_id


async def test_labelbox_sdk_file_url_import(sandbox: Sandbox, sdk_client: labelbox.Client) -> None:
    sandbox.state.blobs["preds.ndjson"] = ndjson([bbox_line(), bbox_line()])
    url = f"{sandbox.base_url}/blobs/preds.ndjson"

    def run() -> Any:
        imp = labelbox.MEAPredictionImport.create(client=sdk_client, id=MR, name="by-url", url=url)
        imp.wait_till_done(sleep_time_seconds=0.02)
        return imp.statuses

    assert [s["status"] for s in await asyncio.to_thread(run)] == ["SUCCESS", "SUCCESS"]


async def test_labelbox_sdk_sees_conflict_rate_limit_and_bad_key(
    sandbox: Sandbox, sdk_client: labelbox.Client
) -> None:
    await asyncio.to_thread(_sdk_import, sdk_client, "once", [bbox_line()])
    with pytest.raises(lbox_exceptions.ResourceConflict):
        await asyncio.to_thread(_sdk_import, sdk_client, "once", [bbox_line()])
    sandbox.state.add_fault(FaultRule(kind="rate_limit", operation="create_import"))
    with pytest.raises(lbox_exceptions.ApiLimitError):
        await asyncio.to_thread(_sdk_import, sdk_client, "limited", [bbox_line()])
    bad_client = labelbox.Client(api_key="wrong", endpoint=sandbox.graphql_url)
    try:
        with pytest.raises(lbox_exceptions.AuthenticationError):
            await asyncio.to_thread(bad_client.get_model_run, MR)
    finally:
        bad_client.connection.close()
        bad_client._adv_client.session.close()


# --- every SDK call the worker's workflow mirrors passes the schema, over real HTTP ---


def _fresh_import(client: labelbox.Client, name: str, key: str = "img-1.jpg") -> Any:
    line = bbox_line(global_key=key)
    return labelbox.MEAPredictionImport.create_from_objects(client, MR, name, [line])


def _done_statuses(imp: Any) -> list[str]:
    imp.wait_till_done(sleep_time_seconds=0.02)
    return [s["status"] for s in imp.statuses]


def sdk_create_from_objects(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    return _done_statuses(_fresh_import(client, "objects"))


def sdk_create_from_file(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    path = tmp / "predictions.ndjson"
    path.write_bytes(ndjson([bbox_line(), bbox_line(global_key="img-2.jpg")]))
    return _done_statuses(labelbox.MEAPredictionImport.create_from_file(client, MR, "file", str(path)))


def sdk_create_from_url(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    sandbox.state.blobs["p.ndjson"] = ndjson([bbox_line()])
    url = f"{sandbox.base_url}/blobs/p.ndjson"
    return _done_statuses(labelbox.MEAPredictionImport.create_from_url(client, MR, "url", url))


def sdk_wait_until_done(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    imp = _fresh_import(client, "waited")
    with pytest.warns(DeprecationWarning, match="wait_until_done"):
        imp.wait_until_done(sleep_time_seconds=0.02)
    return imp.state.value, [s["status"] for s in imp.statuses], imp.errors


def sdk_get_model_run(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    run = client.get_model_run(MR)
    return run.uid, run.model_id == sandbox.state.model_run(MR).model_id


def sdk_get_model(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    model = client.get_model(client.get_model_run(MR).model_id)
    return model.ontology_id == sandbox.state.model_run(MR).ontology_id


def sdk_get_ontology(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    tool = {"tool": "rectangle", "name": "bounding_box", "featureSchemaId": "f1", "color": "#ff0000"}
    tool["classifications"] = []
    sandbox.state.load_ontology(MR, {"tools": [tool], "classifications": []})
    ontology = client.get_ontology(client.get_model(client.get_model_run(MR).model_id).ontology_id)
    return [tool.name for tool in ontology.tools()]


def sdk_get_user(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    return client.get_user().email


def sdk_upsert_data_rows(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    before = _done_statuses(_fresh_import(client, "before", key="img-new.jpg"))
    run = client.get_model_run(MR)
    registered = (
        run.upsert_data_rows(global_keys=["img-new.jpg"]),
        run.upsert_data_rows(data_row_ids=["cldr1"]),
    )
    after = _done_statuses(_fresh_import(client, "after", key="img-new.jpg"))
    return before, registered, after


def sdk_upsert_labels(client: labelbox.Client, sandbox: Sandbox, tmp: Any) -> Any:
    run = client.get_model_run(MR)
    return run.upsert_labels(label_ids=["cllabel1"]), run.upsert_labels(project_id="clproject1")


SDK_CALLS = {
    "MEAPredictionImport.create_from_objects": (sdk_create_from_objects, ["SUCCESS"]),
    "MEAPredictionImport.create_from_file": (sdk_create_from_file, ["SUCCESS", "SUCCESS"]),
    "MEAPredictionImport.create_from_url": (sdk_create_from_url, ["SUCCESS"]),
    "MEAPredictionImport.wait_until_done": (sdk_wait_until_done, ("FINISHED", ["SUCCESS"], [])),
    "client.get_model_run": (sdk_get_model_run, (MR, True)),
    "client.get_model": (sdk_get_model, True),
    "client.get_ontology": (sdk_get_ontology, ["bounding_box"]),
    "client.get_user": (sdk_get_user, "sandbox@localhost"),
    "model_run.upsert_data_rows": (sdk_upsert_data_rows, (["FAILURE"], (True, True), ["SUCCESS"])),
    "model_run.upsert_labels": (sdk_upsert_labels, (True, True)),
}


@pytest.mark.parametrize("call", sorted(SDK_CALLS))
async def test_sdk_call_passes_the_schema(
    call: str, sandbox: Sandbox, sdk_client: labelbox.Client, tmp_path: Any
) -> None:
    run, expected = SDK_CALLS[call]
    assert await asyncio.to_thread(run, sdk_client, sandbox, tmp_path) == expected
    graphql = [r for r in sandbox.state.request_log if r.path == "/graphql"]
    assert graphql
    assert [(r.operation, r.status, r.error_code) for r in graphql] == [
        (r.operation, 200, None) for r in graphql
    ]


def _string_constants(module: Any) -> list[str]:
    values: list[Any] = [value for name, value in vars(module).items() if name.isupper()]
    values += [item for value in values if isinstance(value, dict) for item in value.values()]
    return [v for v in values if isinstance(v, str) and v.lstrip().startswith(("query", "mutation"))]


def test_the_workers_queries_pass_the_schema() -> None:
    import worker.labelbox

    queries = _string_constants(worker.labelbox)
    assert len(queries) >= 8
    for query in queries:
        validated_document(query)


async def test_the_sdk_reads_a_refused_document_as_an_invalid_query(sdk_client: labelbox.Client) -> None:
    with pytest.raises(lbox_exceptions.InvalidQueryError, match="Cannot query field"):
        await asyncio.to_thread(sdk_client.execute, 'query { modelRun(where: {id: "x"}) { id nope } }')


def test_cli_checks_membership_unless_told_not_to() -> None:
    from labelbox_sandbox.__main__ import parse_args

    assert parse_args(["--api-key", "k"]).require_data_row_membership is True
    assert parse_args(["--api-key", "k", "--require-data-row-membership"]).require_data_row_membership is True
    assert (
        parse_args(["--api-key", "k", "--no-require-data-row-membership"]).require_data_row_membership
        is False
    )


async def test_membership_off_lets_unregistered_rows_succeed(session: aiohttp.ClientSession) -> None:
    async with Sandbox(api_key=KEY, processing_delay_s=0.0, require_data_row_membership=False) as sandbox:
        await create_import(session, sandbox, "a", ndjson([bbox_line(global_key="stranger.jpg")]))
        done = await wait_done(session, sandbox, "a")
        assert [s["status"] for s in await get_lines(session, done["statusFileUrl"])] == ["SUCCESS"]


async def test_registered_rows_join_when_their_task_completes(
    clocked: Sandbox, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    variables = {"modelRunId": MR, "dataRowIds": None, "globalKeys": ["late.jpg"]}
    await post_graphql(session, clocked, CREATE_DATA_ROW_TASK, variables)
    await create_import(session, clocked, "early", ndjson([bbox_line(global_key="late.jpg")]))
    clock.now += 1.0
    await create_import(session, clocked, "after", ndjson([bbox_line(global_key="late.jpg")]))
    clock.now += 1.0
    statuses = [
        (await get_lines(session, (await wait_done(session, clocked, n))["statusFileUrl"]))[0]
        for n in ("early", "after")
    ]
    assert [s["status"] for s in statuses] == ["FAILURE", "SUCCESS"]
    assert statuses[0]["errors"][0]["name"] == "DataRowNotInModelRun"


def test_the_sandbox_imports_nothing_from_what_it_checks() -> None:
    import ast
    from pathlib import Path

    imported: set[str] = set()
    paths = sorted((Path(__file__).parents[2] / "labelbox_sandbox").glob("*.py"))
    assert len(paths) > 10, "the package is where this test looks"
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "labelbox_sandbox.state" in imported, "its own modules are seen"
    foreign = sorted(name for name in imported if name.split(".")[0] in ("worker", "schemas", "devtools"))
    assert foreign == [], "the oracle imports nothing from the code it checks"
