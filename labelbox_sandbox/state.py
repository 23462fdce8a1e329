"""Everything the sandbox remembers: model runs (and their data rows), imports, stored predictions, tasks,
the request log, faults.

Pure: no I/O, no awaits; time comes from the injected clock (seconds, monotonic). An import is processed
(validated, its SUCCESS rows stored) when it is created; it *reports* RUNNING until its processing delay has
passed on the clock, then FINISHED (or FAILED). Tests may drive all of it through this object; the HTTP
layer (`app.py`, `admin.py`) is a thin shell over it.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from labelbox_sandbox.faults import FaultBook, FaultRule
from labelbox_sandbox.ratelimit import TokenBuckets
from labelbox_sandbox.validate import RowResult, error, read_import, validate_import

EMPTY_ONTOLOGY: dict[str, Any] = {"tools": [], "classifications": []}
ROW_FAILURE_ERROR_NAME = "InjectedRowFailure"
IMPORT_FAULT_ORDER = ("import_failed", "row_failure", "slow_import", "lost_response")


class ImportNameConflict(Exception):
    """An import with this name already exists in this model run."""


class ImportRefused(Exception):
    """An injected `import_refused` fault refused the import whole; nothing was created."""


class UnknownModelRun(Exception):
    """The sandbox was configured with a fixed set of model runs and this is not one of them."""


def synthetic_id(prefix: str, key: str) -> str:
    """A stable 25-character cuid-like id derived from `key` (same key, same id)."""
    return "cl" + prefix + hashlib.sha1(key.encode()).hexdigest()[: 23 - len(prefix)]


@functools.lru_cache(maxsize=65536)
def data_row_id_for_global_key(global_key: str) -> str:
    """The data row id the sandbox assigns to a global key."""
    return synthetic_id("dr", global_key)


@dataclass
class ModelRun:
    id: str
    model_id: str
    ontology_id: str
    ontology: dict[str, Any] | None = None
    data_row_ids: set[str] = field(default_factory=set)
    global_keys: set[str] = field(default_factory=set)
    label_ids: set[str] = field(default_factory=set)
    project_ids: set[str] = field(default_factory=set)

    def has_data_row(self, data_row: Mapping[str, Any]) -> bool:
        return data_row.get("id") in self.data_row_ids or data_row.get("globalKey") in self.global_keys

    def add_data_rows(self, data_row_ids: Iterable[str], global_keys: Iterable[str]) -> None:
        for key in global_keys:
            self.global_keys.add(key)
            self.data_row_ids.add(data_row_id_for_global_key(key))
        self.data_row_ids.update(data_row_ids)


@dataclass(frozen=True)
class ImportFaults:
    """The `create_import` faults that hit one import (see `faults.py`)."""

    failure: str | None = None
    row_failure: FaultRule | None = None
    extra_delay_s: float = 0.0
    lost_response: bool = False

    def kinds(self) -> list[str]:
        hit = {
            "import_failed": self.failure is not None,
            "row_failure": self.row_failure is not None,
            "slow_import": self.extra_delay_s > 0,
            "lost_response": self.lost_response,
        }
        return [kind for kind, was_hit in hit.items() if was_hit]


@dataclass
class ImportRecord:
    """One prediction import.

    `failure`: why it ends FAILED (None if it finishes). `faults`: the injected faults that hit it.
    """

    id: str
    name: str
    model_run_id: str
    created_at: float
    processing_delay_s: float
    input: bytes
    statuses: list[dict[str, Any]]
    failure: str | None = None
    faults: ImportFaults = field(default_factory=ImportFaults)

    def state_at(self, now: float) -> str:
        if now - self.created_at < self.processing_delay_s:
            return "RUNNING"
        return "FAILED" if self.failure is not None else "FINISHED"

    def progress_at(self, now: float) -> str:
        if self.processing_delay_s <= 0:
            return "100%"
        fraction = min(1.0, max(0.0, (now - self.created_at) / self.processing_delay_s))
        return f"{int(fraction * 100)}%"

    def errors(self) -> list[dict[str, Any]]:
        """The lines of the error file: FAILURE status lines, or one line saying why the import FAILED."""
        if self.failure is not None:
            reason = error("ImportFailed", self.failure)
            return [{"uuid": None, "dataRow": None, "status": "FAILURE", "errors": [reason]}]
        return [status for status in self.statuses if status["status"] == "FAILURE"]


@dataclass
class Task:
    """A data-row or label registration task; COMPLETE once the processing delay has passed.

    A data-row task's rows (`data_row_ids`, `global_keys`) join the model run when it completes, not
    before: an import that does not wait for its registration meets rows not yet in the model run.
    """

    id: str
    kind: str
    model_run_id: str
    created_at: float
    processing_delay_s: float
    data_row_ids: tuple[str, ...] = ()
    global_keys: tuple[str, ...] = ()
    applied: bool = False

    def status_at(self, now: float) -> str:
        return "RUNNING" if now - self.created_at < self.processing_delay_s else "COMPLETE"


@dataclass(frozen=True)
class RequestRecord:
    """One request received (admin requests excepted).

    `t`: when it arrived, on the state's clock. `status`: the HTTP status answered, 0 if the connection was
    dropped. `fault`: the kinds of the faults that hit it. `error_code`: the GraphQL error code answered.
    """

    t: float
    method: str
    path: str
    operation: str
    model_run_id: str | None
    import_name: str | None
    status: int
    fault: str | None
    error_code: str | None = None


@dataclass(slots=True)
class _Stored:
    """A stored prediction: its parsed line, or (lean mode) its bytes, parsed when asked for. Many
    long-lived parsed lines make every allocation dearer (the collector walks them); bytes do not."""

    line: dict[str, Any] | bytes
    import_id: str

    def parsed(self) -> dict[str, Any]:
        line = self.line
        if isinstance(line, bytes):
            parsed: dict[str, Any] = orjson.loads(line)
            return parsed
        return line


class SandboxState:
    """The sandbox's memory. Not thread-safe: use it from the event loop that serves the sandbox.

    `model_run_ids`: if given, only these model runs exist; otherwise any id is accepted and the model run
    is created on first use. `require_data_row_membership`: rows on data rows not registered in the model
    run (by the registration mutation, or `set_data_rows`) FAIL with `DataRowNotInModelRun`, as on
    Labelbox; on by default. `task_delay_s`: how long registration
    tasks report RUNNING (default: `processing_delay_s`; the Labelbox SDK sleeps 5 s between task polls).
    `rate_limit_per_s`: GraphQL requests a second per API key before HTTP 429 (a token bucket holding
    `rate_limit_burst`, default the rate; see `ratelimit.py`); None: no limit. `lean`: read uploads with
    `validate.read_import` (JSON objects keyed by uuid; no line rules, no ontology) instead of validating
    them, for benchmarks; faults, statuses and storage are the same, and membership is checked for
    lines whose `dataRow` can be read (a line without one is stored as SUCCESS: nothing checks it), and
    a loaded ontology is not used.
    """

    def __init__(
        self,
        *,
        processing_delay_s: float = 0.2,
        model_run_ids: Iterable[str] | None = None,
        require_data_row_membership: bool = True,
        task_delay_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rate_limit_per_s: float | None = None,
        rate_limit_burst: float | None = None,
        lean: bool = False,
    ) -> None:
        self.lean = lean
        self.processing_delay_s = processing_delay_s
        self.task_delay_s = processing_delay_s if task_delay_s is None else task_delay_s
        self.require_data_row_membership = require_data_row_membership
        self.clock = clock
        self.faults = FaultBook(clock)
        self._fixed_model_run_ids = frozenset(model_run_ids) if model_run_ids is not None else None
        self.rate_limit: TokenBuckets | None = None
        self.set_rate_limit(rate_limit_per_s, rate_limit_burst)
        self.reset()

    def reset(self) -> None:
        """Forget everything except the configuration; clears faults too."""
        self.model_runs: dict[str, ModelRun] = {}
        self.imports: dict[str, ImportRecord] = {}
        self.tasks: dict[str, Task] = {}
        self._pending_tasks: list[Task] = []
        self.request_log: list[RequestRecord] = []
        self.blobs: dict[str, bytes] = {}
        self._imports_by_name: dict[tuple[str, str], ImportRecord] = {}
        self._stored: dict[str, dict[str, _Stored]] = {}
        self._uploads: dict[str, dict[str, int]] = {}
        self.faults.clear()
        if self.rate_limit is not None:  # the limit is configuration: kept, with full buckets
            self.set_rate_limit(self.rate_limit.per_s, self.rate_limit.burst)

    def set_rate_limit(self, per_s: float | None, burst: float | None = None) -> None:
        """Limit GraphQL requests to `per_s` a second per API key (bursts of `burst`); None: no limit."""
        self.rate_limit = None if per_s is None else TokenBuckets(per_s, self.clock, burst)

    # --- faults (Python API; the admin endpoints call these too) ---

    def add_fault(self, rule: FaultRule) -> int:
        """Put a fault rule in force; returns its id."""
        return self.faults.add(rule)

    def clear_faults(self) -> None:
        self.faults.clear()

    # --- model runs ---

    def model_run(self, model_run_id: str) -> ModelRun:
        """The model run, created on first use. Raises UnknownModelRun if the set of model runs is fixed."""
        run = self.model_runs.get(model_run_id)
        if run is not None:
            return run
        if self._fixed_model_run_ids is not None and model_run_id not in self._fixed_model_run_ids:
            raise UnknownModelRun(model_run_id)
        run = ModelRun(
            id=model_run_id,
            model_id=synthetic_id("md", model_run_id),
            ontology_id=synthetic_id("on", model_run_id),
        )
        self.model_runs[model_run_id] = run
        return run

    def model_run_by_model(self, model_id: str) -> ModelRun | None:
        return next((run for run in self.model_runs.values() if run.model_id == model_id), None)

    def model_run_by_ontology(self, ontology_id: str) -> ModelRun | None:
        return next((run for run in self.model_runs.values() if run.ontology_id == ontology_id), None)

    def add_data_rows(
        self, model_run_id: str, data_row_ids: Iterable[str] = (), global_keys: Iterable[str] = ()
    ) -> None:
        """Add data rows to the model run's membership (what a completed registration task does)."""
        self.model_run(model_run_id).add_data_rows(data_row_ids, global_keys)

    def load_ontology(self, model_run_id: str, normalized: dict[str, Any]) -> None:
        """Give a model run an ontology (Labelbox `normalized` JSON)."""
        self.model_run(model_run_id).ontology = normalized

    def set_data_rows(
        self, model_run_id: str, data_row_ids: Iterable[str], global_keys: Iterable[str]
    ) -> None:
        """Replace the model run's data-row membership."""
        run = self.model_run(model_run_id)
        run.data_row_ids.clear()
        run.global_keys.clear()
        run.add_data_rows(data_row_ids, global_keys)

    # --- imports ---

    def find_import(self, model_run_id: str, name: str) -> ImportRecord | None:
        return self._imports_by_name.get((model_run_id, name))

    def create_import(
        self,
        model_run_id: str,
        name: str,
        payload: bytes,
        *,
        failure: str | None = None,
        faults: ImportFaults | None = None,
    ) -> ImportRecord:
        """Validate and store an upload. Raises ImportNameConflict, UnknownModelRun, ImportRefused.

        `failure`: make the import end FAILED for this reason (e.g. its fileUrl could not be fetched).
        `faults`: the injected faults to apply; by default those in force for `create_import` (and this
        model run) are taken from `self.faults`, only once the import is known to be created; an
        `import_refused` or `import_failed` rule with `uuids` / `data_rows` only when a line is chosen.
        """
        run = self.model_run(model_run_id)
        if (model_run_id, name) in self._imports_by_name:
            raise ImportNameConflict(
                f"Import with name '{name}' already exists in model run '{model_run_id}'"
            )
        self.settle_tasks()
        results = read_import(payload) if self.lean else validate_import(payload, run.ontology)

        @functools.cache  # (uuid, data row) of every line, only if a fault rule asks
        def lines() -> list[tuple[str | None, dict[str, Any] | None]]:
            return [(result.uuid, _status_data_row(result.data_row)) for result in results]

        refusal = self.faults.take(
            "create_import", {"import_refused"}, model_run_id, lambda rule: rule.holds_a_chosen_line(lines())
        )
        if refusal is not None:
            raise ImportRefused(refusal.effective_message)
        faults = faults if faults is not None else self._take_import_faults(model_run_id, lines)
        record = ImportRecord(
            id=synthetic_id("im", f"{len(self.imports)}/{model_run_id}/{name}"),
            name=name,
            model_run_id=model_run_id,
            created_at=self.clock(),
            processing_delay_s=self.processing_delay_s + faults.extra_delay_s,
            input=payload,
            statuses=self._status_lines(run, results, faults.row_failure),
            failure=failure if failure is not None else faults.failure,
            faults=faults,
        )
        self.imports[record.id] = record
        self._imports_by_name[(model_run_id, name)] = record
        self._count_uploads(model_run_id, results)
        if record.failure is None:
            self._store(model_run_id, record, results)
        return record

    def _take_import_faults(
        self, model_run_id: str, lines: Callable[[], list[tuple[str | None, dict[str, Any] | None]]]
    ) -> ImportFaults:
        def chosen(rule: FaultRule) -> bool:
            return rule.kind != "import_failed" or rule.holds_a_chosen_line(lines())

        def take(kind: str) -> FaultRule | None:
            return self.faults.take("create_import", {kind}, model_run_id, chosen)

        failed, row_failure, slow, lost = (take(kind) for kind in IMPORT_FAULT_ORDER)
        return ImportFaults(
            failure=failed.message if failed is not None else None,
            row_failure=row_failure,
            extra_delay_s=slow.effective_delay_s if slow is not None else 0.0,
            lost_response=lost is not None,
        )

    def _status_lines(
        self, run: ModelRun, results: list[RowResult], row_failure: FaultRule | None
    ) -> list[dict[str, Any]]:
        """The status file's lines, one per result. Without a row fault, a valid line on a data row of
        the model run is SUCCESS at the cost of a dict (a lean upload's every line); the rest are
        written by ``_status_line``, which says why they failed."""
        if row_failure is not None:
            return [self._status_line(run, result, row_failure) for result in results]
        check = self.require_data_row_membership
        known: dict[tuple[Any, Any], dict[str, Any]] = {}  # status data row by (id, globalKey) read
        statuses: list[dict[str, Any]] = []
        for result in results:
            data_row = result.data_row
            if result.errors or result.uuid is None or data_row is None:
                statuses.append(self._status_line(run, result, None))
                continue
            read = (data_row.get("id"), data_row.get("globalKey"))
            shown = known.get(read)
            if shown is None:
                if check and not run.has_data_row(data_row):  # DataRowNotInModelRun, said there
                    statuses.append(self._status_line(run, result, None))
                    continue
                shown = known[read] = _status_row_ref(data_row)
            statuses.append({"uuid": result.uuid, "dataRow": shown, "status": "SUCCESS"})
        return statuses

    def _status_line(self, run: ModelRun, result: RowResult, row_failure: FaultRule | None) -> dict[str, Any]:
        errors = [*result.errors, *self._late_errors(run, result, row_failure)]
        status: dict[str, Any] = {
            "uuid": result.uuid,
            "dataRow": _status_data_row(result.data_row),
            "status": "FAILURE" if errors else "SUCCESS",
        }
        if errors:
            status["errors"] = errors
        return status

    def _late_errors(
        self, run: ModelRun, result: RowResult, row_failure: FaultRule | None
    ) -> list[dict[str, Any]]:
        """Errors found after validation: data row membership, injected row failures."""
        if not result.ok or result.uuid is None or result.data_row is None:
            return []
        if self.require_data_row_membership and not run.has_data_row(result.data_row):
            return [error("DataRowNotInModelRun", f"Data row {result.data_row} is not in model run {run.id}")]
        if row_failure is not None and row_failure.fails_row(result.uuid, _status_data_row(result.data_row)):
            return [error(ROW_FAILURE_ERROR_NAME, row_failure.message)]
        return []

    def _count_uploads(self, model_run_id: str, results: list[RowResult]) -> None:
        counts = self._uploads.setdefault(model_run_id, {})
        for result in results:
            if result.uuid is not None:
                counts[result.uuid] = counts.get(result.uuid, 0) + 1

    def _store(self, model_run_id: str, record: ImportRecord, results: list[RowResult]) -> None:
        stored = self._stored.setdefault(model_run_id, {})
        for result, status in zip(results, record.statuses, strict=True):
            line = result.raw if self.lean and result.raw is not None else result.line
            if status["status"] == "SUCCESS" and result.uuid is not None and line is not None:
                stored[result.uuid] = _Stored(line=line, import_id=record.id)

    # --- stored predictions ---

    def predictions(self, model_run_id: str) -> list[dict[str, Any]]:
        """The accepted prediction lines of a model run, one per uuid (the latest upload wins)."""
        return [stored.parsed() for stored in self._stored.get(model_run_id, {}).values()]

    def all_predictions(self) -> dict[str, list[dict[str, Any]]]:
        return {model_run_id: self.predictions(model_run_id) for model_run_id in self._stored}

    def upload_counts(self, model_run_id: str) -> dict[str, int]:
        """How many times each uuid was uploaded to the model run (in any import, accepted or not)."""
        return dict(self._uploads.get(model_run_id, {}))

    def counts(self, model_run_id: str) -> dict[str, Any]:
        """Rows stored, rows uploaded, and how many uuids were uploaded more than once."""
        uploads = self._uploads.get(model_run_id, {})
        return {
            "rows": len(self._stored.get(model_run_id, {})),
            "uploads": sum(uploads.values()),
            "uuids": len(uploads),
            "reuploaded_uuids": sum(1 for count in uploads.values() if count > 1),
        }

    def all_counts(self) -> dict[str, dict[str, Any]]:
        model_run_ids = set(self._uploads) | set(self._stored)
        return {model_run_id: self.counts(model_run_id) for model_run_id in sorted(model_run_ids)}

    # --- tasks ---

    def create_task(
        self,
        kind: str,
        model_run_id: str,
        data_row_ids: Iterable[str] = (),
        global_keys: Iterable[str] = (),
    ) -> Task:
        """A registration task; a `data_rows` task adds its rows to the model run once COMPLETE."""
        task = Task(
            id=synthetic_id("tk", f"{len(self.tasks)}/{kind}/{model_run_id}"),
            kind=kind,
            model_run_id=model_run_id,
            created_at=self.clock(),
            processing_delay_s=self.task_delay_s,
            data_row_ids=tuple(data_row_ids),
            global_keys=tuple(global_keys),
        )
        self.tasks[task.id] = task
        self._pending_tasks.append(task)
        self.settle_tasks()
        return task

    def settle_tasks(self) -> None:
        """Apply the data rows of the registration tasks that have completed by now."""
        now = self.clock()
        for task in self._pending_tasks:
            if not task.applied and task.status_at(now) == "COMPLETE":
                task.applied = True
                self.model_run(task.model_run_id).add_data_rows(task.data_row_ids, task.global_keys)
        self._pending_tasks = [task for task in self._pending_tasks if not task.applied]

    # --- request log ---

    def log_request(self, record: RequestRecord) -> None:
        self.request_log.append(record)

    def requests(self, operation: str | None = None) -> list[RequestRecord]:
        """The request log, optionally only one operation's requests."""
        return [r for r in self.request_log if operation is None or r.operation == operation]


def _status_data_row(data_row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if data_row is None else _status_row_ref(data_row)


def _status_row_ref(data_row: Mapping[str, Any]) -> dict[str, Any]:
    """A status line's ``dataRow``: the id, and the global key the line named the row by."""
    global_key = data_row.get("globalKey")
    if isinstance(global_key, str) and data_row.get("id") is None:
        return {"id": data_row_id_for_global_key(global_key), "globalKey": global_key}
    return {"id": data_row.get("id")}
