"""One fetched record on its way through the worker, and the converter stage that fills it in.

``process_chunk`` runs in the converter thread and touches only the envelopes it is given; the event
loop reads them only once the chunk is back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from schemas import PayloadKey
from worker.convert import NdjsonLine, convert
from worker.decode import Rejection, decode
from worker.dlq import DeadLetter
from worker.framing import Framed, unwrap
from worker.offsets import PartitionOffsets
from worker.ontology import Mismatch


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
    payload_key: PayloadKey = "predictions"  # where a line index points in the message
    replays: int = 0
    released: bool = False
    headers: tuple[tuple[str, bytes], ...] = ()  # the record's, read for a schema id (``worker.framing``)
    schema_id: str | None = None  # the Confluent schema id the value was framed with
    #: Checked against its model run's ontology in the converter thread (``worker.admission``).
    ontology_checked: bool = False
    #: If checked: the first line that does not fit, (index, why), or None.
    mismatch: tuple[int, Mismatch] | None = None


def process_chunk(
    envelopes: list[Envelope], max_bytes: int, check: Callable[[Envelope], None] | None = None
) -> list[tuple[Envelope, Rejection | None]]:
    """Decode and convert each record, then ``check`` it if given (runs in a worker thread; touches
    only these envelopes)."""
    results: list[tuple[Envelope, Rejection | None]] = []
    for envelope in envelopes:
        framed = unwrap(envelope.value, envelope.headers)
        if isinstance(framed, Framed):
            envelope.schema_id = framed.schema_id
        outcome = decode(framed.payload, max_bytes) if isinstance(framed, Framed) else framed
        envelope.model_run_id, envelope.message_id = outcome.model_run_id, outcome.message_id
        if isinstance(outcome, Rejection):
            results.append((envelope, outcome))
            continue
        envelope.payload_key = outcome.payload_key
        try:
            envelope.lines = convert(outcome)
        except Exception as exc:  # one message must never stop the worker; it goes to the DLQ
            results.append((envelope, Rejection("conversion_error", [f"{type(exc).__name__}: {exc}"])))
            continue
        if check is not None:
            check(envelope)
        results.append((envelope, None))
    return results


def dead_letter_of(
    envelope: Envelope, reason: str, errors: Sequence[str], import_name: str | None = None
) -> DeadLetter:
    """The DLQ record of a message: its key and value, and why (``worker.dlq`` headers)."""
    return DeadLetter(
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
