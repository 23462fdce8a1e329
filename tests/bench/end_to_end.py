"""End-to-end benchmark: local broker -> worker (a subprocess) -> sandbox (a subprocess), committed.

Takes any ``Corpus`` (``run_end_to_end``); the sandbox is started by the caller, in lean mode for
``make bench`` (``--lean``: lines stored without validation), so that it is not the bottleneck of either
client. The worker's settings are those of ``bench_worker_env``, printed by ``settings_used``.

Against the same broker and sandbox, with the same poll interval and consumer session timeout:
- the worker: spawn ``python -m worker run``; time until the group's committed offsets reach the end
  of every partition; then SIGTERM. The sandbox must then hold every prediction, once.
- the baseline: the SDK consumer of ``sdk_consumer`` on a subset (its own topic), rates compared.
- the limit: a bare aiokafka read of the worker's topic + ``orjson`` loads / dumps of each value.

Tansu holds a new group's first JoinGroup for about half the session timeout, so both group consumers
are also timed from the moment they were assigned their partitions ("after join").
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from devtools.embedded import free_port
from tests.bench.broker import CommitWatcher, bare_read_s, make_topic, produce
from tests.bench.corpus import Corpus
from tests.bench.sdk_consumer import Timed, sdk_client, time_sdk_consumer
from tests.bench.services import API_KEY, SandboxProcess, WorkerProcess, cpu_seconds, worker_env
from worker.settings import Settings

POLL_INTERVAL_S = 0.1
#: A full batch goes at once; a partial one waits this long. 0.5 s capped the worker near 2,000 msg/s here
#: (a batch per partition every 0.5 s at most), 0.05 s does not.
LINGER_S = 0.05
#: aiokafka's default, given to both group consumers (it sets how long Tansu holds the first join).
SESSION_TIMEOUT_MS = 10_000
WORKER_TIMEOUT_S = 120.0
LIMIT_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class WorkerRun:
    """One timed worker run, its outcome at the sandbox, and the CPU seconds each side used after join."""

    timed: Timed
    stored: int
    exit_code: int | None
    imports: float
    dead_letters: float
    worker_cpu_s: float
    sandbox_cpu_s: float
    #: Of ``worker_cpu_s``: the main thread's (the event loop: fetch, batching, uploads, settling,
    #: commits); the rest is the converter thread's (decode, validate, convert, ontology check).
    loop_cpu_s: float = 0.0


@dataclass(frozen=True, slots=True)
class BaselineRun:
    """The SDK consumer's run (CPU after join: this process), and the sandbox's side of it."""

    timed: Timed
    stored: int
    sandbox_cpu_s: float


@dataclass(frozen=True, slots=True)
class EndToEndResult:
    corpus: Corpus
    subset: Corpus
    worker: WorkerRun
    baseline: BaselineRun
    limit_s: float


@dataclass(frozen=True, slots=True)
class Setup:
    """What every phase shares: the broker, the sandbox, where logs go."""

    bootstrap: str
    sandbox: SandboxProcess
    log_dir: Path


async def run_end_to_end(setup: Setup, corpus: Corpus, subset: Corpus, worker_runs: int) -> EndToEndResult:
    """Produce, then time the worker (best of ``worker_runs``), the SDK baseline and the limit."""
    topic, sdk_topic = f"bench-e2e-{uuid.uuid4().hex[:6]}", f"bench-sdk-{uuid.uuid4().hex[:6]}"
    for name in (topic, sdk_topic):
        await make_topic(setup.bootstrap, name)
    setup.sandbox.register(corpus.dicts)  # the subset's rows are the corpus's first ones
    ends = await produce(setup.bootstrap, topic, corpus)
    await produce(setup.bootstrap, sdk_topic, subset)
    runs = [await time_worker(setup, topic, ends, attempt) for attempt in range(worker_runs)]
    baseline = await time_baseline(setup, sdk_topic, len(subset.values))
    limits = [await bare_read_s(setup.bootstrap, topic, len(corpus.values)) for _ in range(LIMIT_ROUNDS)]
    return EndToEndResult(
        corpus=corpus,
        subset=subset,
        worker=min(runs, key=lambda run: run.timed.total_s - run.timed.joined_s),
        baseline=baseline,
        limit_s=min(limits),
    )


#: Settings shown next to the table besides those ``bench_worker_env`` sets (left at their default).
_SHOWN_DEFAULTS = ("batch_max_rows", "upload_concurrency", "adaptive_concurrency", "kafka_max_poll_records")


def settings_used() -> str:
    """The worker settings that shape throughput in the benchmark, as ``NAME=value`` (defaults marked)."""
    fields = Settings.model_fields
    chosen = {
        "labelbox_poll_interval_s": POLL_INTERVAL_S,
        "batch_linger_s": LINGER_S,
        "kafka_session_timeout_ms": SESSION_TIMEOUT_MS,
        "log_level": "WARNING",
    }
    shown = [f"{name.upper()}={value}" for name, value in chosen.items()]
    shown += [f"{name.upper()}={fields[name].default} (default)" for name in _SHOWN_DEFAULTS]
    return ", ".join(shown)


def bench_worker_env(setup: Setup, topic: str, group: str, **overrides: object) -> dict[str, str]:
    """The worker's settings for a benchmark run (a fresh group, the sandbox, a free ops port)."""
    settings: dict[str, object] = {
        "kafka_bootstrap_servers": setup.bootstrap,
        "kafka_topic": topic,
        "kafka_group_id": group,
        "kafka_dlq_topic": f"{topic}.dlq",
        "kafka_session_timeout_ms": SESSION_TIMEOUT_MS,
        "labelbox_api_key": API_KEY,
        "labelbox_graphql_url": setup.sandbox.graphql_url,
        "labelbox_poll_interval_s": POLL_INTERVAL_S,
        "batch_linger_s": LINGER_S,
        "metrics_port": free_port(),
        "log_level": "WARNING",
    }
    return worker_env(**(settings | overrides))


async def time_worker(setup: Setup, topic: str, ends: dict[int, int], attempt: int) -> WorkerRun:
    """Spawn the worker on a fresh group and time it until every partition is committed to its end."""
    setup.sandbox.reset()
    group = f"bench-worker-{uuid.uuid4().hex[:8]}"
    env, log = bench_worker_env(setup, topic, group), setup.log_dir / f"e2e-{attempt}.log"
    sandbox_cpu = cpu_seconds(setup.sandbox.process.pid)  # the sandbox idles until the worker joins
    async with CommitWatcher(setup.bootstrap, group) as watcher:
        with WorkerProcess(env, log) as worker:
            started = time.perf_counter()
            joined = await _until_committed(worker, watcher, topic, ends, started)
            timed = Timed(time.perf_counter() - started, joined.at_s)
            metrics, worker_cpu = worker.metrics(), cpu_seconds(worker.process.pid)
            loop_cpu = main_thread_cpu_seconds(worker.process.pid)
            exit_code = worker.stop()
    return WorkerRun(
        timed=timed,
        stored=setup.sandbox.stored_rows(),
        exit_code=exit_code,
        imports=metrics.get("lbworker_imports_total", 0.0),
        dead_letters=metrics.get("lbworker_dlq_records_total", 0.0),
        worker_cpu_s=worker_cpu - joined.worker_cpu_s,
        sandbox_cpu_s=cpu_seconds(setup.sandbox.process.pid) - sandbox_cpu,
        loop_cpu_s=loop_cpu - joined.loop_cpu_s,
    )


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process's main thread (its task of the same id), in seconds."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class _Joined:
    """When the worker was first seen ready (joined), and the CPU seconds it (and its main thread) had
    used by then."""

    at_s: float
    worker_cpu_s: float
    loop_cpu_s: float


async def _until_committed(
    worker: WorkerProcess, watcher: CommitWatcher, topic: str, ends: dict[int, int], started: float
) -> _Joined:
    """Wait until everything is committed, noting when the worker was first seen ready."""
    joined: _Joined | None = None
    while not await watcher.done(topic, ends):
        worker.check_alive()
        if joined is None and worker.ready():
            pid = worker.process.pid
            joined = _Joined(time.perf_counter() - started, cpu_seconds(pid), main_thread_cpu_seconds(pid))
        if time.perf_counter() - started > WORKER_TIMEOUT_S:
            raise TimeoutError(f"the worker did not commit everything in {WORKER_TIMEOUT_S} s")
        await asyncio.sleep(0.05)
    if joined is None:
        raise RuntimeError("the worker committed everything before it was seen ready")
    return joined


async def time_baseline(setup: Setup, topic: str, total: int) -> BaselineRun:
    """Time the SDK consumer on ``total`` records; also the rows the sandbox then stored."""
    setup.sandbox.reset()
    sandbox_cpu = cpu_seconds(setup.sandbox.process.pid)
    with sdk_client(API_KEY, setup.sandbox.graphql_url) as client:
        timed = await time_sdk_consumer(
            client, setup.bootstrap, topic, total, POLL_INTERVAL_S, SESSION_TIMEOUT_MS
        )
    sandbox_cpu = cpu_seconds(setup.sandbox.process.pid) - sandbox_cpu
    return BaselineRun(timed, setup.sandbox.stored_rows(), sandbox_cpu)
