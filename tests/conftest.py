"""Fixtures over real components: the embedded Kafka-compatible broker (or an external Kafka when
KAFKA_BOOTSTRAP_SERVERS is set) and the local Labelbox-compatible server, both on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from devtools.embedded import EmbeddedBroker
from labelbox_sandbox import Sandbox

API_KEY = "test-key-7f3c9a"


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """host:port of a Kafka-compatible broker for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
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
