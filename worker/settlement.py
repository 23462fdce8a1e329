"""Where each message ends: imported (``settle``) or dead-lettered (``dead_letter``, then settled).

A settled message's offset may be committed (the ledger says so, the committer is told) and its bytes
leave the buffer budget; a message dropped unsettled (its partition revoked) only frees its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from worker.buffer import BufferBudget
from worker.committer import Committer
from worker.dlq import DeadLetterWriter
from worker.envelope import Envelope, dead_letter_of
from worker.ledger import Ledger
from worker.metrics import Metrics


class Settler:
    """Settles messages for the import runner and the pipeline (``worker.imports.Settlement``)."""

    def __init__(
        self,
        ledger: Ledger,
        budget: BufferBudget,
        committer: Committer,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
        *,
        fail: Callable[[BaseException], None],
    ) -> None:
        self._ledger = ledger
        self._budget = budget
        self._committer = committer
        self._dlq = dead_letters
        self._metrics = metrics
        self._fail = fail

    def settle(self, envelope: Envelope) -> None:
        """The message is imported or dead-lettered: its offset may be committed, its bytes freed."""
        if self._ledger.settle(envelope):
            self._committer.wanted()
        self.release(envelope)

    def release(self, envelope: Envelope) -> None:
        """The message's bytes leave the buffer (settled, or dropped on a revoke)."""
        self._budget.release(envelope)
        self._metrics.buffered_bytes.set(self._budget.buffered)

    async def dead_letter(
        self, envelope: Envelope, reason: str, errors: Sequence[str], import_name: str | None = None
    ) -> None:
        """Write the record to the DLQ (retried until the broker acknowledges it), then settle it."""
        await self._dlq.deliver(dead_letter_of(envelope, reason, errors, import_name))
        self._metrics.dlq_records.labels(reason).inc()
        self.settle(envelope)

    def fail(self, error: BaseException) -> None:
        """Labelbox refused the API key: the worker stops; unsettled messages stay uncommitted."""
        self._fail(error)
