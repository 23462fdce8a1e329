"""Nothing dead on the dashboard: during one end-to-end stream with the usual trouble (a 429, a 5xx, a
row Labelbox fails, an invalid message, a forbidden model run, a poison message, a small buffer), every
``lbworker_*`` series the Grafana dashboard, the alerts and the autoscalers use has a non-zero sample."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest

from labelbox_sandbox import FaultRule, Sandbox
from tests.support.factories import bbox, message, radio
from tests.support.kafka_helpers import produce
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.convert import convert
from worker.decode import decode

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def referenced() -> set[str]:
    """Every lbworker_* series name in the dashboard, the alerts and the autoscalers."""
    files = [DEPLOY / "grafana" / "dashboard.json", DEPLOY / "prometheus" / "alerts.yaml"]
    files += sorted((DEPLOY / "k8s" / "components").glob("*/*.yaml"))
    return {name for path in files for name in re.findall(r"lbworker_[a-z_]+", path.read_text())}


async def test_every_metric_the_dashboard_and_alerts_use_moves(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    records = []
    for i in range(30):
        run = ("run-a", "run-b", "run-x")[i % 3]
        value = message(
            bbox(bbox={"top": i, "left": 1, "height": 2, "width": 3}),
            radio(),
            model_run_id=run,
            data_row={"global_key": f"mc-{i}.jpg"},
        )
        records.append((run.encode(), orjson.dumps(value), i % 2))
    records.append((b"run-a", b"not json", 0))
    doomed = convert(decode(records[3][1]))[0].uuid  # type: ignore[arg-type]
    for rule in (
        FaultRule(kind="rate_limit", operation="create_import", retry_after_s=0.2, count=1),
        FaultRule(kind="http_status", status=500, operation="poll_import", count=1),
        FaultRule(kind="row_failure", uuids=(doomed,), count=None),
        FaultRule(kind="forbidden", model_run_id="run-x"),
        FaultRule(kind="import_refused", data_rows=("mc-7.jpg",), count=None),
    ):
        sandbox.state.add_fault(rule)
    await make_topics(bootstrap, topic, 2)
    await produce(bootstrap, topic, records)
    ends = {p: sum(1 for r in records if r[2] == p) for p in range(2)}
    settings = settings_for(
        # A buffer of about ten messages, so that fetching pauses for longer than a moment: at 48 KiB a
        # loaded CI machine once sampled no pause (the gauge is read every few hundred ms there).
        bootstrap,
        topic,
        sandbox,
        buffer_max_bytes=16 * 1024,
        kafka_max_poll_records=3,
        batch_max_rows=8,
    )
    seen: dict[str, float] = {}
    async with running(settings) as (service, _):
        registry = service.metrics.registry
        deadline = time.monotonic() + 60
        samples = 0
        while time.monotonic() < deadline:  # sample every series while the stream runs
            for family in registry.collect():
                for sample in family.samples:
                    seen[sample.name] = max(seen.get(sample.name, 0.0), abs(sample.value))
            samples += 1
            if samples % 10 == 0:  # reading the committed offsets takes far longer than a sample
                done = await wait_committed(bootstrap, settings, ends, timeout_s=0.01)
                if all((done.get(p) or 0) >= end for p, end in ends.items()):
                    break
            await asyncio.sleep(0.02)
    assert await wait_committed(bootstrap, settings, ends, timeout_s=5) == ends
    flat = sorted(name for name in referenced() if not seen.get(name))
    assert flat == [], f"series the dashboard or alerts use that never moved: {flat}"
