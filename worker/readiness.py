"""Is the worker ready (``/readyz``)? Pure: the pipeline reports what it sees, this decides.

Ready means: every stage runs, the group is joined, the brokers answer a metadata request, Labelbox is
not failing (its requests retried for longer than ``LABELBOX_UNREADY_AFTER_S`` without an answer: the
client's ``failing_since``, the one place Labelbox's health is tracked), and no shutdown began.
Broker outages are tracked here too, so that one is logged twice: when it starts and, with its
duration, when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BrokerChange:
    """The brokers became reachable (``outage_s`` set) or unreachable."""

    reachable: bool
    outage_s: float | None = None


class Readiness:
    """What readiness depends on; ``unready_after_s`` is ``LABELBOX_UNREADY_AFTER_S``."""

    def __init__(self, unready_after_s: float) -> None:
        self._unready_after_s = unready_after_s
        self.joined = False
        self.broker_ok = True
        self._unreachable_since = 0.0

    def broker_checked(self, ok: bool, checked_at: float, now: float) -> BrokerChange | None:
        """Record a metadata check's result; the change to log, if it is one."""
        if ok == self.broker_ok:
            return None
        self.broker_ok = ok
        if ok:
            return BrokerChange(True, round(now - self._unreachable_since, 1))
        self._unreachable_since = checked_at
        return BrokerChange(False)

    def labelbox_ok(self, failing_since: float | None, now: float) -> bool:
        """Labelbox is usable: its requests have not been failing for too long."""
        return failing_since is None or now - failing_since < self._unready_after_s

    def report(self, *, live: bool, labelbox: tuple[float | None, float], stopping: bool) -> dict[str, bool]:
        """The ``/readyz`` answer; ``labelbox``: the client's ``failing_since`` and the time now."""
        labelbox_ok = self.labelbox_ok(*labelbox)
        ready = live and self.joined and self.broker_ok and labelbox_ok and not stopping
        return {
            "live": live,
            "ready": ready,
            "joined": self.joined,
            "broker_ok": self.broker_ok,
            "labelbox_ok": labelbox_ok,
        }
