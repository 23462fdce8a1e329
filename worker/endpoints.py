"""HTTP endpoints for operators: ``/metrics`` (Prometheus), ``/healthz`` (live), ``/readyz`` (ready)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Health = Callable[[], dict[str, bool]]


class OpsServer:
    """Serves the endpoints on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""

    def __init__(
        self, registry: CollectorRegistry, health: Health, host: str = "0.0.0.0", port: int = 9400
    ) -> None:
        self._registry = registry
        self._health = health
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        """Bind and serve (idempotent)."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._probe("live"))
        app.router.add_get("/readyz", self._probe("ready"))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _probe(self, key: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_: web.Request) -> web.StreamResponse:
            state = self._health()
            return web.json_response(state, status=200 if state.get(key) else 503)

        return handler
