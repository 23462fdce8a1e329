"""`worker.labelbox.LabelboxClient` over real HTTP against the local Labelbox-compatible sandbox.

Faults are injected in the sandbox (`FaultRule`); what the client did is read back from the sandbox's request
log (`state.requests(operation)`: arrival times `t` on the monotonic clock, answered `status`) and from the
`on_retry(operation, cause, sleep_s)` callback. Budgets and Retry-After values are sub-second so that the
whole file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from labelbox_sandbox import FaultRule, RequestRecord, Sandbox
from worker.labelbox import (
    AuthenticationError,
    ImportState,
    LabelboxClient,
    RequestRejected,
    StatusUrlExpired,
    TransientError,
)

pytestmark = pytest.mark.timeout(15)

KEY = "client-test-key-5d1e"
MR = "clmodelrunclienttests0001"
RETRY_AFTER_S = 0.3
# The client's Retry-After jitter is at most min(1, 0.1 * retry_after + 0.1) seconds.
RETRY_AFTER_JITTER_MAX_S = min(1.0, 0.1 * RETRY_AFTER_S + 0.1)


# --- helpers ---------------------------------------------------------------------------------------


class RetryLog:
    """An `on_retry` callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def __call__(self, operation: str, cause: str, sleep_s: float) -> None:
        self.calls.append((operation, cause, sleep_s))

    @property
    def causes(self) -> list[str]:
        return [cause for _, cause, _ in self.calls]

    @property
    def sleeps(self) -> list[float]:
        return [sleep_s for _, _, sleep_s in self.calls]


def client_for(
    server: Sandbox,
    retries: RetryLog | None = None,
    *,
    key: str = KEY,
    request_timeout_s: float = 2.0,
    retry_max_s: float = 5.0,
    rng: random.Random | None = None,
) -> LabelboxClient:
    return LabelboxClient(
        server.graphql_url,
        SecretStr(key),
        request_timeout_s=request_timeout_s,
        retry_max_s=retry_max_s,
        on_retry=retries,
        rng=rng,
    )


def row_uuid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def bbox_line(i: int, global_key: str = "img-1.jpg", height: float = 330.0) -> dict[str, Any]:
    return {
        "uuid": row_uuid(i),
        "dataRow": {"globalKey": global_key},
        "name": "bounding_box",
        "bbox": {"top": 977.0, "left": 1690.0, "height": height, "width": 225.0},
        "classifications": [],
    }


def ndjson(lines: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(line) for line in lines)


PAYLOAD = ndjson([bbox_line(1), bbox_line(2, global_key="img-2.jpg")])


def imports_named(server: Sandbox, name: str) -> int:
    return sum(1 for record in server.state.imports.values() if record.name == name)


def statuses(records: list[RequestRecord]) -> list[int]:
    return [record.status for record in records]


async def wait_done(client: LabelboxClient, name: str, timeout_s: float = 5.0) -> ImportState:
    """Poll until FINISHED or FAILED: at most 200 polls and `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    for _ in range(200):
        state = await client.get_import(MR, name)
        assert state is not None, f"import {name!r} disappeared"
        if state.done or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"import {name!r} still not done after 200 polls")


def chained(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from or during (bounded)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def new_server() -> Sandbox:
    """A sandbox whose model run holds the tests' data rows: these tests are about the client's calls,
    not about registering data rows (the sandbox FAILs rows on data rows not in the model run)."""
    sandbox = Sandbox(api_key=KEY, processing_delay_s=0.05)
    sandbox.state.add_data_rows(MR, global_keys=["img-1.jpg", "img-2.jpg", "café-1.jpg"])
    return sandbox


@pytest.fixture
async def server() -> AsyncIterator[Sandbox]:
    async with new_server() as sandbox:
        yield sandbox


# --- happy path ------------------------------------------------------------------------------------


async def test_import_round_trip_reports_one_status_per_line(server: Sandbox) -> None:
    # A non-ASCII global key makes the byte length differ from the character length.
    lines = [bbox_line(1, global_key="café-1.jpg"), bbox_line(2), bbox_line(3, height=-1.0)]
    payload = ndjson(lines)
    assert len(payload) != len(payload.decode())
    async with client_for(server) as client:
        created = await client.create_import(MR, "round-trip", payload)
        done = await wait_done(client, "round-trip")
        assert done.state == "FINISHED"
        assert done.status_file_url is not None
        rows = await client.fetch_statuses(done.status_file_url)

    assert created.state == "RUNNING"
    assert (created.name, created.model_run_id, created.id) == ("round-trip", MR, done.id)
    [request] = server.state.requests("create_import")
    assert (request.status, request.error_code) == (200, None)  # contentLength accepted
    record = server.state.find_import(MR, "round-trip")
    assert record is not None
    assert record.input == payload
    by_uuid = {row.uuid: row for row in rows}
    assert len(rows) == len(lines) == len(by_uuid)
    assert [by_uuid[row_uuid(i)].status for i in (1, 2, 3)] == ["SUCCESS", "SUCCESS", "FAILURE"]
    assert by_uuid[row_uuid(1)].errors == by_uuid[row_uuid(2)].errors == []
    [failure] = by_uuid[row_uuid(3)].errors
    assert failure["name"] == "InvalidGeometry"
    assert failure["message"]


async def test_get_import_of_unknown_name_is_none_without_retry(server: Sandbox) -> None:
    retries = RetryLog()
    async with client_for(server, retries) as client:
        assert await client.get_import(MR, "never-created") is None
    assert retries.calls == []
    assert len(server.state.requests("poll_import")) == 1


# --- transient failures are retried ----------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_burst_on_create_import_is_retried(server: Sandbox, status: int) -> None:
    burst = 2
    server.state.add_fault(
        FaultRule(kind="http_status", operation="create_import", status=status, count=burst)
    )
    retries = RetryLog()
    async with client_for(server, retries) as client:
        created = await client.create_import(MR, f"burst-{status}", PAYLOAD)

    assert created.state == "RUNNING"
    assert retries.causes == ["5xx"] * burst
    assert {operation for operation, _, _ in retries.calls} == {"create_import"}
    assert statuses(server.state.requests("create_import")) == [status] * burst + [200]
    record = server.state.find_import(MR, f"burst-{status}")
    assert record is not None
    assert record.input == PAYLOAD  # the retry resent the same bytes, not an empty file part


async def test_429_retry_waits_at_least_retry_after(server: Sandbox) -> None:
    server.state.add_fault(
        FaultRule(kind="rate_limit", operation="create_import", retry_after_s=RETRY_AFTER_S)
    )
    retries = RetryLog()
    async with client_for(server, retries) as client:
        await client.create_import(MR, "rate-limited", PAYLOAD)

    limited, retried = server.state.requests("create_import")
    assert (limited.status, retried.status) == (429, 200)
    assert retried.t - limited.t >= RETRY_AFTER_S
    [(operation, cause, sleep_s)] = retries.calls
    assert (operation, cause) == ("create_import", "429")
    assert RETRY_AFTER_S <= sleep_s <= RETRY_AFTER_S + RETRY_AFTER_JITTER_MAX_S


async def test_concurrent_clients_retry_a_429_with_jitter(server: Sandbox) -> None:
    clients = 5
    server.state.add_fault(
        FaultRule(kind="rate_limit", operation="create_import", retry_after_s=RETRY_AFTER_S, count=clients)
    )
    retries = RetryLog()

    async def create(i: int) -> ImportState:
        async with client_for(server, retries) as client:
            return await client.create_import(MR, f"herd-{i}", PAYLOAD)

    await asyncio.gather(*(create(i) for i in range(clients)))

    waits, retry_times = [], []
    for i in range(clients):
        limited, retried = [r for r in server.state.requests("create_import") if r.import_name == f"herd-{i}"]
        assert (limited.status, retried.status) == (429, 200)
        waits.append(retried.t - limited.t)
        retry_times.append(retried.t)
    assert min(waits) >= RETRY_AFTER_S
    assert max(retry_times) - min(retry_times) > 0
    # Without jitter every client would sleep exactly Retry-After and retry in lockstep.
    assert retries.causes == ["429"] * clients
    assert len(set(retries.sleeps)) == clients
    assert all(RETRY_AFTER_S <= s <= RETRY_AFTER_S + RETRY_AFTER_JITTER_MAX_S for s in retries.sleeps)


async def test_request_hanging_past_timeout_is_retried() -> None:
    retries = RetryLog()
    async with new_server() as server:
        server.state.add_fault(FaultRule(kind="hang", operation="create_import", delay_s=5.0))
        started = time.monotonic()
        async with client_for(server, retries, request_timeout_s=0.3) as client:
            created = await client.create_import(MR, "hung", PAYLOAD)
        elapsed = time.monotonic() - started
    # The hung request is logged (status 0: dropped) only once the sandbox stops and wakes it.
    logged = sorted(server.state.requests("create_import"), key=lambda record: record.t)
    assert statuses(logged) == [0, 200]
    assert created.state == "RUNNING"
    assert [(op, cause) for op, cause, _ in retries.calls] == [("create_import", "timeout")]
    assert 0.3 <= elapsed < 3.0
    assert imports_named(server, "hung") == 1


async def test_connection_reset_is_retried(server: Sandbox) -> None:
    server.state.add_fault(FaultRule(kind="reset", operation="user"))
    retries = RetryLog()
    async with client_for(server, retries) as client:
        await client.check_auth()
    assert [(op, cause) for op, cause, _ in retries.calls] == [("check_auth", "connection")]
    assert statuses(server.state.requests("user")) == [0, 200]


async def test_graphql_internal_server_error_is_retried(server: Sandbox) -> None:
    server.state.add_fault(
        FaultRule(kind="graphql_error", operation="create_import", code="INTERNAL_SERVER_ERROR")
    )
    retries = RetryLog()
    async with client_for(server, retries) as client:
        created = await client.create_import(MR, "graphql-5xx", PAYLOAD)
    assert created.state == "RUNNING"
    assert retries.causes == ["graphql"]
    assert [r.error_code for r in server.state.requests("create_import")] == ["INTERNAL_SERVER_ERROR", None]
    assert imports_named(server, "graphql-5xx") == 1


# --- requests that must not be retried -------------------------------------------------------------


async def test_graphql_error_of_another_code_is_rejected_without_retry(server: Sandbox) -> None:
    server.state.add_fault(
        FaultRule(kind="graphql_error", operation="create_import", code="MALFORMED_REQUEST", message="bad")
    )
    retries = RetryLog()
    async with client_for(server, retries) as client:
        with pytest.raises(RequestRejected) as caught:
            await client.create_import(MR, "malformed", PAYLOAD)
    assert type(caught.value) is RequestRejected
    assert caught.value.code == "MALFORMED_REQUEST"
    assert not caught.value.retriable
    assert retries.calls == []
    assert len(server.state.requests("create_import")) == 1
    assert imports_named(server, "malformed") == 0
    assert KEY not in str(caught.value)


async def test_invalid_api_key_fails_at_once_and_never_leaks(server: Sandbox) -> None:
    wrong_key = "wrong-key-SECRET-8c2f91"
    retries = RetryLog()
    async with client_for(server, retries, key=wrong_key) as client:
        with pytest.raises(AuthenticationError) as from_check:
            await client.check_auth()
        with pytest.raises(AuthenticationError) as from_create:
            await client.create_import(MR, "unauthorized", PAYLOAD)

    assert retries.calls == []
    assert statuses(server.state.requests("user")) == [401]
    assert statuses(server.state.requests("create_import")) == [401]
    assert imports_named(server, "unauthorized") == 0
    for caught in (from_check, from_create):
        assert not caught.value.retriable
        shown = "".join(traceback.format_exception(caught.value))
        for exc in chained(caught.value):
            shown += f"{exc}\n{exc!r}\n{exc.args!r}\n"
        assert wrong_key not in shown
        assert "SECRET" not in shown


# --- imports -------------------------------------------------------------------------------------


async def test_lost_response_adopts_the_created_import_instead_of_uploading_again(server: Sandbox) -> None:
    server.state.add_fault(FaultRule(kind="lost_response", operation="create_import"))
    retries = RetryLog()
    async with client_for(server, retries) as client:
        adopted = await client.create_import(MR, "lost", PAYLOAD)

    record = server.state.find_import(MR, "lost")
    assert record is not None
    assert adopted.id == record.id
    assert adopted.name == "lost"
    assert imports_named(server, "lost") == 1
    assert len(server.state.imports) == 1
    first, second = server.state.requests("create_import")
    assert (first.status, first.fault) == (0, "lost_response")
    assert second.error_code == "RESOURCE_CONFLICT"
    assert server.state.upload_counts(MR) == {row_uuid(1): 1, row_uuid(2): 1}
    assert retries.causes == ["connection"]


async def test_import_failed_is_reported_failed(server: Sandbox) -> None:
    server.state.add_fault(FaultRule(kind="import_failed", operation="create_import", message="boom"))
    async with client_for(server) as client:
        created = await client.create_import(MR, "doomed", PAYLOAD)
        done = await wait_done(client, "doomed")
    assert created.state == "RUNNING"
    assert done.state == "FAILED"
    assert done.done
    assert done.status_file_url is None
    assert done.error_file_url is not None


# --- status files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404])
async def test_a_status_url_that_answers_403_or_404_is_expired_not_an_auth_error(
    server: Sandbox, status: int
) -> None:
    """Signed URLs expire: the client says so at once (the pipeline polls the import for a fresh URL)."""
    async with client_for(server) as client:
        await client.create_import(MR, "expiring", PAYLOAD)
        done = await wait_done(client, "expiring")
    assert done.status_file_url is not None
    server.state.add_fault(FaultRule(kind="http_status", operation="status_file", status=status, count=1))
    retries = RetryLog()
    async with client_for(server, retries) as client:
        with pytest.raises(StatusUrlExpired) as caught:
            await client.fetch_statuses(done.status_file_url)
        assert not caught.value.retriable
        rows = await client.fetch_statuses(done.status_file_url)  # the URL works again
    assert sorted(row.uuid for row in rows) == [row_uuid(1), row_uuid(2)]
    assert retries.calls == [], "not retried by the client, which cannot refresh the URL"
    assert statuses(server.state.requests("status_file")) == [status, 200]


# --- the retry budget ------------------------------------------------------------------------------


async def test_retries_stop_after_retry_max_s_with_the_last_error(server: Sandbox) -> None:
    # The budget leaves room for at least two retries whatever the jitter draws: the first backoff
    # is at most 0.5 s, a Retry-After of 0.2 s at most 0.32 s with its jitter (0.82 s in all).
    retry_max_s = 1.5
    retry_after_s = 0.2
    # One 503 first, then 429s for ever: the error re-raised must be the last one (429), not the first.
    server.state.add_fault(FaultRule(kind="http_status", operation="user", status=503))
    server.state.add_fault(
        FaultRule(kind="rate_limit", operation="user", retry_after_s=retry_after_s, count=None)
    )
    retries = RetryLog()
    started = time.monotonic()
    async with client_for(server, retries, retry_max_s=retry_max_s) as client:
        with pytest.raises(TransientError) as caught:
            await client.check_auth()
    elapsed = time.monotonic() - started

    assert caught.value.cause == "429"
    assert caught.value.retry_after_s == retry_after_s
    assert elapsed < retry_max_s + 0.5  # never sleeps past the budget
    logged = statuses(server.state.requests("user"))
    assert logged[0] == 503
    assert logged[1:] == [429] * (len(logged) - 1)
    assert len(logged) == len(retries.calls) + 1 >= 3


async def test_retry_after_beyond_the_budget_is_not_slept(server: Sandbox) -> None:
    retry_max_s = 0.5
    server.state.add_fault(FaultRule(kind="rate_limit", operation="user", retry_after_s=2.0, count=None))
    started = time.monotonic()
    async with client_for(server, retry_max_s=retry_max_s) as client:
        with pytest.raises(TransientError) as caught:
            await asyncio.wait_for(client.check_auth(), timeout=retry_max_s + 1.0)
    assert caught.value.cause == "429"
    assert time.monotonic() - started < retry_max_s + 0.5


async def test_injected_rng_makes_backoff_reproducible(server: Sandbox) -> None:
    sleeps = []
    for attempt in range(2):
        server.state.add_fault(FaultRule(kind="http_status", operation="user", status=503))
        retries = RetryLog()
        async with client_for(server, retries, rng=random.Random(7)) as client:
            await client.check_auth()
        assert retries.causes == ["5xx"], attempt
        sleeps.append(retries.sleeps)
    assert sleeps[0] == sleeps[1]
