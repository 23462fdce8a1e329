"""The import round: one batch -> a Labelbox import -> every message settled or dead-lettered.

``ImportRunner.upload(batch)`` registers the batch's data rows (when asked), creates the import
(multipart), follows it to FINISHED or FAILED, reads the status file (refreshing an expired signed
URL by polling again) and settles each message: imported when every row is SUCCESS, dead-lettered
otherwise. It keeps one bad message or model run from costing more than itself (``worker.isolation``):
a batch Labelbox refuses whole, that ends FAILED, or that keeps failing while Labelbox is healthy is
bisected until the messages responsible stand alone; a model run the key may not access is
remembered and its messages dead-lettered.

It talks to Labelbox through :class:`ImportClient` (``worker.labelbox.LabelboxClient`` in the worker, a
fake in unit tests) and hands its decisions to a :class:`Settlement` (the pipeline): ``settle`` an
imported message, ``dead_letter`` a refused one, ``fail`` on an invalid key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

from worker.batcher import Batch
from worker.concurrency import AdaptiveLimiter, AimdController
from worker.convert import NdjsonLine
from worker.envelope import Envelope
from worker.isolation import BisectionBudget, ForbiddenRuns, Refused
from worker.labelbox import (
    AttemptOutcome,
    AuthenticationError,
    Forbidden,
    ImportState,
    RequestRejected,
    RowStatus,
    StatusUrlExpired,
    TransientError,
)
from worker.logs import ctx
from worker.metrics import Metrics
from worker.preparation import DataRowRegistry, RegistrationFailed
from worker.retry import patiently, until_done
from worker.settings import Settings

log = logging.getLogger("worker.imports")
#: The paced first poll (``first_poll_s``) aims to find an import done this often: it waits
#: ``_PACE_DOWN`` less after an import its first poll found done, ``_PACE_UP`` more after one found still
#: running, so that the two balance at this share of hits, ``(1 - share) * up == share * down`` (a
#: quantile of the imports' time, tracked as the imports come: about 1.1 polls an import).
_PACE_HIT_SHARE = 0.9
_PACE_DOWN = 0.03
_PACE_UP = _PACE_DOWN * _PACE_HIT_SHARE / (1 - _PACE_HIT_SHARE)
#: A poll this close to the estimate counts as made at it (an event loop may wake a sleep a little early).
_PACE_SLACK = 0.01
#: After a 429 or 5xx, polls are paced this long (``first_poll_s``): Labelbox counts its rate limits per
#: minute, so a 429 says the key's budget is short for about that long, whatever the limit does meanwhile.
PACING_AFTER_OVERLOAD_S = 60.0
#: While imports wait for a slot and no 429, 5xx or round-trip jump came for this many poll intervals
#: (each import in flight polls once an interval, so an overload would have shown), every created import
#: adds one to the limit instead of one per round of imports.
_QUICK_GROWTH_POLLS = 2
#: How many times an expired status-file URL is refreshed (by polling the import) before giving up.
_STATUS_URL_REFRESHES = 3
#: GraphQL codes that refuse the request itself, whatever it carries: splitting the batch cannot help.
_NOT_ABOUT_CONTENT = frozenset({"GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED", "MALFORMED_REQUEST"})
#: What one import round ends in (the ``outcome`` label of ``lbworker_imports_total``).
Outcome = Literal[
    "success",
    "partial",
    "status_unavailable",
    "forbidden",
    "model_run_unavailable",
    "registration_failed",
    "auth_error",
]


class ImportClient(Protocol):
    """The Labelbox operations an import round needs."""

    async def create_import(self, model_run_id: str, name: str, payload: bytes) -> ImportState: ...

    async def get_import(self, model_run_id: str, name: str) -> ImportState | None: ...

    async def fetch_statuses(self, url: str) -> list[RowStatus]: ...

    async def probe(self) -> bool: ...


class Settlement(Protocol):
    """Where the runner's decisions go."""

    def settle(self, envelope: Envelope) -> None:
        """The message is imported."""

    async def dead_letter(
        self, envelope: Envelope, reason: str, errors: Sequence[str], import_name: str | None
    ) -> None:
        """The message goes to the DLQ (and is settled once the broker acknowledged it)."""

    def fail(self, error: BaseException) -> None:
        """Labelbox refused the API key: the worker must stop."""


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


class ImportRunner:
    """Runs import rounds with at most ``UPLOAD_CONCURRENCY`` in flight."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        client: ImportClient,
        settlement: Settlement,
        *,
        data_rows: DataRowRegistry | None = None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._client = client
        self._to = settlement
        self._data_rows = data_rows
        self._clock = clock
        self._sleep = sleep
        controller = AimdController(
            settings.upload_concurrency,
            clock,
            adaptive=settings.adaptive_concurrency,
            quick_growth_after_s=_QUICK_GROWTH_POLLS * settings.labelbox_poll_interval_s,
        )
        self._slots = AdaptiveLimiter(controller, on_change=metrics.upload_concurrency_limit.set)
        metrics.upload_concurrency_limit.set(self._slots.limit)
        self._forbidden = ForbiddenRuns(settings.labelbox_forbidden_ttl_s)
        self._last_ok: float | None = None  # when an import last settled
        #: How long after its create an import is done, as its polls tell (``first_poll_s``).
        self._done_after_s: float | None = None
        #: When the last 429 or 5xx came (``first_poll_s``); None: none yet.
        self._overloaded_at: float | None = None

    def labelbox_answered(
        self, operation: str, outcome: AttemptOutcome, started_at: float, rtt_s: float
    ) -> None:
        """Adaptive concurrency's signals (``ADAPTIVE_CONCURRENCY``): every 429 or 5xx Labelbox answers,
        to any operation (its rate limit is per organisation), halves the limit on imports in flight; a
        created import's upload round trip counts as a success, or as an overload when it jumps over
        the moving baseline. ``started_at`` is on the runner's clock."""
        if outcome == "overload":
            self._slots.record_overload(started_at)
            self._overloaded_at = self._clock()
        elif outcome == "ok" and operation == "create_import":
            self._slots.record_success(rtt_s=rtt_s, started_at=started_at)

    # --- forbidden model runs ------------------------------------------------------------------

    def refusal(self, model_run_id: str) -> str | None:
        """Labelbox's message while the key may not access this model run, else None."""
        before = len(self._forbidden)  # asked for every message: look at its own model run only
        refusal = self._forbidden.refusal(model_run_id, self._clock())
        if len(self._forbidden) != before:  # it expired
            self._metrics.forbidden_model_runs.set(len(self._forbidden))
        return refusal

    def expire_forbidden(self) -> None:
        """Drop every expired verdict and keep the gauge current (called with the readiness check)."""
        self._metrics.forbidden_model_runs.set(self._forbidden.count(self._clock()))

    def forbid(self, model_run_id: str, error: Forbidden) -> None:
        """Remember that Labelbox refused this model run to the key (``LABELBOX_FORBIDDEN_TTL_S``)."""
        if self._forbidden.refusal(model_run_id, self._clock()) is None:
            log.warning("model_run_forbidden", extra=ctx(model_run_id=model_run_id, error=str(error)))
        self._forbidden.forbid(model_run_id, str(error), self._clock())
        self._metrics.forbidden_model_runs.set(self._forbidden.count(self._clock()))

    # --- one batch, bisected when refused ------------------------------------------------------

    async def upload(self, batch: Batch[Envelope]) -> None:
        """Import the batch; what Labelbox refuses is isolated by bisection. Never raises a Labelbox
        error (every outcome ends in ``settle``, ``dead_letter`` or ``fail``)."""
        outcome = await self._round_in_slot(batch)
        if isinstance(outcome, Refused):
            await self._isolate(batch, outcome, BisectionBudget(self._settings.import_bisect_max_imports))

    async def _round_in_slot(self, batch: Batch[Envelope]) -> Outcome | Refused:
        """One import holding an upload slot; the slot is free again before any bisection."""
        async with self._slots.slot():
            self._metrics.imports_in_flight.inc()
            try:
                outcome = await self._import(batch)
            finally:
                self._metrics.imports_in_flight.dec()
        self._metrics.imports.labels(outcome if isinstance(outcome, str) else outcome.outcome).inc()
        return outcome

    async def _isolate(self, batch: Batch[Envelope], refused: Refused, budget: BisectionBudget) -> None:
        """Split a refused batch and import each half, recursively, until the messages Labelbox
        refuses stand alone; only those are dead-lettered (all of it once the budget is spent)."""
        fields = ctx(
            model_run_id=batch.model_run_id, import_name=refused.import_name, messages=len(batch.items)
        )
        if len(batch.items) < 2 or not refused.bisect or not budget.take(2):
            if len(batch.items) > 1:
                log.warning("bisection_stopped", extra=fields)
            await self._dead_letter_all(batch, refused.reason, refused.errors, refused.import_name)
            return
        log.info("import_bisected", extra=fields)
        await asyncio.gather(*(self._import_half(half, budget) for half in batch.split()))

    async def _import_half(self, half: Batch[Envelope], budget: BisectionBudget) -> None:
        self._metrics.bisection_imports.inc()
        outcome = await self._round_in_slot(half)
        if isinstance(outcome, Refused):
            await self._isolate(half, outcome, budget)

    # --- one import, its rounds ----------------------------------------------------------------

    async def _import(self, batch: Batch[Envelope]) -> Outcome | Refused:
        """Import one batch and settle its messages; a :class:`Refused` batch is left to the caller."""
        payload = batch.payload()
        name = import_name(self._settings.kafka_topic, batch, payload)
        run = batch.model_run_id
        refusal = self.refusal(run)
        if refusal is not None:
            await self._dead_letter_all(batch, "model_run_forbidden", (refusal,), None)
            return "forbidden"
        log.info(
            "import_started",
            extra=ctx(model_run_id=run, import_name=name, rows=batch.rows, bytes=len(payload)),
        )
        rounds, failing_since = 0, 0.0

        async def give_up(_: BaseException, attempts: int) -> bool:  # the batch may be to blame
            nonlocal rounds, failing_since
            rounds, failing_since = attempts, failing_since or self._clock()
            return rounds >= self._settings.import_max_rounds and await self._labelbox_healthy(failing_since)

        try:
            return await patiently(
                lambda: self._round_or_verdict(batch, name, payload),
                errors=(TransientError,),
                event="import_retry_round",
                log=log,
                pause_s=self._round_pause_s,
                give_up=give_up,
                sleep=self._sleep,
                model_run_id=run,
                import_name=name,
            )
        except TransientError as exc:
            errors = (f"failed {rounds} times while Labelbox was healthy; last: {exc}",)
            return Refused("import_failed_repeatedly", errors, name, "failed_repeatedly")

    async def _round_or_verdict(self, batch: Batch[Envelope], name: str, payload: bytes) -> Outcome | Refused:
        """One round; a failure that is not transient is a verdict, settled, never retried."""
        try:
            return await self._round(batch, name, payload)
        except TransientError:
            raise
        except Exception as exc:
            return await self._verdict(batch, name, exc)

    async def _verdict(self, batch: Batch[Envelope], name: str, error: Exception) -> Outcome | Refused:
        """What a non-transient failure of an import round means for its batch."""
        run = batch.model_run_id
        if isinstance(error, AuthenticationError):
            self._to.fail(error)
            return "auth_error"
        if isinstance(error, Forbidden):
            self.forbid(run, error)
            await self._dead_letter_all(batch, "model_run_forbidden", (str(error),), name)
            return "forbidden"
        if isinstance(error, RequestRejected) and error.code == "RESOURCE_NOT_FOUND":
            await self._dead_letter_all(batch, "model_run_unavailable", (f"model_run_id: {error}",), name)
            return "model_run_unavailable"
        if isinstance(error, RequestRejected):
            bisect = error.code not in _NOT_ABOUT_CONTENT
            return Refused("import_rejected", (str(error),), name, "rejected", bisect)
        if isinstance(error, RegistrationFailed):
            await self._dead_letter_all(batch, "data_row_registration_failed", (str(error),), None)
            return "registration_failed"
        raise error

    async def _round(self, batch: Batch[Envelope], name: str, payload: bytes) -> Outcome | Refused:
        await self._ensure_data_rows(batch)
        state = await self._client.create_import(batch.model_run_id, name, payload)
        state = await self._follow(state)
        self._last_ok = self._clock()
        if state.state == "FAILED":
            return Refused("import_failed", (f"Labelbox import {state.name} FAILED",), state.name, "failed")
        return await self._settle(batch, state)

    def _round_pause_s(self) -> float:
        """Between two rounds of one import: 1 to 5 s (shorter when the retry budget is shorter)."""
        return random.uniform(0.2, 1.0) * min(5.0, max(0.5, self._settings.labelbox_retry_max_s))

    async def _labelbox_healthy(self, failing_since: float) -> bool:
        """Labelbox works for others: an import settled since this batch first failed, or else (every
        import in flight failing too, or none) a cheap query answers."""
        return (self._last_ok is not None and self._last_ok > failing_since) or await self._client.probe()

    async def _ensure_data_rows(self, batch: Batch[Envelope]) -> None:
        if self._data_rows is None:
            return
        rows = [line.data_row_ref for envelope in batch.items for line in envelope.lines]
        added = await self._data_rows.ensure(batch.model_run_id, rows)
        if added:
            log.info("data_rows_registered", extra=ctx(model_run_id=batch.model_run_id, data_rows=added))

    def first_poll_s(self) -> float:
        """How long after its create the first poll of an import waits: ``LABELBOX_POLL_INTERVAL_S``,
        or, with adaptive concurrency, for :data:`PACING_AFTER_OVERLOAD_S` after a 429 or 5xx
        (Labelbox's rate limit is reached; not after a round-trip jump alone), the time after which
        imports are found done 9 times out of 10, if longer: a poll that finds an import still
        running spends a token of the shared rate limit a create needs. Pacing lasts whatever the
        limit does meanwhile: a limit back at ``UPLOAD_CONCURRENCY`` is when its polls would spend
        the most. The time is learned from every import's polls (:meth:`_learn_done_after`)."""
        interval = self._settings.labelbox_poll_interval_s
        if not self._pacing() or self._done_after_s is None:
            return interval
        return max(interval, self._done_after_s)

    def _learn_done_after(self, seen_s: float, running_s: float | None) -> None:
        """An import was seen done ``seen_s`` after its create, and still running ``running_s`` after
        it (its poll before; None: seen done at its first poll). The first import's ``seen_s`` is the
        first estimate; then an import still running at the estimate raises it by ``_PACE_UP`` (to at
        least ``running_s``), one seen done by it lowers it by ``_PACE_DOWN``; never past ``seen_s``,
        which the import certainly took no longer than."""
        wait = self._done_after_s
        if wait is None:
            wait = seen_s
        elif running_s is not None and running_s >= wait * (1 - _PACE_SLACK):
            wait = max(wait * (1 + _PACE_UP), running_s)
        elif running_s is None or seen_s < wait:
            wait = wait * (1 - _PACE_DOWN)
        self._done_after_s = min(wait, seen_s)

    def _pacing(self) -> bool:
        return (
            self._settings.adaptive_concurrency
            and self._overloaded_at is not None
            and self._clock() - self._overloaded_at < PACING_AFTER_OVERLOAD_S
        )

    async def _follow(self, state: ImportState) -> ImportState:
        settings = self._settings
        created_at = asked_at = self._clock()
        asked_before: float | None = None  # the poll before the last one
        pauses = 0

        async def pause(interval_s: float) -> None:
            nonlocal pauses
            pauses += 1
            await self._sleep(self.first_poll_s() if pauses == 1 else interval_s)

        async def poll() -> ImportState:
            nonlocal asked_at, asked_before
            asked_before, asked_at = (asked_at if pauses > 1 else None), self._clock()
            return await self._poll(state)

        state = await until_done(
            poll,
            lambda s: s.done,
            interval_s=settings.labelbox_poll_interval_s,
            timeout_s=settings.labelbox_import_timeout_s,
            clock=self._clock,
            sleep=pause,
            first=state,
        )
        if state.done and pauses:
            running_s = None if asked_before is None else asked_before - created_at
            self._learn_done_after(asked_at - created_at, running_s)
        if not state.done:
            raise TransientError(
                f"import {state.name} still {state.reported_state} at the deadline", "import_timeout"
            )
        return state

    async def _poll(self, state: ImportState) -> ImportState:
        polled = await self._client.get_import(state.model_run_id, state.name)
        if polled is None:
            raise TransientError(f"import {state.name} is not found", "import_missing")
        return polled

    # --- settling ------------------------------------------------------------------------------

    async def _settle(self, batch: Batch[Envelope], state: ImportState) -> Outcome:
        try:
            rows = await self._read_statuses(state)
        except TransientError as exc:
            await self._dead_letter_all(batch, "import_status_unavailable", (str(exc),), state.name)
            return "status_unavailable"
        statuses = {row.uuid: row for row in rows}
        refused = self._settle_imported(batch, statuses)
        await asyncio.gather(
            *(self._to.dead_letter(e, "labelbox_rejected", errors, state.name) for e, errors in refused)
        )
        fields = ctx(
            model_run_id=state.model_run_id,
            import_name=state.name,
            rows=batch.rows,
            failed_messages=len(refused),
        )
        log.info("import_finished", extra=fields)
        return "partial" if refused else "success"

    async def _read_statuses(self, state: ImportState) -> list[RowStatus]:
        """The status file's rows; an expired signed URL is refreshed by polling the import again."""
        for _ in range(_STATUS_URL_REFRESHES):
            if not state.status_file_url:
                raise TransientError("FINISHED import has no status file", "no_status_file")
            try:
                return await self._client.fetch_statuses(state.status_file_url)
            except StatusUrlExpired as exc:
                log.info("status_url_refreshed", extra=ctx(import_name=state.name, error=str(exc)))
                state = await self._poll(state)
        raise TransientError(f"the status file URL of {state.name} kept expiring", "expired_url")

    def _settle_imported(
        self, batch: Batch[Envelope], statuses: dict[str, RowStatus]
    ) -> list[tuple[Envelope, list[str]]]:
        """Settle, at once, each message whose rows all succeeded; the others with their row errors.

        No task per message, and the row counters move once per batch."""
        refused: list[tuple[Envelope, list[str]]] = []
        failed_rows = 0
        for envelope in batch.items:
            errors = [
                problem
                for line in envelope.lines
                if (problem := _row_problem(line, statuses.get(line.uuid))) is not None
            ]
            if errors:
                refused.append((envelope, errors))
                failed_rows += len(errors)
            else:
                self._to.settle(envelope)
        self._metrics.rows_imported.inc(batch.rows - failed_rows)
        if failed_rows:
            self._metrics.rows_failed.inc(failed_rows)
        return refused

    async def _dead_letter_all(
        self, batch: Batch[Envelope], reason: str, errors: Sequence[str], name: str | None
    ) -> None:
        await asyncio.gather(*(self._to.dead_letter(e, reason, errors, name) for e in batch.items))


def _error_text(error: object) -> str:
    """One entry of a status-file row's ``errors``: ``name: message`` for the object Labelbox writes,
    the value itself for anything else (never a crash on an unexpected shape)."""
    if isinstance(error, dict):
        return f"{error.get('name', 'Error')}: {error.get('message', '')}"
    return str(error)


def _row_problem(line: NdjsonLine, status: RowStatus | None) -> str | None:
    if status is None:
        return f"{line.uuid}: Labelbox reported no status for this row"
    if status.status == "SUCCESS":
        return None
    details = "; ".join(_error_text(e) for e in status.errors) or status.reported_status
    return f"{line.uuid}: {details}"
