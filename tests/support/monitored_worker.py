"""The worker as ``python -m worker run`` runs it (same Service, same signals), plus a monitor that writes
its memory, backpressure figures and group generation every 100 ms to ``$RELIABILITY_MONITOR``.

Run as ``python -m tests.support.monitored_worker`` (``tests/reliability/test_faults.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any, BinaryIO

import orjson

from worker.logs import configure
from worker.service import Service
from worker.settings import Settings


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def figures(service: Service) -> dict[str, Any]:
    pipeline, registry = service.pipeline, service.metrics.registry
    consumer = getattr(pipeline, "_consumer", None)
    coordinator = getattr(consumer, "_coordinator", None)  # aiokafka's: the group generation
    topic = {"topic": service.settings.kafka_topic}
    consumed = registry.get_sample_value("lbworker_messages_consumed_total", topic)
    return {
        "t": time.monotonic(),
        "rss_kib": status_kib("VmRSS"),
        "hwm_kib": status_kib("VmHWM"),
        "buffered": registry.get_sample_value("lbworker_buffered_bytes"),
        "paused": registry.get_sample_value("lbworker_paused_partitions"),
        "consumed": consumed or 0,
        "joined": bool(pipeline is not None and pipeline.health()["joined"]),
        "generation": getattr(coordinator, "generation", None),
        "member": getattr(coordinator, "member_id", None),
    }


async def monitor(service: Service, out: BinaryIO) -> None:
    with out:
        for _ in range(100_000):
            out.write(orjson.dumps(figures(service)) + b"\n")
            await asyncio.sleep(0.1)


def monitor_file() -> BinaryIO:
    return open(os.environ["RELIABILITY_MONITOR"], "ab", buffering=0)


async def main() -> int:
    settings = Settings.from_env()
    configure(settings.log_level, settings.log_format)
    service = Service(settings, metrics_host="127.0.0.1")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    watcher = asyncio.create_task(monitor(service, monitor_file()))
    try:
        return await service.run()
    finally:
        watcher.cancel()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
