"""The only place that wires the stages: fetch -> decode/convert -> batch -> import -> settle -> commit.

A front over collaborators that own the state and return decisions; this module runs the loops and the
drain. Stages (each a task, each bounded):
1. fetch    ``getmany``; ``worker.intake`` tracks and counts each record and says when to pause (the
            buffer is full: heartbeats go on, so a slow Labelbox never causes a rebalance).
2. convert  decode + validate + convert + ontology check in a worker thread (``worker.envelope``);
            ``worker.admission`` decides: batch it, dead-letter it, or park it for its ontology.
3. batch    per model run, closed by rows / bytes / linger (``worker.batcher``).
4. import   ``worker.imports``: each message settles as imported (all rows SUCCESS) or dead-lettered.
5. commit   ``worker.committer``: per partition, the highest offset below which everything is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from worker.admission import Admit, Decision, OntologyGate, Park, Refuse
from worker.batcher import Batch, Batcher, BatchLimits
from worker.buffer import BufferBudget
from worker.committer import Committer
from worker.dlq import DeadLetterWriter
from worker.envelope import Envelope, process_chunk
from worker.imports import ImportRunner
from worker.intake import Intake
from worker.kafka_clients import (
    DECODE_ERRORS,
    CorruptBatches,
    UndecodableBatch,
    refetch_or_stop,
    watch_brokers,
)
from worker.labelbox import AttemptOutcome, AuthenticationError, Forbidden, LabelboxClient, RequestRejected
from worker.ledger import Ledger
from worker.logs import ctx
from worker.metrics import Metrics, PendingCounts
from worker.preparation import DataRowRegistry, OntologyCache
from worker.readiness import Readiness
from worker.rebalance import Rebalance
from worker.settings import Settings
from worker.settlement import Settler

log = logging.getLogger("worker.pipeline")
#: Exit statuses of ``python -m worker run``.
EXIT_OK, EXIT_INTERNAL, EXIT_SETTINGS, EXIT_AUTH, EXIT_UNDECODABLE = 0, 1, 2, 3, 4
#: Why a batch closed (the ``trigger`` label of ``lbworker_batches_closed_total``).
Trigger = Literal["full", "linger", "shutdown"]


class Pipeline:
    """The streaming worker. ``await run()`` until :meth:`request_stop` (or a fatal error)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        consumer: AIOKafkaConsumer,
        dead_letters: DeadLetterWriter,
        labelbox: LabelboxClient,
        ontologies: OntologyCache | None = None,
        data_rows: DataRowRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._consumer = consumer
        self._lb = labelbox
        self._ontologies = ontologies
        self._clock = clock
        self._batcher: Batcher[Envelope] = Batcher(
            BatchLimits(settings.batch_max_rows, settings.batch_max_bytes, settings.batch_linger_s)
        )
        self._ledger = Ledger()
        self._budget = BufferBudget(settings.buffer_max_bytes, settings.kafka_max_poll_records)
        self._intake = Intake(self._ledger, self._budget, metrics)
        self._committer = Committer(consumer, self._ledger, metrics)
        self._settler = Settler(
            self._ledger, self._budget, self._committer, dead_letters, metrics, fail=self.fail
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert")
        self._background: set[asyncio.Task[Any]] = set()
        self._stages: dict[str, asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[list[Envelope] | None] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._imports = ImportRunner(
            settings, metrics, labelbox, self._settler, data_rows=data_rows, clock=clock
        )
        self._gate = OntologyGate(ontologies, self._imports.refusal)
        self._readiness = Readiness(settings.labelbox_unready_after_s)
        self._corrupt = CorruptBatches()
        #: Lines admitted by prediction type: the metric moves per batch closed or linger tick.
        self._converted = PendingCounts(self._metrics.predictions_converted)
        self.fatal: BaseException | None = None
        #: When the drain must be over (same clock as ``clock``); set when shutdown begins.
        self.stop_deadline: float | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Consume until stopped; drain; return the exit status."""
        rebalance = Rebalance(
            self._consumer,
            committer=self._committer,
            ledger=self._ledger,
            batcher=self._batcher,
            settler=self._settler,
            intake=self._intake,
            readiness=self._readiness,
            metrics=self._metrics,
            checked=self.health,
        )
        self._consumer.subscribe([self._settings.kafka_topic], listener=rebalance)
        self._stages = {
            "fetch": asyncio.create_task(self._fetch_loop(), name="fetch"),
            "convert": asyncio.create_task(self._convert_loop(), name="convert"),
            "linger": asyncio.create_task(self._linger_loop(), name="linger"),
            "commit": asyncio.create_task(self._committer.run(), name="commit"),
            "broker_check": asyncio.create_task(
                watch_brokers(self._consumer, self._readiness, self._clock, self.health), name="broker_check"
            ),
        }
        log.info(
            "worker_started", extra=ctx(topic=self._settings.kafka_topic, group=self._settings.kafka_group_id)
        )
        crashed = await self._wait_for_stop()
        await self._drain()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if crashed is not None:
            return EXIT_UNDECODABLE if isinstance(crashed, UndecodableBatch) else EXIT_INTERNAL
        if self.fatal is None:
            return EXIT_OK
        return EXIT_AUTH if isinstance(self.fatal, AuthenticationError) else EXIT_INTERNAL

    def request_stop(self) -> None:
        """Begin a graceful shutdown (idempotent; safe from a signal handler)."""
        if not self._stopping.is_set():
            log.info("worker_stopping", extra=ctx(buffered_bytes=self._budget.buffered))
            self._stopping.set()

    async def _wait_for_stop(self) -> BaseException | None:
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait({stop, *self._stages.values()}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                if isinstance(error, UndecodableBatch):
                    log.error("undecodable_record_batch", extra=ctx(**error.context()))
                else:
                    log.error("stage_crashed", extra=ctx(stage=task.get_name()), exc_info=error)
                self.request_stop()
                return error
        return None

    def health(self) -> dict[str, bool]:
        """``live``: every stage task runs. ``ready``: see ``worker.readiness``."""
        live = bool(self._stages) and all(not t.done() for t in self._stages.values())
        self._imports.expire_forbidden()
        labelbox = (self._lb.failing_since, self._clock())
        report = self._readiness.report(live=live, labelbox=labelbox, stopping=self._stopping.is_set())
        self._metrics.ready.set(1 if report["ready"] else 0)
        return report

    # --- 1. fetch ------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            self._apply_backpressure()
            try:
                fetched = await self._consumer.getmany(timeout_ms=100, max_records=self._budget.fetch_limit())
            except DECODE_ERRORS as exc:
                await refetch_or_stop(self._consumer, self._corrupt, exc)
                continue
            self._corrupt.fetched(fetched)
            for tp, records in fetched.items():
                self._queue.put_nowait(self._intake.accept(tp, records, self._consumer.highwater(tp)))
            await self._committer.pass_recordless_offsets()

    def _apply_backpressure(self) -> None:
        pause = self._intake.pause_change()
        if pause is None:
            return
        partitions = self._consumer.assignment()
        if pause:
            self._consumer.pause(*partitions)
        else:
            self._consumer.resume(*partitions)
        self._metrics.paused_partitions.set(len(partitions) if pause else 0)
        log.info(
            "fetch_paused" if pause else "fetch_resumed", extra=ctx(buffered_bytes=self._budget.buffered)
        )

    # --- 2. convert ----------------------------------------------------------------------------

    async def _convert_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_bytes = self._settings.message_max_bytes
        check = self._gate.precheck if self._gate.checks else None
        while (envelopes := await self._queue.get()) is not None:
            results = await loop.run_in_executor(self._executor, process_chunk, envelopes, max_bytes, check)
            self._intake.converted(envelopes)
            for envelope, rejection in results:
                if rejection is not None:
                    self._apply(Refuse(envelope, rejection.reason, tuple(rejection.errors)))
                else:
                    self._apply(self._gate.admit(envelope))

    def _apply(self, decision: Decision) -> None:
        """Act on an admission decision (``worker.admission``)."""
        if isinstance(decision, Park):
            if decision.fetch is not None and self._ontologies is not None:
                self._spawn(self._fetch_ontology(self._ontologies, decision.fetch))
            return
        if not self._ledger.owned(decision.envelope):  # revoked meanwhile: the new owner has it
            self._settler.release(decision.envelope)
        elif isinstance(decision, Admit):
            self._add_to_batch(decision)
        else:
            if decision.reason != "model_run_forbidden":
                self._metrics.messages_rejected.labels(decision.reason).inc()
            self._spawn(self._settler.dead_letter(decision.envelope, decision.reason, decision.errors))

    async def _fetch_ontology(self, ontologies: OntologyCache, run: str) -> None:
        """Fetch one model run's ontology (retrying transient failures), then release what waited."""
        try:
            await ontologies.refresh_patiently(run)
        except AuthenticationError as exc:
            self._gate.abandon(run)  # they stay unsettled; the worker is stopping
            self.fail(exc)
            return
        except (Forbidden, RequestRejected) as exc:
            if isinstance(exc, Forbidden):
                self._imports.forbid(run, exc)
            decisions = self._gate.unavailable(run, exc)
        else:
            decisions = self._gate.fetched(run)
        for decision in decisions:
            self._apply(decision)

    def _add_to_batch(self, admitted: Admit) -> None:
        envelope = admitted.envelope
        self._converted.add([line.kind for line in envelope.lines])
        for batch in self._batcher.add(admitted.model_run_id, envelope, self._clock()):
            self._launch(batch, "full")

    # --- 3. batch ------------------------------------------------------------------------------

    async def _linger_loop(self) -> None:
        tick = min(0.05, max(self._settings.batch_linger_s / 4, 0.005))
        while True:
            await asyncio.sleep(tick)
            self._converted.flush()
            for batch in self._batcher.due(self._clock()):
                self._launch(batch, "linger")

    def _launch(self, batch: Batch[Envelope], trigger: Trigger) -> None:
        self._converted.flush()
        self._metrics.batches_closed.labels(trigger).inc()
        self._spawn(self._upload(batch, self._clock()))

    async def _upload(self, batch: Batch[Envelope], closed_at: float) -> None:
        await self._imports.upload(batch)
        self._metrics.import_latency.observe(self._clock() - closed_at)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_crashed", exc_info=task.exception())
            self.fatal = self.fatal or task.exception()
            self.request_stop()

    # --- 4. import (worker.imports), 5. settle (worker.settlement) and commit (worker.committer) ---

    def labelbox_answered(
        self, operation: str, outcome: AttemptOutcome, started_at: float, rtt_s: float
    ) -> None:
        """Forwarded from the Labelbox client: see ``ImportRunner.labelbox_answered``."""
        self._imports.labelbox_answered(operation, outcome, started_at, rtt_s)

    def fail(self, error: BaseException) -> None:
        """Labelbox refused the API key: stop (exit status 3); unsettled messages stay uncommitted."""
        if self.fatal is None:
            log.error("labelbox_authentication_failed", extra=ctx(error=str(error)))
            self.fatal = error
        self.request_stop()

    # --- drain ---------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Stop intake, finish converting, flush batches, wait for imports until the deadline, commit."""
        deadline = self.stop_deadline = self._clock() + self._settings.shutdown_timeout_s
        await _cancel(self._stages["fetch"])
        with contextlib.suppress(KafkaError, AssertionError):
            self._consumer.pause(*self._consumer.assignment())
        self._queue.put_nowait(None)
        await self._wait(self._stages["convert"], deadline)
        await _cancel(self._stages["linger"])
        self._converted.flush()
        if self.fatal is None:
            for batch in self._batcher.flush():
                self._launch(batch, "shutdown")
        if self._background:
            await asyncio.wait(set(self._background), timeout=max(0.0, deadline - self._clock()))
        for task in list(self._background):
            await _cancel(task)
        self._converted.flush()  # what ontology fetches admitted during the drain
        await _cancel(self._stages["commit"])
        await _cancel(self._stages["broker_check"])
        # The last commit, shielded from cancellation, bounded: with the broker gone it would wait
        # for a group coordinator for ever. The deadline's last second is left for closing the clients.
        final_commit = asyncio.ensure_future(self._committer.commit())
        await asyncio.wait({final_commit}, timeout=max(1.0, deadline - 1.0 - self._clock()))
        await _cancel(final_commit)
        self._committer.uncommitted()
        log.info("worker_drained", extra=ctx(unsettled_bytes=self._budget.buffered))

    async def _wait(self, task: asyncio.Task[None], deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, deadline - self._clock()))
        await _cancel(task)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait until it is done (its exception, if any, was already reported)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
