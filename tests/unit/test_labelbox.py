"""``worker.labelbox``: the retry policy on an injected clock, Retry-After, and how answers are read.

The client is driven against a scripted aiohttp server on 127.0.0.1 (each request gets the next
scripted answer); time is a fake clock that only the injected ``sleep`` advances, so no test waits.
Also: how error answers are classified (the README's table, row by row)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from worker.labelbox import (
    AttemptOutcome,
    AuthenticationError,
    Forbidden,
    ImportNameTaken,
    ImportState,
    LabelboxClient,
    LabelboxError,
    RequestRejected,
    TaskStatus,
    TransientError,
    _graphql_errors,
    _http_error,
    _retry_after,
    import_state,
    row_outcome,
    task_state,
)

KEY = "unit-test-key"
USER = orjson.dumps({"data": {"user": {"id": "u1"}}})
#: An epoch time for the fake wall clock: 2026-01-01T00:00:00Z.
EPOCH = 1767225600.0


@dataclass
class Answer:
    status: int = 200
    body: bytes = USER
    headers: dict[str, str] = field(default_factory=dict)


class Script:
    """The server's answers, in order; the last one repeats."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests = 0
        self.url = ""
        self.status_url = ""

    async def handle(self, _: web.Request) -> web.Response:
        answer = self.answers[min(self.requests, len(self.answers) - 1)]
        self.requests += 1
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


class FakeTime:
    """A monotonic clock that moves only when the client sleeps (or a test says so)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        #: Called at each sleep, before the clock moves (to observe the client while it waits).
        self.on_sleep: Callable[[], None] = lambda: None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.on_sleep()
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
async def script() -> AsyncIterator[Script]:
    script = Script()
    app = web.Application()
    app.router.add_post("/graphql", script.handle)
    app.router.add_get("/status.ndjson", script.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    script.url = str(server.make_url("/graphql"))
    script.status_url = str(server.make_url("/status.ndjson"))
    try:
        yield script
    finally:
        await server.close()


def client(
    script: Script,
    clock: FakeTime,
    *,
    retry_max_s: float = 60.0,
    wall_clock: float = EPOCH,
    answered: list[tuple[str, AttemptOutcome, float, float]] | None = None,
) -> LabelboxClient:
    def on_response(operation: str, outcome: AttemptOutcome, started_at: float, rtt_s: float) -> None:
        if answered is not None:
            answered.append((operation, outcome, started_at, rtt_s))

    return LabelboxClient(
        script.url,
        SecretStr(KEY),
        request_timeout_s=5.0,
        retry_max_s=retry_max_s,
        on_response=on_response,
        rng=random.Random(7),
        clock=clock,
        wall_clock=lambda: wall_clock,
        sleep=clock.sleep,
    )


# --- the injected clock ----------------------------------------------------------------------------


async def test_failing_since_and_round_trips_are_read_on_the_injected_clock(script: Script) -> None:
    script.answers = [Answer(503, b"down"), Answer(503, b"down"), Answer()]
    clock = FakeTime(start=1000.0)
    answered: list[tuple[str, AttemptOutcome, float, float]] = []
    failing_seen: list[float | None] = []
    async with client(script, clock, answered=answered) as lb:
        clock.on_sleep = lambda: failing_seen.append(lb.failing_since)
        await lb.check_auth()
        assert lb.failing_since is None, "a success ends the failure"
    assert script.requests == 3
    assert len(clock.sleeps) == 2
    assert failing_seen == [1000.0, 1000.0], "set at the first failure, on the fake clock, kept while failing"
    assert [outcome for _, outcome, _, _ in answered] == ["overload", "overload", "ok"]
    starts = [started_at for _, _, started_at, _ in answered]
    assert starts == [1000.0, 1000.0 + clock.sleeps[0], 1000.0 + sum(clock.sleeps)]
    assert all(rtt == 0.0 for _, _, _, rtt in answered), "the fake clock does not move during a request"


async def test_the_retry_budget_is_spent_on_the_injected_clock(script: Script) -> None:
    # Every answer asks for 4 s; with 10 s of budget the third wait (at ~9 s) would overrun it.
    script.answers = [Answer(503, b"down", {"Retry-After": "4"})]
    clock = FakeTime()
    async with client(script, clock, retry_max_s=10.0) as lb:
        with pytest.raises(TransientError) as raised:
            await lb.check_auth()
    assert raised.value.cause == "5xx"
    assert script.requests == 3
    assert len(clock.sleeps) == 2
    assert all(4.0 <= s <= 4.5 for s in clock.sleeps), clock.sleeps  # Retry-After plus a little jitter
    assert lb.failing_since is not None, "still failing when the budget is spent"


async def test_a_longer_budget_on_the_same_clock_allows_more_attempts(script: Script) -> None:
    script.answers = [Answer(503, b"down", {"Retry-After": "4"})]
    clock = FakeTime()
    async with client(script, clock, retry_max_s=20.0) as lb:
        with pytest.raises(TransientError):
            await lb.check_auth()
    assert script.requests == 5, "4 waits of 4-4.5 s fit in 20 s, a fifth does not"


async def test_an_http_date_retry_after_is_measured_from_the_injected_wall_clock(script: Script) -> None:
    retry_at = email.utils.formatdate(EPOCH + 20, usegmt=True)
    script.answers = [Answer(429, b"slow down", {"Retry-After": retry_at}), Answer()]
    clock = FakeTime()
    async with client(script, clock, wall_clock=EPOCH) as lb:
        await lb.check_auth()
    assert len(clock.sleeps) == 1
    assert 20.0 <= clock.sleeps[0] <= 21.0, clock.sleeps


def test_retry_after_reads_an_http_date_against_the_given_wall_clock() -> None:
    header = email.utils.formatdate(EPOCH + 30, usegmt=True)
    assert _retry_after(header, lambda: EPOCH) == 30.0
    assert _retry_after(header, lambda: EPOCH + 40) == 0.0, "a date in the past: retry at once"
    assert _retry_after(header, lambda: EPOCH - 3600) == 600.0, "capped at 10 minutes"


def test_delta_seconds_never_read_the_wall_clock() -> None:
    def no_clock() -> float:
        raise AssertionError("the wall clock was read for delta-seconds")

    assert _retry_after("7", no_clock) == 7.0
    error = _http_error(429, b"slow down", "3", no_clock)
    assert isinstance(error, TransientError)
    assert error.retry_after_s == 3.0


# --- how answers are classified: the README's "Labelbox answers" table, as the SDK classifies them ----


def body(code: str | None, message: str = "boom", status: int | None = None) -> bytes:
    extensions: dict[str, Any] = {}
    if code is not None:
        extensions["code"] = code
    if status is not None:
        extensions["exception"] = {"status": status}
    return orjson.dumps({"data": None, "errors": [{"message": message, "extensions": extensions}]})


# (HTTP status, body) -> (error class, retriable): the README's "Labelbox answers" table.
TABLE: list[tuple[str, int, bytes, type[LabelboxError], bool]] = [
    ("401", 401, b"Unauthorized", AuthenticationError, False),
    ("403 plain", 403, b"Forbidden", Forbidden, False),
    ("403 AUTHORIZATION_ERROR", 403, body("AUTHORIZATION_ERROR"), Forbidden, False),
    ("409 INTERNAL_SERVER_ERROR", 409, body("INTERNAL_SERVER_ERROR"), TransientError, True),
    ("409 RESOURCE_CONFLICT", 409, body("RESOURCE_CONFLICT"), ImportNameTaken, False),
    ("400 GRAPHQL_VALIDATION_FAILED", 400, body("GRAPHQL_VALIDATION_FAILED"), RequestRejected, False),
    ("400 rate-limit text", 400, body("BAD_REQUEST", "You have exceeded the limit"), TransientError, True),
    ("422 no JSON", 422, b"nope", RequestRejected, False),
    ("408", 408, b"", TransientError, True),
    ("429", 429, b"slow down", TransientError, True),
    ("500 with a GraphQL body", 500, body("AUTHORIZATION_ERROR"), TransientError, True),
    ("503", 503, b"", TransientError, True),
]


@pytest.mark.parametrize(("case", "status", "answer", "kind", "retriable"), TABLE, ids=[t[0] for t in TABLE])
def test_http_answers_are_classified_as_the_sdk_classifies_them(
    case: str, status: int, answer: bytes, kind: type[LabelboxError], retriable: bool
) -> None:
    error = _http_error(status, answer, None)
    assert type(error) is kind, case
    assert error.retriable is retriable


GRAPHQL_200: list[tuple[str, bytes, type[LabelboxError], bool]] = [
    ("AUTHENTICATION_ERROR", body("AUTHENTICATION_ERROR"), AuthenticationError, False),
    ("UNAUTHENTICATED", body("UNAUTHENTICATED"), AuthenticationError, False),
    ("AUTHORIZATION_ERROR", body("AUTHORIZATION_ERROR"), Forbidden, False),
    ("FORBIDDEN", body("FORBIDDEN"), Forbidden, False),
    ("INTERNAL_SERVER_ERROR status 400", body("INTERNAL_SERVER_ERROR", status=400), RequestRejected, False),
    ("INTERNAL_SERVER_ERROR status 422", body("INTERNAL_SERVER_ERROR", status=422), RequestRejected, False),
    ("INTERNAL_SERVER_ERROR status 500", body("INTERNAL_SERVER_ERROR", status=500), TransientError, True),
    ("INTERNAL_SERVER_ERROR no status", body("INTERNAL_SERVER_ERROR"), TransientError, True),
    ("SERVICE_UNAVAILABLE", body("SERVICE_UNAVAILABLE"), TransientError, True),
    ("rate limit text", body("SOMETHING", "You have exceeded the API limit"), TransientError, True),
    ("RESOURCE_NOT_FOUND", body("RESOURCE_NOT_FOUND"), RequestRejected, False),
    ("RESOURCE_CONFLICT", body("RESOURCE_CONFLICT"), ImportNameTaken, False),
    ("unknown code", body("SOMETHING_NEW"), RequestRejected, False),
]


@pytest.mark.parametrize(
    ("case", "answer", "kind", "retriable"), GRAPHQL_200, ids=[t[0] for t in GRAPHQL_200]
)
def test_graphql_errors_on_200_are_classified_as_the_sdk_classifies_them(
    case: str, answer: bytes, kind: type[LabelboxError], retriable: bool
) -> None:
    error = _graphql_errors(orjson.loads(answer)["errors"])
    assert type(error) is kind, case
    assert error.retriable is retriable


def test_a_forbidden_model_run_is_a_rejection_not_a_bad_key() -> None:
    error = _graphql_errors(orjson.loads(body("AUTHORIZATION_ERROR", "no access to run-x"))["errors"])
    assert isinstance(error, RequestRejected)
    assert not isinstance(error, AuthenticationError)
    assert "no access to run-x" in str(error)


def test_a_429_with_a_graphql_body_keeps_retry_after() -> None:
    error = _http_error(429, body("TOO_MANY_REQUESTS"), "2")
    assert isinstance(error, TransientError)
    assert error.retry_after_s == 2.0


# --- Retry-After parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("5s", None),
        ("0.3", 0.3),
        (" 7 ", 7.0),
        ("-5", 0.0),
        ("601", 600.0),
        ("1e9", 600.0),
        ("inf", 600.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # in the past
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),  # RFC 850 form, in the past
        ("Sun, 06 Nov 2994 08:49:37 GMT", 600.0),  # far future: capped
    ],
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert _retry_after(header) == seconds


def test_retry_after_http_date_in_the_near_future() -> None:
    header = email.utils.formatdate(time.time() + 30, usegmt=True)
    parsed = _retry_after(header)
    assert parsed is not None
    assert 28.0 <= parsed <= 30.0  # the date has whole-second precision


def test_429_with_http_date_retry_after_is_transient_with_the_delay() -> None:
    header = email.utils.formatdate(time.time() + 20, usegmt=True)
    error = _http_error(429, b'{"message": "You have exceeded the API rate limit"}', header)
    assert isinstance(error, TransientError)
    assert error.cause == "429"
    assert error.retry_after_s is not None
    assert 18.0 <= error.retry_after_s <= 20.0


def test_retry_after_nan_is_ignored() -> None:
    assert _retry_after("nan") is None


# --- states and outcomes from the wire -------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "state"),
    [
        ("RUNNING", "RUNNING"),
        ("FINISHED", "FINISHED"),
        ("FAILED", "FAILED"),
        ("QUEUED", "RUNNING"),
        ("finished", "RUNNING"),
        (None, "RUNNING"),
        (3, "RUNNING"),
    ],
)
def test_an_unknown_import_state_is_read_as_still_running(wire: object, state: str) -> None:
    assert import_state(wire) == state


@pytest.mark.parametrize(
    ("wire", "outcome"),
    [
        ("SUCCESS", "SUCCESS"),
        ("FAILURE", "FAILURE"),
        ("PARTIAL", "FAILURE"),
        ("success", "FAILURE"),
        (None, "FAILURE"),
        (True, "FAILURE"),
    ],
)
def test_only_success_is_a_successful_row(wire: object, outcome: str) -> None:
    assert row_outcome(wire) == outcome


@pytest.mark.parametrize(
    ("wire", "state"),
    [
        ("RUNNING", "RUNNING"),
        ("COMPLETE", "COMPLETE"),
        ("FAILED", "FAILED"),
        ("IN_PROGRESS", "RUNNING"),
        (None, "RUNNING"),
    ],
)
def test_an_unknown_task_state_is_read_as_still_running(wire: object, state: str) -> None:
    assert task_state(wire) == state


def test_an_import_keeps_the_state_labelbox_wrote_for_messages() -> None:
    base = {"id": "i1", "name": "n", "modelRunId": "run"}
    queued = ImportState.from_json({**base, "state": "QUEUED"})
    assert (queued.state, queued.done, queued.reported_state) == ("RUNNING", False, "QUEUED")
    finished = ImportState.from_json({**base, "state": "FINISHED", "statusFileUrl": "u"})
    assert (finished.state, finished.done, finished.raw_state) == ("FINISHED", True, None)
    assert finished.reported_state == "FINISHED"
    assert ImportState.from_json({**base, "state": "FAILED"}).done
    assert ImportState.from_json(base).reported_state == "None", "a missing state: still running"


def test_a_task_keeps_the_status_labelbox_wrote_and_a_string_error_message() -> None:
    odd = TaskStatus.from_json({"status": "PAUSED", "errorMessage": None})
    assert (odd.status, odd.done, odd.reported_status, odd.error_message) == (
        "RUNNING",
        False,
        "PAUSED",
        None,
    )
    failed = TaskStatus.from_json({"status": "FAILED", "errorMessage": "no such rows"})
    assert (failed.done, failed.error_message, failed.raw_status) == (True, "no such rows", None)
    assert TaskStatus.from_json({"status": "COMPLETE", "errorMessage": {"not": "text"}}).error_message is None


async def test_a_status_file_row_of_an_unknown_status_is_a_failure_that_keeps_it(script: Script) -> None:
    lines = [
        {"uuid": "u1", "status": "SUCCESS"},
        {"uuid": "u2", "status": "FAILURE", "errors": [{"name": "ValidationError", "message": "bad"}]},
        {"uuid": "u3", "status": "PARTIAL"},
        {"uuid": "u4"},
        {"status": "SUCCESS"},  # no uuid: not a row
    ]
    script.answers = [Answer(body=b"\n".join(orjson.dumps(line) for line in lines))]
    async with client(script, FakeTime()) as lb:
        rows = await lb.fetch_statuses(script.status_url)
    assert [(r.uuid, r.status, r.reported_status) for r in rows] == [
        ("u1", "SUCCESS", "SUCCESS"),
        ("u2", "FAILURE", "FAILURE"),
        ("u3", "FAILURE", "PARTIAL"),
        ("u4", "FAILURE", "None"),
    ]
    assert rows[1].errors == [{"name": "ValidationError", "message": "bad"}]


@pytest.mark.parametrize(
    "odd",
    [b"not json", b"[1, 2]", b'{"uuid": "x"} {"uuid": "y"}', b'{"uuid": "x"},{"uuid": "y"}', b"7"],
    ids=["garbled", "an array", "two objects", "two objects and a comma", "a number"],
)
async def test_a_status_file_line_that_is_not_one_object_loses_only_its_row(
    script: Script, odd: bytes
) -> None:
    """The file is read in one pass when it is one JSON object a line; otherwise line by line, and the
    odd line's row is missing (its message is then dead-lettered as having no status), not the file."""
    good = [{"uuid": "u1", "status": "SUCCESS", "dataRow": {"id": "d"}}, {"uuid": "u2", "status": "FAILURE"}]
    body = b"\n".join([orjson.dumps(good[0]), odd, orjson.dumps(good[1]), b"  "]) + b"\n"
    script.answers = [Answer(body=body)]
    async with client(script, FakeTime()) as lb:
        rows = await lb.fetch_statuses(script.status_url)
    assert [(r.uuid, r.status, r.errors) for r in rows] == [("u1", "SUCCESS", []), ("u2", "FAILURE", [])]


async def test_polling_an_import_in_an_unknown_state_reads_it_as_running(script: Script) -> None:
    answer = {"id": "i1", "name": "n", "modelRunId": "run", "state": "QUEUED"}
    script.answers = [Answer(body=orjson.dumps({"data": {"modelErrorAnalysisPredictionImport": answer}}))]
    async with client(script, FakeTime()) as lb:
        state = await lb.get_import("run", "n")
    assert state is not None
    assert (state.state, state.done, state.reported_state) == ("RUNNING", False, "QUEUED")
