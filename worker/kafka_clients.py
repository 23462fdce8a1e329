"""Kafka clients built from Settings (the group consumer with auto-commit off, the DLQ producer), and
what the consumer cannot decode."""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError
from aiokafka.helpers import create_ssl_context

from worker.logs import ctx
from worker.readiness import Readiness
from worker.settings import KafkaSettings, Settings

log = logging.getLogger("worker.pipeline")  # its events are the fetch stage's and readiness's
#: How often, and how patiently, the brokers are asked for metadata (readiness).
BROKER_CHECK_EVERY_S = 5.0


def _security(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password.get_secret_value() if password else None,
        }
    return options


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
    )
    return context


def fetch_max_bytes(settings: Settings) -> int:
    """Bytes one fetch may bring in: a quarter of the buffer, within Kafka's usual 1..50 MiB."""
    return max(1024 * 1024, min(50 * 1024 * 1024, settings.buffer_max_bytes // 4))


def make_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """The group consumer. Subscription happens in the pipeline (it owns the rebalance listener)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": settings.kafka_group_id,
        "client_id": settings.kafka_client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": settings.kafka_isolation_level,
        "max_poll_records": settings.kafka_max_poll_records,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": max(1000, settings.kafka_session_timeout_ms // 3),
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        "fetch_max_bytes": fetch_max_bytes(settings),
        "max_partition_fetch_bytes": max(settings.message_max_bytes + 1024, 1024 * 1024),
        **_security(settings),
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


def _codec(settings: KafkaSettings) -> str | None:
    return None if settings.kafka_compression_type == "none" else settings.kafka_compression_type


def make_reader(settings: KafkaSettings) -> AIOKafkaConsumer:
    """A consumer outside any group (assign + seek), for reading the DLQ."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-reader",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(settings.kafka_dlq_max_message_bytes + 1024, 1024 * 1024),
        **_security(settings),
    )


def make_producer(settings: KafkaSettings, role: str = "dlq") -> AIOKafkaProducer:
    """A producer (DLQ writes, DLQ replay): acks from all in-sync replicas, room for a large message."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.kafka_client_id}-{role}",
        acks="all",
        max_request_size=settings.kafka_dlq_max_message_bytes,
        linger_ms=5,
        compression_type=_codec(settings),
        **_security(settings),
    )


class UndecodableBatch(Exception):
    """A record batch the consumer cannot decode (a codec it lacks, a batch that stays corrupt).

    Skipping it would lose records and retrying cannot help, so the worker stops (exit status 4)
    with the batch's place and what to do; nothing at or after it on that partition is committed.
    """

    def __init__(self, location: tuple[TopicPartition, int] | None, cause: BaseException) -> None:
        self.topic = location[0].topic if location else None
        self.partition = location[0].partition if location else None
        self.offset = location[1] if location else None
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")

    @property
    def action(self) -> str:
        """What an operator does about it, in one sentence."""
        if isinstance(self.cause, UnsupportedCodecError):
            return (
                "install the codec the producer used (aiokafka's extras: pip install "
                "'aiokafka[lz4,snappy,zstd]'), then restart; the worker resumes at the last committed offset"
            )
        return (
            "the batch stays corrupt when fetched again: save it (kcat -C -t TOPIC -p PARTITION -o OFFSET), "
            "then move the group past it (kafka-consumer-groups --reset-offsets --to-offset <next offset>) "
            "and have the producer re-send it"
        )

    def context(self) -> dict[str, object]:
        """Log fields: where the batch is, the error, and the action."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": str(self),
            "action": self.action,
        }


class CorruptBatches:
    """How often in a row the same batch failed to decode: a CRC failure may be the network's (the
    fetch position has not moved past the batch, so it is fetched again); one that persists is not."""

    def __init__(self, max_fetches: int = 3) -> None:
        self._max_fetches = max_fetches
        self._seen: tuple[TopicPartition, int] | None = None
        self._times = 0

    def failed(self, where: tuple[TopicPartition, int] | None, error: Exception) -> None:
        """Record a failed fetch; raises :class:`UndecodableBatch` when the worker must stop (a missing
        codec, or the same batch too many times)."""
        self._times = self._times + 1 if where == self._seen else 1
        self._seen = where
        if isinstance(error, UnsupportedCodecError) or self._times >= self._max_fetches:
            raise UndecodableBatch(where, error) from error

    def fetched(self, partitions: Collection[TopicPartition]) -> None:
        """A fetch returned records of ``partitions``: one that failed before was passing."""
        if self._seen is not None and self._seen[0] in partitions:
            self._seen, self._times = None, 0


#: Errors that mean a fetched record batch could not be decoded.
DECODE_ERRORS = (UnsupportedCodecError, CorruptRecordException)


async def refetch_or_stop(consumer: AIOKafkaConsumer, corrupt: CorruptBatches, error: Exception) -> None:
    """A fetch failed to decode a batch: a missing codec stops the worker at once; a CRC failure is
    fetched again (the fetch position has not moved past it) after a pause, and stops the worker if it
    persists. Raises :class:`UndecodableBatch` to stop."""
    where = locate_undecodable(consumer)
    corrupt.failed(where, error)
    tp, offset = where if where else (None, None)
    log.warning(
        "corrupt_batch_refetch",
        extra=ctx(topic=tp and tp.topic, partition=tp and tp.partition, offset=offset, error=str(error)),
    )
    await asyncio.sleep(0.5)


async def watch_brokers(
    consumer: AIOKafkaConsumer,
    readiness: Readiness,
    clock: Callable[[], float],
    checked: Callable[[], object],
) -> None:
    """Readiness: a metadata request every few seconds tells whether the brokers answer.

    An outage is logged twice: ``broker_unreachable`` at the first failed check and ``broker_reachable``
    with its duration at the next good one (checked every second meanwhile: ready again promptly); the
    Kafka client's own errors in between are folded by ``worker.logs``. ``checked`` is called after each
    check (the pipeline's health, which keeps the ``lbworker_ready`` gauge current). Runs until cancelled.
    """
    while True:
        checked_at = clock()
        error = await brokers_answer(consumer, BROKER_CHECK_EVERY_S)
        change = readiness.broker_checked(error is None, checked_at, clock())
        if change is not None and change.reachable:
            log.warning("broker_reachable", extra=ctx(outage_s=change.outage_s))
        elif change is not None:
            log.warning("broker_unreachable", extra=ctx(error=error))
        checked()
        await asyncio.sleep(BROKER_CHECK_EVERY_S if error is None else 1.0)


async def brokers_answer(consumer: AIOKafkaConsumer, timeout_s: float) -> str | None:
    """Ask the brokers for metadata: None when they answer within ``timeout_s``, else the error."""
    try:
        await asyncio.wait_for(consumer.topics(), timeout=timeout_s)
    except (TimeoutError, KafkaError) as exc:
        return str(exc) or type(exc).__name__
    return None


def locate_undecodable(consumer: AIOKafkaConsumer) -> tuple[TopicPartition, int] | None:
    """The partition and offset of the batch a failed ``getmany`` could not decode, when they can be told.

    aiokafka raises the decode error without saying where; its fetcher keeps the failed partition's
    records iterator, closed by the exception, positioned at the bad batch's first offset. This reads
    that private state (pinned by a test over a real broker); None when it cannot be read.
    """
    try:
        results = consumer._fetcher._records.items()  # private: see the docstring
        for tp, result in results:
            records: Any = getattr(result, "_partition_records", None)
            iterator = getattr(records, "_records_iterator", None)
            if inspect.isgenerator(iterator) and inspect.getgeneratorstate(iterator) == inspect.GEN_CLOSED:
                return tp, int(records.next_fetch_offset)
    except Exception:  # private state changed shape: report without a place rather than crash
        return None
    return None
