"""Model-run preparation: the ontology check before upload, and data rows registered in the model run.

Two small stateful helpers over the Labelbox client, used by the pipeline:

- :class:`OntologyCache` fetches a model run's ontology on first sight, keeps it for ``ttl_s``, and
  refetches on a miss (a line that does not fit), at most once per ``min_refetch_s``, so a feature
  added to the ontology is picked up without hammering Labelbox for a producer that keeps sending
  an unknown name. An ontology with no features at all is not checked (the check is only as good as
  the ontology; a model run always has one on Labelbox), nor is one that cannot be read (logged as
  ``ontology_unreadable``; Labelbox still validates every row on import).
- :class:`DataRowRegistry` registers the data rows of a batch that are not yet known to be in the
  model run, waits for the task, and remembers them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from worker.labelbox import TaskStatus, TransientError
from worker.logs import ctx
from worker.ontology import Mismatch, Ontology
from worker.retry import patiently, until_done

Clock = Callable[[], float]
log = logging.getLogger("worker.preparation")


class OntologySource(Protocol):
    """What the cache needs of a Labelbox client."""

    async def fetch_ontology(self, model_run_id: str) -> dict[str, Any]: ...


class DataRowService(Protocol):
    """What the registry needs of a Labelbox client."""

    async def register_data_rows(
        self, model_run_id: str, data_row_ids: list[str], global_keys: list[str]
    ) -> str: ...

    async def task_status(self, kind: str, task_id: str) -> TaskStatus: ...


@dataclass(slots=True)
class _Entry:
    ontology: Ontology
    fetched_at: float


class OntologyCache:
    """Ontologies by model run id."""

    def __init__(
        self,
        client: OntologySource,
        *,
        ttl_s: float,
        min_refetch_s: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._min_refetch_s = min_refetch_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def verdict(
        self, model_run_id: str, bodies: Iterable[dict[str, object]], *, refetch_on_miss: bool = True
    ) -> tuple[int, Mismatch] | None:
        """(index, mismatch) of the first line of ``bodies`` that does not fit the cached ontology, or
        None. Never waits: raises :class:`NeedsFetch` when Labelbox must be asked first (no ontology
        yet or an expired one, or a miss on one old enough to refetch); then call :meth:`refresh` and
        ask again with ``refetch_on_miss=False``."""
        entry = self._entries.get(model_run_id)
        now = self._clock()
        if entry is None or (refetch_on_miss and now - entry.fetched_at >= self._ttl_s):
            raise NeedsFetch(model_run_id)
        found = _first_mismatch(entry.ontology, bodies)
        if found is not None and refetch_on_miss and now - entry.fetched_at >= self._min_refetch_s:
            raise NeedsFetch(model_run_id)
        return found

    async def refresh(self, model_run_id: str) -> None:
        """Fetch the model run's ontology, unless one was fetched less than ``min_refetch_s`` ago.

        Raises the client's errors (``RequestRejected`` for an unknown model run, ``TransientError``
        when Labelbox cannot be reached within the retry budget).
        """
        lock = self._locks.setdefault(model_run_id, asyncio.Lock())
        async with lock:  # one fetch per model run at a time
            entry = self._entries.get(model_run_id)
            now = self._clock()
            if entry is not None and now - entry.fetched_at < self._min_refetch_s:
                return
            normalized = await self._client.fetch_ontology(model_run_id)
            self._entries[model_run_id] = _Entry(_readable(model_run_id, normalized), now)

    async def refresh_patiently(self, model_run_id: str) -> None:
        """:meth:`refresh`, retried while Labelbox cannot be reached (``worker.retry.patiently``): the
        messages that wait for it must not be dropped. Raises the client's other errors."""
        await patiently(
            lambda: self.refresh(model_run_id),
            errors=(TransientError,),
            event="ontology_fetch_retry",
            log=log,
            first_s=1.0,
            max_s=5.0,
            model_run_id=model_run_id,
        )


class NeedsFetch(Exception):
    """The ontology must be fetched from Labelbox before this verdict can be given."""


def _readable(model_run_id: str, normalized: dict[str, Any]) -> Ontology:
    """The ontology, or an empty one (nothing checked; Labelbox still validates) if it cannot be read."""
    try:
        return Ontology.from_normalized(normalized)
    except ValueError as exc:
        log.error("ontology_unreadable", extra=ctx(model_run_id=model_run_id, error=str(exc)))
        return Ontology.from_normalized({"tools": [], "classifications": []})


def _first_mismatch(ontology: Ontology, bodies: Iterable[dict[str, object]]) -> tuple[int, Mismatch] | None:
    """Lazily: an empty ontology checks nothing, so ``bodies`` (each parsed on demand) is not read."""
    if ontology.is_empty:
        return None
    for index, body in enumerate(bodies):
        mismatch = ontology.check(body)
        if mismatch is not None:
            return index, mismatch
    return None


class RegistrationFailed(Exception):
    """Labelbox's data-row registration task ended FAILED."""


class DataRowRegistry:
    """Which data rows are known to be in which model run; registers the others."""

    def __init__(
        self,
        client: DataRowService,
        *,
        poll_interval_s: float,
        timeout_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._client = client
        self._poll_interval_s = poll_interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._known: dict[str, set[tuple[str, str]]] = {}

    def unknown(self, model_run_id: str, data_rows: Iterable[dict[str, str]]) -> set[tuple[str, str]]:
        """The (kind, value) pairs — kind ``globalKey`` or ``id`` — not yet known in the model run."""
        known = self._known.get(model_run_id, set())
        pairs = {next(iter(row.items())) for row in data_rows}
        return pairs - known

    async def ensure(self, model_run_id: str, data_rows: Iterable[dict[str, str]]) -> int:
        """Register the data rows not yet known; returns how many were registered.

        Raises :class:`RegistrationFailed` when the task fails, ``TransientError`` when it does not
        finish within the timeout, and the client's errors.
        """
        missing = self.unknown(model_run_id, data_rows)
        if not missing:
            return 0
        ids = sorted(value for kind, value in missing if kind == "id")
        keys = sorted(value for kind, value in missing if kind == "globalKey")
        task_id = await self._client.register_data_rows(model_run_id, ids, keys)
        await self._wait(task_id)
        self._known.setdefault(model_run_id, set()).update(missing)
        return len(missing)

    async def _wait(self, task_id: str) -> None:
        status = await until_done(
            lambda: self._client.task_status("data_rows", task_id),
            lambda s: s.done,
            interval_s=self._poll_interval_s,
            timeout_s=self._timeout_s,
            clock=self._clock,
            sleep=asyncio.sleep,
        )
        if status.status == "FAILED":
            raise RegistrationFailed(status.error_message or "data-row registration task FAILED")
        if status.status != "COMPLETE":
            raise TransientError(
                f"data-row registration task {task_id} did not finish ({status.reported_status})",
                "task_timeout",
            )
