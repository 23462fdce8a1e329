"""Confluent-framed values end to end: produced with confluent-kafka's own JSONSerializer (both schema-id
framings, a mock:// Schema Registry), over the real broker, through the worker, into the local server.

What Labelbox ends up holding for framed messages must equal what the same messages, unframed, convert
to; bad frames go to the DLQ as invalid_json with the schema id in ``dlq.schema_id``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from labelbox_sandbox import Sandbox
from schemas.jsonschema import render
from tests.support.factories import bbox, every_type, message
from tests.support.kafka_helpers import read_all
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.convert import convert
from worker.decode import decode
from worker.framing import VALUE_SCHEMA_ID_HEADER
from worker.replay import Selection, replay
from worker.settings import KafkaSettings

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")
schema_registry = pytest.importorskip("confluent_kafka.schema_registry")
json_schema = pytest.importorskip("confluent_kafka.schema_registry.json_schema")
serialization = pytest.importorskip("confluent_kafka.serialization")

RUNS = {"prefix": "run-prefixed", "header": "run-headered"}
Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def _messages(run: str, count: int) -> list[dict[str, Any]]:
    return [
        message(*every_type(), model_run_id=run, data_row={"global_key": f"{run}-{i}.jpg"})
        for i in range(count)
    ]


def _serialized(topic: str, count: int) -> tuple[list[Record], dict[str, list[dict[str, Any]]]]:
    """Records as a Confluent producer writes them: each framing with its own serializer."""
    registry = schema_registry.SchemaRegistryClient.new_client({"url": "mock://lbworker-tests"})
    serializers = {
        "prefix": json_schema.JSONSerializer(render().decode(), registry),
        "header": json_schema.JSONSerializer(
            render().decode(),
            registry,
            conf={"schema.id.serializer": schema_registry.header_schema_id_serializer},
        ),
    }
    records: list[Record] = []
    sent: dict[str, list[dict[str, Any]]] = {}
    for framing, serializer in serializers.items():
        sent[framing] = _messages(RUNS[framing], count)
        for payload in sent[framing]:
            headers: list[tuple[str, bytes]] = []
            context = serialization.SerializationContext(topic, serialization.MessageField.VALUE, headers)
            records.append((payload["model_run_id"].encode(), serializer(payload, context), headers))
    return records, sent


def _expected(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """uuid -> NDJSON line of the *unframed* messages, by the pure converter."""
    out: dict[str, dict[str, Any]] = {}
    for payload in messages:
        decoded = decode(orjson.dumps(payload))
        for line in convert(decoded):  # type: ignore[arg-type]
            out[line.uuid] = line.body
    return out


def _produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers or None)
    assert producer.flush(20) == 0, "librdkafka delivered everything"


async def test_both_framings_import_what_the_unframed_messages_convert_to(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 1)
    records, sent = _serialized(topic, 6)
    assert records[0][1][:1] == b"\x00", "the prefix framing: magic byte 0 and a 4-byte id"
    assert records[-1][2][0][0] == VALUE_SCHEMA_ID_HEADER, "the header framing: a GUID header"
    schema_id = int.from_bytes(records[0][1][1:5], "big")
    guid_header = records[-1][2]
    bad = [
        (b"run-x", b"\x00" + schema_id.to_bytes(4, "big") + orjson.dumps(message(bbox(confidence=7))), []),
        (b"run-x", b"\x00\x00\x00", []),  # truncated
        (b"run-x", b"{not json", guid_header),
    ]
    _produce(bootstrap, topic, records + bad)
    settings = settings_for(bootstrap, topic, sandbox, batch_max_rows=500)
    total = len(records) + len(bad)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: total}) == {0: total}
    for framing, run in RUNS.items():
        stored = {line["uuid"]: line for line in sandbox.state.predictions(run)}
        assert stored == _expected(sent[framing]), f"{framing} framing: the unframed messages' NDJSON"
    dlq = sorted(
        await read_all(bootstrap, f"{topic}.dlq", expected=len(bad)),
        key=lambda r: int(r.headers["dlq.origin.offset"]),
    )
    assert [r.value for r in dlq] == [value for _, value, _ in bad], "original values, frames included"
    assert [(r.headers["dlq.reason"], r.headers.get("dlq.schema_id")) for r in dlq] == [
        ("out_of_range", str(schema_id)),
        ("invalid_json", None),
        ("invalid_json", str(uuid.UUID(bytes=guid_header[0][1][1:]))),
    ]
    assert dlq[1].headers["dlq.error"].startswith("truncated Confluent prefix: magic byte 0 needs 5 bytes")


async def test_replay_gives_a_header_framed_dead_letter_its_header_back(bootstrap: str, topic: str) -> None:
    await make_topics(bootstrap, topic, 1)
    guid = uuid.uuid4()
    header = (VALUE_SCHEMA_ID_HEADER, b"\x01" + guid.bytes)
    letters = [
        (b"{oops", [("dlq.reason", b"invalid_json"), ("dlq.schema_id", str(guid).encode())]),
        (b"\x00\x00\x00\x00\x09{oops", [("dlq.reason", b"invalid_json"), ("dlq.schema_id", b"9")]),
    ]
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for value, headers in letters:
        producer.produce(f"{topic}.dlq", value=value, key=b"run-x", headers=headers)
    assert producer.flush(20) == 0
    settings = KafkaSettings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic, "KAFKA_DLQ_TOPIC": f"{topic}.dlq"}
    )
    report = await replay(settings, Selection(), timeout_s=30)
    assert report.replayed == 2
    replayed = await _raw_records(bootstrap, topic, expected=2)
    assert [value for value, _ in replayed] == [value for value, _ in letters]
    assert header in replayed[0][1]
    assert VALUE_SCHEMA_ID_HEADER not in dict(replayed[1][1]), "a prefixed value carries its own id"


async def _raw_records(
    bootstrap: str, topic: str, expected: int
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """(value, raw headers) of a one-partition topic from its start (bounded by a deadline)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        deadline = time.monotonic() + 20
        while len(out) < expected and time.monotonic() < deadline:
            fetched = await consumer.getmany(tp, timeout_ms=200)
            out.extend((r.value, list(r.headers)) for r in fetched.get(tp, []))
        return out
    finally:
        await consumer.stop()
