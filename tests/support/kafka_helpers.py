"""Producing, reading and inspecting over the real broker, for integration tests. Bounded loops only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.dlq import H_OFFSET, H_PARTITION


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes, int | None]]
) -> int:
    """Send (key, value, partition) records and wait for every ack; returns how many were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=64 * 1024 * 1024, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, partition=p) for k, v, p in records]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Received:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int


async def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0) -> list[Received]:
    """Read a topic from the start (no group) until ``expected`` records or the timeout."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic, timeout_s)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        out: list[Received] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(
                    Received(r.key, r.value, {k: v.decode() for k, v in r.headers}, r.partition, r.offset)
                    for r in records
                )
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float) -> set[int]:
    """The topic's partitions. Tracking the topic makes the client ask for it by name: Apache Kafka
    answers the bootstrap metadata request (no topic named) with no topics, Tansu with all of them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await consumer._client.add_topic(topic)
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    return set()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offsets per partition (None where nothing was committed).

    Read through a consumer that carries the group id but never joins the group (aiokafka's admin
    OffsetFetch does not decode against every Kafka-compatible broker); closed even when the broker
    cannot be reached. The one committed-offsets reader of the tests.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        await consumer.start()
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class DeadLettered:
    value: bytes | None
    headers: dict[str, str]
    timestamp_ms: int

    @property
    def origin(self) -> tuple[int, int]:
        """(partition, offset) the record came from."""
        return int(self.headers[H_PARTITION]), int(self.headers[H_OFFSET])


async def read_dlq(bootstrap: str, topic: str, timeout_s: float = 15.0) -> list[DeadLettered]:
    """Every record of the (single-partition) DLQ topic, up to the high watermark of the fetches."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        out: list[DeadLettered] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200)
            for record in batch.get(tp, []):
                headers = {k: v.decode() for k, v in record.headers}
                out.append(DeadLettered(record.value, headers, record.timestamp))
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                return out
        raise AssertionError(f"the DLQ {topic} was not read to its end within {timeout_s} s")
    finally:
        await consumer.stop()
