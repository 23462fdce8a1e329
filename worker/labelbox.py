"""Labelbox client: model-run prediction imports over GraphQL (aiohttp), with retries (tenacity).

Errors say whether to retry (``retriable``). Transient failures (connection errors, timeouts, HTTP
408/429/5xx, GraphQL INTERNAL_SERVER_ERROR) are retried with exponential backoff and full jitter
for at most ``retry_max_s`` in total; a ``Retry-After`` answer is honoured (plus a little jitter so
that workers do not retry in lockstep). Authentication failures and other 4xx are not retried.
Time comes from injected clocks (``clock``: monotonic, for the retry budget, ``failing_since`` and
round trips; ``wall_clock``: epoch seconds, for HTTP-date Retry-After) and waits go through an
injected ``sleep``, so the retry policy is unit-tested without waiting.
The API key is sent only in the Authorization header and never appears in errors or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
import msgspec
import orjson
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
)

T = TypeVar("T")
_IMPORT_FIELDS = "id name modelRunId state progress inputFileUrl errorFileUrl statusFileUrl"
CREATE_IMPORT = f"""mutation createMEAPredictionImportByFile(
  $modelRunId: ID!, $name: String!, $file: Upload!, $contentLength: Int!) {{
  createModelErrorAnalysisPredictionImport(data: {{
    modelRunId: $modelRunId name: $name filePayload: {{file: $file, contentLength: $contentLength}}
  }}) {{ {_IMPORT_FIELDS} }}
}}"""
GET_IMPORT = f"""query getMEAPredictionImport($modelRunId: ID!, $name: String!) {{
  modelErrorAnalysisPredictionImport(where: {{modelRunId: $modelRunId, name: $name}}) {{ {_IMPORT_FIELDS} }}
}}"""
CHECK_AUTH = "query getUser { user { id } }"
MODEL_RUN = "query getModelRun($id: ID!) { modelRun(where: {id: $id}) { id modelId } }"
MODEL = "query getModel($id: ID!) { model(where: {id: $id}) { id ontologyId } }"
ONTOLOGY = "query getOntology($id: ID!) { ontology(where: {id: $id}) { id name normalized } }"
REGISTER_DATA_ROWS = """mutation registerDataRows($modelRunId: ID!, $dataRowIds: [ID!], $globalKeys: [ID!]) {
  createMEAModelRunDataRowRegistrationTask(
    where: {id: $modelRunId}, data: {dataRowIds: $dataRowIds, globalKeys: $globalKeys})
}"""
REGISTER_PROJECT_LABELS = """mutation registerProjectLabels($modelRunId: ID!, $projectId: ID!) {
  createMEAModelRunProjectLabelRegistrationTask(where: {modelRunId: $modelRunId, projectId: $projectId})
}"""
REGISTER_LABELS = """mutation registerLabels($modelRunId: ID!, $labelIds: [ID!]!) {
  createMEAModelRunLabelRegistrationTask(where: {id: $modelRunId}, data: {labelIds: $labelIds})
}"""
_TASK_MUTATIONS = {
    REGISTER_DATA_ROWS: "createMEAModelRunDataRowRegistrationTask",
    REGISTER_PROJECT_LABELS: "createMEAModelRunProjectLabelRegistrationTask",
    REGISTER_LABELS: "createMEAModelRunLabelRegistrationTask",
}
_TASK_FIELD = {"data_rows": "MEADataRowRegistrationTaskStatus", "labels": "MEALabelRegistrationTaskStatus"}
#: The SDK's shape: the whole ``where`` is one variable.
TASK_STATUS = {
    kind: "query taskStatus($where: WhereUniqueIdInput!) {\n"
    f"  {field}(where: $where) {{ status errorMessage }}\n}}"
    for kind, field in _TASK_FIELD.items()
}
_BACKOFF_BASE_S, _BACKOFF_CAP_S = 0.5, 30.0
#: GraphQL error codes, classified as Labelbox's SDK (lbox/request_client.py) classifies them.
_TRANSIENT_CODES = frozenset({"SERVICE_UNAVAILABLE", "TOO_MANY_REQUESTS"})
_AUTH_CODES = frozenset({"AUTHENTICATION_ERROR", "UNAUTHENTICATED"})
_FORBIDDEN_CODES = frozenset({"AUTHORIZATION_ERROR", "FORBIDDEN"})
#: How Labelbox words a rate limit, whatever the HTTP status (the SDK's ApiLimitError).
_RATE_LIMIT_PREFIX = "You have exceeded"


class LabelboxError(Exception):
    """A Labelbox call failed. ``retriable`` says whether the same call may succeed later."""

    retriable = False
    cause = "rejected"


class TransientError(LabelboxError):
    """May succeed on retry. ``cause`` is a low-cardinality label: ``5xx``, ``429``, ``timeout``…"""

    retriable = True

    def __init__(self, message: str, cause: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after_s = retry_after_s


class AuthenticationError(LabelboxError):
    """The API key is invalid: fatal for the worker (every request would fail the same way)."""

    cause = "auth"


class RequestRejected(LabelboxError):
    """Labelbox refused the request (4xx or a GraphQL error); retrying will not help."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Forbidden(RequestRejected):
    """The key is valid but may not access this resource (a model run of another organisation):
    fatal for that model run's messages only."""


class StatusUrlExpired(LabelboxError):
    """The status file's signed URL answered 403/404 (expired): poll the import again for a fresh one.

    Not retried by the client, which cannot refresh the URL itself."""

    cause = "expired_url"


class ImportNameTaken(RequestRejected):
    """An import of this name exists in the model run (for example, created by a lost attempt)."""


#: What an import is in (its ``state``). Read by :func:`import_state`: anything else is RUNNING.
ImportStateName = Literal["RUNNING", "FINISHED", "FAILED"]
#: How one row of a FINISHED import ended (a status-file line's ``status``). Read by
#: :func:`row_outcome`: anything but SUCCESS is a FAILURE.
RowOutcome = Literal["SUCCESS", "FAILURE"]
#: What a model-run registration task is in. Read by :func:`task_state`: anything else is RUNNING.
TaskStateName = Literal["RUNNING", "COMPLETE", "FAILED"]


def import_state(value: object) -> ImportStateName:
    """An import's ``state`` from the wire. An unknown value (a state Labelbox added, a missing one)
    is read as still RUNNING: the import is polled again until it ends or its deadline passes,
    rather than settling its rows on a guess."""
    if value == "FINISHED":
        return "FINISHED"
    if value == "FAILED":
        return "FAILED"
    return "RUNNING"


def row_outcome(value: object) -> RowOutcome:
    """A status-file row's ``status`` from the wire: only SUCCESS is a success; anything else (an
    unknown value, a missing one) is a FAILURE, so a row is never reported imported on a guess."""
    return "SUCCESS" if value == "SUCCESS" else "FAILURE"


def task_state(value: object) -> TaskStateName:
    """A registration task's ``status`` from the wire; an unknown value is still RUNNING (polled
    again until it ends or its deadline passes)."""
    if value == "COMPLETE":
        return "COMPLETE"
    if value == "FAILED":
        return "FAILED"
    return "RUNNING"


@dataclass(frozen=True, slots=True)
class ImportState:
    """A model-run prediction import as Labelbox reports it.

    ``state`` is read conservatively (:func:`import_state`); ``raw_state`` is what Labelbox wrote when
    it differs (None: the same), for messages and logs: see :attr:`reported_state`."""

    id: str
    name: str
    model_run_id: str
    state: ImportStateName
    progress: str | None = None
    status_file_url: str | None = None
    error_file_url: str | None = None
    raw_state: str | None = None

    @property
    def done(self) -> bool:
        """FINISHED or FAILED."""
        return self.state != "RUNNING"

    @property
    def reported_state(self) -> str:
        """The state as Labelbox wrote it."""
        return self.state if self.raw_state is None else self.raw_state

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportState:
        raw = str(data.get("state"))
        state = import_state(raw)
        return cls(
            id=str(data.get("id")),
            name=str(data.get("name")),
            model_run_id=str(data.get("modelRunId")),
            state=state,
            progress=data.get("progress"),
            status_file_url=data.get("statusFileUrl"),
            error_file_url=data.get("errorFileUrl"),
            raw_state=None if raw == state else raw,
        )


@dataclass(slots=True)
class RowStatus:
    """One line of an import's status file. ``status`` is read conservatively (:func:`row_outcome`);
    ``raw_status`` is what Labelbox wrote when it differs (None: the same). Read-only by convention:
    not frozen, because a frozen dataclass costs three times as much to build, and a status file has
    a row per prediction."""

    uuid: str
    status: RowOutcome
    errors: list[dict[str, Any]] = field(default_factory=list)
    raw_status: str | None = None

    @property
    def reported_status(self) -> str:
        """The status as Labelbox wrote it."""
        return self.status if self.raw_status is None else self.raw_status


def _retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped at 10 minutes.

    ``now``: the wall clock (epoch seconds) an HTTP-date is measured from; read only for a date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), 600.0)


def _graphql_errors(errors: list[Any]) -> LabelboxError:
    """The error a GraphQL ``errors`` list means, read as the SDK reads it (first error decides)."""
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    message = str(first.get("message", "GraphQL error"))[:500]
    extensions: dict[str, Any] = first.get("extensions") or {}
    if not isinstance(extensions, dict):
        extensions = {}
    code = extensions.get("code")
    if code in _AUTH_CODES:
        return AuthenticationError(f"Labelbox refused the API key: {message}")
    if code in _FORBIDDEN_CODES:
        return Forbidden(f"Labelbox error {code}: {message}", code)
    if message.startswith(_RATE_LIMIT_PREFIX):
        return TransientError(f"rate limited: {message}", "429")
    if code in _TRANSIENT_CODES:
        return TransientError(f"Labelbox error {code}: {message}", "graphql")
    if code == "INTERNAL_SERVER_ERROR":
        status = _exception_status(extensions)
        if status is not None and 400 <= status < 500:  # a client error Labelbox reports this way
            return RequestRejected(f"Labelbox refused the request (status {status}): {message}", code)
        return TransientError(f"Labelbox error {code}: {message}", "graphql")
    if code == "RESOURCE_CONFLICT" or "already exists" in message:
        return ImportNameTaken(message, code)
    return RequestRejected(f"Labelbox error {code}: {message}", code)


def _exception_status(extensions: dict[str, Any]) -> int | None:
    exception = extensions.get("exception")
    status = exception.get("status") if isinstance(exception, dict) else None
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


def _errors_in(body: bytes) -> list[Any] | None:
    """The GraphQL ``errors`` of a JSON body, or None when it has none."""
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    errors = answer.get("errors") if isinstance(answer, dict) else None
    return errors if isinstance(errors, list) and errors else None


def _http_error(
    status: int, body: bytes, retry_after: str | None, now: Callable[[], float] = time.time
) -> LabelboxError:
    """The error a non-200 answer means. Below 500 a GraphQL ``errors`` body decides, as in the SDK.

    ``now``: the wall clock a Retry-After HTTP-date is measured from."""
    text = body[:300].decode("utf-8", "replace")
    errors = _errors_in(body) if status < 500 else None
    if errors is not None:
        error = _graphql_errors(errors)
        if isinstance(error, TransientError) and status == 429:
            error.retry_after_s = _retry_after(retry_after, now)
        return error
    if text.startswith(_RATE_LIMIT_PREFIX) or status == 429:
        return TransientError(f"rate limited (HTTP {status}): {text}", "429", _retry_after(retry_after, now))
    if status == 401:
        return AuthenticationError("Labelbox answered HTTP 401: the API key is invalid")
    if status == 403:
        return Forbidden(f"Labelbox answered HTTP 403: no access ({text})", "FORBIDDEN")
    if status == 408 or status >= 500:
        return TransientError(
            f"HTTP {status}: {text}", "5xx" if status >= 500 else "408", _retry_after(retry_after, now)
        )
    return RequestRejected(f"HTTP {status}: {text}")


@contextlib.contextmanager
def _transport_errors(what: str) -> Iterator[None]:
    """Translate aiohttp's timeouts and connection errors into :class:`TransientError`."""
    try:
        yield
    except TimeoutError as exc:
        raise TransientError(f"{what} timed out", "timeout") from exc
    except aiohttp.ClientError as exc:
        raise TransientError(f"{what} failed: {type(exc).__name__}", "connection") from exc


#: What ``on_response`` reports of an attempt: ``ok``, ``overload`` (a 429 or a 5xx, also inside the
#: retries) or ``failed`` (anything else).
AttemptOutcome = Literal["ok", "overload", "failed"]
OnResponse = Callable[[str, AttemptOutcome, float, float], None]
"""Called after every attempt with (operation, outcome, started_at on the client's clock, seconds it took)."""
OnRetry = Callable[[str, str, float], None]
"""Called before each retry sleep with (operation, cause, seconds to sleep). ``on_attempt`` is called
with the operation before every attempt, the first included."""


class LabelboxClient:
    """Async client for the operations the worker needs. ``async with`` or ``start()``/``stop()``."""

    def __init__(
        self,
        graphql_url: str,
        api_key: SecretStr,
        *,
        request_timeout_s: float = 60.0,
        retry_max_s: float = 300.0,
        on_retry: OnRetry | None = None,
        on_attempt: Callable[[str], None] | None = None,
        on_response: OnResponse | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._url = graphql_url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._retry_max_s = retry_max_s
        self._on_retry = on_retry
        self._on_attempt = on_attempt
        self._on_response = on_response
        self._rng = rng or random.Random()
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        #: Since when (on ``clock``) requests have been failing transiently (None: last one succeeded).
        self.failing_since: float | None = None

    async def start(self) -> None:
        """Open the HTTP session (idempotent)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, raise_for_status=False)

    async def stop(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> LabelboxClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- retries -------------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TransientError) and error.retry_after_s is not None:
            return error.retry_after_s + self._rng.uniform(0, min(1.0, 0.1 * error.retry_after_s + 0.1))
        # Full jitter: uniform over [0, min(cap, base * 2^attempt)].
        return self._rng.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (state.attempt_number - 1)))

    async def _retrying(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        first_attempt_at = self._clock()

        def out_of_budget(state: RetryCallState) -> bool:
            """Never sleep past the budget (tenacity's ``stop_before_delay``, on the client's clock)."""
            return self._clock() - first_attempt_at + state.upcoming_sleep >= self._retry_max_s

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if self.failing_since is None:
                self.failing_since = self._clock()
            if self._on_retry is not None and state.next_action is not None:
                self._on_retry(operation, getattr(error, "cause", "error"), state.next_action.sleep)

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, LabelboxError) and e.retriable),
            wait=self._wait,
            stop=out_of_budget,
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )

        async def attempt() -> T:
            if self._on_attempt is not None:
                self._on_attempt(operation)
            started_at = self._clock()
            try:
                result = await call()
            except LabelboxError as exc:
                self._respond(operation, "overload" if exc.cause in ("429", "5xx") else "failed", started_at)
                raise
            self._respond(operation, "ok", started_at)
            return result

        result: T = await retrying(attempt)
        self.failing_since = None
        return result

    def _respond(self, operation: str, outcome: AttemptOutcome, started_at: float) -> None:
        if self._on_response is not None:
            self._on_response(operation, outcome, started_at, self._clock() - started_at)

    # --- transport -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}", "Accept": "application/json"}

    async def _post(self, data: aiohttp.FormData | bytes, content_type: str | None = None) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("LabelboxClient is not started")
        headers = self._headers()
        if content_type:
            headers["Content-Type"] = content_type
        with _transport_errors("request"):
            async with self._session.post(self._url, data=data, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise _http_error(
                        response.status, body, response.headers.get("Retry-After"), self._wall_clock
                    )
        return self._parse(body)

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TransientError("Labelbox answered with a body that is not JSON", "invalid_body") from exc
        if not isinstance(answer, dict):
            raise TransientError("Labelbox answered with JSON that is not an object", "invalid_body")
        if answer.get("errors"):
            raise _graphql_errors(answer["errors"])
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _root(data: dict[str, Any], field: str) -> Any:
        """The answer's ``data.<field>`` (None when Labelbox answered it with null).

        An answer without it at all is not an answer to this operation: a transient error, so the
        call is retried like any other failure instead of escaping as a KeyError."""
        if field not in data:
            raise TransientError(f"Labelbox answered without data for {field}", "no_data")
        return data[field]

    async def _query(self, query: str, variables: dict[str, Any], field: str) -> Any:
        """``data.<field>`` of one GraphQL query (see :meth:`_root`)."""
        data = await self._post(orjson.dumps({"query": query, "variables": variables}), "application/json")
        return self._root(data, field)

    # --- operations ----------------------------------------------------------------------------

    async def check_auth(self) -> None:
        """One authenticated request. Raises :class:`AuthenticationError` for a bad key."""

        async def call() -> None:
            try:
                await self._query(CHECK_AUTH, {}, "user")
            except Forbidden as exc:  # a key that may not even read its own user is no usable key
                raise AuthenticationError(f"Labelbox refused the API key: {exc}") from exc

        await self._retrying("check_auth", call)

    async def probe(self) -> bool:
        """Whether Labelbox answers one cheap authenticated query now (no retries, never raises).

        An answer ends ``failing_since``: Labelbox works, whatever one operation's trouble."""
        try:
            await self._query(CHECK_AUTH, {}, "user")
        except LabelboxError:
            return False
        self.failing_since = None
        return True

    async def create_import(self, model_run_id: str, name: str, payload: bytes) -> ImportState:
        """Upload ``payload`` (NDJSON) as a new import, or adopt the existing import of that name.

        A name already taken in the model run means an earlier attempt was created but its answer
        was lost: that import is followed rather than uploading the batch again.
        """

        async def call() -> ImportState:
            try:
                data = await self._post(self._multipart(model_run_id, name, payload))
            except ImportNameTaken:
                existing = await self.get_import(model_run_id, name)
                if existing is None:
                    raise
                return existing
            created = self._root(data, "createModelErrorAnalysisPredictionImport")
            if not isinstance(created, dict):
                raise TransientError("Labelbox answered the import creation with no import", "no_data")
            return ImportState.from_json(created)

        return await self._retrying("create_import", call)

    @staticmethod
    def _multipart(model_run_id: str, name: str, payload: bytes) -> aiohttp.FormData:
        file_name = f"{model_run_id}__{name}.ndjson"
        variables = {"file": None, "contentLength": len(payload), "modelRunId": model_run_id, "name": name}
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("operations", orjson.dumps({"query": CREATE_IMPORT, "variables": variables}).decode())
        form.add_field("map", orjson.dumps({file_name: ["variables.file"]}).decode())
        form.add_field(file_name, payload, filename=file_name, content_type="application/x-ndjson")
        return form

    async def get_import(self, model_run_id: str, name: str) -> ImportState | None:
        """The import's current state, or None if there is no import of that name."""

        async def call() -> ImportState | None:
            try:
                variables = {"modelRunId": model_run_id, "name": name}
                found = await self._query(GET_IMPORT, variables, "modelErrorAnalysisPredictionImport")
            except RequestRejected as exc:
                if exc.code == "RESOURCE_NOT_FOUND" and not isinstance(exc, Forbidden):
                    return None
                raise
            return ImportState.from_json(found) if isinstance(found, dict) else None

        return await self._retrying("poll_import", call)

    async def fetch_ontology(self, model_run_id: str) -> dict[str, Any]:
        """The model run's ontology, Labelbox's ``normalized`` JSON (model run -> model -> ontology).

        Raises :class:`RequestRejected` (code RESOURCE_NOT_FOUND) for an unknown model run.
        """

        async def call() -> dict[str, Any]:
            run = await self._query(MODEL_RUN, {"id": model_run_id}, "modelRun")
            if not isinstance(run, dict):
                raise RequestRejected(f"model run {model_run_id} does not exist", "RESOURCE_NOT_FOUND")
            model = await self._query(MODEL, {"id": run.get("modelId")}, "model") or {}
            ontology = await self._query(ONTOLOGY, {"id": model.get("ontologyId")}, "ontology") or {}
            normalized = ontology.get("normalized")
            if isinstance(normalized, str):
                normalized = orjson.loads(normalized)
            if not isinstance(normalized, dict):
                raise RequestRejected(
                    f"model run {model_run_id} has no readable ontology", "RESOURCE_NOT_FOUND"
                )
            return normalized

        return await self._retrying("ontology", call)

    async def register_data_rows(
        self, model_run_id: str, data_row_ids: list[str], global_keys: list[str]
    ) -> str:
        """Start adding data rows to the model run; returns the task id. An empty list is sent as null,
        as the SDK sends an absent one."""
        variables = {
            "modelRunId": model_run_id,
            "dataRowIds": data_row_ids or None,
            "globalKeys": global_keys or None,
        }
        return await self._task("register_data_rows", REGISTER_DATA_ROWS, variables)

    async def register_labels(
        self, model_run_id: str, *, project_id: str | None = None, label_ids: list[str] | None = None
    ) -> str:
        """Start registering ground truth (a project's labels, or labels by id); returns the task id."""
        variables: dict[str, Any]
        if project_id is not None:
            query, variables = REGISTER_PROJECT_LABELS, {"modelRunId": model_run_id, "projectId": project_id}
        else:
            query, variables = REGISTER_LABELS, {"modelRunId": model_run_id, "labelIds": label_ids or []}
        return await self._task("register_labels", query, variables)

    async def _task(self, operation: str, query: str, variables: dict[str, Any]) -> str:
        field = _TASK_MUTATIONS[query]

        async def call() -> str:
            task_id = await self._query(query, variables, field)
            if not isinstance(task_id, str):
                raise RequestRejected(f"{operation}: Labelbox returned no task id")
            return task_id

        return await self._retrying(operation, call)

    async def task_status(self, kind: str, task_id: str) -> TaskStatus:
        """Status of a ``data_rows`` or ``labels`` registration task."""

        async def call() -> TaskStatus:
            found = await self._query(TASK_STATUS[kind], {"where": {"id": task_id}}, _TASK_FIELD[kind]) or {}
            return TaskStatus.from_json(found)

        return await self._retrying("task_status", call)

    async def fetch_statuses(self, url: str) -> list[RowStatus]:
        """Read a status file (signed URL: no auth header).

        Raises :class:`StatusUrlExpired` when the URL answers 403 or 404 (signed URLs expire; the
        caller polls the import again for a fresh one)."""

        async def call() -> list[RowStatus]:
            if self._session is None:
                raise RuntimeError("LabelboxClient is not started")
            with _transport_errors("status file request"):
                async with self._session.get(url) as response:
                    body = await response.read()
                    if response.status in (403, 404):
                        raise StatusUrlExpired(f"status file URL answered HTTP {response.status}")
                    if response.status != 200:
                        raise _http_error(
                            response.status, body, response.headers.get("Retry-After"), self._wall_clock
                        )
            return _parse_statuses(body)

        return await self._retrying("status_file", call)


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A model-run registration task: RUNNING, COMPLETE or FAILED (read by :func:`task_state`);
    ``raw_status`` is what Labelbox wrote when it differs (None: the same)."""

    status: TaskStateName
    error_message: str | None = None
    raw_status: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "RUNNING"

    @property
    def reported_status(self) -> str:
        """The status as Labelbox wrote it."""
        return self.status if self.raw_status is None else self.raw_status

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskStatus:
        raw = str(data.get("status"))
        status = task_state(raw)
        message = data.get("errorMessage")
        return cls(status, message if isinstance(message, str) else None, None if raw == status else raw)


class _StatusLine(msgspec.Struct):
    """What is read of a status-file line; any other key (``dataRow``) is skipped unparsed."""

    uuid: Any = None
    status: Any = None
    errors: Any = None


_STATUS_LINES = msgspec.json.Decoder(list[_StatusLine])
_STATUS_LINE = msgspec.json.Decoder(_StatusLine)


def _parse_statuses(body: bytes) -> list[RowStatus]:
    """Rows of a status file. One msgspec pass over the whole file; line by line only if it is not one
    JSON object a line (a garbled line's row is then reported as missing)."""
    raws = [raw for raw in body.splitlines() if raw and not raw.isspace()]
    try:
        lines: list[_StatusLine | None] = list(_STATUS_LINES.decode(b"[" + b",".join(raws) + b"]"))
    except msgspec.DecodeError:
        lines = []
    if len(lines) != len(raws):
        lines = [_line_or_none(raw) for raw in raws]
    rows: list[RowStatus] = []
    for line in lines:
        if line is None or not isinstance(row_uuid := line.uuid, str):
            continue
        errors = line.errors if isinstance(line.errors, list) else []
        if line.status == "SUCCESS":
            rows.append(RowStatus(row_uuid, "SUCCESS", errors))
        else:
            raw = str(line.status)
            rows.append(
                RowStatus(row_uuid, status := row_outcome(raw), errors, None if raw == status else raw)
            )
    return rows


def _line_or_none(raw: bytes) -> _StatusLine | None:
    try:
        return _STATUS_LINE.decode(raw)
    except msgspec.DecodeError:
        return None
