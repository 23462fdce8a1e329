"""Dead-letter producer: rejected records, with the original value and the reason in headers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

#: Header names of a DLQ record (values are UTF-8).
H_REASON = "dlq.reason"
H_ERROR = "dlq.error"
H_TOPIC = "dlq.origin.topic"
H_PARTITION = "dlq.origin.partition"
H_OFFSET = "dlq.origin.offset"
H_MODEL_RUN = "dlq.model_run_id"
H_MESSAGE_ID = "dlq.message_id"
H_IMPORT = "dlq.import_name"
H_TRUNCATED = "dlq.value_truncated_from"
#: How many times ``replay-dlq`` re-published this record (carried through the worker and the DLQ).
H_REPLAYS = "dlq.replay_count"
#: The Confluent Schema Registry id (or GUID) the original value was framed with (``worker.framing``).
H_SCHEMA_ID = "dlq.schema_id"
_MAX_ERROR_CHARS = 4000
#: What is kept of a value the broker refuses as too large.
_TRUNCATED_VALUE_BYTES = 64 * 1024
log = logging.getLogger("worker.dlq")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why one record is dead-lettered, and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    errors: tuple[str, ...]
    model_run_id: str | None = None
    message_id: str | None = None
    import_name: str | None = None
    replays: int = 0
    schema_id: str | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        """The record headers; optional ones only when known."""
        pairs = [
            (H_TOPIC, self.topic),
            (H_PARTITION, str(self.partition)),
            (H_OFFSET, str(self.offset)),
            (H_REASON, self.reason),
            (H_ERROR, "; ".join(self.errors)[:_MAX_ERROR_CHARS]),
            (H_MODEL_RUN, self.model_run_id),
            (H_MESSAGE_ID, self.message_id),
            (H_IMPORT, self.import_name),
            (H_REPLAYS, str(self.replays) if self.replays else None),
            (H_SCHEMA_ID, self.schema_id),
        ]
        return [(name, value.encode()) for name, value in pairs if value is not None]


def replay_count(headers: Iterable[tuple[str, bytes]]) -> int:
    """The ``dlq.replay_count`` of a record's headers (0 when absent or unreadable)."""
    for name, value in headers:
        if name == H_REPLAYS:
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0


class DeadLetterWriter:
    """Writes :class:`DeadLetter` records to the DLQ topic and waits for the broker's ack."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def write(self, letter: DeadLetter) -> None:
        """Send and await delivery. A value the broker refuses as too large is sent truncated."""
        headers = letter.headers()
        log.debug(  # one line per record: LOG_LEVEL=DEBUG, like Kafka Connect's errors.log.enable
            "dead_lettered",
            extra={
                "ctx": {
                    "reason": letter.reason,
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "model_run_id": letter.model_run_id,
                    "message_id": letter.message_id,
                    "schema_id": letter.schema_id,
                }
            },
        )
        try:
            await self._send(letter.key, letter.value, headers)
        except MessageSizeTooLargeError:
            size = len(letter.value or b"")
            log.warning("dlq_value_truncated", extra={"ctx": {"bytes": size, "reason": letter.reason}})
            truncated = (letter.value or b"")[:_TRUNCATED_VALUE_BYTES]
            await self._send(letter.key, truncated, [*headers, (H_TRUNCATED, str(size).encode())])

    async def _send(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(self._topic, value=value, key=key, headers=headers)
