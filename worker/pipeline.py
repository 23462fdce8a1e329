"""The only place that wires the stages: fetch -> decode/convert -> batch -> import -> settle -> commit.

Stages (each a task, each bounded):
1. fetch    aiokafka ``getmany``; every record's offset is tracked as unsettled; backpressure pauses
            all partitions while unsettled bytes exceed ``BUFFER_MAX_BYTES`` (heartbeats go on, so
            a slow Labelbox never causes a rebalance).
2. convert  decode + validate + convert in a worker thread (CPU and mask work off the event loop);
            a rejection goes straight to the DLQ.
3. batch    per model run, closed by rows / bytes / linger (``worker.batcher``).
4. import   up to ``UPLOAD_CONCURRENCY`` imports in flight: create (multipart), poll, read the
            status file; each message settles as imported (all its rows SUCCESS) or dead-lettered.
5. commit   per partition, the highest offset below which everything is settled (``worker.offsets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from worker.admission import Admit, Decision, OntologyGate, Park, Refuse
from worker.batcher import Batch, Batcher, BatchLimits
from worker.buffer import BufferBudget
from worker.dlq import DeadLetter, DeadLetterWriter, replay_count
from worker.envelope import Envelope, process_chunk
from worker.imports import ImportRunner
from worker.labelbox import AuthenticationError, Forbidden, LabelboxClient, RequestRejected, TransientError
from worker.ledger import Ledger
from worker.logs import ctx
from worker.metrics import Metrics
from worker.preparation import DataRowRegistry, OntologyCache
from worker.readiness import Readiness
from worker.retry import patiently
from worker.settings import Settings
from worker.source import DECODE_ERRORS, CorruptBatches, UndecodableBatch, locate_undecodable

log = logging.getLogger("worker.pipeline")
#: Exit statuses of ``python -m worker run``.
EXIT_OK, EXIT_INTERNAL, EXIT_SETTINGS, EXIT_AUTH, EXIT_UNDECODABLE = 0, 1, 2, 3, 4
#: How often, and how patiently, the broker is checked for readiness.
_BROKER_CHECK_EVERY_S = _BROKER_CHECK_TIMEOUT_S = 5.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._pipeline.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._pipeline.on_assigned(set(assigned))


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
        self._dlq = dead_letters
        self._lb = labelbox
        self._ontologies = ontologies
        self._clock = clock
        self._batcher: Batcher[Envelope] = Batcher(
            BatchLimits(settings.batch_max_rows, settings.batch_max_bytes, settings.batch_linger_s)
        )
        self._ledger = Ledger()
        self._budget = BufferBudget(settings.buffer_max_bytes, settings.kafka_max_poll_records)
        self._paused = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert")
        self._background: set[asyncio.Task[Any]] = set()
        self._stages: dict[str, asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[list[Envelope] | None] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self._imports = ImportRunner(settings, metrics, labelbox, self, data_rows=data_rows, clock=clock)
        self._gate = OntologyGate(ontologies, self._imports.refusal)
        self._readiness = Readiness(settings.labelbox_unready_after_s)
        self._corrupt = CorruptBatches()
        self.fatal: BaseException | None = None
        #: When the drain must be over (same clock as ``clock``); set when shutdown begins.
        self.stop_deadline: float | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Consume until stopped; drain; return the exit status."""
        self._consumer.subscribe([self._settings.kafka_topic], listener=_Rebalance(self))
        self._stages = {
            "fetch": asyncio.create_task(self._fetch_loop(), name="fetch"),
            "convert": asyncio.create_task(self._convert_loop(), name="convert"),
            "linger": asyncio.create_task(self._linger_loop(), name="linger"),
            "commit": asyncio.create_task(self._commit_loop(), name="commit"),
            "broker_check": asyncio.create_task(self._broker_check_loop(), name="broker_check"),
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

    @property
    def stopping(self) -> bool:
        """True once a shutdown began."""
        return self._stopping.is_set()

    @property
    def joined(self) -> bool:
        """Partitions are assigned (the group is joined)."""
        return self._readiness.joined

    def health(self) -> dict[str, bool]:
        """``live``: every stage task runs. ``ready``: see ``worker.readiness``."""
        live = bool(self._stages) and all(not t.done() for t in self._stages.values())
        self._imports.expire_forbidden()
        now = self._clock()
        labelbox_ok = self._readiness.labelbox_ok(self._lb.failing_since, now)
        report = self._readiness.report(live=live, labelbox_ok=labelbox_ok, stopping=self.stopping)
        self._metrics.ready.set(1 if report["ready"] else 0)
        return report

    async def _broker_check_loop(self) -> None:
        """Readiness: a metadata request every few seconds tells whether the brokers answer.

        An outage is logged twice: ``broker_unreachable`` at the first failed check and
        ``broker_reachable`` with its duration at the next good one (checked every second meanwhile);
        the Kafka client's own errors in between are folded by ``worker.logs``. Runs until cancelled
        by the drain.
        """
        while True:
            checked_at, error = self._clock(), ""
            try:
                await asyncio.wait_for(self._consumer.topics(), timeout=_BROKER_CHECK_TIMEOUT_S)
                ok = True
            except (TimeoutError, KafkaError) as exc:
                ok, error = False, str(exc) or type(exc).__name__
            change = self._readiness.broker_checked(ok, checked_at, self._clock())
            if change is not None and change.reachable:
                log.warning("broker_reachable", extra=ctx(outage_s=change.outage_s))
            elif change is not None:
                log.warning("broker_unreachable", extra=ctx(error=error))
            self.health()  # keeps the lbworker_ready gauge current without a probe
            # Every second while unreachable: ready again (and the outage's end logged) promptly.
            await asyncio.sleep(_BROKER_CHECK_EVERY_S if ok else 1.0)

    # --- 1. fetch ------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            self._apply_backpressure()
            try:
                fetched = await self._consumer.getmany(timeout_ms=100, max_records=self._budget.fetch_limit())
            except DECODE_ERRORS as exc:
                await self._undecodable(exc)
                continue
            self._corrupt.fetched(fetched)
            for tp, records in fetched.items():
                self._accept(tp, records)
            await self._pass_recordless_offsets()

    async def _undecodable(self, error: Exception) -> None:
        """A batch that cannot be decoded: a missing codec stops the worker at once; a CRC failure is
        fetched again (the fetch position has not moved past it), and stops the worker if it persists.
        Raises :class:`UndecodableBatch`."""
        where = locate_undecodable(self._consumer)
        if self._corrupt.failed(where, error):
            raise UndecodableBatch(where, error) from error
        tp, offset = where if where else (None, None)
        log.warning(
            "corrupt_batch_refetch",
            extra=ctx(topic=tp and tp.topic, partition=tp and tp.partition, offset=offset, error=str(error)),
        )
        await asyncio.sleep(0.5)

    def _accept(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        tracker = self._ledger.tracker(tp, records[0].offset)
        envelopes = []
        for record in records:
            tracker.track(record.offset)
            raw = self._budget.raw_size(record.key, record.value)
            size = self._budget.admit_size(raw)
            envelope = Envelope(tp, record.offset, record.key, record.value, size, tracker, raw_size=raw)
            envelope.replays = replay_count(record.headers) if record.headers else 0
            envelope.headers = tuple(record.headers or ())
            envelopes.append(envelope)
        self._budget.add(envelopes)
        self._metrics.buffered_bytes.set(self._budget.buffered)
        self._metrics.messages_consumed.labels(tp.topic).inc(len(records))
        highwater = self._consumer.highwater(tp)
        if highwater is not None:
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                highwater - records[-1].offset - 1
            )
        self._queue.put_nowait(envelopes)

    async def _pass_recordless_offsets(self) -> None:
        """Let the commit point follow the fetch position past offsets that hold no record: transaction
        markers, and records of aborted transactions. No record settles them, so without this the
        committed offset of a partition that ends with a marker stays one short for ever (lag 1)."""
        assigned = self._consumer.assignment()
        for tp in self._ledger.partitions():
            if tp not in assigned:
                continue
            with contextlib.suppress(IllegalStateError):
                position = await self._consumer.position(tp)  # known: records came from it
                if self._ledger.pass_to(tp, position):
                    self._commit_wanted.set()
                highwater = self._consumer.highwater(tp)
                if highwater is not None:
                    self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(highwater - position)

    def _apply_backpressure(self) -> None:
        full = self._budget.full
        if full != self._paused:
            partitions = self._consumer.assignment()
            if full:
                self._consumer.pause(*partitions)
            else:
                self._consumer.resume(*partitions)
            self._paused = full
            self._metrics.paused_partitions.set(len(partitions) if full else 0)
            log.info(
                "fetch_paused" if full else "fetch_resumed", extra=ctx(buffered_bytes=self._budget.buffered)
            )

    # --- 2. convert ----------------------------------------------------------------------------

    async def _convert_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_bytes = self._settings.message_max_bytes
        while (envelopes := await self._queue.get()) is not None:
            results = await loop.run_in_executor(self._executor, process_chunk, envelopes, max_bytes)
            self._budget.converted(envelopes)
            self._metrics.buffered_bytes.set(self._budget.buffered)
            for envelope, rejection in results:
                if rejection is not None:
                    self._apply(Refuse(envelope, rejection.reason, tuple(rejection.errors)))
                else:
                    self._apply(self._gate.admit(envelope))

    def _apply(self, decision: Decision) -> None:
        """Act on an admission decision (``worker.admission``)."""
        if isinstance(decision, Park):
            if decision.fetch is not None:
                self._spawn(self._fetch_ontology(decision.fetch))
            return
        if not self._ledger.owned(decision.envelope):  # revoked meanwhile: the new owner has it
            self._release(decision.envelope)
        elif isinstance(decision, Admit):
            self._add_to_batch(decision.envelope)
        else:
            if decision.reason != "model_run_forbidden":
                self._metrics.messages_rejected.labels(decision.reason).inc()
            self._spawn(self.dead_letter(decision.envelope, decision.reason, decision.errors))

    async def _fetch_ontology(self, run: str) -> None:
        """Fetch one model run's ontology (retrying transient failures), then release what waited."""
        assert self._ontologies is not None
        refresh = self._ontologies.refresh
        try:
            await patiently(
                lambda: refresh(run),
                errors=(TransientError,),
                event="ontology_fetch_retry",
                log=log,
                first_s=1.0,
                max_s=5.0,
                model_run_id=run,
            )
        except AuthenticationError as exc:
            self._gate.abandon(run)  # they stay unsettled; the worker is stopping
            self.fail(exc)
            return
        except Forbidden as exc:
            self._imports.forbid(run, exc)
            decisions = self._gate.unavailable(run, "model_run_forbidden", (str(exc),))
        except RequestRejected as exc:
            decisions = self._gate.unavailable(run, "model_run_unavailable", (f"model_run_id: {exc}",))
        else:
            decisions = self._gate.fetched(run)
        for decision in decisions:
            self._apply(decision)

    def _add_to_batch(self, envelope: Envelope) -> None:
        for kind, count in Counter(line.kind for line in envelope.lines).items():
            self._metrics.predictions_converted.labels(kind).inc(count)
        assert envelope.model_run_id is not None
        for batch in self._batcher.add(envelope.model_run_id, envelope, self._clock()):
            self._launch(batch, "full")

    # --- 3. batch ------------------------------------------------------------------------------

    async def _linger_loop(self) -> None:
        tick = min(0.05, max(self._settings.batch_linger_s / 4, 0.005))
        while True:
            await asyncio.sleep(tick)
            for batch in self._batcher.due(self._clock()):
                self._launch(batch, "linger")

    def _launch(self, batch: Batch[Envelope], trigger: str) -> None:
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

    # --- 4. import: worker.imports.ImportRunner ------------------------------------------------

    def labelbox_answered(self, operation: str, outcome: str, started_at: float, rtt_s: float) -> None:
        """Forwarded from the Labelbox client: see ``ImportRunner.labelbox_answered``."""
        self._imports.labelbox_answered(operation, outcome, started_at, rtt_s)

    def fail(self, error: BaseException) -> None:
        """Labelbox refused the API key: stop (exit status 3); unsettled messages stay uncommitted."""
        if self.fatal is None:
            log.error("labelbox_authentication_failed", extra=ctx(error=str(error)))
            self.fatal = error
        self.request_stop()

    # --- dead letters --------------------------------------------------------------------------

    async def dead_letter(
        self, envelope: Envelope, reason: str, errors: Sequence[str], import_name: str | None = None
    ) -> None:
        """Write the record to the DLQ (retried until the broker acknowledges it), then settle it."""
        letter = DeadLetter(
            topic=envelope.tp.topic,
            partition=envelope.tp.partition,
            offset=envelope.offset,
            key=envelope.key,
            value=envelope.value,
            reason=reason,
            errors=tuple(errors),
            model_run_id=envelope.model_run_id,
            message_id=envelope.message_id,
            import_name=import_name,
            replays=envelope.replays,
            schema_id=envelope.schema_id,
        )
        write = self._dlq.write
        await patiently(
            lambda: write(letter),
            errors=(KafkaError,),
            event="dlq_write_retry",
            log=log,
            first_s=0.5,
            max_s=30.0,
            reason=reason,
        )
        self._metrics.dlq_records.labels(reason).inc()
        self.settle(envelope)

    # --- 5. settle and commit ------------------------------------------------------------------

    def settle(self, envelope: Envelope) -> None:
        """The message is imported or dead-lettered: its offset may be committed, its bytes freed."""
        if self._ledger.settle(envelope):
            self._commit_wanted.set()
        self._release(envelope)

    def _release(self, envelope: Envelope) -> None:
        self._budget.release(envelope)
        self._metrics.buffered_bytes.set(self._budget.buffered)

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            if not await self.commit():
                await asyncio.sleep(1.0)
                self._commit_wanted.set()  # a failed commit is tried again, even if nothing else settles
            await asyncio.sleep(0.2)  # coalesce settlements into fewer commits

    async def commit(self, only: set[TopicPartition] | None = None) -> bool:
        """Commit every partition's settled offset that moved (or only those in ``only``).

        Returns False if the broker refused the commit (it is logged; the caller may try again).
        """
        due = self._ledger.due(only)
        if not due:
            return True
        try:
            await self._consumer.commit(due)
        except KafkaError as exc:
            log.warning("commit_failed", extra=ctx(error=str(exc), partitions=len(due)))
            return False
        self._ledger.committed(due)
        for tp, offset in due.items():
            self._metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(offset)
        self._metrics.last_commit.set(time.time())
        return True

    # --- rebalance -----------------------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is settled on the revoked partitions, then forget them."""
        await self.commit(only=revoked)
        self._ledger.revoke(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):  # another member owns its lag now
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        for envelope in self._batcher.drop(lambda e: e.tp in revoked):
            self._release(envelope)
        self._readiness.joined = False
        self.health()
        log.info("partitions_revoked", extra=ctx(partitions=sorted(tp.partition for tp in revoked)))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Note the assignment; new partitions stay paused while the buffer is full."""
        self._readiness.joined = True
        self.health()  # the lbworker_ready gauge follows at once, not at the next broker check
        if self._paused and assigned:
            self._consumer.pause(*assigned)
        log.info("partitions_assigned", extra=ctx(partitions=sorted(tp.partition for tp in assigned)))

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
        if self.fatal is None:
            for batch in self._batcher.flush():
                self._launch(batch, "shutdown")
        if self._background:
            await asyncio.wait(set(self._background), timeout=max(0.0, deadline - self._clock()))
        for task in list(self._background):
            await _cancel(task)
        await _cancel(self._stages["commit"])
        await _cancel(self._stages["broker_check"])
        # The last commit, shielded from cancellation, bounded: with the broker gone it would wait
        # for a group coordinator for ever. The deadline's last second is left for closing the clients.
        final_commit = asyncio.ensure_future(self.commit())
        await asyncio.wait({final_commit}, timeout=max(1.0, deadline - 1.0 - self._clock()))
        await _cancel(final_commit)
        uncommitted = self._ledger.uncommitted()
        if uncommitted:
            log.warning(
                "offsets_not_committed",
                extra=ctx(settled_offsets=sum(uncommitted.values()), partitions=len(uncommitted)),
            )
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
