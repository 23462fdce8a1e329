"""Backpressure, graceful shutdown, and the ops endpoints of a running worker (real broker and sandbox)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from labelbox_sandbox import FaultRule, Sandbox
from tests.support.factories import every_type, message
from tests.support.kafka_helpers import committed, produce
from tests.support.waiting import until
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.convert import convert
from worker.decode import decode

pytestmark = pytest.mark.integration


def _records(count: int, partitions: int, run: str = "run-x") -> list[tuple[bytes | None, bytes, int | None]]:
    return [
        (
            run.encode(),
            orjson.dumps(message(*every_type(), model_run_id=run, data_row={"id": f"dr-{i}"})),
            i % partitions,
        )
        for i in range(count)
    ]


async def test_backpressure_pauses_fetching_while_labelbox_is_slow(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 2)
    records = _records(300, 2)
    await produce(bootstrap, topic, records)
    sandbox.state.add_fault(
        FaultRule(kind="latency", operation="create_import", delay_s=1.5, count=None, duration_s=4)
    )
    settings = settings_for(
        bootstrap,
        topic,
        sandbox,
        buffer_max_bytes=64 * 1024,
        batch_max_rows=100,
        labelbox_request_timeout_s=10,
    )
    async with running(settings) as (service, _):
        metrics = service.metrics
        paused = await until(lambda: metrics.registry.get_sample_value("lbworker_paused_partitions") > 0, 15)
        assert paused, "fetching paused once the buffer was full"
        peak = 0.0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            peak = max(peak, metrics.registry.get_sample_value("lbworker_buffered_bytes"))
            await asyncio.sleep(0.02)
        # Bounded: a fetch takes only what the buffer has room for (at the average converted size),
        # so the overshoot is a few messages (each about 6 KiB converted here), not a whole fetch.
        assert peak <= 2 * settings.buffer_max_bytes
        assert await wait_committed(bootstrap, settings, {0: 150, 1: 150}) == {0: 150, 1: 150}
        assert metrics.registry.get_sample_value("lbworker_paused_partitions") == 0, "resumed"
    stored = {p["uuid"] for p in sandbox.state.predictions("run-x")}
    assert len(stored) == 300 * len(every_type())


async def test_graceful_stop_commits_only_settled_work_and_a_restart_delivers_the_rest(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 2)
    records = _records(400, 2)
    await produce(bootstrap, topic, records)
    sandbox.state.add_fault(FaultRule(kind="slow_import", delay_s=0.5, count=None))
    settings = settings_for(bootstrap, topic, sandbox, batch_max_rows=150, shutdown_timeout_s=2.0)
    async with running(settings) as (service, task):
        assert await until(lambda: bool(sandbox.state.predictions("run-x")), 20)
        started = time.monotonic()
        service.request_stop()
        status = await task
        assert status == 0
        assert time.monotonic() - started < settings.shutdown_timeout_s + 3
    seen = await committed(bootstrap, settings.kafka_group_id, topic, 2)
    stored = {p["uuid"] for p in sandbox.state.predictions("run-x")}
    for _, value, partition in records:
        offset = records.index((_, value, partition)) // 2  # offsets per partition follow production order
        if offset < (seen[partition] or 0):
            lines = convert(decode(value))  # type: ignore[arg-type]
            assert {line.uuid for line in lines} <= stored, "a committed message was imported"
    sandbox.state.clear_faults()
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: 200, 1: 200}) == {0: 200, 1: 200}
    assert len({p["uuid"] for p in sandbox.state.predictions("run-x")}) == 400 * len(every_type())


async def test_ops_endpoints_report_health_and_metrics(bootstrap: str, topic: str, sandbox: Sandbox) -> None:
    await make_topics(bootstrap, topic, 1)
    await produce(bootstrap, topic, [*_records(5, 1), (b"run-x", b"{broken", 0)])
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings) as (service, _), aiohttp.ClientSession() as http:
        assert await wait_committed(bootstrap, settings, {0: 6}) == {0: 6}
        assert service.ops is not None
        base = f"http://127.0.0.1:{service.ops.port}"
        async with http.get(f"{base}/healthz") as live:
            assert live.status == 200
        async with http.get(f"{base}/readyz") as ready:
            assert ready.status == 200
            assert (await ready.json())["joined"] is True
        async with http.get(f"{base}/metrics") as scraped:
            text = await scraped.text()
    assert 'lbworker_messages_rejected_total{reason="invalid_json"} 1.0' in text
    assert 'lbworker_dlq_records_total{reason="invalid_json"} 1.0' in text
    assert f'lbworker_messages_consumed_total{{topic="{topic}"}} 6.0' in text
    assert 'lbworker_predictions_converted_total{type="bbox"} 5.0' in text
    assert 'lbworker_imports_total{outcome="success"}' in text
    assert f'lbworker_consumer_lag{{partition="0",topic="{topic}"}} 0.0' in text, "lag 0 at the end"
    assert "lbworker_rows_imported_total 70.0" in text  # 5 messages x 14 predictions
    assert "test-key" not in text


async def test_readyz_flips_while_labelbox_is_unreachable(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 1)
    settings = settings_for(bootstrap, topic, sandbox, labelbox_unready_after_s=0.5, labelbox_retry_max_s=30)
    async with running(settings) as (service, _), aiohttp.ClientSession() as http:
        assert await until(lambda: service.ops is not None and service.pipeline is not None, 10)
        assert service.ops is not None
        ready_url = f"http://127.0.0.1:{service.ops.port}/readyz"

        async def status() -> int:
            async with http.get(ready_url) as answer:
                return answer.status

        assert await _poll_status(status, 200, 15), "ready once joined"
        sandbox.state.add_fault(
            FaultRule(kind="http_status", status=503, operation="create_import", count=None)
        )
        await produce(bootstrap, topic, _records(2, 1))
        assert await _poll_status(status, 503, 20), "not ready while Labelbox keeps failing"
        body = await (await http.get(ready_url)).json()
        assert body["labelbox_ok"] is False
        sandbox.state.clear_faults()
        assert await _poll_status(status, 200, 30), "ready again once Labelbox answers"
        assert await wait_committed(bootstrap, settings, {0: 2}) == {0: 2}


async def _poll_status(status: object, wanted: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await status() == wanted:  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False
