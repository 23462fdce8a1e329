"""The end-to-end baseline: the consumer a user would write today around the Labelbox SDK.

A plain aiokafka group consumer (auto commit off): for each fetched batch, build ``lb.Label`` objects
for its messages, ``MEAPredictionImport.create(..., labels=...)`` once per model run in the batch,
``wait_till_done`` at the benchmark's poll interval, then commit. The blocking SDK calls run in a
thread so that the consumer's heartbeats go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import labelbox
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from tests.bench.sdk_build import sdk_label


@contextlib.contextmanager
def sdk_client(api_key: str, graphql_url: str) -> Iterator[labelbox.Client]:
    """A Labelbox SDK client on ``graphql_url``, with both of its HTTP sessions closed on exit."""
    client = labelbox.Client(api_key=api_key, endpoint=graphql_url)
    try:
        yield client
    finally:
        client.connection.close()
        client._adv_client.session.close()


def import_batch(
    client: labelbox.Client, records: list[ConsumerRecord[bytes, bytes]], poll_interval_s: float
) -> None:
    """One SDK import per model run in the batch, each followed until it is done."""
    labels: dict[str, list[labelbox.types.Label]] = defaultdict(list)
    for record in records:
        message = json.loads(record.value)
        labels[message["model_run_id"]].append(sdk_label(message))
    for run, run_labels in labels.items():
        name = f"bench-sdk-{uuid.uuid4()}"
        job = labelbox.MEAPredictionImport.create(client=client, id=run, name=name, labels=run_labels)
        job.wait_till_done(sleep_time_seconds=poll_interval_s)
        if job.state != labelbox.AnnotationImportState.FINISHED:
            raise RuntimeError(f"SDK import {name} ended {job.state}")


@dataclass(frozen=True, slots=True)
class Timed:
    """Seconds from start until everything was committed and until the group assigned partitions;
    CPU seconds this process used after that assignment (0 when not measured)."""

    total_s: float
    joined_s: float
    cpu_after_join_s: float = 0.0


class _JoinClock(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, started: float) -> None:
        self._started = started
        self.joined_s = 0.0
        self.cpu_at_join_s = 0.0

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if not self.joined_s:
            self.joined_s = time.perf_counter() - self._started
            self.cpu_at_join_s = time.process_time()


async def time_sdk_consumer(
    client: labelbox.Client,
    bootstrap: str,
    topic: str,
    total: int,
    poll_interval_s: float,
    session_timeout_ms: int,
    timeout_s: float = 300.0,
) -> Timed:
    """Time the SDK consumer importing and committing ``total`` records of ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-sdk-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
    )
    started = time.perf_counter()
    join_clock = _JoinClock(started)
    await consumer.start()
    consumer.subscribe([topic], listener=join_clock)
    try:
        done = 0
        while done < total:
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"the SDK consumer imported {done} of {total} records in {timeout_s} s")
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            records = [record for partition in batches.values() for record in partition]
            if records:
                await asyncio.to_thread(import_batch, client, records, poll_interval_s)
                await consumer.commit()
                done += len(records)
        total_s, cpu_s = time.perf_counter() - started, time.process_time() - join_clock.cpu_at_join_s
        return Timed(total_s, join_clock.joined_s, cpu_s)
    finally:
        await consumer.stop()
