"""`replay-dlq` over the real broker: selection, dry run, the replay count, and the worker carrying it."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from devtools.embedded import free_port
from labelbox_sandbox import Sandbox
from tests.support.factories import bbox, message
from tests.support.kafka_helpers import produce, read_all
from tests.support.worker_harness import make_topics, running, settings_for, wait_committed
from worker.dlq import H_MODEL_RUN, H_REASON, H_REPLAYS
from worker.replay import Selection, replay
from worker.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _kafka(bootstrap: str, topic: str) -> KafkaSettings:
    return KafkaSettings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPIC": topic, "KAFKA_DLQ_TOPIC": f"{topic}.dlq"}
    )


async def _dead_letters(bootstrap: str, topic: str) -> None:
    """Five DLQ records: 3 out_of_range (runs a, a, b), 1 invalid_json, 1 already replayed 3 times."""

    def record(
        value: bytes, reason: str, run: str, replays: int = 0
    ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        headers = [(H_REASON, reason.encode()), (H_MODEL_RUN, run.encode())]
        return run.encode(), value, headers + ([(H_REPLAYS, str(replays).encode())] if replays else [])

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value, headers in [
            record(b'{"n": 1}', "out_of_range", "run-a"),
            record(b'{"n": 2}', "out_of_range", "run-a"),
            record(b'{"n": 3}', "out_of_range", "run-b"),
            record(b"{oops", "invalid_json", "run-a"),
            record(b'{"n": 5}', "out_of_range", "run-a", replays=3),
        ]:
            await producer.send_and_wait(f"{topic}.dlq", value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def test_replays_selected_records_with_a_replay_count(bootstrap: str, topic: str) -> None:
    await make_topics(bootstrap, topic, 1)
    await _dead_letters(bootstrap, topic)
    settings = _kafka(bootstrap, topic)

    dry = await replay(settings, Selection(reason="out_of_range"), dry_run=True, timeout_s=30)
    assert (dry.scanned, dry.replayed) == (5, 3)
    assert dry.skipped == {"other_reason": 1, "max_replays_reached": 1}
    assert await read_all(bootstrap, topic, expected=1, timeout_s=2) == [], "a dry run publishes nothing"

    done = await replay(settings, Selection(reason="out_of_range", model_run_id="run-a"), timeout_s=30)
    assert done.replayed == 2
    published = await read_all(bootstrap, topic, expected=2)
    assert sorted(r.value for r in published) == [b'{"n": 1}', b'{"n": 2}']
    assert all(r.key == b"run-a" and r.headers == {H_REPLAYS: "1"} for r in published)


async def test_limit_bounds_the_replay(bootstrap: str, topic: str) -> None:
    await make_topics(bootstrap, topic, 1)
    await _dead_letters(bootstrap, topic)
    done = await replay(_kafka(bootstrap, topic), Selection(limit=2), timeout_s=30)
    assert done.replayed == 2
    assert len(await read_all(bootstrap, topic, expected=3, timeout_s=3)) == 2


async def test_a_replayed_record_that_fails_again_keeps_its_count(
    bootstrap: str, topic: str, sandbox: Sandbox
) -> None:
    await make_topics(bootstrap, topic, 1)
    bad = orjson.dumps(message(bbox(confidence=5)))
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=bad, key=b"mr-1", headers=[(H_REPLAYS, b"2")])
    finally:
        await producer.stop()
    settings = settings_for(bootstrap, topic, sandbox)
    async with running(settings):
        assert await wait_committed(bootstrap, settings, {0: 1}) == {0: 1}
    (dead,) = await read_all(bootstrap, f"{topic}.dlq", expected=1)
    assert dead.headers[H_REPLAYS] == "2"
    done = await replay(_kafka(bootstrap, topic), Selection(max_replays=3), timeout_s=30)
    assert done.replayed == 1
    again = await replay(_kafka(bootstrap, topic), Selection(max_replays=2), timeout_s=30)
    assert again.replayed == 0
    assert again.skipped == {"max_replays_reached": 1}


def test_command_line(bootstrap: str, topic: str) -> None:
    import asyncio

    asyncio.run(make_topics(bootstrap, topic, 1))
    asyncio.run(produce(bootstrap, f"{topic}.dlq", [(b"k", b"v", 0)]))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_DLQ_TOPIC": f"{topic}.dlq",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "replay-dlq", "--dry-run"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"scanned 1 DLQ records; would replay 1" in done.stdout


def test_command_line_without_a_broker_says_so_in_one_line() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nothing listens there
        "LOG_FORMAT": "text",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "replay-dlq", "--dry-run"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
        text=True,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert "Unclosed" not in done.stderr, "the consumer is closed"
    assert done.stderr.splitlines()[-1].startswith("worker: replay-dlq stopped: KafkaConnectionError")
    assert "logger=aiokafka" in done.stderr, "the Kafka client logs through the project's format"
