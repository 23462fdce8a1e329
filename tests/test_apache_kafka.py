"""What only Apache Kafka shows: transactions, its consumer-group protocol for librdkafka, every
compression codec end to end, SASL/SCRAM and TLS, lag as KEDA reads it, and a real size limit on the DLQ.

These tests are marked ``apache_kafka``: ``make test-kafka`` (``TEST_BROKER=apache-kafka``) runs them on
the broker of tests/apache_kafka.py; elsewhere they are skipped. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import confluent_kafka
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.factories import bbox, message
from tests.kafka_helpers import committed, produce
from tests.worker_harness import make_topics, running, settings_for, wait_committed
from worker.sandbox import Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.apache_kafka]

RUN = "mr-apache"


def value_for(key: str) -> bytes:
    """A valid message whose data row global key is ``key``: what Labelbox stored tells which arrived."""
    return orjson.dumps(message(bbox(), model_run_id=RUN, data_row={"global_key": key}))


def stored_keys(sandbox: Sandbox, run: str = RUN) -> set[str]:
    return {line["dataRow"]["globalKey"] for line in sandbox.state.predictions(run)}


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The high watermarks (ListOffsets, read_uncommitted): control records included."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def until(condition: Any, timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(every_s)
    return bool(condition())


# --- transactions ----------------------------------------------------------------------------------


def transactional_producer(bootstrap: str, transactional_id: str) -> confluent_kafka.Producer:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "linger.ms": 5}
    )
    producer.init_transactions(30)
    return producer


def transaction(producer: confluent_kafka.Producer, topic: str, keys: Iterable[str], commit: bool) -> None:
    producer.begin_transaction()
    for key in keys:
        producer.produce(topic, key=RUN.encode(), value=value_for(key), partition=0)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)  # the records are written to the log, then aborted
        producer.abort_transaction(30)


def keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}.jpg" for i in range(count)]


async def test_read_committed_skips_aborted_transactions_and_commits_past_control_records(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """A librdkafka transactional producer (as exactly-once pipelines write) commits, aborts, commits."""
    await make_topics(bootstrap, topic, 1)
    producer = transactional_producer(bootstrap, f"tx-{topic}")
    first, aborted, last = keys("first", 20), keys("aborted", 20), keys("last", 20)
    transaction(producer, topic, first, commit=True)
    transaction(producer, topic, aborted, commit=False)
    transaction(producer, topic, last, commit=True)
    ends = await end_offsets(bootstrap, topic, 1)
    assert ends == {0: 63}, "60 records and 3 control records (commit, abort, commit markers)"
    settings = settings_for(bootstrap, topic, sandbox)
    assert settings.kafka_isolation_level == "read_committed", "the default"
    async with running(settings):
        assert await wait_committed(bootstrap, settings, ends, timeout_s=60) == ends, "past the markers"
    assert stored_keys(sandbox) == set(first + last), "every committed record, no aborted one"

    # The same topic read with read_uncommitted (another group) imports the aborted records too.
    uncommitted = settings_for(
        bootstrap,
        topic,
        sandbox,
        kafka_group_id=f"uncommitted-{topic}",
        kafka_isolation_level="read_uncommitted",
    )
    async with running(uncommitted):
        assert await wait_committed(bootstrap, uncommitted, ends, timeout_s=60) == ends
    assert stored_keys(sandbox) == set(first + aborted + last)


async def test_an_open_transaction_holds_its_partition_until_it_ends(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """read_committed reads up to the last stable offset: a record written after an open transaction's
    first record (even outside the transaction) waits for the transaction to end; nothing is skipped."""
    await make_topics(bootstrap, topic, 1)
    producer = transactional_producer(bootstrap, f"tx-{topic}")
    transaction(producer, topic, keys("before", 5), commit=True)
    producer.begin_transaction()
    for key in keys("open", 5):
        producer.produce(topic, key=RUN.encode(), value=value_for(key), partition=0)
    producer.flush(30)
    await produce(bootstrap, topic, [(RUN.encode(), value_for(k), 0) for k in keys("plain", 5)])
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: 6}, timeout_s=60) == {0: 6}
        await asyncio.sleep(2.0)  # time to read further, if it could
        held = stored_keys(sandbox)
        held_at = await committed(bootstrap, settings.kafka_group_id, topic, 1)
        producer.commit_transaction(30)
        ends = await end_offsets(bootstrap, topic, 1)
        assert await wait_committed(bootstrap, settings, ends, timeout_s=60) == ends
    assert held == set(keys("before", 5)), "nothing past the open transaction's first record was imported"
    assert held_at == {0: 6}, "the commit stopped at the open transaction (5 records + 1 marker)"
    assert stored_keys(sandbox) == set(keys("before", 5) + keys("open", 5) + keys("plain", 5))
    assert ends == {0: 17}
