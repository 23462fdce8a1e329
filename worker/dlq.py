"""Dead-letter producer: rejected records, with the original value and the reason in headers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from worker.retry import patiently

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
#: What is kept of a value the broker refuses as too large: its first 64 KiB, or nothing when even that
#: is refused (a DLQ topic whose max.message.bytes is below 64 KiB).
_TRUNCATED_VALUE_BYTES = (64 * 1024, 0)
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

    async def deliver(self, letter: DeadLetter) -> None:
        """:meth:`write`, retried until the broker acknowledges it (a message is settled only once its
        dead letter is safe); blocks until then, never gives up by itself."""
        await patiently(
            lambda: self.write(letter),
            errors=(KafkaError,),
            event="dlq_write_retry",
            log=log,
            first_s=0.5,
            max_s=30.0,
            reason=letter.reason,
        )

    async def write(self, letter: DeadLetter) -> None:
        """Send and await delivery. A value refused as too large (by the broker, or by
        KAFKA_DLQ_MAX_MESSAGE_BYTES) is sent truncated, with its size in a header; raises
        ``MessageSizeTooLargeError`` only when the record is refused even without its value."""
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
            return
        except MessageSizeTooLargeError:
            size = len(letter.value or b"")
        marked = [*headers, (H_TRUNCATED, str(size).encode())]
        for keep in _TRUNCATED_VALUE_BYTES:
            log.warning(
                "dlq_value_truncated", extra={"ctx": {"bytes": size, "kept": keep, "reason": letter.reason}}
            )
            try:
                await self._send(letter.key, (letter.value or b"")[:keep], marked)
                return
            except MessageSizeTooLargeError:
                if keep == _TRUNCATED_VALUE_BYTES[-1]:
                    raise

    async def _send(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(self._topic, value=value, key=key, headers=headers)
