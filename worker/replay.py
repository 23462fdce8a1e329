"""``lbworker replay-dlq``: re-publish dead-lettered records to the main topic.

For when the cause has been fixed (an ontology corrected, an API key rotated, a producer bug fixed).
The DLQ is read from its beginning up to its end at start-up; each selected record is published to
``KAFKA_TOPIC`` with its original key and value and a ``dlq.replay_count`` header one higher than
before (plus the ``__value_schema_id`` header a Confluent producer had given it, from
``dlq.schema_id``). The worker carries that count into any new DLQ record, so a record that keeps
failing stops being replayed after ``--max-replays`` rounds instead of looping for ever. Replaying
the same records twice publishes them twice; that is harmless (the same uuids replace in Labelbox)
but wasteful, so filter with ``--reason`` / ``--model-run`` / ``--limit``, and look first with
``--dry-run``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from worker.dlq import H_MODEL_RUN, H_REASON, H_REPLAYS, H_SCHEMA_ID, replay_count
from worker.framing import schema_id_header
from worker.kafka_clients import make_producer, make_reader
from worker.logs import configure_command_logs
from worker.pipeline import EXIT_INTERNAL, EXIT_OK, EXIT_SETTINGS
from worker.settings import KafkaSettings, SettingsError

_IDLE_POLLS_AT_END = 3


@dataclass(frozen=True, slots=True)
class Selection:
    """Which DLQ records to replay."""

    reason: str | None = None
    model_run_id: str | None = None
    limit: int | None = None
    max_replays: int = 3

    def refusal(self, headers: dict[str, str], replays: int) -> str | None:
        """Why a record is not replayed (a short label), or None to replay it."""
        if self.reason is not None and headers.get(H_REASON) != self.reason:
            return "other_reason"
        if self.model_run_id is not None and headers.get(H_MODEL_RUN) != self.model_run_id:
            return "other_model_run"
        if replays >= self.max_replays:
            return "max_replays_reached"
        return None


@dataclass
class Report:
    """What a replay did."""

    scanned: int = 0
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would replay" if dry_run else "replayed"
        out = [f"scanned {self.scanned} DLQ records; {verb} {self.replayed}"]
        out += [f"  {verb} reason={reason}: {count}" for reason, count in sorted(self.by_reason.items())]
        out += [f"  skipped ({why}): {count}" for why, count in sorted(self.skipped.items())]
        return out


async def _dlq_records(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of the DLQ from the beginning to the end seen in fetch responses (bounded)."""
    partitions = await _partitions(consumer, topic)
    if not partitions:
        return  # no such topic: nothing was ever dead-lettered
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    await consumer.seek_to_beginning()
    idle, deadline = 0, time.monotonic() + timeout_s
    while idle < _IDLE_POLLS_AT_END and time.monotonic() < deadline:
        fetched = await consumer.getmany(timeout_ms=300)
        idle = 0 if fetched else idle + 1
        for records in fetched.values():
            for record in records:
                yield record


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions, from a metadata request that names it.

    Apache Kafka answers the client's bootstrap metadata request (which names no topic) with no
    topics, and ``consumer.topics()`` fills a separate cluster view, so a consumer outside any group
    knows a topic's partitions only once the topic is tracked; aiokafka has no public call for that.
    """
    await consumer._client.add_topic(topic)
    return set(consumer.partitions_for_topic(topic) or ())


async def replay(
    settings: KafkaSettings, selection: Selection, *, dry_run: bool = False, timeout_s: float = 300.0
) -> Report:
    """Replay the selected DLQ records; returns what was done."""
    consumer = make_reader(settings)
    producer: AIOKafkaProducer | None = None if dry_run else make_producer(settings, role="replay")
    report = Report()
    try:
        await consumer.start()  # inside: a consumer that could not start is closed too
        if producer is not None:
            await producer.start()
        async for record in _dlq_records(consumer, settings.kafka_dlq_topic, timeout_s):
            if selection.limit is not None and report.replayed >= selection.limit:
                break
            await _one(record, selection, producer, settings.kafka_topic, report)
        if producer is not None:
            await producer.flush()
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return report


async def _one(
    record: ConsumerRecord[bytes, bytes],
    selection: Selection,
    producer: AIOKafkaProducer | None,
    topic: str,
    report: Report,
) -> None:
    report.scanned += 1
    headers = {name: value.decode("utf-8", "replace") for name, value in (record.headers or ())}
    replays = replay_count(record.headers or ())
    refusal = selection.refusal(headers, replays)
    if refusal is not None:
        report.skipped[refusal] += 1
        return
    if producer is not None:
        replayed_headers = [(H_REPLAYS, str(replays + 1).encode())]
        if H_SCHEMA_ID in headers:  # a value that came with a Confluent schema-id header gets it back
            replayed_headers += schema_id_header(headers[H_SCHEMA_ID], record.value)
        await producer.send_and_wait(topic, value=record.value, key=record.key, headers=replayed_headers)
    report.replayed += 1
    report.by_reason[headers.get(H_REASON, "unknown")] += 1


def main(args: argparse.Namespace) -> int:
    """``lbworker replay-dlq`` with its parsed arguments (``worker.cli``); settings (KAFKA_*) from the
    environment."""
    try:
        settings = KafkaSettings.from_env()
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    configure_command_logs(settings)
    selection = Selection(args.reason, args.model_run_id, args.limit, args.max_replays)
    try:
        report = asyncio.run(replay(settings, selection, dry_run=args.dry_run))
    except KafkaError as exc:
        print(f"worker: replay-dlq stopped: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    print("\n".join(report.lines(args.dry_run)))
    return EXIT_OK
