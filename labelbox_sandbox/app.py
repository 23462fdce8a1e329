"""The HTTP shell: `POST /graphql`, status/error/input files, blobs; faults acted out; requests logged.

Routes (besides the admin API of `admin.py`):
- `POST /graphql` (auth: `Authorization: Bearer <api key>`): JSON or GraphQL multipart.
- `GET /files/<import id>/status.ndjson | errors.ndjson | input.ndjson`: no auth, like Labelbox's signed URLs.
  Status and error files exist once the import is no longer RUNNING (404 before).
- `GET /blobs/<name>`: bytes put with `PUT /_sandbox/blobs/<name>`, no auth: a place to serve `fileUrl`s from.

A GraphQL request goes through, in order: its transport faults (latency, then one terminal fault: an
HTTP status, 429, a hang, a reset, a GraphQL error, an empty body), the rate limit when one is set
(a token bucket per API key, `ratelimit.py`: HTTP 429 with `Retry-After`, logged as fault
`rate_limited`), the API key, parsing and validation
against the schema (`graphql.py`), a `forbidden` fault on its model run, then its resolvers.

A wrong or missing key answers HTTP 401 with
`{"errors": [{"message": "Invalid API key", "extensions": {"code": "AUTHENTICATION_ERROR"}}], "data": null}`
(the Labelbox SDK raises `AuthenticationError` on that code). The key is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from labelbox_sandbox.faults import TERMINAL_KINDS, FaultRule
from labelbox_sandbox.graphql import GraphQLError, RootField, error_body, parse_request, root_field_names
from labelbox_sandbox.resolvers import (
    Context,
    FetchedFile,
    model_run_and_import_name,
    operation_of,
    resolve_field,
)
from labelbox_sandbox.state import ImportRecord, RequestRecord, SandboxState
from labelbox_sandbox.transport import read_graphql_request

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
FETCH_TIMEOUT_S = 10.0
SDK_USER_AGENT_PREFIX = "python-sdk"
_FILE_OPERATIONS = {"status": "status_file", "errors": "status_file", "input": "input_file"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Call:
    """What one request is about and what happened to it, for the request log."""

    started: float
    operation: str = "unknown"
    model_run_id: str | None = None
    import_name: str | None = None
    faults: list[str] = field(default_factory=list)
    error_code: str | None = None

    def record(self, request: web.Request, status: int) -> RequestRecord:
        return RequestRecord(
            t=self.started,
            method=request.method,
            path=request.path,
            operation=self.operation,
            model_run_id=self.model_run_id,
            import_name=self.import_name,
            status=status,
            fault=",".join(self.faults) or None,
            error_code=self.error_code,
        )


CALL = web.RequestKey("sandbox_call", Call)


class DroppedConnection(Exception):
    """Raised by a handler to end the request by resetting the connection instead of answering."""


class SandboxApp:
    """Request handlers over a `SandboxState`.

    `closing` is set when the sandbox stops: hanging requests then end at once. `http` is the client session
    used to fetch `fileUrl`s (loopback only).
    """

    def __init__(
        self, state: SandboxState, api_key: str, closing: asyncio.Event, http: aiohttp.ClientSession
    ):
        self.state = state
        self._api_key = api_key
        self._closing = closing
        self._http = http

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/graphql", self.graphql),
            web.get("/files/{import_id}/{kind}.ndjson", self.file),
            web.get("/blobs/{name}", self.blob),
        ]

    @web.middleware
    async def log_requests(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Log every non-admin request; turn DroppedConnection into a reset."""
        if request.path.startswith("/_sandbox/"):
            return await handler(request)
        call = request[CALL] = Call(started=self.state.clock())
        try:
            response = await handler(request)
            status = response.status
        except DroppedConnection:
            _reset_connection(request)
            response, status = web.Response(status=500), 0
        except web.HTTPException as e:
            self.state.log_request(call.record(request, e.status))
            raise
        self.state.log_request(call.record(request, status))
        return response

    # --- POST /graphql ---

    async def graphql(self, request: web.Request) -> web.StreamResponse:
        roots = await _read_roots(request, self.state)
        faulted = await self._transport_fault(request)
        if faulted is not None:
            return faulted
        limited = self._rate_limited(request)
        if limited is not None:
            return limited
        if not self._authorized(request):
            return _graphql_error(request, GraphQLError("Invalid API key", "AUTHENTICATION_ERROR", 401))
        if isinstance(roots, GraphQLError):
            return _graphql_error(request, roots)
        forbidden = self._forbidden(request)
        if forbidden is not None:
            return forbidden
        return await self._execute(request, roots)

    def _forbidden(self, request: web.Request) -> web.StreamResponse | None:
        """The answer of a `forbidden` fault on the request's model run, or None."""
        call = request[CALL]
        rule = self.state.faults.take(call.operation, {"forbidden"}, call.model_run_id)
        if rule is None:
            return None
        call.faults.append(rule.kind)
        error = GraphQLError(rule.effective_message, "AUTHORIZATION_ERROR", rule.effective_status)
        return _graphql_error(request, error)

    def _rate_limited(self, request: web.Request) -> web.StreamResponse | None:
        """HTTP 429 when the request's API key has no token left in its bucket (`ratelimit.py`)."""
        buckets = self.state.rate_limit
        if buckets is None:
            return None
        wait_s = buckets.admit(request.headers.get("Authorization", ""))
        if wait_s <= 0:
            return None
        request[CALL].faults.append("rate_limited")
        return _too_many_requests(wait_s)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            key.strip().encode(), self._api_key.encode()
        )

    async def _execute(self, request: web.Request, roots: list[RootField]) -> web.StreamResponse:
        is_create = request[CALL].operation == "create_import"
        context = Context(
            state=self.state,
            files_url=f"{request.scheme}://{request.host}/files",
            fetched=await self._fetch_file_url(roots[0]) if is_create else None,
            sdk_content_length=request.headers.get("X-User-Agent", "").startswith(SDK_USER_AGENT_PREFIX),
        )
        try:
            data = {root.alias: resolve_field(context, root) for root in roots}
        except GraphQLError as e:
            return _graphql_error(request, e)
        for record in context.created:
            request[CALL].faults.extend(record.faults.kinds())
        if any(record.faults.lost_response for record in context.created):
            raise DroppedConnection
        return web.json_response({"data": data})

    async def _fetch_file_url(self, root: RootField) -> FetchedFile | None:
        data = root.arguments.get("data")
        url = data.get("fileUrl") if isinstance(data, dict) else None
        if not isinstance(url, str):
            return None
        if urlsplit(url).hostname not in LOOPBACK_HOSTS:
            return FetchedFile(None, f"the sandbox only fetches loopback URLs, not {url!r}")
        try:
            timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
            async with self._http.get(url, timeout=timeout) as response:
                if response.status != 200:
                    return FetchedFile(None, f"GET {url} answered HTTP {response.status}")
                return FetchedFile(await response.read())
        except (aiohttp.ClientError, TimeoutError) as e:
            return FetchedFile(None, f"GET {url} failed: {e!r}")

    # --- files and blobs ---

    async def file(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        call = request[CALL]
        call.operation = _FILE_OPERATIONS.get(kind, "status_file")
        record = self.state.imports.get(request.match_info["import_id"])
        if record is not None:
            call.model_run_id, call.import_name = record.model_run_id, record.name
        faulted = await self._transport_fault(request)
        if faulted is not None:
            return faulted
        lines = self._file_lines(record, kind) if record is not None else None
        if lines is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=lines, content_type="application/x-ndjson", charset="utf-8")

    def _file_lines(self, record: ImportRecord, kind: str) -> bytes | None:
        if kind == "input":
            return bytes(record.input)
        state = record.state_at(self.state.clock())
        if kind == "status" and state == "FINISHED":
            return _ndjson(record.statuses)
        if kind == "errors" and state != "RUNNING":
            return _ndjson(record.errors())
        return None

    async def blob(self, request: web.Request) -> web.StreamResponse:
        request[CALL].operation = "blob"
        faulted = await self._transport_fault(request)
        if faulted is not None:
            return faulted
        data = self.state.blobs.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, content_type="application/x-ndjson", charset="utf-8")

    # --- transport faults ---

    async def _transport_fault(self, request: web.Request) -> web.StreamResponse | None:
        """Act out the latency and terminal faults that hit this request; None to answer normally."""
        call = request[CALL]
        latency = self.state.faults.take(call.operation, {"latency"}, call.model_run_id)
        if latency is not None:
            call.faults.append("latency")
            await self._sleep(latency.effective_delay_s)
        rule = self.state.faults.take(call.operation, TERMINAL_KINDS, call.model_run_id)
        if rule is None:
            return None
        call.faults.append(rule.kind)
        if rule.kind in ("hang", "reset"):
            await self._sleep(rule.effective_delay_s if rule.kind == "hang" else 0.0)
            raise DroppedConnection
        return _fault_response(request, rule)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake as soon as the sandbox stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)


async def _read_roots(request: web.Request, state: SandboxState) -> list[RootField] | GraphQLError:
    """The request's root fields (noting what it is about on `request`), or why it cannot be read."""
    call = request[CALL]
    try:
        body = await read_graphql_request(request)
    except GraphQLError as e:
        return e
    try:
        roots = parse_request(body.query, body.variables, body.operation_name)
    except GraphQLError as e:
        call.operation = operation_of(next(iter(root_field_names(body.query)), ""))
        return e
    call.operation = operation_of(roots[0])
    call.model_run_id, call.import_name = model_run_and_import_name(roots[0], state)
    return roots


def _fault_response(request: web.Request, rule: FaultRule) -> web.StreamResponse:
    if rule.kind == "rate_limit":
        return _too_many_requests(rule.retry_after_s)
    status = rule.effective_status
    if rule.kind == "graphql_error":
        error = GraphQLError(rule.message, rule.code, status, rule.exception_status)
        return _graphql_error(request, error)
    if rule.kind == "empty_body":
        return web.json_response({}, status=200)
    if rule.kind == "expired_url":
        return web.Response(status=status, body=_expired_url_body(), content_type="application/xml")
    return web.Response(status=status, text=f"{status} {_reason(status)}")


def _too_many_requests(retry_after_s: float) -> web.StreamResponse:
    message = f"You have exceeded the API rate limit. Retry after {_seconds(retry_after_s)} seconds."
    headers = {"Retry-After": _seconds(retry_after_s)}
    return web.json_response({"message": message}, status=429, headers=headers)


def _expired_url_body() -> bytes:
    """What S3 answers for a presigned URL past its expiry (Labelbox's status files are such URLs)."""
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Request has expired</Message><X-Amz-Expires>86400</X-Amz-Expires>"
        b"<Expires>2024-01-02T00:00:00Z</Expires><ServerTime>2024-01-03T00:00:00Z</ServerTime>"
        b"<RequestId>SANDBOX0EXPIRED0</RequestId><HostId>sandbox</HostId></Error>"
    )


def _graphql_error(request: web.Request, e: GraphQLError) -> web.StreamResponse:
    request[CALL].error_code = e.code
    body = error_body(e.message, e.code, e.exception_status)
    return web.json_response(body, status=e.http_status)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _ndjson(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _reset_connection(request: web.Request) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), so that the client sees a reset, not a close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
