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
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from schemas import NdjsonMessage
from worker.batcher import Batch, Batcher, BatchLimits
from worker.convert import NdjsonLine, convert
from worker.decode import Rejection, decode
from worker.dlq import DeadLetter, DeadLetterWriter, replay_count
from worker.labelbox import (
    AuthenticationError,
    ImportState,
    LabelboxClient,
    RequestRejected,
    RowStatus,
    TransientError,
)
from worker.logs import ctx
from worker.metrics import Metrics
from worker.offsets import PartitionOffsets
from worker.ontology import Mismatch
from worker.preparation import DataRowRegistry, NeedsFetch, OntologyCache, RegistrationFailed
from worker.settings import Settings

log = logging.getLogger("worker.pipeline")
#: Exit statuses of ``python -m worker run``.
EXIT_OK, EXIT_INTERNAL, EXIT_SETTINGS, EXIT_AUTH = 0, 1, 2, 3
#: Bytes counted per fetched record besides key and value: Python objects and bookkeeping.
_RECORD_OVERHEAD_BYTES = 200
#: Bytes counted per converted NDJSON line besides its bytes: the line object and its strings.
_LINE_OVERHEAD_BYTES = 250
#: How often, and how patiently, the broker is checked for readiness.
_BROKER_CHECK_EVERY_S = _BROKER_CHECK_TIMEOUT_S = 5.0


@dataclass(slots=True, eq=False)
class Envelope:
    """One fetched record on its way through the pipeline, until it is settled."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    size: int
    tracker: PartitionOffsets
    raw_size: int = 0
    lines: list[NdjsonLine] = field(default_factory=list)
    model_run_id: str | None = None
    message_id: str | None = None
    payload_format: str = "predictions"  # or "ndjson": where a line index points in the message
    replays: int = 0
    released: bool = False


def process_chunk(envelopes: list[Envelope], max_bytes: int) -> list[tuple[Envelope, Rejection | None]]:
    """Decode and convert each record (runs in a worker thread; touches only these envelopes)."""
    results: list[tuple[Envelope, Rejection | None]] = []
    for envelope in envelopes:
        outcome = decode(envelope.value, max_bytes)
        if isinstance(outcome, Rejection):
            envelope.model_run_id, envelope.message_id = outcome.model_run_id, outcome.message_id
            results.append((envelope, outcome))
            continue
        envelope.model_run_id, envelope.message_id = outcome.model_run_id, outcome.message_id
        envelope.payload_format = "ndjson" if isinstance(outcome, NdjsonMessage) else "predictions"
        try:
            envelope.lines = convert(outcome)
        except Exception as exc:  # one message must never stop the worker; it goes to the DLQ
            results.append((envelope, Rejection("conversion_error", [f"{type(exc).__name__}: {exc}"])))
            continue
        results.append((envelope, None))
    return results


def import_name(topic: str, batch: Batch[Envelope], payload: bytes) -> str:
    """Unique in the model run and traceable: ``topic/partition@first-last[...]#content-hash``.

    The same messages always give the same name, so a batch rebuilt after a crash adopts the
    import its first attempt created instead of uploading twice.
    """
    ranges: dict[int, tuple[int, int]] = {}
    for envelope in batch.items:
        low, high = ranges.get(envelope.tp.partition, (envelope.offset, envelope.offset))
        ranges[envelope.tp.partition] = (min(low, envelope.offset), max(high, envelope.offset))
    parts = [f"{p}@{lo}-{hi}" for p, (lo, hi) in sorted(ranges.items())]
    shown = ",".join(parts[:4]) + (f",+{len(parts) - 4}" if len(parts) > 4 else "")
    digest = hashlib.sha256(payload).hexdigest()[:12]
    return f"{topic}/{shown}#{digest}"[:250]


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
        self._data_rows = data_rows
        self._parked: dict[str, list[Envelope]] = {}
        self._clock = clock
        self._batcher: Batcher[Envelope] = Batcher(
            BatchLimits(settings.batch_max_rows, settings.batch_max_bytes, settings.batch_linger_s)
        )
        self._trackers: dict[TopicPartition, PartitionOffsets] = {}
        self._buffered = 0
        self._record_bytes_estimate = 16384.0  # until the first records are converted
        self._paused = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert")
        self._background: set[asyncio.Task[Any]] = set()
        self._stages: dict[str, asyncio.Task[None]] = {}
        self._queue: asyncio.Queue[list[Envelope] | None] | None = None
        self._stopping: asyncio.Event | None = None
        self._commit_wanted: asyncio.Event | None = None
        self._upload_slots: asyncio.Semaphore | None = None
        self._labelbox_ok = True
        self._broker_ok = True
        self._stop_requested = False
        self.fatal: BaseException | None = None
        self.joined = False
        #: When the drain must be over (same clock as ``clock``); set when shutdown begins.
        self.stop_deadline: float | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Consume until stopped; drain; return the exit status."""
        self._queue = asyncio.Queue()
        self._stopping = asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        self._commit_wanted = asyncio.Event()
        self._upload_slots = asyncio.Semaphore(self._settings.upload_concurrency)
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
            return EXIT_INTERNAL
        return EXIT_AUTH if isinstance(self.fatal, AuthenticationError) else EXIT_OK

    def request_stop(self) -> None:
        """Begin a graceful shutdown (idempotent; safe from a signal handler)."""
        self._stop_requested = True
        if self._stopping is not None and not self._stopping.is_set():
            log.info("worker_stopping", extra=ctx(buffered_bytes=self._buffered))
            self._stopping.set()

    async def _wait_for_stop(self) -> BaseException | None:
        assert self._stopping is not None
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait({stop, *self._stages.values()}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                log.error("stage_crashed", extra=ctx(stage=task.get_name()), exc_info=error)
                self.request_stop()
                return error
        return None

    @property
    def stopping(self) -> bool:
        """True once a shutdown began."""
        return self._stopping is not None and self._stopping.is_set()

    def health(self) -> dict[str, bool]:
        """``live``: every stage task runs. ``ready``: joined, Labelbox reachable, not stopping."""
        live = bool(self._stages) and all(not t.done() for t in self._stages.values())
        failing_since = self._lb.failing_since
        labelbox_ok = self._labelbox_ok and (
            failing_since is None
            or time.monotonic() - failing_since < self._settings.labelbox_unready_after_s
        )
        ready = live and self.joined and self._broker_ok and labelbox_ok and not self.stopping
        self._metrics.ready.set(1 if ready else 0)
        return {
            "live": live,
            "ready": ready,
            "joined": self.joined,
            "broker_ok": self._broker_ok,
            "labelbox_ok": labelbox_ok,
        }

    async def _broker_check_loop(self) -> None:
        """Readiness: a metadata request every few seconds tells whether the brokers answer."""
        while True:
            try:
                await asyncio.wait_for(self._consumer.topics(), timeout=_BROKER_CHECK_TIMEOUT_S)
                ok = True
            except (TimeoutError, KafkaError):
                ok = False
            if ok != self._broker_ok:
                log.warning("broker_reachable" if ok else "broker_unreachable")
                self._broker_ok = ok
            self.health()  # keeps the lbworker_ready gauge current without a probe
            await asyncio.sleep(_BROKER_CHECK_EVERY_S)

    # --- 1. fetch ------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            self._apply_backpressure()
            fetched = await self._consumer.getmany(timeout_ms=100, max_records=self._fetch_limit())
            for tp, records in fetched.items():
                self._accept(tp, records)
            await self._pass_recordless_offsets()

    def _fetch_limit(self) -> int:
        """Records to take in one fetch: no more than the buffer has room for (at the average size a
        record has once converted), so one fetch cannot overshoot BUFFER_MAX_BYTES by much."""
        room = self._settings.buffer_max_bytes - self._buffered
        fitting = int(room / self._record_bytes_estimate) if room > 0 else 1
        return max(1, min(self._settings.kafka_max_poll_records, fitting))

    def _accept(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        assert self._queue is not None
        tracker = self._tracker(tp, records[0].offset)
        envelopes = []
        for record in records:
            tracker.track(record.offset)
            raw = len(record.value or b"") + len(record.key or b"") + _RECORD_OVERHEAD_BYTES
            # Until it is converted, a record is counted at what records have cost once converted.
            size = max(raw, int(self._record_bytes_estimate))
            envelope = Envelope(tp, record.offset, record.key, record.value, size, tracker, raw_size=raw)
            envelope.replays = replay_count(record.headers) if record.headers else 0
            envelopes.append(envelope)
        self._buffered += sum(e.size for e in envelopes)
        self._metrics.buffered_bytes.set(self._buffered)
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
        assert self._commit_wanted is not None
        assigned = self._consumer.assignment()
        for tp, tracker in list(self._trackers.items()):
            if tp not in assigned:
                continue
            with contextlib.suppress(IllegalStateError):
                position = await self._consumer.position(tp)  # known: records came from it
                if tracker.pass_to(position):
                    self._commit_wanted.set()
                highwater = self._consumer.highwater(tp)
                if highwater is not None:
                    self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(highwater - position)

    def _tracker(self, tp: TopicPartition, first_offset: int) -> PartitionOffsets:
        tracker = self._trackers.get(tp)
        if tracker is None or first_offset < tracker.commit_offset:
            # New partition, or the consumer moved back (offset reset): a fresh start. Records
            # still in flight under the old tracker will no longer be committed.
            tracker = self._trackers[tp] = PartitionOffsets(first_offset)
        return tracker

    def _apply_backpressure(self) -> None:
        full = self._buffered >= self._settings.buffer_max_bytes
        if full != self._paused:
            partitions = self._consumer.assignment()
            if full:
                self._consumer.pause(*partitions)
            else:
                self._consumer.resume(*partitions)
            self._paused = full
            self._metrics.paused_partitions.set(len(partitions) if full else 0)
            log.info("fetch_paused" if full else "fetch_resumed", extra=ctx(buffered_bytes=self._buffered))

    # --- 2. convert ----------------------------------------------------------------------------

    async def _convert_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        max_bytes = self._settings.message_max_bytes
        while (envelopes := await self._queue.get()) is not None:
            results = await loop.run_in_executor(self._executor, process_chunk, envelopes, max_bytes)
            self._account_converted(envelopes)
            for envelope, rejection in results:
                if not self._owned(envelope):
                    self._release(envelope)
                elif rejection is not None:
                    self._reject(envelope, rejection.reason, rejection.errors)
                else:
                    self._admit(envelope)

    def _account_converted(self, envelopes: list[Envelope]) -> None:
        """Count the converted lines against the buffer too: they live as long as the record."""
        added = 0
        for envelope in envelopes:
            actual = envelope.raw_size + sum(len(line.data) + _LINE_OVERHEAD_BYTES for line in envelope.lines)
            if not envelope.released:
                added += actual - envelope.size
            envelope.size = actual
        self._buffered += added
        self._metrics.buffered_bytes.set(self._buffered)
        if envelopes:  # what a record costs once converted: rises at once, decays slowly
            average = sum(e.size for e in envelopes) / len(envelopes)
            self._record_bytes_estimate = max(average, 0.8 * self._record_bytes_estimate + 0.2 * average)

    def _reject(self, envelope: Envelope, reason: str, errors: list[str]) -> None:
        self._metrics.messages_rejected.labels(reason).inc()
        self._spawn(self._dead_letter(envelope, reason, errors))

    def _admit(self, envelope: Envelope) -> None:
        """Check the ontology (when on), then batch; a mismatch goes to the DLQ without upload.

        Never waits for Labelbox: a message whose model run's ontology must be fetched first is
        parked, in order, behind a per-model-run fetch task, so one model run's trouble never holds
        up the others.
        """
        run = envelope.model_run_id
        if self._ontologies is None or run is None:
            self._add_to_batch(envelope)
            return
        parked = self._parked.get(run)
        if parked is not None:
            parked.append(envelope)
            return
        try:
            found = self._ontologies.verdict(run, (line.body for line in envelope.lines))
        except NeedsFetch:
            self._parked[run] = [envelope]
            self._spawn(self._fetch_ontology_then_admit(run))
            return
        self._apply_verdict(envelope, found)

    def _apply_verdict(self, envelope: Envelope, found: tuple[int, Mismatch] | None) -> None:
        if found is None:
            self._add_to_batch(envelope)
            return
        index, mismatch = found
        where = f"{envelope.payload_format}.{index}.{mismatch.path}"
        self._reject(envelope, "ontology_mismatch", [f"{where}: {mismatch.code}: {mismatch.message}"])

    async def _fetch_ontology_then_admit(self, run: str) -> None:
        """Fetch one model run's ontology (retrying transient failures), then admit what waited."""
        assert self._ontologies is not None
        while True:
            try:
                await self._ontologies.refresh(run)
                break
            except AuthenticationError as exc:
                self._fail(exc)
                return  # parked messages stay unsettled; the worker is stopping
            except RequestRejected as exc:
                for envelope in self._parked.pop(run, []):
                    if self._owned(envelope):
                        self._reject(envelope, "model_run_unavailable", [f"model_run_id: {exc}"])
                return
            except TransientError as exc:
                log.warning("ontology_fetch_retry", extra=ctx(model_run_id=run, error=str(exc)))
                await asyncio.sleep(random.uniform(1.0, 5.0))
        self._admit_parked(run)

    def _admit_parked(self, run: str) -> None:
        assert self._ontologies is not None
        for envelope in self._parked.pop(run, []):
            if not self._owned(envelope):
                self._release(envelope)
                continue
            # Just fetched: a miss now is a real mismatch, not a stale cache.
            bodies = (line.body for line in envelope.lines)
            self._apply_verdict(envelope, self._ontologies.verdict(run, bodies, refetch_on_miss=False))

    def _owned(self, envelope: Envelope) -> bool:
        return self._trackers.get(envelope.tp) is envelope.tracker

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

    # --- 4. import -----------------------------------------------------------------------------

    async def _upload(self, batch: Batch[Envelope], closed_at: float) -> None:
        assert self._upload_slots is not None
        async with self._upload_slots:
            self._metrics.imports_in_flight.inc()
            try:
                outcome = await self._import(batch)
            finally:
                self._metrics.imports_in_flight.dec()
        self._metrics.imports.labels(outcome).inc()
        self._metrics.import_latency.observe(self._clock() - closed_at)

    async def _import(self, batch: Batch[Envelope]) -> str:
        payload = batch.payload()
        name = import_name(self._settings.kafka_topic, batch, payload)
        run = batch.model_run_id
        log.info(
            "import_started",
            extra=ctx(model_run_id=run, import_name=name, rows=batch.rows, bytes=len(payload)),
        )
        while True:
            try:
                await self._ensure_data_rows(batch)
                state = await self._lb.create_import(run, name, payload)
                state = await self._follow(state)
                self._labelbox_ok = True
                return await self._settle_import(batch, state)
            except AuthenticationError as exc:
                self._fail(exc)
                return "auth_error"
            except RequestRejected as exc:
                await self._dead_letter_all(batch, "import_rejected", [str(exc)], name)
                return "rejected"
            except RegistrationFailed as exc:
                await self._dead_letter_all(batch, "data_row_registration_failed", [str(exc)], None)
                return "registration_failed"
            except TransientError as exc:
                self._labelbox_ok = False
                log.warning(
                    "import_retry_round", extra=ctx(model_run_id=run, import_name=name, error=str(exc))
                )
                await asyncio.sleep(random.uniform(1.0, 5.0))

    async def _ensure_data_rows(self, batch: Batch[Envelope]) -> None:
        if self._data_rows is None:
            return
        rows = [line.data_row_ref for envelope in batch.items for line in envelope.lines]
        added = await self._data_rows.ensure(batch.model_run_id, rows)
        if added:
            log.info("data_rows_registered", extra=ctx(model_run_id=batch.model_run_id, data_rows=added))

    async def _follow(self, state: ImportState) -> ImportState:
        deadline = self._clock() + self._settings.labelbox_import_timeout_s
        while not state.done:
            if self._clock() > deadline:
                raise TransientError(
                    f"import {state.name} still {state.state} at the deadline", "import_timeout"
                )
            await asyncio.sleep(self._settings.labelbox_poll_interval_s)
            polled = await self._lb.get_import(state.model_run_id, state.name)
            if polled is None:
                raise TransientError(f"import {state.name} is not found", "import_missing")
            state = polled
        return state

    async def _settle_import(self, batch: Batch[Envelope], state: ImportState) -> str:
        if state.state == "FAILED":
            await self._dead_letter_all(
                batch, "import_failed", [f"Labelbox import {state.name} FAILED"], state.name
            )
            return "failed"
        try:
            if not state.status_file_url:
                raise TransientError("FINISHED import has no status file", "no_status_file")
            rows = await self._lb.fetch_statuses(state.status_file_url)
        except TransientError as exc:
            await self._dead_letter_all(batch, "import_status_unavailable", [str(exc)], state.name)
            return "status_unavailable"
        statuses = {row.uuid: row for row in rows}
        failed = await asyncio.gather(*(self._settle_message(e, statuses, state.name) for e in batch.items))
        log.info(
            "import_finished",
            extra=ctx(
                model_run_id=state.model_run_id,
                import_name=state.name,
                rows=batch.rows,
                failed_messages=sum(failed),
            ),
        )
        return "partial" if any(failed) else "success"

    async def _settle_message(self, envelope: Envelope, statuses: dict[str, RowStatus], name: str) -> bool:
        problems = [_row_problem(line, statuses.get(line.uuid)) for line in envelope.lines]
        errors = [p for p in problems if p is not None]
        self._metrics.rows_imported.inc(len(problems) - len(errors))
        if not errors:
            self._settle(envelope)
            return False
        self._metrics.rows_failed.inc(len(errors))
        await self._dead_letter(envelope, "labelbox_rejected", errors, name)
        return True

    def _fail(self, error: BaseException) -> None:
        if self.fatal is None:
            log.error("labelbox_authentication_failed", extra=ctx(error=str(error)))
            self.fatal = error
        self.request_stop()

    # --- dead letters --------------------------------------------------------------------------

    async def _dead_letter_all(
        self, batch: Batch[Envelope], reason: str, errors: list[str], name: str | None
    ) -> None:
        await asyncio.gather(*(self._dead_letter(e, reason, errors, name) for e in batch.items))

    async def _dead_letter(
        self, envelope: Envelope, reason: str, errors: list[str], import_name: str | None = None
    ) -> None:
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
        )
        delay = 0.5
        while True:
            try:
                await self._dlq.write(letter)
                break
            except KafkaError as exc:
                log.warning("dlq_write_retry", extra=ctx(reason=reason, error=str(exc)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._metrics.dlq_records.labels(reason).inc()
        self._settle(envelope)

    # --- 5. settle and commit ------------------------------------------------------------------

    def _settle(self, envelope: Envelope) -> None:
        if self._owned(envelope) and envelope.tracker.settle(envelope.offset):
            assert self._commit_wanted is not None
            self._commit_wanted.set()
        self._release(envelope)

    def _release(self, envelope: Envelope) -> None:
        if not envelope.released:
            envelope.released = True
            self._buffered -= envelope.size
            self._metrics.buffered_bytes.set(self._buffered)

    async def _commit_loop(self) -> None:
        assert self._commit_wanted is not None
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
        due = {
            tp: (tracker, tracker.commit_offset)
            for tp, tracker in self._trackers.items()
            if tracker.needs_commit() and (only is None or tp in only)
        }
        if not due:
            return True
        try:
            await self._consumer.commit({tp: offset for tp, (_, offset) in due.items()})
        except KafkaError as exc:
            log.warning("commit_failed", extra=ctx(error=str(exc), partitions=len(due)))
            return False
        for tp, (tracker, offset) in due.items():
            tracker.mark_committed(offset)
            self._metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(offset)
        self._metrics.last_commit.set(time.time())
        return True

    # --- rebalance -----------------------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is settled on the revoked partitions, then forget them."""
        await self.commit(only=revoked)
        for tp in revoked:
            self._trackers.pop(tp, None)
            with contextlib.suppress(KeyError):  # another member owns its lag now
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        for envelope in self._batcher.drop(lambda e: e.tp in revoked):
            self._release(envelope)
        self.joined = False
        log.info("partitions_revoked", extra=ctx(partitions=sorted(tp.partition for tp in revoked)))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Note the assignment; new partitions stay paused while the buffer is full."""
        self.joined = True
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
        assert self._queue is not None
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
        await asyncio.shield(self.commit())
        log.info("worker_drained", extra=ctx(unsettled_bytes=self._buffered))

    async def _wait(self, task: asyncio.Task[None], deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, deadline - self._clock()))
        await _cancel(task)


def _row_problem(line: NdjsonLine, status: RowStatus | None) -> str | None:
    if status is None:
        return f"{line.uuid}: Labelbox reported no status for this row"
    if status.status == "SUCCESS":
        return None
    details = (
        "; ".join(f"{e.get('name', 'Error')}: {e.get('message', '')}" for e in status.errors) or status.status
    )
    return f"{line.uuid}: {details}"


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait until it is done (its exception, if any, was already reported)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
