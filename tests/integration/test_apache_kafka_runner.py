"""tests/apache_kafka.py itself: the command's contract, its errors, and the compose file's version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.apache_kafka import KAFKA_VERSION, free_port, java_executable, metadata_answers

ROOT = Path(__file__).resolve().parents[2]


def run_module(env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tests.apache_kafka", "--port", str(free_port())]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


def test_the_compose_file_runs_the_version_the_tests_run() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    images = {name: service["image"] for name, service in compose["services"].items() if "kafka" in name}
    assert images, "the compose file has its Kafka services"
    assert set(images.values()) == {f"apache/kafka:{KAFKA_VERSION}"}, images


def test_a_missing_java_is_named(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    done = run_module(env)
    assert done.returncode == 2
    assert "needs Java 17 or newer: no 'java' on PATH" in done.stderr, done.stderr
    assert done.stdout == ""


def test_a_missing_maven_is_named_when_nothing_is_cached(tmp_path: Path) -> None:
    java = java_executable() if _has_java() else pytest.skip("no Java on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = run_module(env)
    assert done.returncode == 2
    assert "needs Maven: no 'mvn' on PATH" in done.stderr, done.stderr
    assert done.stdout == ""


def _has_java() -> bool:
    try:
        java_executable()
    except RuntimeError:
        return False
    return True


@pytest.mark.apache_kafka
def test_the_command_prints_ready_serves_and_cleans_up_on_sigterm() -> None:
    port = free_port()
    command = [sys.executable, "-m", "tests.apache_kafka", "--port", str(port)]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            _check_lifecycle(process, port)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def _check_lifecycle(process: subprocess.Popen[str], port: int) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the broker is ready (or the process ends)
    assert line == f"ready 127.0.0.1:{port}\n"
    assert metadata_answers(f"127.0.0.1:{port}")
    folders = _broker_folders(process.pid)
    assert folders, "the broker's log and data folder"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert process.stdout.read() == "", "one line on stdout, no more"
    assert not any(folder.exists() for folder in folders), "its folders are removed"
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening(port), "no broker left running"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _broker_folders(pid: int) -> list[Path]:
    """The temporary folders of the JVM started by ``pid`` (from its command line)."""
    folders = []
    for child in _children(pid):
        args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        folders += [Path(a.decode()).parent for a in args if a.endswith(b"server.properties")]
    return folders


def _listening(port: int) -> bool:
    """Whether some process listens on 127.0.0.1:``port`` (the broker's client listener)."""
    wanted = f"0100007F:{port:04X}"
    table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(row.split()[1] == wanted and row.split()[3] == "0A" for row in table)


def test_the_environment_knob_is_not_a_worker_setting() -> None:
    """TEST_BROKER reaches the workers the reliability tests start: it must not look like a setting."""
    from worker.settings import OWN_PREFIXES

    assert not "TEST_BROKER".startswith(OWN_PREFIXES)
    assert os.environ.get("TEST_BROKER", "tansu") in ("tansu", "apache-kafka")
