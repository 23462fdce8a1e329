"""Peak RSS while Labelbox is slow: is the worker's memory bounded by BUFFER_MAX_BYTES, whatever the backlog?

The sandbox delays every request by ``DELAY_S`` (a ``latency`` fault), so imports settle slowly and the
worker must stop fetching once its buffer is full. For each case (a backlog size and a buffer
setting: the idle worker, a small and a 3x larger backlog, the larger one again with twice the buffer)
a fresh worker runs on a fresh group; its VmRSS is sampled from ``/proc`` from spawn until
``window_s`` after it joined (long enough for the buffer to fill and turn over a few times), and
its buffer gauges are scraped alongside.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from tests.bench.broker import make_topic, produce
from tests.bench.corpus import Corpus, replicate
from tests.bench.end_to_end import Setup, bench_worker_env
from tests.bench.services import WorkerProcess

#: Every request waits this long: an import takes >= 2 requests, so settling is ~100x slower than
#: without the fault, yet the buffer turns over a few times within the window (RSS then plateaus).
DELAY_S = 2.0
#: The idle worker (no backlog) needs no long window.
IDLE_WINDOW_S = 5.0
SAMPLE_EVERY_S = 0.05
SCRAPE_EVERY = 10  # samples between two scrapes of /metrics
START_TIMEOUT_S = 60.0
#: Tansu holds a new group's first join for about half the session timeout: memory does not depend on
#: it, so these workers join in about 3 s instead of 5 s (``make bench`` stays under 6 minutes).
JOIN_SESSION_TIMEOUT_MS = 6000


@dataclass(frozen=True, slots=True)
class Sample:
    """What was seen of one worker: peak VmRSS, VmHWM at the end, and its buffer gauges."""

    peak_rss_kib: int
    hwm_kib: int
    consumed: float
    peak_buffered: float
    paused_partitions: float


@dataclass(frozen=True, slots=True)
class MemoryCase:
    """A backlog of ``backlog`` records and the worker's ``BUFFER_MAX_BYTES``."""

    backlog: int
    buffer_bytes: int


@dataclass(frozen=True, slots=True)
class MemoryRun:
    """One worker under a slow Labelbox: its case, the backlog's size in bytes, what was seen."""

    case: MemoryCase
    backlog_bytes: int
    sample: Sample


async def run_memory(setup: Setup, pool: Corpus, cases: list[MemoryCase], window_s: float) -> list[MemoryRun]:
    """One sampled worker per case, all against the slowed-down sandbox (a topic per backlog size)."""
    setup.sandbox.reset()
    fault = {"kind": "latency", "operation": "any", "delay_s": DELAY_S, "count": None}
    setup.sandbox.admin("POST", "faults", fault)
    topics: dict[int, tuple[str, int]] = {}
    try:
        runs = []
        for case in cases:
            if case.backlog not in topics:
                topics[case.backlog] = await _backlog_topic(setup, pool, case.backlog)
            topic, size = topics[case.backlog]
            runs.append(MemoryRun(case, size, await _sample_worker(setup, topic, case, window_s)))
        return runs
    finally:
        setup.sandbox.admin("DELETE", "faults")


async def _backlog_topic(setup: Setup, pool: Corpus, backlog: int) -> tuple[str, int]:
    """A fresh topic holding ``backlog`` records (each on its own data row); its name and byte size."""
    topic = f"bench-mem-{backlog}-{uuid.uuid4().hex[:6]}"
    await make_topic(setup.bootstrap, topic)
    records = replicate(pool, backlog, tag=topic)
    setup.sandbox.register(records.dicts)
    if backlog:
        await produce(setup.bootstrap, topic, records)
    return topic, records.size


async def _sample_worker(setup: Setup, topic: str, case: MemoryCase, window_s: float) -> Sample:
    group = f"bench-mem-{uuid.uuid4().hex[:8]}"
    env = bench_worker_env(
        setup,
        topic,
        group,
        buffer_max_bytes=case.buffer_bytes,
        shutdown_timeout_s=1,
        kafka_session_timeout_ms=JOIN_SESSION_TIMEOUT_MS,
    )
    with WorkerProcess(env, setup.log_dir / f"{topic}-{case.buffer_bytes}.log") as worker:
        return await _sample(worker, window_s if case.backlog else min(window_s, IDLE_WINDOW_S))


async def _sample(worker: WorkerProcess, window_s: float) -> Sample:
    """Sample RSS every ``SAMPLE_EVERY_S`` until ``window_s`` after the worker became ready."""
    started, ready_at = time.monotonic(), None
    peak_rss, peak_buffered, samples = 0, 0.0, 0
    metrics: dict[str, float] = {}
    while ready_at is None or time.monotonic() < ready_at + window_s:
        worker.check_alive()
        peak_rss = max(peak_rss, worker.memory_kib()[0])
        if samples % SCRAPE_EVERY == 0:
            metrics = worker.metrics() or metrics
            peak_buffered = max(peak_buffered, metrics.get("lbworker_buffered_bytes", 0.0))
            ready_at = ready_at or (time.monotonic() if worker.ready() else None)
        if ready_at is None and time.monotonic() - started > START_TIMEOUT_S:
            raise TimeoutError(f"the worker was not ready within {START_TIMEOUT_S} s")
        samples += 1
        await asyncio.sleep(SAMPLE_EVERY_S)
    return Sample(
        peak_rss_kib=peak_rss,
        hwm_kib=worker.memory_kib()[1],
        consumed=metrics.get("lbworker_messages_consumed_total", 0.0),
        peak_buffered=peak_buffered,
        paused_partitions=metrics.get("lbworker_paused_partitions", 0.0),
    )
