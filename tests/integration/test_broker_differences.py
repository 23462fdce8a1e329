"""Where the embedded broker (Tansu) and Apache Kafka differ, each pinned on the broker under test.

``make test`` runs these on Tansu, ``make test-kafka`` on Apache Kafka; each asserts what that broker
does, so a change in either (a Tansu release that fixes one, a Kafka upgrade) fails here and the
README's list of differences gets updated with it. Against an existing cluster
(``KAFKA_BOOTSTRAP_SERVERS``) they run only with ``TEST_BROKER=apache-kafka``, expecting Apache Kafka.
"""

from __future__ import annotations

import asyncio
import os
import time

import confluent_kafka
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from devtools.embedded import create_topics
from tests.conftest import APACHE_KAFKA
from tests.support.kafka_helpers import produce

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) and not APACHE_KAFKA,
        reason="an existing cluster: which broker it is is known only with TEST_BROKER=apache-kafka",
    ),
]


async def _filled(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    await create_topics(bootstrap, {topic: partitions})
    records = [(None, b"v%d" % i, i % partitions) for i in range(partitions * per_partition)]
    await produce(bootstrap, topic, records)


async def test_bootstrap_metadata_names_topics_only_on_tansu(bootstrap: str, topic: str) -> None:
    """aiokafka's first metadata request names no topic: Tansu answers with every topic, Apache Kafka
    with none, so a consumer outside a group must ask for its topic (worker/replay.py does)."""
    await create_topics(bootstrap, {topic: 2})
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        known = client.cluster.partitions_for_topic(topic)
    finally:
        await client.close()
    assert known == (None if APACHE_KAFKA else {0, 1})


async def test_end_offsets_from_list_offsets(bootstrap: str, topic: str) -> None:
    """ListOffsets (what KEDA reads for lag): Apache Kafka answers the high watermark, Tansu
    under-reports (1 for partitions that hold 10), so the worker's lag comes from fetch responses."""
    await _filled(bootstrap, topic, partitions=4, per_partition=10)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(4)]
        ends = {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()
    if APACHE_KAFKA:
        assert ends == dict.fromkeys(range(4), 10)
    else:
        assert ends != dict.fromkeys(range(4), 10), "Tansu's ListOffsets now answers the end: update README"


async def test_first_join_takes_half_the_session_timeout_only_on_tansu(bootstrap: str, topic: str) -> None:
    """A first JoinGroup with a 10 s session timeout: Tansu holds it about 5 s, Apache Kafka (with
    group.initial.rebalance.delay.ms=0) answers at once. Hence the tests' 6 s session timeout."""
    await _filled(bootstrap, topic, partitions=1, per_partition=1)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"join-{topic}",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    started = time.monotonic()
    await consumer.start()
    try:
        fetched = 0
        while not fetched and time.monotonic() - started < 20:
            fetched = sum(len(r) for r in (await consumer.getmany(timeout_ms=200)).values())
        took = time.monotonic() - started
    finally:
        await consumer.stop()
    assert fetched == 1
    if APACHE_KAFKA:
        assert took < 3.0, f"joined and fetched in {took:.1f} s"
    else:
        assert took >= 4.0, f"Tansu joined in {took:.1f} s: update README and the tests' session timeout"


async def test_admin_offset_fetch_decodes_only_on_apache_kafka(bootstrap: str, topic: str) -> None:
    """aiokafka's admin OffsetFetch (list_consumer_group_offsets): Apache Kafka's answer decodes,
    Tansu's does not (the tests read committed offsets through a consumer instead)."""
    await _filled(bootstrap, topic, partitions=1, per_partition=1)
    group = f"offsets-{topic}"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): 1})
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    await admin.start()
    try:
        if APACHE_KAFKA:
            offsets = await admin.list_consumer_group_offsets(group)
            assert {tp.partition: meta.offset for tp, meta in offsets.items()} == {0: 1}
        else:
            with pytest.raises(KafkaError):
                await asyncio.wait_for(admin.list_consumer_group_offsets(group), 10)
    finally:
        await admin.close()


def test_librdkafka_consumer_group_joins_only_on_apache_kafka(bootstrap: str, topic: str) -> None:
    """Two librdkafka (confluent-kafka) consumers in one group: on Apache Kafka each gets a partition
    and together they read everything; on Tansu neither is ever assigned (8 s watched)."""
    asyncio.run(_filled(bootstrap, topic, partitions=2, per_partition=5))
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"rdkafka-{topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "log_level": 0,
    }
    members = [confluent_kafka.Consumer(config) for _ in range(2)]
    for member in members:
        member.subscribe([topic])
    read: set[tuple[int, int]] = set()
    assigned: list[list[int]] = [[], []]
    deadline = time.monotonic() + (20 if APACHE_KAFKA else 8)
    try:
        # Until everything was read and the group settled with both members (the first may read it all
        # before the second joins; the rebalance then splits the partitions).
        while (len(read) < 10 or [] in assigned) and time.monotonic() < deadline:
            for member in members:
                record = member.poll(0.1)
                if record is not None and record.error() is None:
                    read.add((record.partition(), record.offset()))
            assigned = [sorted(tp.partition for tp in member.assignment()) for member in members]
    finally:
        for member in members:
            member.close()
    if APACHE_KAFKA:
        assert (len(read), sorted(assigned)) == (10, [[0], [1]])
    else:
        assert (len(read), assigned) == (0, [[], []]), "Tansu now lets librdkafka join: update README"


async def test_aborted_transactions_are_hidden_from_read_committed_only_on_apache_kafka(
    bootstrap: str, topic: str
) -> None:
    """A librdkafka transactional producer commits, aborts, commits. Apache Kafka hides the aborted
    record from read_committed consumers; Tansu takes the transactional calls but delivers it."""
    await create_topics(bootstrap, {topic: 1})
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}", "log_level": 0}
    )
    producer.init_transactions(30)
    for value, commit in ((b"committed-1", True), (b"aborted", False), (b"committed-2", True)):
        producer.begin_transaction()
        producer.produce(topic, value=value, partition=0)
        producer.flush(30)
        producer.commit_transaction(30) if commit else producer.abort_transaction(30)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes | None] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            values += [r.value for r in (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])]
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                break
    finally:
        await consumer.stop()
    if APACHE_KAFKA:
        assert values == [b"committed-1", b"committed-2"]
    else:
        assert values == [b"committed-1", b"aborted", b"committed-2"], "Tansu hides aborts now: update README"


async def test_topic_max_message_bytes_is_enforced_only_on_apache_kafka(bootstrap: str, topic: str) -> None:
    """A topic created with max.message.bytes=2048: Apache Kafka refuses a 4 KB record, Tansu stores it."""
    await create_topics(bootstrap, {topic: 1}, configs={topic: {"max.message.bytes": "2048"}})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        if APACHE_KAFKA:
            with pytest.raises(MessageSizeTooLargeError):
                await producer.send_and_wait(topic, b"x" * 4096)
        else:
            await producer.send_and_wait(topic, b"x" * 4096)
    finally:
        await producer.stop()
