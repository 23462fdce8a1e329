"""worker.logs: repeated records folded by logger + message template, the rest untouched."""

from __future__ import annotations

import logging
import subprocess
import sys

import orjson

from worker.logs import RepeatFolder, ctx


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(
    name: str, msg: str, *args: object, level: int = logging.WARNING, **fields: object
) -> logging.LogRecord:
    entry = logging.LogRecord(name, level, __file__, 1, msg, args or None, None)
    if fields:
        entry.ctx = fields
    return entry


def test_a_library_error_passes_once_then_once_per_interval_with_the_count() -> None:
    clock = Clock()
    folder = RepeatFolder(30.0, clock)
    template = "Unable connect to node with id %s: %s"
    passed = []
    for i in range(100):  # 100 errors over 49.5 s, from two nodes: one template
        clock.now = 1000.0 + i * 0.5
        line = record("aiokafka.conn", template, i % 2, "Connect call failed", level=logging.ERROR)
        if folder.filter(line):
            passed.append((clock.now, getattr(line, "ctx", {})))
    assert passed == [(1000.0, {}), (1030.0, {"suppressed": 59, "suppressed_over_s": 30.0})]


def test_keys_are_logger_and_template() -> None:
    folder = RepeatFolder(30.0, Clock())
    assert folder.filter(record("aiokafka.conn", "Unable connect to node with id %s", 1))
    assert not folder.filter(record("aiokafka.conn", "Unable connect to node with id %s", 2))
    assert folder.filter(record("aiokafka.conn", "Unable to update metadata from %s", 1))
    assert folder.filter(record("aiokafka.client", "Unable connect to node with id %s", 1))


def test_the_workers_repeating_warnings_fold_and_its_other_events_never() -> None:
    folder = RepeatFolder(30.0, Clock())
    for event in ("commit_failed", "dlq_write_retry", "labelbox_retry"):
        assert folder.filter(record("worker.pipeline", event, error="KafkaConnectionError"))
        assert not folder.filter(record("worker.pipeline", event, error="another error, same event"))
    for event in ("import_finished", "broker_unreachable", "broker_reachable", "offsets_not_committed"):
        assert all(folder.filter(record("worker.pipeline", event)) for _ in range(5))


def test_context_fields_are_kept_and_not_mutated() -> None:
    clock = Clock()
    folder = RepeatFolder(10.0, clock)
    fields = ctx(error="x", partitions=2)["ctx"]
    assert folder.filter(record("worker.pipeline", "commit_failed", **fields))
    assert not folder.filter(record("worker.pipeline", "commit_failed", **fields))
    clock.now += 10.0
    again = record("worker.pipeline", "commit_failed", **fields)
    assert folder.filter(again)
    assert again.ctx == {"error": "x", "partitions": 2, "suppressed": 1, "suppressed_over_s": 10.0}
    assert fields == {"error": "x", "partitions": 2}


def test_interval_zero_folds_nothing() -> None:
    folder = RepeatFolder(0.0, Clock())
    assert all(folder.filter(record("aiokafka", "Heartbeat failed")) for _ in range(10))


def test_take_pending_reports_what_is_still_folded() -> None:
    clock = Clock()
    folder = RepeatFolder(30.0, clock)
    for _ in range(4):
        folder.filter(record("aiokafka.conn", "Unable connect to node with id %s", 1))
    folder.filter(record("aiokafka.conn", "Unable to update metadata from %s", 1))  # passed, none folded
    clock.now += 5
    pending = folder.take_pending()
    assert [(r.name, r.getMessage(), r.ctx) for r in pending] == [
        ("aiokafka.conn", "Unable connect to node with id 1", {"suppressed": 3, "suppressed_over_s": 5.0})
    ]
    assert folder.take_pending() == []


def test_many_distinct_messages_keep_the_memory_bounded() -> None:
    clock = Clock()
    folder = RepeatFolder(30.0, clock)
    for i in range(5000):  # a library that formats its messages itself: every one a new key
        clock.now += 0.001
        folder.filter(record("somelib", f"error number {i}"))
    assert len(folder._repeats) <= 1024


def test_a_library_writes_at_most_three_lines_per_interval_the_rest_comes_later_with_counts() -> None:
    clock = Clock()
    folder = RepeatFolder(30.0, clock)
    # One lost connection, reported by eight code paths of the Kafka client within a second.
    paths = [("aiokafka.consumer.group_coordinator", f"coordinator message {i}") for i in range(4)]
    paths += [("aiokafka.conn", "Unable connect to node"), ("aiokafka", "Unable to update metadata")]
    paths += [("aiokafka.producer.sender", "Got error produce response")]
    passed = [folder.filter(record(name, template)) for name, template in paths]
    assert passed == [True, True, True, False, False, False, False]
    assert folder.filter(record("asyncio", "Task exception was never retrieved")), "another library"
    assert folder.filter(record("worker.pipeline", "broker_unreachable")), "the worker's own events"
    clock.now += 30.0
    later = [record(name, template) for name, template in reversed(paths)]
    assert [folder.filter(line) for line in later] == [True, True, True, False, False, False, False]
    assert [line.ctx for line in later[:3]] == [{"suppressed": 1, "suppressed_over_s": 30.0}] * 3
    pending = {r.getMessage(): r.ctx["suppressed"] for r in folder.take_pending()}
    assert pending == {"coordinator message 0": 1, "coordinator message 1": 1} | {
        "coordinator message 2": 1,
        "coordinator message 3": 2,  # held back at first sight, and again
    }


SCRIPT = """
import logging, sys
from worker.logs import configure
configure("INFO", sys.argv[1], repeat_interval_s=30)
kafka = logging.getLogger("aiokafka.conn")
for node in range(200):
    kafka.error("Unable connect to node with id %s: %s", node % 3, "Connect call failed")
coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
for template in ("Group Coordinator Request failed: %s", "Heartbeat failed: %s", "Marking dead: %s"):
    coordinator.error(template, "x")
logging.getLogger("worker.pipeline").info("worker_drained")
"""


def run_script(fmt: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt], capture_output=True, timeout=60, check=True, text=True
    )
    assert done.stderr == ""
    return done.stdout.splitlines()


def test_a_process_writes_the_first_line_and_the_count_still_folded_at_exit() -> None:
    lines = [orjson.loads(line) for line in run_script("json")]
    assert [(e["logger"], e["level"], e["event"], e.get("suppressed")) for e in lines] == [
        ("aiokafka.conn", "error", "Unable connect to node with id 0: Connect call failed", None),
        ("aiokafka.consumer.group_coordinator", "error", "Group Coordinator Request failed: x", None),
        ("aiokafka.consumer.group_coordinator", "error", "Heartbeat failed: x", None),
        ("worker.pipeline", "info", "worker_drained", None),  # aiokafka wrote its 3 lines: the rest waits
        ("aiokafka.conn", "error", "Unable connect to node with id 1: Connect call failed", 199),
        ("aiokafka.consumer.group_coordinator", "error", "Marking dead: x", 1),
    ]


def test_text_lines_of_a_library_name_its_logger() -> None:
    first = run_script("text")[0]
    assert first.endswith(
        "error   Unable connect to node with id 0: Connect call failed logger=aiokafka.conn"
    )
