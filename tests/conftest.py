"""Fixtures over real components: a broker and the local Labelbox-compatible server, both on loopback.

The broker is the embedded Kafka-compatible one (Tansu) by default, a real Apache Kafka started by
tests/apache_kafka.py with ``TEST_BROKER=apache-kafka`` (``make test-kafka``), or an existing cluster
when ``KAFKA_BOOTSTRAP_SERVERS`` is set. Tests marked ``apache_kafka`` need what only Apache Kafka has
(transactions, SASL/SCRAM, TLS, its group protocol for librdkafka): they run with
``TEST_BROKER=apache-kafka`` and are skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from devtools.embedded import EmbeddedBroker
from labelbox_sandbox import Sandbox
from tests.apache_kafka import ApacheKafka

API_KEY = "test-key-7f3c9a"
#: ``tansu`` (the embedded broker, default) or ``apache-kafka``. Not a KAFKA_* name: the worker refuses
#: unknown KAFKA_* variables, and the reliability tests pass the environment on to real workers.
BROKER = os.environ.get("TEST_BROKER", "tansu")
APACHE_KAFKA = BROKER == "apache-kafka"
if BROKER not in ("tansu", "apache-kafka"):
    raise RuntimeError(f"TEST_BROKER must be 'tansu' or 'apache-kafka', not {BROKER!r}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if APACHE_KAFKA:
        return
    skip = pytest.mark.skip(reason="needs Apache Kafka: run with TEST_BROKER=apache-kafka (make test-kafka)")
    for item in items:
        if item.get_closest_marker("apache_kafka"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """host:port of the broker under test, for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if APACHE_KAFKA:
        with ApacheKafka() as kafka:
            yield kafka.bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def topic() -> str:
    """A fresh topic name per test (its DLQ is ``<topic>.dlq``)."""
    return f"predictions-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(api_key=API_KEY, processing_delay_s=0.05) as server:
        yield server
