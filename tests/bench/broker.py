"""Kafka side of the benchmark: produce a corpus, watch a group's commits, and the bare-read limit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import TracebackType
from typing import Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from devtools.embedded import create_topics
from tests.bench.corpus import Corpus

PARTITIONS = 3
#: The worker's fetch sizes with default settings (worker/kafka_clients.py), so that the limit fetches alike.
FETCH_MAX_BYTES = 50 * 1024 * 1024
PARTITION_FETCH_BYTES = 16 * 1024 * 1024 + 1024


async def make_topic(bootstrap: str, topic: str) -> None:
    """The topic (``PARTITIONS`` partitions) and its DLQ."""
    await create_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})


def partition_of(corpus: Corpus) -> list[int]:
    """One partition per model run (the record key), as a keyed producer would place them."""
    runs = sorted(set(corpus.keys))
    return [runs.index(key) % PARTITIONS for key in corpus.keys]


async def produce(bootstrap: str, topic: str, corpus: Corpus) -> dict[int, int]:
    """Send the corpus to a fresh topic and wait for every ack; the end offset of each partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1024 * 1024, max_request_size=16 * 2**20
    )
    await producer.start()
    partitions = partition_of(corpus)
    try:
        sent = [
            await producer.send(topic, value=value, key=key, partition=p)
            for key, value, p in zip(corpus.keys, corpus.values, partitions, strict=True)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    counts = Counter(partitions)
    return {p: counts.get(p, 0) for p in range(PARTITIONS)}


class CommitWatcher:
    """Reads a group's committed offsets through a consumer that carries the group id but never joins.

    (aiokafka's admin ``list_consumer_group_offsets`` does not decode against Tansu.)
    """

    def __init__(self, bootstrap: str, group: str) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._consumer.stop()

    async def done(self, topic: str, ends: dict[int, int]) -> bool:
        """Whether every partition's committed offset reached its end offset."""
        for partition, end in ends.items():
            offset = await self._consumer.committed(TopicPartition(topic, partition))
            if (offset or 0) < end:
                return False
        return True


async def bare_read_s(bootstrap: str, topic: str, total: int, timeout_s: float = 60.0) -> float:
    """Seconds to read ``total`` records from the start (no group) and ``orjson`` loads + dumps each."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
    )
    started = time.perf_counter()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        read = 0
        while read < total:
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"read {read} of {total} records in {timeout_s} s")
            batches = await consumer.getmany(timeout_ms=100)
            read += sum(_load_dump(records) for records in batches.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def _load_dump(records: list[ConsumerRecord[bytes, bytes]]) -> int:
    for record in records:
        orjson.dumps(orjson.loads(record.value))
    return len(records)
