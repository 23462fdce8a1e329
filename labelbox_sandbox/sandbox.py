"""`Sandbox`: the local Labelbox-compatible server, with an explicit lifecycle.

async with Sandbox(api_key="key", processing_delay_s=0.05) as sandbox:
    client_endpoint = sandbox.graphql_url   # http://127.0.0.1:<port>/graphql
    sandbox.state.add_fault(FaultRule(kind="rate_limit", operation="create_import", retry_after_s=0.5))
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

import aiohttp
from aiohttp import web

from labelbox_sandbox.admin import AdminApi
from labelbox_sandbox.app import SandboxApp
from labelbox_sandbox.state import SandboxState

SHUTDOWN_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 512 * 1024 * 1024


class Sandbox:
    """The sandbox server. `start()` binds and serves; `stop()` ends hanging requests and closes; both are
    idempotent, and `async with` does both. Create and use it inside a running event loop.

    `api_key`: the only key `POST /graphql` accepts. `port=0` picks a free port (read `base_url`).
    `processing_delay_s`: how long imports and tasks report RUNNING. `model_run_ids`: if given, the only
    model runs that exist (else any id is accepted). `require_data_row_membership` (default True, as on
    Labelbox): FAIL rows on data rows that were not registered in the model run; False lets them succeed.
    `task_delay_s`: how long registration tasks report RUNNING (default `processing_delay_s`). `state`:
    bring your own (e.g. with a fake clock). `rate_limit_per_s`: GraphQL requests a second per API key
    (a token bucket of `rate_limit_burst`, default the rate) beyond which it answers HTTP 429 with
    `Retry-After`, as Labelbox does under load; None (default): no limit. `lean`: store uploaded lines
    without validating them (no line rules, no ontology; see `SandboxState`), so that a benchmark measures
    its client, not this server; never use it to check what a client sends.
    """

    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        processing_delay_s: float = 0.2,
        model_run_ids: Iterable[str] | None = None,
        require_data_row_membership: bool = True,
        task_delay_s: float | None = None,
        state: SandboxState | None = None,
        rate_limit_per_s: float | None = None,
        rate_limit_burst: float | None = None,
        lean: bool = False,
    ) -> None:
        if not api_key:
            raise ValueError("the sandbox needs a non-empty api_key")
        self.state = state or SandboxState(
            processing_delay_s=processing_delay_s,
            model_run_ids=model_run_ids,
            require_data_row_membership=require_data_row_membership,
            task_delay_s=task_delay_s,
            rate_limit_per_s=rate_limit_per_s,
            rate_limit_burst=rate_limit_burst,
            lean=lean,
        )
        self._api_key = api_key
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._closing: asyncio.Event | None = None
        self._bound_port: int | None = None

    @property
    def base_url(self) -> str:
        """`http://<host>:<port>`; raises RuntimeError before `start()`."""
        if self._bound_port is None:
            raise RuntimeError("the sandbox is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound_port}"

    @property
    def graphql_url(self) -> str:
        """The endpoint to give a Labelbox client (`labelbox.Client(endpoint=...)`)."""
        return f"{self.base_url}/graphql"

    async def start(self) -> None:
        """Bind and serve. No-op if already started."""
        if self._runner is not None:
            return
        self._closing = asyncio.Event()
        self._http = aiohttp.ClientSession()
        sandbox_app = SandboxApp(self.state, self._api_key, self._closing, self._http)
        app = web.Application(middlewares=[sandbox_app.log_requests], client_max_size=MAX_REQUEST_BYTES)
        app.add_routes([*sandbox_app.routes(), *AdminApi(self.state).routes()])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._bound_port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Wake hanging requests, stop serving, close. No-op if not started."""
        runner, http, closing = self._runner, self._http, self._closing
        self._runner = self._http = self._closing = None
        self._bound_port = None
        if closing is not None:
            closing.set()
        if runner is not None:
            await runner.cleanup()
        if http is not None:
            await http.close()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
