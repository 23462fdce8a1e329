"""Fault injection rules: what to break, on which operation, how many times or for how long.

Pure bookkeeping with an injected clock; the HTTP layer (`app.py`) and the state (`state.py`) act the faults
out.

A rule is a `FaultRule` (also accepted as JSON by `POST /_sandbox/faults`):

- `http_status`: answer HTTP `status` (default 503; e.g. 500/502/503, or 404 on `status_file`) with a
  plain-text body.
- `rate_limit`: HTTP 429 with `Retry-After: <retry_after_s>` and JSON `{"message": "You have exceeded …"}`.
- `latency`: sleep `delay_s` (default 1) before answering normally.
- `hang`: sleep `delay_s` (default 3600; cut short by `Sandbox.stop()`), then drop the connection.
- `reset`: drop the connection (TCP RST) without answering.
- `graphql_error`: HTTP `status` (default 200; e.g. 409 or 403) with
  `{"data": null, "errors": [{"message": message, "extensions": {"code": code}}]}` (`code` default
  `INTERNAL_SERVER_ERROR`), plus `"exception": {"status": exception_status}` in `extensions` when
  `exception_status` is given.
- `empty_body`: HTTP 200 with the body `{}` (neither `data` nor `errors`).
- `forbidden`: needs `model_run_id`. Every GraphQL operation about that model run — `create_import`,
  `poll_import`, `model_run`, `model` and `ontology` reached from it (its model's id, its ontology's id),
  `register_data_rows`, `register_labels`, `task_status` of its tasks — answers HTTP `status` (default 200;
  403 is the other realistic choice) with `{"data": null, "errors": [{"message": "You do not have access
  to model run <id>", "extensions": {"code": "AUTHORIZATION_ERROR"}}]}` (`message` replaces the text when
  given). Nothing is created. Unlike the other kinds, `count` defaults to None (in force until removed).
  Authentication and GraphQL validation come first, as on Labelbox.
- `expired_url`: a status/error/input file fetch (operation `status_file` or `input_file`; `any` means
  both) answers HTTP 403 with an S3-style XML body, `<Code>AccessDenied</Code>` and `<Message>Request has
  expired</Message>`, as a signed URL past its expiry does. With `count` (default 1) only that many fetches.
- `import_refused`: a `create_import` whose payload holds a line with a uuid in `uuids` or a data row in
  `data_rows` (global keys or data row ids; a line by global key matches its data row id too; with neither
  given, any line) answers HTTP 200 `{"data": null, "errors": [{"message": message, "extensions":
  {"code": "INTERNAL_SERVER_ERROR", "exception": {"status": 400}}}]}` (what the Labelbox SDK raises as
  `InvalidQueryError`) and creates nothing. Imports without such a line pass and do not count.
- `import_failed`: the import is created, then ends FAILED with `message`; nothing is stored. With `uuids`
  or `data_rows`, only imports holding such a line (others pass and do not count).
- `row_failure`: rows whose uuid is in `uuids` or whose data row is in `data_rows`, or a deterministic
  `fraction` of uuids (by hash), FAIL with error name `InjectedRowFailure` and `message`.
- `slow_import`: the import stays RUNNING `delay_s` (default 5) longer.
- `lost_response`: the import is created and stored, then the connection drops before the answer.

The last five only apply to `create_import`. Every rule has `operation` (default `any`), `count` (how many
requests it hits; None = no limit; default 1, None for `forbidden`), `duration_s` (active for that long
after it is added), `skip` (let that many matching requests through first) and `model_run_id` (only
requests about that model run: the model run a GraphQL operation names or reaches, the import a file
belongs to; a request that names none does not match).

Operations: `create_import`, `poll_import`, `model_run`, `model`, `ontology`, `register_data_rows`,
`register_labels`, `task_status`, `user`, `unknown` (a request whose document could not be read),
`graphql` (all of these), `status_file` (status and error files), `input_file`, `blob`, `any` (every
non-admin request).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "http_status",
    "rate_limit",
    "latency",
    "hang",
    "reset",
    "graphql_error",
    "import_failed",
    "row_failure",
    "slow_import",
    "lost_response",
    "forbidden",
    "import_refused",
    "empty_body",
    "expired_url",
]
Operation = Literal[
    "any",
    "graphql",
    "create_import",
    "poll_import",
    "model_run",
    "model",
    "ontology",
    "register_data_rows",
    "register_labels",
    "task_status",
    "user",
    "unknown",
    "status_file",
    "input_file",
    "blob",
]
#: The operations that are GraphQL root fields (the others are groups, files and blobs).
GRAPHQL_OPERATIONS = frozenset(get_args(Operation)) - {"any", "graphql", "status_file", "input_file", "blob"}
FILE_OPERATIONS = frozenset({"status_file", "input_file"})
TERMINAL_KINDS: frozenset[str] = frozenset(
    {"http_status", "rate_limit", "hang", "reset", "graphql_error", "empty_body", "expired_url"}
)
IMPORT_KINDS: frozenset[str] = frozenset(
    {"import_failed", "row_failure", "slow_import", "lost_response", "import_refused"}
)
_DEFAULT_DELAY_S = {"latency": 1.0, "hang": 3600.0, "slow_import": 5.0}
_DEFAULT_STATUS = {"http_status": 503, "expired_url": 403, "rate_limit": 429}
FORBIDDEN_MESSAGE = "You do not have access to model run {model_run_id}"


class FaultRule(BaseModel):
    """One fault to inject. See the module docstring for the kinds and their parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    operation: Operation = "any"
    count: int | None = Field(default=1, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    skip: int = Field(default=0, ge=0)
    status: int | None = Field(default=None, ge=200, le=599)
    retry_after_s: float = Field(default=1.0, ge=0)
    delay_s: float | None = Field(default=None, ge=0)
    code: str = "INTERNAL_SERVER_ERROR"
    message: str = "Injected fault"
    uuids: tuple[str, ...] = ()
    data_rows: tuple[str, ...] = ()
    fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    model_run_id: str | None = Field(default=None, min_length=1)
    exception_status: int | None = Field(default=None, ge=100, le=599)

    @model_validator(mode="before")
    @classmethod
    def _forbidden_lasts(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kind") == "forbidden" and "count" not in data:
            return {**data, "count": None}
        return data

    @model_validator(mode="after")
    def _kinds_hit_their_operations(self) -> FaultRule:
        if self.kind in IMPORT_KINDS and self.operation not in ("any", "graphql", "create_import"):
            raise ValueError(f"a {self.kind} fault only applies to operation create_import")
        if self.kind == "expired_url" and self.operation not in ("any", *FILE_OPERATIONS):
            raise ValueError("an expired_url fault only applies to operations status_file and input_file")
        if self.kind == "forbidden" and self.model_run_id is None:
            raise ValueError("a forbidden fault needs model_run_id")
        if self.kind == "http_status" and self.status is not None and self.status < 400:
            raise ValueError("an http_status fault needs a status of 400 or more")
        return self

    @property
    def effective_delay_s(self) -> float:
        """`delay_s`, or the kind's default when it was not given."""
        return self.delay_s if self.delay_s is not None else _DEFAULT_DELAY_S.get(self.kind, 0.0)

    @property
    def effective_status(self) -> int:
        """`status`, or the kind's default (503 for `http_status`, 403 for `expired_url`, else 200)."""
        return self.status if self.status is not None else _DEFAULT_STATUS.get(self.kind, 200)

    @property
    def effective_message(self) -> str:
        """`message`; for `forbidden` without one, Labelbox's wording naming the model run."""
        if self.kind == "forbidden" and "message" not in self.model_fields_set:
            return FORBIDDEN_MESSAGE.format(model_run_id=self.model_run_id)
        return self.message

    def matches(self, operation: str, model_run_id: str | None = None) -> bool:
        """Whether the rule applies to a request of `operation` about `model_run_id` (None: none named)."""
        if self.model_run_id is not None and self.model_run_id != model_run_id:
            return False
        if self.kind == "forbidden" and operation not in GRAPHQL_OPERATIONS:
            return False
        if self.kind == "expired_url" and operation not in FILE_OPERATIONS:
            return False
        if self.operation == "any":
            return True
        if self.operation == "graphql":
            return operation in GRAPHQL_OPERATIONS
        return self.operation == operation

    def fails_row(self, row_uuid: str, data_row: Mapping[str, Any] | None = None) -> bool:
        """Whether a `row_failure` rule fails this row: its uuid or data row listed, or its uuid in
        `fraction` by a hash of the uuid."""
        if row_uuid in self.uuids or _data_row_listed(data_row, self.data_rows):
            return True
        digest = hashlib.sha256(row_uuid.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction

    def holds_a_chosen_line(self, lines: Iterable[tuple[str | None, Mapping[str, Any] | None]]) -> bool:
        """For `import_refused` / `import_failed`: whether one of the (uuid, dataRow) lines is chosen by
        `uuids` or `data_rows`; every import is chosen when neither is given."""
        if not self.uuids and not self.data_rows:
            return True
        uuids = frozenset(self.uuids)
        return any(
            (row_uuid is not None and row_uuid in uuids) or _data_row_listed(data_row, self.data_rows)
            for row_uuid, data_row in lines
        )

    def describe(self) -> dict[str, object]:
        """The rule as JSON, with the kind's defaults filled in."""
        return {
            **self.model_dump(mode="json"),
            "status": self.effective_status,
            "message": self.effective_message,
        }


def _data_row_listed(data_row: Mapping[str, Any] | None, listed: tuple[str, ...]) -> bool:
    if data_row is None or not listed:
        return False
    return data_row.get("globalKey") in listed or data_row.get("id") in listed


@dataclass
class ActiveFault:
    """A rule in force, with its counters."""

    id: int
    rule: FaultRule
    added_at: float
    skipped: int = 0
    fired: int = 0

    def in_force(self, now: float) -> bool:
        if self.rule.count is not None and self.fired >= self.rule.count:
            return False
        return self.rule.duration_s is None or now < self.added_at + self.rule.duration_s

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "fired": self.fired,
            "skipped": self.skipped,
            **self.rule.describe(),
        }


class FaultBook:
    """The rules in force, consulted once per request stage."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._faults: list[ActiveFault] = []
        self._next_id = 1

    def add(self, rule: FaultRule) -> int:
        """Put a rule in force; returns its id."""
        fault = ActiveFault(id=self._next_id, rule=rule, added_at=self._clock())
        self._next_id += 1
        self._faults.append(fault)
        return fault.id

    def remove(self, fault_id: int) -> bool:
        before = len(self._faults)
        self._faults = [fault for fault in self._faults if fault.id != fault_id]
        return len(self._faults) != before

    def clear(self) -> None:
        self._faults.clear()

    def take(
        self,
        operation: str,
        kinds: Collection[str],
        model_run_id: str | None = None,
        when: Callable[[FaultRule], bool] | None = None,
    ) -> FaultRule | None:
        """The first rule in force of one of `kinds` matching `operation` and `model_run_id` (and `when`,
        if given), counting the hit; None if none."""
        now = self._clock()
        for fault in self._faults:
            rule = fault.rule
            if rule.kind not in kinds or not rule.matches(operation, model_run_id) or not fault.in_force(now):
                continue
            if when is not None and not when(rule):
                continue
            if fault.skipped < fault.rule.skip:
                fault.skipped += 1
                continue
            fault.fired += 1
            return fault.rule
        return None

    def describe(self) -> list[dict[str, object]]:
        """Every rule added since the last clear, with its counters and whether it is still in force."""
        now = self._clock()
        return [{**fault.describe(), "in_force": fault.in_force(now)} for fault in self._faults]
