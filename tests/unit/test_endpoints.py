"""``worker.endpoints.OpsServer``: ``/metrics``, ``/healthz`` and ``/readyz`` over 127.0.0.1 (port 0),
with a fake health callable and a fresh Prometheus registry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from worker.endpoints import OpsServer


class Health:
    def __init__(self) -> None:
        self.state = {"live": True, "ready": False, "labelbox_ok": True}
        self.calls = 0

    def __call__(self) -> dict[str, bool]:
        self.calls += 1
        return dict(self.state)


@pytest.fixture
async def served() -> AsyncIterator[tuple[OpsServer, Health, CollectorRegistry]]:
    registry = CollectorRegistry()
    health = Health()
    server = OpsServer(registry, health, host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server, health, registry
    finally:
        await server.stop()


async def get(server: OpsServer, path: str) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.read()


async def test_port_0_picks_a_free_port(served: tuple[OpsServer, Health, CollectorRegistry]) -> None:
    server, _, _ = served
    assert server.port > 0


async def test_probes_answer_the_health_state_with_200_or_503(
    served: tuple[OpsServer, Health, CollectorRegistry],
) -> None:
    server, health, _ = served
    status, content_type, body = await get(server, "/healthz")
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert body == b'{"live": true, "ready": false, "labelbox_ok": true}'
    assert (await get(server, "/readyz"))[0] == 503
    health.state["ready"] = True
    assert (await get(server, "/readyz"))[0] == 200, "asked afresh at each request"
    health.state["live"] = False
    assert (await get(server, "/healthz"))[0] == 503
    assert health.calls == 4


async def test_metrics_are_the_registrys_in_the_prometheus_text_format(
    served: tuple[OpsServer, Health, CollectorRegistry],
) -> None:
    server, _, registry = served
    counter = Counter("unit_things", "things counted", registry=registry)
    counter.inc(3)
    status, content_type, body = await get(server, "/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST
    assert b"\nunit_things_total 3.0\n" in body


async def test_start_and_stop_are_idempotent() -> None:
    server = OpsServer(CollectorRegistry(), lambda: {"live": True}, host="127.0.0.1", port=0)
    await server.start()
    port = server.port
    await server.start()
    assert server.port == port
    assert (await get(server, "/healthz"))[0] == 200
    await server.stop()
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(server, "/healthz")


async def test_an_unknown_path_is_404(served: tuple[OpsServer, Health, CollectorRegistry]) -> None:
    server, _, _ = served
    assert (await get(server, "/ready"))[0] == 404
