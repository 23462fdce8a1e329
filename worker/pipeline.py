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
from aiokafka.errors import KafkaError, UnsupportedCodecError

from schemas import NdjsonMessage
from worker.batcher import Batch, Batcher, BatchLimits
from worker.convert import NdjsonLine, convert
from worker.decode import Rejection, decode
from worker.dlq import DeadLetter, DeadLetterWriter, replay_count
from worker.framing import Framed, unwrap
from worker.isolation import BisectionBudget, ForbiddenRuns, Refused
from worker.labelbox import (
    AuthenticationError,
    Forbidden,
    ImportState,
    LabelboxClient,
    RequestRejected,
    RowStatus,
    StatusUrlExpired,
    TransientError,
)
from worker.logs import ctx
from worker.metrics import Metrics
from worker.offsets import PartitionOffsets
from worker.ontology import Mismatch
from worker.preparation import DataRowRegistry, NeedsFetch, OntologyCache, RegistrationFailed
from worker.settings import Settings
from worker.source import DECODE_ERRORS, UndecodableBatch, locate_undecodable

log = logging.getLogger("worker.pipeline")
#: Exit statuses of ``python -m worker run``.
EXIT_OK, EXIT_INTERNAL, EXIT_SETTINGS, EXIT_AUTH, EXIT_UNDECODABLE = 0, 1, 2, 3, 4
#: Bytes counted per fetched record besides key and value: Python objects and bookkeeping.
_RECORD_OVERHEAD_BYTES = 200
#: Bytes counted per converted NDJSON line besides its bytes: the line object and its strings.
_LINE_OVERHEAD_BYTES = 250
#: How many times in a row one batch may fail its CRC check (each time fetched again) before the worker stops.
_CORRUPT_FETCHES_MAX = 3
#: How many times an expired status-file URL is refreshed (by polling the import) before giving up.
_STATUS_URL_REFRESHES = 3
#: GraphQL codes that refuse the request itself, whatever it carries: splitting the batch cannot help.
_NOT_ABOUT_CONTENT = frozenset({"GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED", "MALFORMED_REQUEST"})
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
    headers: tuple[tuple[str, bytes], ...] = ()  # the record's, read for a schema id (``worker.framing``)
    schema_id: str | None = None  # the Confluent schema id the value was framed with


def process_chunk(envelopes: list[Envelope], max_bytes: int) -> list[tuple[Envelope, Rejection | None]]:
    """Decode and convert each record (runs in a worker thread; touches only these envelopes)."""
    results: list[tuple[Envelope, Rejection | None]] = []
    for envelope in envelopes:
        framed = unwrap(envelope.value, envelope.headers)
        if isinstance(framed, Framed):
            envelope.schema_id = framed.schema_id
        outcome = decode(framed.payload, max_bytes) if isinstance(framed, Framed) else framed
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
        self._upload_slots = asyncio.Semaphore(settings.upload_concurrency)
        self._labelbox_ok = True
        self._forbidden = ForbiddenRuns(settings.labelbox_forbidden_ttl_s)
        self._last_import_ok: float | None = None  # clock time an import last settled
        self._in_flight = 0
        self._broker_ok = True
        self._stop_requested = False
        self._corrupt: tuple[tuple[TopicPartition, int] | None, int] = (None, 0)  # where, how many times
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
        """Readiness: a metadata request every few seconds tells whether the brokers answer.

        An outage is logged twice: ``broker_unreachable`` at the first failed check and
        ``broker_reachable`` with its duration at the next good one (checked every second meanwhile);
        the Kafka client's own errors in between are folded by ``worker.logs``. Runs until cancelled
        by the drain.
        """
        unreachable_since = 0.0
        while True:
            checked_at = self._clock()
            try:
                await asyncio.wait_for(self._consumer.topics(), timeout=_BROKER_CHECK_TIMEOUT_S)
                ok = True
            except (TimeoutError, KafkaError) as exc:
                ok, error = False, str(exc) or type(exc).__name__
            if ok != self._broker_ok:
                if ok:
                    outage_s = round(self._clock() - unreachable_since, 1)
                    log.warning("broker_reachable", extra=ctx(outage_s=outage_s))
                else:
                    unreachable_since = checked_at
                    log.warning("broker_unreachable", extra=ctx(error=error))
                self._broker_ok = ok
            self.health()  # keeps the lbworker_ready gauge current without a probe
            # Every second while unreachable: ready again (and the outage's end logged) promptly.
            await asyncio.sleep(_BROKER_CHECK_EVERY_S if ok else 1.0)

    # --- 1. fetch ------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            self._apply_backpressure()
            try:
                fetched = await self._consumer.getmany(timeout_ms=100, max_records=self._fetch_limit())
            except DECODE_ERRORS as exc:
                await self._undecodable(exc)
                continue
            where, _ = self._corrupt
            if where is not None and where[0] in fetched:  # the partition moved on: it was passing
                self._corrupt = (None, 0)
            for tp, records in fetched.items():
                self._accept(tp, records)

    async def _undecodable(self, error: Exception) -> None:
        """A batch that cannot be decoded: a missing codec stops the worker at once; a CRC failure is
        fetched again (the fetch position has not moved past it), and stops the worker if it persists.
        Raises :class:`UndecodableBatch`."""
        where = locate_undecodable(self._consumer)
        seen, times = self._corrupt
        times = times + 1 if where == seen else 1
        self._corrupt = (where, times)
        if isinstance(error, UnsupportedCodecError) or times >= _CORRUPT_FETCHES_MAX:
            raise UndecodableBatch(where, error) from error
        tp, offset = where if where else (None, None)
        log.warning(
            "corrupt_batch_refetch",
            extra=ctx(topic=tp and tp.topic, partition=tp and tp.partition, offset=offset, error=str(error)),
        )
        await asyncio.sleep(0.5)

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
            envelope.headers = tuple(record.headers or ())
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
        if run is not None and self._dead_letter_if_forbidden(envelope, run):
            return
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
            except Forbidden as exc:
                self._forbid(run, exc)
                for envelope in self._parked.pop(run, []):
                    self._dead_letter_if_forbidden(envelope, run)
                return
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

    def _forbid(self, run: str, error: Forbidden) -> None:
        """Labelbox refused this model run to the key: its messages go to the DLQ for a while."""
        if self._forbidden.refusal(run, self._clock()) is None:
            log.warning("model_run_forbidden", extra=ctx(model_run_id=run, error=str(error)))
        self._forbidden.forbid(run, str(error), self._clock())
        self._metrics.forbidden_model_runs.set(self._forbidden.count(self._clock()))

    def _dead_letter_if_forbidden(self, envelope: Envelope, run: str) -> bool:
        refusal = self._forbidden.refusal(run, self._clock())
        self._metrics.forbidden_model_runs.set(self._forbidden.count(self._clock()))
        if refusal is None:
            return False
        if self._owned(envelope):
            self._spawn(self._dead_letter(envelope, "model_run_forbidden", [refusal]))
        else:
            self._release(envelope)
        return True

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
        outcome = await self._import_in_slot(batch)
        if isinstance(outcome, Refused):
            budget = BisectionBudget(self._settings.import_bisect_max_imports)
            await self._isolate(batch, outcome, budget)
        self._metrics.import_latency.observe(self._clock() - closed_at)

    async def _import_in_slot(self, batch: Batch[Envelope]) -> str | Refused:
        """One import round holding an upload slot; the slot is free again before any bisection."""
        async with self._upload_slots:
            self._in_flight += 1
            self._metrics.imports_in_flight.inc()
            try:
                outcome = await self._import(batch)
            finally:
                self._in_flight -= 1
                self._metrics.imports_in_flight.dec()
        self._metrics.imports.labels(outcome if isinstance(outcome, str) else outcome.outcome).inc()
        return outcome

    async def _isolate(self, batch: Batch[Envelope], refused: Refused, budget: BisectionBudget) -> None:
        """Split a refused batch and import each half, recursively, until the messages Labelbox
        refuses stand alone; only those are dead-lettered (all of it once the budget is spent)."""
        if len(batch.items) < 2 or not refused.bisect or not budget.take(2):
            if len(batch.items) > 1:
                log.warning(
                    "bisection_stopped",
                    extra=ctx(
                        model_run_id=batch.model_run_id,
                        import_name=refused.import_name,
                        messages=len(batch.items),
                    ),
                )
            await self._dead_letter_all(batch, refused.reason, list(refused.errors), refused.import_name)
            return
        log.info(
            "import_bisected",
            extra=ctx(
                model_run_id=batch.model_run_id, import_name=refused.import_name, messages=len(batch.items)
            ),
        )
        await asyncio.gather(*(self._import_half(half, budget) for half in batch.split()))

    async def _import_half(self, half: Batch[Envelope], budget: BisectionBudget) -> None:
        self._metrics.bisection_imports.inc()
        outcome = await self._import_in_slot(half)
        if isinstance(outcome, Refused):
            await self._isolate(half, outcome, budget)

    async def _import(self, batch: Batch[Envelope]) -> str | Refused:
        """Import one batch and settle its messages; a :class:`Refused` batch is left to the caller."""
        payload = batch.payload()
        name = import_name(self._settings.kafka_topic, batch, payload)
        run = batch.model_run_id
        refusal = self._forbidden.refusal(run, self._clock())
        if refusal is not None:
            await self._dead_letter_all(batch, "model_run_forbidden", [refusal], None)
            return "forbidden"
        log.info(
            "import_started",
            extra=ctx(model_run_id=run, import_name=name, rows=batch.rows, bytes=len(payload)),
        )
        rounds, failing_since = 0, None
        while True:
            try:
                return await self._import_round(batch, name, payload)
            except AuthenticationError as exc:
                self._fail(exc)
                return "auth_error"
            except Forbidden as exc:
                self._forbid(run, exc)
                await self._dead_letter_all(batch, "model_run_forbidden", [str(exc)], name)
                return "forbidden"
            except RequestRejected as exc:
                if exc.code == "RESOURCE_NOT_FOUND":
                    await self._dead_letter_all(
                        batch, "model_run_unavailable", [f"model_run_id: {exc}"], name
                    )
                    return "model_run_unavailable"
                return Refused(
                    "import_rejected", (str(exc),), name, "rejected", exc.code not in _NOT_ABOUT_CONTENT
                )
            except RegistrationFailed as exc:
                await self._dead_letter_all(batch, "data_row_registration_failed", [str(exc)], None)
                return "registration_failed"
            except TransientError as exc:
                self._labelbox_ok = False
                rounds, failing_since = rounds + 1, failing_since or self._clock()
                if rounds >= self._settings.import_max_rounds and await self._labelbox_healthy(failing_since):
                    errors = (f"failed {rounds} times while Labelbox was healthy; last: {exc}",)
                    return Refused("import_failed_repeatedly", errors, name, "failed_repeatedly")
                log.warning(
                    "import_retry_round",
                    extra=ctx(model_run_id=run, import_name=name, error=str(exc), round=rounds),
                )
                await asyncio.sleep(self._round_pause_s())

    async def _import_round(self, batch: Batch[Envelope], name: str, payload: bytes) -> str | Refused:
        await self._ensure_data_rows(batch)
        state = await self._lb.create_import(batch.model_run_id, name, payload)
        state = await self._follow(state)
        self._labelbox_ok = True
        self._last_import_ok = self._clock()
        return await self._settle_import(batch, state)

    def _round_pause_s(self) -> float:
        """Between two rounds of one import: 1 to 5 s (shorter when the retry budget is shorter)."""
        return random.uniform(0.2, 1.0) * min(5.0, max(0.5, self._settings.labelbox_retry_max_s))

    async def _labelbox_healthy(self, failing_since: float) -> bool:
        """Labelbox works for others: an import settled since this batch first failed, or else (every
        import in flight failing too, or none) a cheap query answers."""
        if self._last_import_ok is not None and self._last_import_ok > failing_since:
            healthy = True
        else:
            healthy = await self._lb.probe()
        if healthy:
            self._labelbox_ok = True  # this batch's trouble is its own: do not hold readiness on it
        return healthy

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

    async def _settle_import(self, batch: Batch[Envelope], state: ImportState) -> str | Refused:
        if state.state == "FAILED":
            return Refused("import_failed", (f"Labelbox import {state.name} FAILED",), state.name, "failed")
        try:
            rows = await self._read_statuses(state)
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

    async def _read_statuses(self, state: ImportState) -> list[RowStatus]:
        """The status file's rows; an expired signed URL is refreshed by polling the import again."""
        for _ in range(_STATUS_URL_REFRESHES):
            if not state.status_file_url:
                raise TransientError("FINISHED import has no status file", "no_status_file")
            try:
                return await self._lb.fetch_statuses(state.status_file_url)
            except StatusUrlExpired as exc:
                log.info("status_url_refreshed", extra=ctx(import_name=state.name, error=str(exc)))
                polled = await self._lb.get_import(state.model_run_id, state.name)
                if polled is None:
                    raise TransientError(f"import {state.name} is not found", "import_missing") from exc
                state = polled
        raise TransientError(f"the status file URL of {state.name} kept expiring", "expired_url")

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
            schema_id=envelope.schema_id,
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
        # The last commit, shielded from cancellation, bounded: with the broker gone it would wait
        # for a group coordinator for ever. The deadline's last second is left for closing the clients.
        final_commit = asyncio.ensure_future(self.commit())
        await asyncio.wait({final_commit}, timeout=max(1.0, deadline - 1.0 - self._clock()))
        await _cancel(final_commit)
        uncommitted = {
            tp: t.commit_offset - t.committed for tp, t in self._trackers.items() if t.needs_commit()
        }
        if uncommitted:
            log.warning(
                "offsets_not_committed",
                extra=ctx(settled_offsets=sum(uncommitted.values()), partitions=len(uncommitted)),
            )
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
