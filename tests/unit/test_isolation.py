"""Pure parts of the failure semantics: how Labelbox's answers are classified (the README's table,
row by row), the forbidden-model-run verdicts, the bisection budget and the batch split. No I/O."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.batcher import Batch, _stats
from worker.convert import NdjsonLine
from worker.isolation import BisectionBudget, ForbiddenRuns
from worker.labelbox import (
    AuthenticationError,
    Forbidden,
    ImportNameTaken,
    LabelboxError,
    RequestRejected,
    TransientError,
    _graphql_errors,
    _http_error,
)


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
