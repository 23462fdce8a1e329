"""Compressed record batches, over the real broker: every codec read and written, and a batch that
cannot be decoded stops the worker with its place and what to do."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiokafka.codec
import confluent_kafka
import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from labelbox_sandbox import Sandbox
from schemas import PredictionMessage
from tests.support.factories import every_type, message
from tests.support.kafka_helpers import committed, read_dlq
from tests.support.sdk_oracle import camel_case_keys, comparable, sdk_data, sdk_lines, to_sdk
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.convert import convert
from worker.dlq import DeadLetter, DeadLetterWriter
from worker.kafka_clients import make_producer
from worker.pipeline import EXIT_UNDECODABLE
from worker.settings import KafkaSettings

pytestmark = pytest.mark.integration
CODECS = ("gzip", "snappy", "lz4", "zstd")
Record = tuple[bytes, bytes, int]


def _messages(codec: str, client: str, count: int, partitions: int) -> list[Record]:
    out = []
    for i in range(count):
        payload = message(
            *every_type(),
            model_run_id=f"run-{codec}",
            data_row={"global_key": f"{codec}-{client}-{i}.jpg"},
            message_id=f"{codec}/{client}/{i}",
        )
        out.append((f"run-{codec}".encode(), orjson.dumps(payload), i % partitions))
    return out


def _librdkafka(bootstrap: str, topic: str, codec: str, records: list[Record]) -> None:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20}
    )
    for key, value, partition in records:
        producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(20) == 0, "librdkafka delivered everything"


async def _aiokafka(bootstrap: str, topic: str, codec: str, records: list[Record]) -> None:
    compression = None if codec == "none" else codec
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=compression, linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k, partition=p) for k, v, p in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _sdk_expected(records: list[Record]) -> dict[str, dict[str, Any]]:
    """uuid -> the line Labelbox's SDK serializes for the same annotations (masks as pixels)."""
    out: dict[str, dict[str, Any]] = {}
    for _, value, _ in records:
        typed = PredictionMessage.model_validate_json(value)
        uuids = [line.uuid for line in convert(typed)]
        annotations = [to_sdk(p, u) for p, u in zip(typed.predictions, uuids, strict=True)]
        for line in sdk_lines(annotations, sdk_data(global_key=typed.data_row.global_key)):
            out[line["uuid"]] = comparable(camel_case_keys(line))
    return out


async def test_every_codec_from_librdkafka_and_aiokafka_is_imported_sdk_equal(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    partitions = 2
    await make_topics(bootstrap, topic, partitions)
    records: list[Record] = []
    for codec in CODECS:
        librdkafka, aio = (
            _messages(codec, "librdkafka", 3, partitions),
            _messages(codec, "aiokafka", 3, partitions),
        )
        _librdkafka(bootstrap, topic, codec, librdkafka)
        await _aiokafka(bootstrap, topic, codec, aio)
        records += librdkafka + aio
    invalid = (b"run-zstd", b'{"model_run_id": "run-zstd"}', 0)  # goes to the DLQ, written with zstd
    await _aiokafka(bootstrap, topic, "zstd", [invalid])
    ends = {p: sum(1 for r in [*records, invalid] if r[2] == p) for p in range(partitions)}
    settings = settings_for(
        bootstrap, topic, sandbox, kafka_compression_type="zstd", ensure_data_rows=True, batch_max_rows=500
    )
    async with running(settings):
        assert await wait_committed(bootstrap, settings, ends) == ends, "every offset committed"
    expected = _sdk_expected(records)
    stored = {
        line["uuid"]: comparable(line)
        for codec in CODECS
        for line in sandbox.state.predictions(f"run-{codec}")
    }
    assert len(stored) == len(expected) == 24 * len(every_type())
    assert stored == expected, "what Labelbox holds equals what its SDK serializes"
    dlq = await read_dlq(bootstrap, f"{topic}.dlq")
    assert [(d.value, d.headers["dlq.reason"]) for d in dlq] == [(invalid[1], "unknown_payload_format")]


def _letter(i: int, codec: str) -> DeadLetter:
    return DeadLetter(
        topic="predictions",
        partition=0,
        offset=i,
        key=b"k",
        value=b'{"codec": "%s", "i": %d}' % (codec.encode(), i),
        reason="invalid_json",
        errors=("broken",),
    )


def _read_with_librdkafka(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    """Read by assign() (librdkafka's group join stalls on the embedded broker), bounded in time."""
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}", "enable.auto.commit": False}
    )
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(values) < expected and time.monotonic() < deadline:
            for record in consumer.consume(num_messages=100, timeout=0.5):
                assert record.error() is None, record.error()
                values.append(record.value())
        return values
    finally:
        consumer.close()


async def test_dlq_written_with_each_codec_is_read_by_both_clients(bootstrap: str, topic: str) -> None:
    dlq_topic = f"{topic}.dlq"
    await make_topics(bootstrap, topic, 1)
    written: list[bytes] = []
    for codec in ("none", *CODECS):
        settings = KafkaSettings.model_validate(
            {
                "kafka_bootstrap_servers": bootstrap,
                "kafka_dlq_topic": dlq_topic,
                "kafka_compression_type": codec,
            }
        )
        producer = make_producer(settings)
        await producer.start()
        try:
            letters = [_letter(i, codec) for i in range(3)]
            await asyncio.gather(*(DeadLetterWriter(producer, dlq_topic).write(letter) for letter in letters))
            written += [letter.value for letter in letters if letter.value is not None]
        finally:
            await producer.stop()
    by_aiokafka = await read_dlq(bootstrap, dlq_topic)
    assert sorted(d.value for d in by_aiokafka if d.value is not None) == sorted(written)
    assert {d.headers["dlq.reason"] for d in by_aiokafka} == {"invalid_json"}
    assert sorted(_read_with_librdkafka(bootstrap, dlq_topic, len(written))) == sorted(written)


async def _produce_corrupt_batch(bootstrap: str, topic: str) -> None:
    """Three records in one batch whose CRC no longer matches (a byte of the last value flipped)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(3):
        builder.append(i, timestamp=None, key=None, value=b"corrupt %d" % i, headers=[])
    raw = bytearray(builder.build())
    raw[-3] ^= 0xFF
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client._metadata_update(client.cluster, [topic])
        leader = client.cluster.leader_for_partition(TopicPartition(topic, 1))
        response = await client.send(leader, ProduceRequest(None, 1, 10_000, [(topic, [(1, bytes(raw))])]))
    finally:
        await client.close()
    error_code = response.topics[0][1][0][1]
    if error_code != 0:
        pytest.skip(
            f"this broker checks CRCs on produce (error {error_code}): no corrupt batch can be stored"
        )


async def _run_until_it_stops(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> tuple[int, logging.LogRecord]:
    caplog.set_level(logging.ERROR, logger="worker.pipeline")
    async with running(settings) as (_, task):
        status = await asyncio.wait_for(task, timeout=30)
    (record,) = [r for r in caplog.records if r.name == "worker.pipeline" and r.levelno >= logging.ERROR]
    return status, record


async def test_a_batch_in_a_codec_the_worker_lacks_stops_it_naming_the_batch(
    bootstrap: str,
    topic: str,
    sandbox: Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_topics(bootstrap, topic, 2)
    good = _messages("none", "aiokafka", 4, 1)
    await _aiokafka(bootstrap, topic, "gzip", good)  # partition 0: gzip needs nothing extra
    _librdkafka(bootstrap, topic, "none", [(k, v, 1) for k, v, _ in _messages("none", "plain", 2, 1)])
    _librdkafka(bootstrap, topic, "zstd", [(k, v, 1) for k, v, _ in _messages("zstd", "librdkafka", 2, 1)])
    monkeypatch.setattr(aiokafka.codec, "cramjam", None)  # as without aiokafka's compression extras
    settings = settings_for(bootstrap, topic, sandbox, ensure_data_rows=True)
    status, record = await _run_until_it_stops(settings, caplog)
    assert status == EXIT_UNDECODABLE == 4
    fields = record.__dict__["ctx"]
    assert record.getMessage() == "undecodable_record_batch"
    assert (fields["topic"], fields["partition"], fields["offset"]) == (topic, 1, 2), "the zstd batch"
    assert "zstd" in fields["error"]
    assert "aiokafka[lz4,snappy,zstd]" in fields["action"]
    offsets = await committed(bootstrap, settings.kafka_group_id, topic, 2)
    assert (offsets[1] or 0) <= 2, "nothing at or after the batch is committed"


async def test_a_batch_that_stays_corrupt_stops_the_worker_naming_it(
    bootstrap: str, topic: str, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    await make_topics(bootstrap, topic, 2)
    await _aiokafka(bootstrap, topic, "none", _messages("none", "aiokafka", 3, 1))
    await _produce_corrupt_batch(bootstrap, topic)
    settings = settings_for(bootstrap, topic, sandbox, ensure_data_rows=True)
    status, record = await _run_until_it_stops(settings, caplog)
    assert status == EXIT_UNDECODABLE
    fields = record.__dict__["ctx"]
    assert (fields["topic"], fields["partition"], fields["offset"]) == (topic, 1, 0)
    assert "CRC" in fields["error"]
    assert "kafka-consumer-groups" in fields["action"]
    offsets = await committed(bootstrap, settings.kafka_group_id, topic, 2)
    assert offsets[1] is None, "nothing at or after the corrupt batch is committed"
