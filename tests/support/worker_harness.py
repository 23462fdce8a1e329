"""Run the real worker in-process against the broker and the sandbox, and wait for it to settle."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from devtools.embedded import create_topics
from labelbox_sandbox import Sandbox
from tests.conftest import API_KEY
from tests.support.kafka_helpers import committed
from worker.metrics import Metrics
from worker.service import Service
from worker.settings import Settings


def settings_for(bootstrap: str, topic: str, sandbox: Sandbox, **overrides: Any) -> Settings:
    """The worker's settings for a test. It registers each batch's data rows in the model run before
    importing (`ensure_data_rows`), as the sandbox, like Labelbox, FAILs rows on data rows not in it."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topic": topic,
        "kafka_dlq_topic": f"{topic}.dlq",
        "kafka_group_id": f"group-{topic}",
        "labelbox_api_key": API_KEY,
        "labelbox_graphql_url": sandbox.graphql_url,
        "labelbox_poll_interval_s": 0.05,
        "ensure_data_rows": True,
        "labelbox_retry_max_s": 5.0,
        "batch_linger_s": 0.2,
        "metrics_port": 0,
        "shutdown_timeout_s": 10.0,
        "kafka_session_timeout_ms": 6_000,  # the embedded broker holds a join for half of it
    }
    values.update(overrides)
    return Settings.model_validate(values)


async def make_topics(bootstrap: str, topic: str, partitions: int) -> None:
    await create_topics(bootstrap, {topic: partitions, f"{topic}.dlq": 1})


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Service, asyncio.Task[int]]]:
    """The worker running in this event loop; stopped (gracefully) on exit."""
    service = Service(settings, Metrics(), metrics_host="127.0.0.1")
    task = asyncio.create_task(service.run())
    try:
        yield service, task
    finally:
        service.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=settings.shutdown_timeout_s + 15)


async def wait_committed(
    bootstrap: str, settings: Settings, ends: dict[int, int], timeout_s: float = 60.0
) -> dict[int, int | None]:
    """Poll the group's committed offsets until they reach ``ends`` (partition -> end offset)."""
    deadline = time.monotonic() + timeout_s
    seen: dict[int, int | None] = {}
    while time.monotonic() < deadline:
        seen = await committed(bootstrap, settings.kafka_group_id, settings.kafka_topic, len(ends))
        if all((seen.get(p) or 0) >= end for p, end in ends.items()):
            return seen
        await asyncio.sleep(0.2)
    return seen
