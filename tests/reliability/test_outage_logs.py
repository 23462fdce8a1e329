"""A broker outage as an operator meets it in the log of a real ``python -m worker run`` process.

The broker is cut off for 20 s by the TCP proxy mid-stream (imports in flight, rows to dead-letter,
commits due): the worker writes a dozen lines, not thousands, among them ``broker_unreachable`` once
and ``broker_reachable`` with the outage's duration; every line is the project's JSON. Then the broker
is cut again and the worker is stopped: it exits within ``SHUTDOWN_TIMEOUT_S`` and says in one line how
many settled offsets it could not commit. Prints one greppable line (``pytest -s``)::

    OUTAGE-LOGS lines_in_outage=… outage_s=… stop_without_broker_s=… settled_offsets_not_committed=…
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from labelbox_sandbox import FaultRule, Sandbox
from tests.conftest import API_KEY
from tests.reliability.test_faults import (
    INVALID,
    RUNS,
    broker_behind_proxy,
    stream,
    uuids_stored,
    valid_value,
)
from tests.support.kafka_helpers import produce
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import until
from tests.support.worker_harness import make_topics, settings_for
from tests.support.workers import worker_process

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:unread_data.. is deprecated:DeprecationWarning"),
]

OUTAGE_S = 20.0
MAX_LINES_IN_OUTAGE = 12
SHUTDOWN_TIMEOUT_S = 5.0
#: Signal delivery and interpreter teardown around the worker's own shutdown.
EXIT_MARGIN_S = 0.5


def stored(sandbox: Sandbox) -> frozenset[str]:
    return frozenset().union(*(uuids_stored(sandbox, run) for run in RUNS))


class LiveProducer:
    """A steady stream, as from an inference service: ``per_second`` messages (every 10th invalid) to
    one model run while the proxy listens; it waits while the link is cut, as a producer would."""

    def __init__(self, bootstrap: str, topic: str, proxy: TcpProxy, per_second: float = 10) -> None:
        self._args = (bootstrap, topic, proxy, per_second)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    async def __aenter__(self) -> LiveProducer:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout=30)

    async def _loop(self) -> None:
        bootstrap, topic, proxy, per_second = self._args
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            for i in range(100_000):  # bounded; asked to stop at the end of the scenario
                if proxy.listening:
                    value = INVALID[i % len(INVALID)][0] if i % 10 == 9 else valid_value(RUNS[0], i, "live")
                    with contextlib.suppress(KafkaError, TimeoutError):
                        await asyncio.wait_for(producer.send_and_wait(topic, value, key=RUNS[0].encode()), 5)
                        self.sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1 / per_second)
                if self._stop.is_set():
                    return
        finally:
            await producer.stop()


async def test_a_broker_outage_costs_a_dozen_log_lines_and_a_stop_without_broker_says_what_is_uncommitted(
    topic: str, tmp_path: Path
) -> None:
    partitions = 2
    async with (
        broker_behind_proxy() as (bootstrap, proxy),
        Sandbox(api_key=API_KEY, processing_delay_s=0.05) as sandbox,
    ):
        # Imports in flight at the cut and rows to dead-letter: the repeating warnings are due.
        sandbox.state.add_fault(FaultRule(kind="latency", operation="create_import", delay_s=0.3, count=None))
        sandbox.state.add_fault(FaultRule(kind="row_failure", fraction=0.05, count=None))
        await make_topics(bootstrap, topic, partitions)
        settings = settings_for(
            bootstrap, topic, sandbox, batch_linger_s=1.0, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S
        )
        async with worker_process(settings, tmp_path) as worker:
            async with LiveProducer(bootstrap, topic, proxy) as live:
                assert await until(lambda: len(sandbox.state.imports) >= 3, timeout_s=30), "streaming"

                # 1. a 20 s outage mid-stream
                cut_at = time.time()
                await proxy.cut()
                await asyncio.sleep(OUTAGE_S)
                await proxy.restore()
                restored_at = time.time()
                assert await until(lambda: bool(worker.events("broker_reachable")), timeout_s=20, every_s=0.2)
            back_at = worker.events("broker_reachable")[0]["ts"]
            in_outage = [e for e in worker.entries() if cut_at <= e.get("ts", cut_at) <= back_at]

            # 2. the broker gone again, with settled work to commit, when the worker is stopped
            sandbox.state.clear_faults()
            rest = stream(40, partitions, RUNS)  # new uuids: the live stream's tag differs
            imports_before = len(sandbox.state.imports)
            await produce(bootstrap, topic, [(s.key, s.value or b"", s.partition) for s in rest])
            assert await until(lambda: len(sandbox.state.imports) > imports_before, timeout_s=30)
            await proxy.cut()
            rest_uuids = frozenset().union(*(s.uuids for s in rest))
            assert await until(lambda: rest_uuids <= stored(sandbox), timeout_s=30), "imported while cut off"
            await asyncio.sleep(1.0)  # the worker reads the status files and settles
            stop_at = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(worker.process.wait(), SHUTDOWN_TIMEOUT_S + 20)
            stop_s = time.monotonic() - stop_at

        entries = worker.entries()
        uncommitted = worker.events("offsets_not_committed")
        reachable = worker.events("broker_reachable")[0]
        print(
            f"\nOUTAGE-LOGS lines_in_outage={len(in_outage)} outage_s={reachable.get('outage_s')} "
            f"reachable_after_restore_s={back_at - restored_at:.1f} stop_without_broker_s={stop_s:.1f} "
            f"settled_offsets_not_committed={uncommitted[0].get('settled_offsets') if uncommitted else None} "
            f"lines_total={len(entries)} live_sent={live.sent}"
        )
        for entry in in_outage:
            print("  ", orjson.dumps(entry).decode()[:200])
        assert not [e for e in entries if "raw" in e], "every line is the project's JSON"
        assert len(in_outage) <= MAX_LINES_IN_OUTAGE
        assert [e["event"] for e in in_outage].count("broker_unreachable") == 1
        assert [e["event"] for e in in_outage].count("broker_reachable") == 1
        assert OUTAGE_S - 6 <= reachable["outage_s"] <= OUTAGE_S + 6
        assert status == 0
        assert stop_s <= SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S
        assert len(uncommitted) == 1
        assert uncommitted[0]["settled_offsets"] > 0
