"""Keeping one bad model run or one bad message from costing more than itself. Pure: no I/O, no clock.

- :class:`ForbiddenRuns`: model runs the API key may not access (Labelbox ``AUTHORIZATION_ERROR`` /
  ``FORBIDDEN`` / HTTP 403 on the run's operations). Their messages go straight to the DLQ for a
  while (``LABELBOX_FORBIDDEN_TTL_S``), then the run is tried again (access may have been granted).
- :class:`Refused`: an import Labelbox refused whole, or that ended FAILED, or kept failing while
  Labelbox was healthy: its batch is split in two and each half imported again (bisection), until
  the messages responsible stand alone; only those go to the DLQ.
- :class:`BisectionBudget`: the stop rule, at most ``IMPORT_BISECT_MAX_IMPORTS`` extra imports per
  batch, so a refusal that is not about the content cannot explode into one import per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class ForbiddenRuns:
    """Per model run: forbidden until a time, with Labelbox's message. Times are the caller's clock."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._until: dict[str, tuple[float, str]] = {}

    def forbid(self, model_run_id: str, message: str, now: float) -> None:
        """Record Labelbox's refusal; later messages of the run are dead-lettered until ``now + ttl``."""
        self._until[model_run_id] = (now + self._ttl_s, message)

    def refusal(self, model_run_id: str, now: float) -> str | None:
        """Labelbox's message while the run is forbidden; None when it is not (or no longer)."""
        entry = self._until.get(model_run_id)
        if entry is None:
            return None
        until, message = entry
        if now >= until:
            del self._until[model_run_id]  # re-checked: the next message of the run goes to Labelbox
            return None
        return message

    def __len__(self) -> int:
        """Model runs recorded as forbidden (some may have expired: see :meth:`count`)."""
        return len(self._until)

    def count(self, now: float) -> int:
        """Model runs forbidden now."""
        for run in list(self._until):
            self.refusal(run, now)
        return len(self._until)


@dataclass(frozen=True, slots=True)
class Refused:
    """An import round that did not settle its batch: why, in DLQ terms, should it come to that."""

    reason: Literal["import_rejected", "import_failed", "import_failed_repeatedly"]
    errors: tuple[str, ...]
    import_name: str
    outcome: Literal["rejected", "failed", "failed_repeatedly"]  # ``lbworker_imports_total``'s
    #: False when splitting cannot help (the refusal is about the request, not its content).
    bisect: bool = True


class BisectionBudget:
    """Extra imports one batch may still spend on isolating what Labelbox refuses."""

    def __init__(self, max_imports: int) -> None:
        self.left = max_imports

    def take(self, imports: int) -> bool:
        """Spend ``imports`` if that many are left; False (nothing spent) when they are not."""
        if imports > self.left:
            return False
        self.left -= imports
        return True
