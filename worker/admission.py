"""Between conversion and batching: may a converted message go to Labelbox? Pure decisions, no I/O.

A message is dead-lettered without upload when its model run is forbidden to the key
(``model_run_forbidden``) or when it does not fit the model run's ontology (``ontology_mismatch``,
with ``ONTOLOGY_CHECK=strict``). A message whose model run's ontology must be fetched first is
*parked*, in order, per model run, so one model run's trouble never holds up the others; the
pipeline fetches it (``worker.preparation.OntologyCache.refresh``) and hands the outcome back
(:meth:`OntologyGate.fetched` / :meth:`OntologyGate.unavailable`), which releases what waited.

The lines are checked in the converter thread (:meth:`OntologyGate.precheck`, on the lines it has just
made), not on the event loop; only messages that waited for their ontology are checked here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker.envelope import Envelope
from worker.labelbox import Forbidden, RequestRejected
from worker.ontology import Mismatch
from worker.preparation import NeedsFetch, OntologyCache


@dataclass(frozen=True, slots=True)
class Admit:
    """Batch it in its model run's batch."""

    envelope: Envelope
    model_run_id: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Dead-letter it with this reason, without upload."""

    envelope: Envelope
    reason: str
    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Park:
    """Wait for the model run's ontology; ``fetch`` is set for the first message of a run (start one)."""

    fetch: str | None


Decision = Admit | Refuse | Park


class OntologyGate:
    """Admission decisions for converted messages; ``ontologies`` None means ``ONTOLOGY_CHECK=off``."""

    def __init__(self, ontologies: OntologyCache | None, refusal: Callable[[str], str | None]) -> None:
        self._ontologies = ontologies
        self._refusal = refusal
        self._parked: dict[str, list[Envelope]] = {}

    def admit(self, envelope: Envelope) -> Decision:
        """The decision for one converted message (never waits)."""
        run = envelope.model_run_id
        if run is None:  # a converted message always has one
            return Refuse(envelope, "invalid_value", ("model_run_id: missing",))
        refusal = self._refusal(run)
        if refusal is not None:
            return Refuse(envelope, "model_run_forbidden", (refusal,))
        if self._ontologies is None:
            return Admit(envelope, run)
        parked = self._parked.get(run)
        if parked is not None:
            parked.append(envelope)
            return Park(None)
        if not envelope.ontology_checked:
            self._parked[run] = [envelope]
            return Park(run)
        return _verdict(envelope, run, envelope.mismatch)

    @property
    def checks(self) -> bool:
        """Whether messages are checked against their ontology (``ONTOLOGY_CHECK`` is not off)."""
        return self._ontologies is not None

    def precheck(self, envelope: Envelope) -> None:
        """Check a just-converted message against its model run's cached ontology, if there is a current
        one (``envelope.ontology_checked``, ``envelope.mismatch``). Runs in the converter thread: it
        only reads the cache (entries are replaced whole on the event loop) and writes this envelope."""
        run = envelope.model_run_id
        if self._ontologies is None or run is None:
            return
        try:
            envelope.mismatch = self._ontologies.verdict(run, (line.body for line in envelope.lines))
        except NeedsFetch:
            return
        envelope.ontology_checked = True

    def fetched(self, run: str) -> list[Decision]:
        """The ontology of ``run`` was just fetched: decisions for every message that waited, in order."""
        waiting = self._parked.pop(run, [])
        if self._ontologies is None:
            return [Admit(e, run) for e in waiting]
        ontologies = self._ontologies
        # Just fetched: a miss now is a real mismatch, not a stale cache.
        return [
            _verdict(e, run, ontologies.verdict(run, (line.body for line in e.lines), refetch_on_miss=False))
            for e in waiting
        ]

    def unavailable(self, run: str, error: Forbidden | RequestRejected) -> list[Decision]:
        """The ontology of ``run`` cannot be had (a forbidden or unknown model run): refuse what waited."""
        if isinstance(error, Forbidden):
            reason, errors = "model_run_forbidden", (str(error),)
        else:
            reason, errors = "model_run_unavailable", (f"model_run_id: {error}",)
        return [Refuse(e, reason, errors) for e in self._parked.pop(run, [])]

    def abandon(self, run: str) -> list[Envelope]:
        """Stop waiting for ``run`` (the worker is stopping): what waited stays unsettled."""
        return self._parked.pop(run, [])


def _verdict(envelope: Envelope, run: str, found: tuple[int, Mismatch] | None) -> Decision:
    if found is None:
        return Admit(envelope, run)
    index, mismatch = found
    where = f"{envelope.payload_key}.{index}.{mismatch.path}"
    return Refuse(envelope, "ontology_mismatch", (f"{where}: {mismatch.code}: {mismatch.message}",))
