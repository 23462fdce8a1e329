"""Kafka clients built from Settings: the group consumer (auto-commit off) and the DLQ producer."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from worker.settings import KafkaSettings, Settings


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
        **_security(settings),
    )
