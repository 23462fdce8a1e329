"""The worker end to end: real broker over TCP, real HTTP to the local Labelbox-compatible server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from labelbox_sandbox import FaultRule, Sandbox
from tests.support.factories import bbox, every_type, message
from tests.support.kafka_helpers import produce, read_all
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.convert import convert
from worker.decode import decode

pytestmark = pytest.mark.integration
RUNS = ("run-a", "run-b", "run-c")


def _stream(count: int, partitions: int) -> list[tuple[bytes | None, bytes, int | None]]:
    """Valid messages of every type over several model runs, interleaved across partitions."""
    records = []
    for i in range(count):
        payload = message(
            *every_type(), model_run_id=RUNS[i % len(RUNS)], data_row={"global_key": f"img-{i}.jpg"}
        )
        records.append((RUNS[i % len(RUNS)].encode(), orjson.dumps(payload), i % partitions))
    return records


def _expected(records: list[tuple[bytes | None, bytes, int | None]]) -> dict[str, dict[str, dict[str, Any]]]:
    """model run -> uuid -> NDJSON line, computed by the pure converter from the same bytes."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for _, value, _ in records:
        decoded = decode(value)
        assert not hasattr(decoded, "reason")
        for line in convert(decoded):  # type: ignore[arg-type]
            out.setdefault(decoded.model_run_id, {})[line.uuid] = line.body  # type: ignore[union-attr]
    return out


def _ends(records: list[tuple[bytes | None, bytes, int | None]], partitions: int) -> dict[int, int]:
    return {p: sum(1 for r in records if r[2] == p) for p in range(partitions)}


INVALID = [
    (b"not json at all", "invalid_json"),
    (orjson.dumps(message(bbox(confidence=7))), "out_of_range"),
    (orjson.dumps(message({"type": "hexagon", "name": "h"})), "unknown_prediction_type"),
    (b"\xff\xfe\x00garbage", "invalid_utf8"),
]


async def test_streams_every_type_and_dead_letters_invalid(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    partitions = 4
    await make_topics(bootstrap, topic, partitions)
    valid = _stream(60, partitions)
    invalid = [(b"run-a", value, i % partitions) for i, (value, _) in enumerate(INVALID)]
    records = valid[:30] + invalid + valid[30:]
    await produce(bootstrap, topic, records)
    settings = settings_for(bootstrap, topic, sandbox, batch_max_rows=200)
    async with running(settings) as (service, _):
        seen = await wait_committed(bootstrap, settings, _ends(records, partitions))
        assert seen == _ends(records, partitions), "every offset committed"
        assert service.pipeline is not None
        assert service.pipeline.health()["live"]
    expected = _expected(valid)
    for run, lines in expected.items():
        stored = {p["uuid"]: p for p in sandbox.state.predictions(run)}
        assert stored == lines, f"{run}: what Labelbox holds equals the converter's output"
        assert set(sandbox.state.upload_counts(run).values()) == {1}, "each uuid uploaded once"
    dlq = await read_all(bootstrap, f"{topic}.dlq", expected=len(INVALID))
    assert sorted((r.value, r.headers["dlq.reason"]) for r in dlq) == sorted(INVALID)
    for record in dlq:
        assert record.headers["dlq.origin.topic"] == topic
        assert int(record.headers["dlq.origin.offset"]) >= 0
        assert record.headers["dlq.error"]
    assert service.metrics.registry.get_sample_value("lbworker_buffered_bytes") == 0  # nothing left buffered


async def test_rows_labelbox_rejects_go_to_the_dlq(bootstrap: str, topic: str, sandbox: Sandbox) -> None:
    await make_topics(bootstrap, topic, 1)
    records = _stream(6, 1)
    doomed = convert(decode(records[2][1]))[0].uuid  # type: ignore[arg-type]
    sandbox.state.add_fault(FaultRule(kind="row_failure", uuids=(doomed,), count=None))
    await produce(bootstrap, topic, records)
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: 6}) == {0: 6}
    dlq = await read_all(bootstrap, f"{topic}.dlq", expected=1)
    assert len(dlq) == 1
    assert dlq[0].value == records[2][1], "the original message, byte for byte"
    assert dlq[0].headers["dlq.reason"] == "labelbox_rejected"
    assert doomed in dlq[0].headers["dlq.error"]
    assert dlq[0].headers["dlq.import_name"].startswith(f"{topic}/0@")
    assert dlq[0].headers["dlq.model_run_id"] == RUNS[2]


async def test_restart_resumes_from_committed_offsets(bootstrap: str, topic: str, sandbox: Sandbox) -> None:
    await make_topics(bootstrap, topic, 2)
    records = _stream(40, 2)
    first, second = records[:20], records[20:]
    settings = settings_for(bootstrap, topic, sandbox)
    await produce(bootstrap, topic, first)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, _ends(first, 2)) == _ends(first, 2)
    await produce(bootstrap, topic, second)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, _ends(records, 2)) == _ends(records, 2)
    for run, lines in _expected(records).items():
        counts = sandbox.state.upload_counts(run)
        assert set(counts) == set(lines)
        assert set(counts.values()) == {1}, "nothing re-uploaded after the restart"


async def test_messages_from_librdkafka_producer(bootstrap: str, topic: str, sandbox: Sandbox) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    await make_topics(bootstrap, topic, 2)
    records = _stream(10, 2)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value, partition in records:
        producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(20) == 0, "librdkafka delivered everything"
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, _ends(records, 2)) == _ends(records, 2)
    for run, lines in _expected(records).items():
        assert {p["uuid"] for p in sandbox.state.predictions(run)} == set(lines)


async def test_invalid_api_key_stops_the_worker_and_commits_nothing(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 1)
    await produce(bootstrap, topic, _stream(3, 1))
    settings = settings_for(bootstrap, topic, sandbox, labelbox_api_key="wrong-key")
    async with running(settings) as (_, task):
        status = await task
    assert status == 3
    from tests.support.kafka_helpers import committed

    assert await committed(bootstrap, settings.kafka_group_id, topic, 1) == {0: None}
    assert sandbox.state.all_predictions() == {} or all(
        not v for v in sandbox.state.all_predictions().values()
    )
