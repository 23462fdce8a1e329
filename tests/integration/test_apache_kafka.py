"""What only Apache Kafka shows: transactions, its consumer-group protocol for librdkafka, every
compression codec end to end, SASL/SCRAM and TLS, lag as KEDA reads it, and a real size limit on the DLQ.

These tests are marked ``apache_kafka``: ``make test-kafka`` (``TEST_BROKER=apache-kafka``) runs them on
the broker of tests/apache_kafka.py; elsewhere they are skipped. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devtools.embedded import create_topics
from labelbox_sandbox import FaultRule, Sandbox
from tests.apache_kafka import ApacheKafka, TlsFiles
from tests.conftest import API_KEY
from tests.support.factories import bbox, message
from tests.support.kafka_helpers import DeadLettered, committed, produce, read_dlq
from tests.support.tls_certs import Pki, make_pki
from tests.support.waiting import until
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.dlq import H_TRUNCATED
from worker.kafka_clients import make_producer
from worker.settings import KafkaSettings

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


# --- the DLQ, read by a librdkafka consumer group; its size limit -------------------------------------


#: Invalid messages and the reason the worker gives each.
INVALID = {
    b"not json at all": "invalid_json",
    b"\xff\xfe\x00garbage": "invalid_utf8",
    orjson.dumps({"model_run_id": RUN}): "unknown_payload_format",
    b"[1, 2]": "not_an_object",
}


def read_group(bootstrap: str, topic: str, group: str, expected: int, timeout_s: float) -> list[Any]:
    """Two librdkafka consumers in ``group`` read ``topic`` until ``expected`` distinct records are read
    and each holds a partition; each commits what it read. Returns the records (blocking)."""
    config = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    members = [confluent_kafka.Consumer({**config, "enable.auto.commit": False}) for _ in range(2)]
    for member in members:
        member.subscribe([topic])
    read: dict[tuple[int, int], Any] = {}
    assigned: list[list[int]] = [[], []]
    deadline = time.monotonic() + timeout_s
    try:
        while (len(read) < expected or [] in assigned) and time.monotonic() < deadline:
            for member in members:
                record = member.poll(0.1)
                if record is not None and record.error() is None:
                    read[(record.partition(), record.offset())] = record
                    member.commit(record, asynchronous=False)
            assigned = [sorted(tp.partition for tp in member.assignment()) for member in members]
    finally:
        for member in members:
            member.close()
    assert sorted(assigned) == [[0], [1]], "the group split the DLQ's two partitions"
    return list(read.values())


async def test_a_librdkafka_consumer_group_reads_the_dlq(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    """Operators read the DLQ with any client: here a librdkafka group of two, over a 2-partition DLQ."""
    dlq = f"{topic}-wide.dlq"
    await create_topics(bootstrap, {topic: 1, dlq: 2})
    records = [(f"key-{i}".encode(), value, 0) for i, value in enumerate(list(INVALID) * 3)]
    await produce(bootstrap, topic, records)
    settings = settings_for(bootstrap, topic, sandbox, kafka_dlq_topic=dlq)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: len(records)}) == {0: len(records)}
    dlq_ends = await end_offsets(bootstrap, dlq, 2)
    assert sum(dlq_ends.values()) == len(records)
    assert all(dlq_ends.values()), "spread over both partitions"
    group = f"dlq-readers-{topic}"
    read = await asyncio.to_thread(read_group, bootstrap, dlq, group, len(records), 30.0)
    assert sorted((r.key(), r.value()) for r in read) == sorted((k, v) for k, v, _ in records)
    for record in read:
        headers = {name: value.decode() for name, value in record.headers() or []}
        assert headers["dlq.origin.topic"] == topic
        assert headers["dlq.reason"] == INVALID[record.value()]
    assert await committed(bootstrap, group, dlq, 2) == dlq_ends, "the group committed what it read"


@pytest.mark.parametrize(("topic_limit", "kept"), [(100_000, 64 * 1024), (16_384, 0)])
async def test_a_dlq_topic_limit_below_a_record_keeps_it_truncated(
    bootstrap: str, topic: str, sandbox: Sandbox, topic_limit: int, kept: int
) -> None:
    """The DLQ topic's max.message.bytes (1 MiB by a cluster's default) is below the worker's
    KAFKA_DLQ_MAX_MESSAGE_BYTES (16 MiB): the broker refuses the 300 kB invalid record, and the worker
    keeps its first 64 KiB with its size in a header, or only its headers if the limit is below 64 KiB
    (before, the worker retried that write for ever and the partition's commits stopped), then goes on."""
    dlq = f"{topic}.dlq"
    await create_topics(bootstrap, {topic: 1, dlq: 1}, configs={dlq: {"max.message.bytes": str(topic_limit)}})
    big = b"{" + b"x" * 299_999  # invalid JSON
    records = [(b"k", b"small, not json", 0), (b"k", big, 0), (b"k", value_for("after.jpg"), 0)]
    await produce(bootstrap, topic, records)
    settings = settings_for(bootstrap, topic, sandbox)
    assert settings.kafka_dlq_max_message_bytes > topic_limit
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: 3}, timeout_s=30) == {0: 3}
    letters = await read_dlq(bootstrap, dlq)
    assert [(d.value, d.headers.get(H_TRUNCATED)) for d in letters] == [
        (b"small, not json", None),
        (big[:kept], "300000"),
    ]
    assert letters[1].headers["dlq.reason"] == "invalid_json"
    assert stored_keys(sandbox) == {"after.jpg"}, "the stream went on"


# --- SASL/SCRAM-SHA-512 and TLS, end to end -----------------------------------------------------------

SCRAM_USER, SCRAM_PASSWORD = "lbworker", "scram-secret-5d1e"


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApacheKafka, Pki]]:
    """An Apache Kafka of its own with three listeners: PLAINTEXT (for the test's own clients),
    SASL_PLAINTEXT with SCRAM-SHA-512 (the user written at format time) and SSL requiring client
    certificates from a CA made here."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    tls = TlsFiles(keystore_pem=pki.server_keystore, client_ca_pem=pki.ca)
    with ApacheKafka(scram_users={SCRAM_USER: SCRAM_PASSWORD}, tls=tls) as kafka:
        yield kafka, pki


async def stream_through(
    kafka: ApacheKafka, address: str, topic: str, sandbox: Sandbox, **security: Any
) -> tuple[dict[int, int], list[DeadLettered]]:
    """Produce 30 valid and 1 invalid record over PLAINTEXT, run the worker over ``address`` with
    ``security`` settings; returns the committed offsets and the DLQ (both read over PLAINTEXT)."""
    await make_topics(kafka.bootstrap, topic, 2)
    records = [(RUN.encode(), value_for(f"sec-{i}.jpg"), i % 2) for i in range(30)]
    records.append((RUN.encode(), b"not json", 0))
    await produce(kafka.bootstrap, topic, records)
    settings = settings_for(address, topic, sandbox, **security)
    async with running(settings) as (_, task):
        seen = await wait_committed(kafka.bootstrap, settings, {0: 16, 1: 15}, timeout_s=60)
        assert not task.done(), "the worker runs"
    return {p: offset or 0 for p, offset in seen.items()}, await read_dlq(kafka.bootstrap, f"{topic}.dlq")


async def test_sasl_scram_sha_512_end_to_end(
    secure_kafka: tuple[ApacheKafka, Pki], topic: str, sandbox: Sandbox
) -> None:
    kafka, _ = secure_kafka
    assert kafka.sasl_port is not None
    security = {
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": SCRAM_USER,
        "kafka_sasl_password": SCRAM_PASSWORD,
    }
    seen, dlq = await stream_through(kafka, f"127.0.0.1:{kafka.sasl_port}", topic, sandbox, **security)
    assert seen == {0: 16, 1: 15}, "consumed and committed over SASL"
    assert stored_keys(sandbox) == {f"sec-{i}.jpg" for i in range(30)}
    assert [d.headers["dlq.reason"] for d in dlq] == ["invalid_json"], "the DLQ producer authenticated too"


async def test_tls_with_client_certificates_end_to_end(
    secure_kafka: tuple[ApacheKafka, Pki], topic: str, sandbox: Sandbox
) -> None:
    kafka, pki = secure_kafka
    assert kafka.ssl_port is not None
    security = {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": pki.ca,
        "kafka_ssl_certfile": pki.client_cert,
        "kafka_ssl_keyfile": pki.client_key,
    }
    seen, dlq = await stream_through(kafka, f"127.0.0.1:{kafka.ssl_port}", topic, sandbox, **security)
    assert seen == {0: 16, 1: 15}, "consumed and committed over TLS (the server verified by our CA)"
    assert stored_keys(sandbox) == {f"sec-{i}.jpg" for i in range(30)}
    assert [d.headers["dlq.reason"] for d in dlq] == ["invalid_json"]


@pytest.mark.parametrize("case", ["wrong-password", "no-client-certificate", "unknown-ca"])
async def test_the_secure_listeners_refuse_bad_credentials(
    secure_kafka: tuple[ApacheKafka, Pki], case: str, tmp_path: Path
) -> None:
    """The two tests above prove something only if the listeners check: the worker's own clients
    (worker.kafka_clients) with a wrong password, without a client certificate, or trusting another CA fail
    to start."""
    kafka, pki = secure_kafka
    values: dict[str, Any] = {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki.ca}
    address = f"127.0.0.1:{kafka.ssl_port}"
    if case == "wrong-password":
        address = f"127.0.0.1:{kafka.sasl_port}"
        values = {
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": SCRAM_USER,
            "kafka_sasl_password": "not-the-password",
        }
    elif case == "unknown-ca":
        values |= {"kafka_ssl_certfile": pki.client_cert, "kafka_ssl_keyfile": pki.client_key}
        values["kafka_ssl_cafile"] = make_pki(tmp_path).ca
    producer = make_producer(KafkaSettings.model_validate({"kafka_bootstrap_servers": address, **values}))
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), 30)
    await producer.stop()


# --- consumer lag: KEDA's reading and the worker's metric ----------------------------------------------


async def keda_lag(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """Lag as KEDA's Kafka scaler computes it: end offsets (ListOffsets) minus the group's committed
    offsets (OffsetFetch through an admin client), per partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    done = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    ends = await end_offsets(bootstrap, topic, partitions)
    return {p: end - max(done.get(p, 0), 0) for p, end in ends.items()}


def worker_figures(service: Any, topic: str, partitions: int) -> tuple[dict[int, float], float]:
    """(lbworker_consumer_lag per partition, lbworker_messages_consumed_total) from its registry."""
    registry = service.metrics.registry
    lag = {
        p: registry.get_sample_value("lbworker_consumer_lag", {"topic": topic, "partition": str(p)}) or 0.0
        for p in range(partitions)
    }
    return lag, registry.get_sample_value("lbworker_messages_consumed_total", {"topic": topic}) or 0.0


async def test_consumer_lag_mid_stream_as_keda_reads_it_and_as_the_worker_exports_it(
    bootstrap: str, topic: str
) -> None:
    """Labelbox held slow (each import created after 2 s), so lag is large and fetching pauses. KEDA's
    lag counts every record not committed; ``lbworker_consumer_lag`` counts the records not yet
    fetched; the difference is what the worker holds (fetched, not settled): each checked against its
    own definition mid-stream, and both 0 at the end."""
    partitions, count = 2, 400
    async with Sandbox(api_key=API_KEY, processing_delay_s=0.05) as sandbox:
        slow = FaultRule(kind="latency", operation="create_import", delay_s=2.0, count=None)
        sandbox.state.add_fault(slow)
        await make_topics(bootstrap, topic, partitions)
        records = [(RUN.encode(), value_for(f"lag-{i}.jpg"), i % partitions) for i in range(count)]
        await produce(bootstrap, topic, records)
        settings = settings_for(
            bootstrap, topic, sandbox, buffer_max_bytes=32 * 1024, batch_max_rows=10, upload_concurrency=2
        )
        group = settings.kafka_group_id
        async with running(settings) as (service, _):
            paused = await until(
                lambda: (service.metrics.registry.get_sample_value("lbworker_paused_partitions") or 0) > 0,
                timeout_s=30,
            )
            assert paused, "the buffer filled: fetching paused"
            for _ in range(20):  # a sample during which the worker did not fetch (bounded)
                before = worker_figures(service, topic, partitions)
                keda = await keda_lag(bootstrap, group, topic, partitions)
                commits = await committed(bootstrap, group, topic, partitions)
                if worker_figures(service, topic, partitions) == before:
                    break
            lag, consumed = before
            in_worker = consumed - sum(v or 0 for v in commits.values())
            print(
                f"LAG mid-stream: keda={keda} worker={lag} consumed={consumed:.0f} in_worker={in_worker:.0f}"
            )
            assert sum(keda.values()) == count - sum(v or 0 for v in commits.values()), "end minus committed"
            assert sum(lag.values()) == count - consumed, "end minus fetch position"
            assert sum(keda.values()) - sum(lag.values()) == in_worker > 0, "fetched, not yet committed"
            assert all(lag[p] <= keda[p] for p in range(partitions))
            assert sum(lag.values()) > 0, "lag is large: records not fetched yet"
            sandbox.state.clear_faults()
            ends = {p: count // partitions for p in range(partitions)}
            assert await wait_committed(bootstrap, settings, ends, timeout_s=120) == ends
            assert await until(lambda: worker_figures(service, topic, partitions)[0] == {0: 0.0, 1: 0.0}, 10)
        assert await keda_lag(bootstrap, group, topic, partitions) == {0: 0, 1: 0}
