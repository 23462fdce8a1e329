"""One fetched record on its way through the worker, and the converter stage that fills it in.

``process_chunk`` runs in the converter thread and touches only the envelopes it is given; the event
loop reads them only once the chunk is back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

from schemas import NdjsonMessage
from worker.convert import NdjsonLine, convert
from worker.decode import Rejection, decode
from worker.framing import Framed, unwrap
from worker.offsets import PartitionOffsets


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
    payload_format: str = "predictions"  # or "ndjson": where a line index points in the message
    replays: int = 0
    released: bool = False
    headers: tuple[tuple[str, bytes], ...] = ()  # the record's, read for a schema id (``worker.framing``)
    schema_id: str | None = None  # the Confluent schema id the value was framed with


def process_chunk(envelopes: list[Envelope], max_bytes: int) -> list[tuple[Envelope, Rejection | None]]:
    """Decode and convert each record (runs in a worker thread; touches only these envelopes)."""
    results: list[tuple[Envelope, Rejection | None]] = []
    for envelope in envelopes:
        framed = unwrap(envelope.value, envelope.headers)
        if isinstance(framed, Framed):
            envelope.schema_id = framed.schema_id
        outcome = decode(framed.payload, max_bytes) if isinstance(framed, Framed) else framed
        if isinstance(outcome, Rejection):
            envelope.model_run_id, envelope.message_id = outcome.model_run_id, outcome.message_id
            results.append((envelope, outcome))
            continue
        envelope.model_run_id, envelope.message_id = outcome.model_run_id, outcome.message_id
        envelope.payload_format = "ndjson" if isinstance(outcome, NdjsonMessage) else "predictions"
        try:
            envelope.lines = convert(outcome)
        except Exception as exc:  # one message must never stop the worker; it goes to the DLQ
            results.append((envelope, Rejection("conversion_error", [f"{type(exc).__name__}: {exc}"])))
            continue
        results.append((envelope, None))
    return results
