"""Fault injection rules: what to break, on which operation, how many times or for how long.

Pure bookkeeping with an injected clock; the HTTP layer (`app.py`) acts the faults out.

A rule is a `FaultRule` (also accepted as JSON by `POST /_sandbox/faults`):

- `http_status`: answer HTTP `status` (e.g. 500/502/503, or 404 on `status_file`).
- `rate_limit`: HTTP 429 with `Retry-After: <retry_after_s>` and JSON `{"message": "You have exceeded …"}`.
- `latency`: sleep `delay_s` (default 1) before answering normally.
- `hang`: sleep `delay_s` (default 3600; cut short by `Sandbox.stop()`), then drop the connection.
- `reset`: drop the connection (TCP RST) without answering.
- `graphql_error`: HTTP 200 with `{"errors": [{"message": message, "extensions": {"code": code}}]}`.
- `import_failed`: the import is created, then ends FAILED with `message`; nothing is stored.
- `row_failure`: rows whose uuid is in `uuids`, or a deterministic `fraction` of uuids (by hash), FAIL
  with error name `InjectedRowFailure` and `message`.
- `slow_import`: the import stays RUNNING `delay_s` (default 5) longer.
- `lost_response`: the import is created and stored, then the connection drops before the answer.

The last four only apply to `create_import`. Every rule has `operation` (default `any`), `count` (how many
requests it hits; None = no limit; default 1), `duration_s` (active for that long after it is added), and
`skip` (let that many matching requests through first).

Operations: `create_import`, `poll_import`, `model_run`, `model`, `ontology`, `register_data_rows`,
`register_labels`, `task_status`, `unknown` (other GraphQL root fields), `graphql` (all of these),
`status_file` (status and error files), `input_file`, `blob`, `any` (every non-admin request).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, get_args

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
TERMINAL_KINDS: frozenset[str] = frozenset({"http_status", "rate_limit", "hang", "reset", "graphql_error"})
IMPORT_KINDS: frozenset[str] = frozenset({"import_failed", "row_failure", "slow_import", "lost_response"})
_DEFAULT_DELAY_S = {"latency": 1.0, "hang": 3600.0, "slow_import": 5.0}


class FaultRule(BaseModel):
    """One fault to inject. See the module docstring for the kinds and their parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    operation: Operation = "any"
    count: int | None = Field(default=1, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    skip: int = Field(default=0, ge=0)
    status: int = Field(default=503, ge=400, le=599)
    retry_after_s: float = Field(default=1.0, ge=0)
    delay_s: float | None = Field(default=None, ge=0)
    code: str = "INTERNAL_SERVER_ERROR"
    message: str = "Injected fault"
    uuids: tuple[str, ...] = ()
    fraction: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _import_kinds_hit_imports(self) -> FaultRule:
        if self.kind in IMPORT_KINDS and self.operation not in ("any", "graphql", "create_import"):
            raise ValueError(f"a {self.kind} fault only applies to operation create_import")
        return self

    @property
    def effective_delay_s(self) -> float:
        """`delay_s`, or the kind's default when it was not given."""
        return self.delay_s if self.delay_s is not None else _DEFAULT_DELAY_S.get(self.kind, 0.0)

    def matches(self, operation: str) -> bool:
        if self.operation == "any":
            return True
        if self.operation == "graphql":
            return operation in GRAPHQL_OPERATIONS
        return self.operation == operation

    def fails_row(self, row_uuid: str) -> bool:
        """Whether a `row_failure` rule fails this uuid: listed, or in `fraction` by a hash of the uuid."""
        if row_uuid in self.uuids:
            return True
        digest = hashlib.sha256(row_uuid.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction


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
            **self.rule.model_dump(mode="json"),
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

    def take(self, operation: str, kinds: Collection[str]) -> FaultRule | None:
        """The first rule in force of one of `kinds` matching `operation`, counting the hit; None if none."""
        now = self._clock()
        for fault in self._faults:
            if fault.rule.kind not in kinds or not fault.rule.matches(operation) or not fault.in_force(now):
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
