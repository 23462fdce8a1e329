"""A real Apache Kafka broker for the tests: single node, KRaft (no ZooKeeper), loopback only.

    python -m tests.apache_kafka --port 9092      # prints "ready 127.0.0.1:9092", runs until SIGTERM

The broker (``org.apache.kafka:kafka_2.13`` :data:`KAFKA_VERSION` and its dependencies) is resolved
with Maven from a small pom, once per machine, into a cache outside the clone (:func:`cache_dir`), so
a fresh CI clone reuses it. Each start formats a fresh log directory, runs a combined broker +
controller with its client listener on ``127.0.0.1:PORT`` and its controller listener on a free port,
a heap of at most 512 MiB and development settings (replication factors 1, no initial rebalance
delay). Stopping it (SIGTERM, or :meth:`ApacheKafka.stop`) stops the JVM and removes its directories.

Optional listeners for the security tests: SASL_PLAINTEXT with SCRAM-SHA-512 users written at format
time, and SSL from PEM files (with client certificates required when a CA is given).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from devtools.embedded import accepts, free_port, stop_child

#: The broker version the tests run (deploy/docker-compose.yml runs the same apache/kafka tag).
KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
#: log4j's SLF4J 1.x binding, at the log4j version kafka_2.13 brings, so the broker's log is written.
LOG4J_VERSION = "2.25.5"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
HEAP = "512m"
JAVA_MIN_MAJOR = 17
#: Largest record batch the broker takes: room for the worker's 16 MiB records (as the compose file).
MESSAGE_MAX_BYTES = 17_825_792
SCRAM_MECHANISM = "SCRAM-SHA-512"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by tests/apache_kafka.py: the Apache Kafka broker and a log binding, nothing else. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.labelbox-prediction-worker.tests</groupId>
  <artifactId>apache-kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = error
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, or the broker could not be resolved or started; the message says which."""


def cache_dir() -> Path:
    """Where the resolved broker jars live: ``$XDG_CACHE_HOME`` (or ``~/.cache``), outside any clone."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "labelbox-prediction-worker" / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}"


def java_executable() -> str:
    """The ``java`` to run the broker with (``$JAVA_HOME/bin/java``, else the PATH); raises
    :class:`KafkaUnavailable` when there is none or it is older than Java 17."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else None
    java = java or shutil.which("java")
    if java is None:
        raise KafkaUnavailable(
            f"Apache Kafka {KAFKA_VERSION} needs Java {JAVA_MIN_MAJOR} or newer: no 'java' on PATH and no "
            "JAVA_HOME (Debian: apt-get install openjdk-17-jre-headless)"
        )
    done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    major = _java_major(done.stderr + done.stdout)
    if major is None or major < JAVA_MIN_MAJOR:
        raise KafkaUnavailable(
            f"Apache Kafka {KAFKA_VERSION} needs Java {JAVA_MIN_MAJOR} or newer; {java} says: "
            + (done.stderr.strip().splitlines() or ["nothing"])[0]
        )
    return java


def _java_major(version_text: str) -> int | None:
    """17 from 'openjdk version "17.0.15"', 8 from '"1.8.0_392"'."""
    for token in version_text.split():
        token = token.strip('"')
        head = token.split(".")[0]
        if head.isdigit() and '"' + token + '"' in version_text:
            return int(token.split(".")[1]) if head == "1" else int(head)
    return None


def resolve_broker(timeout_s: float = 900.0) -> Path:
    """The folder holding the broker's jars, resolved with Maven on first use (blocks; a file lock
    keeps concurrent test runs from resolving twice). Raises :class:`KafkaUnavailable`."""
    home = cache_dir()
    lib = home / "lib"
    if (lib / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").exists():
        return lib
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not lib.exists():
            _copy_dependencies(home, lib, timeout_s)
    return lib


def _copy_dependencies(home: Path, lib: Path, timeout_s: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(
            f"resolving Apache Kafka {KAFKA_VERSION} needs Maven: no 'mvn' on PATH "
            f"(Debian: apt-get install maven), and no cached broker in {lib}"
        )
    pom = home / "pom.xml"
    pom.write_text(_POM.format(scala=SCALA_VERSION, kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    partial = home / f"lib.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    command = [mvn, "-B", "-q", "-f", str(pom), f"{DEPENDENCY_PLUGIN}:copy-dependencies"]
    command += [f"-DoutputDirectory={partial}", "-DincludeScope=runtime"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise KafkaUnavailable(
            f"mvn could not resolve org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION}:\n{tail}"
        )
    partial.rename(lib)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the SSL listener: the broker's key + certificate chain in one file (PKCS#8 key,
    unencrypted), and the CA whose client certificates it requires (None: no client certificates)."""

    keystore_pem: Path
    client_ca_pem: Path | None = None


def _prctl_parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """The JVM gets SIGTERM when the process that started it dies (even by SIGKILL): no orphan broker."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ApacheKafka:
    """A single-node Apache Kafka on 127.0.0.1. ``with ApacheKafka() as kafka: kafka.bootstrap``.

    ``advertised_port`` lets a proxy stand in front of the client listener; ``scram_users`` (name ->
    password) adds a SASL_PLAINTEXT listener with SCRAM-SHA-512 on :attr:`sasl_port`; ``tls`` adds an
    SSL listener on :attr:`ssl_port`; ``config`` overrides broker properties.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        advertised_port: int | None = None,
        scram_users: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        config: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        log_level: str = "WARN",
    ) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._advertised_port = advertised_port or self.port
        self._scram_users = dict(scram_users or {})
        self.sasl_port = free_port() if self._scram_users else None
        self._tls = tls
        self.ssl_port = free_port() if tls else None
        self._config = dict(config or {})
        self._log_path = log_path
        self._log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self._home: Path | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> None:
        """Resolve (first time only), format and start the broker; returns when a metadata request
        answers (blocks). Idempotent. Raises :class:`KafkaUnavailable`."""
        if self._process is not None:
            return
        java = java_executable()
        classpath = str(resolve_broker() / "*")
        self._home = Path(tempfile.mkdtemp(prefix="apache-kafka-"))
        properties = self._write_files(self._home)
        try:
            self._format(java, classpath, properties)
            self._launch(java, classpath, properties)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the broker (a clean shutdown), SIGKILL after ``timeout_s``; remove its directories.
        Idempotent; blocks until the JVM is gone."""
        process, self._process = self._process, None
        if process is not None:
            stop_child(process, timeout_s)
        home, self._home = self._home, None
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the broker's output (for error messages)."""
        path = self._output_path()
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- files -----------------------------------------------------------------------------------

    def _output_path(self) -> Path | None:
        if self._log_path is not None:
            return self._log_path
        return self._home / "broker.log" if self._home is not None else None

    def _write_files(self, home: Path) -> Path:
        (home / "data").mkdir()
        (home / "log4j2.properties").write_text(_LOG4J2.format(level=self._log_level))
        properties = home / "server.properties"
        lines = [f"{key}={value}" for key, value in self.properties(home / "data").items()]
        properties.write_text("\n".join(lines) + "\n")
        return properties

    def properties(self, data_dir: Path) -> dict[str, str]:
        """The broker's server.properties."""
        controller = free_port()
        listeners = {"PLAINTEXT": self.port, "CONTROLLER": controller}
        advertised = {"PLAINTEXT": self._advertised_port}
        protocols = {"PLAINTEXT": "PLAINTEXT", "CONTROLLER": "PLAINTEXT"}
        if self.sasl_port is not None:
            listeners["SASL_PLAINTEXT"] = advertised["SASL_PLAINTEXT"] = self.sasl_port
            protocols["SASL_PLAINTEXT"] = "SASL_PLAINTEXT"
        if self.ssl_port is not None:
            listeners["SSL"] = advertised["SSL"] = self.ssl_port
            protocols["SSL"] = "SSL"
        values = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items()),
            "advertised.listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in advertised.items()),
            "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in protocols.items()),
            "log.dirs": str(data_dir),
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(MESSAGE_MAX_BYTES),
            "replica.fetch.max.bytes": str(MESSAGE_MAX_BYTES),
            # a small machine: few threads, and no 128 MiB dedupe buffer in a 512 MiB heap
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        values |= self._security_properties()
        values |= self._config
        return values

    def _security_properties(self) -> dict[str, str]:
        values: dict[str, str] = {}
        if self.sasl_port is not None:
            values["sasl.enabled.mechanisms"] = SCRAM_MECHANISM
            values["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        if self._tls is not None:
            prefix = "listener.name.ssl."
            values[prefix + "ssl.keystore.type"] = "PEM"
            values[prefix + "ssl.keystore.location"] = str(self._tls.keystore_pem)
            if self._tls.client_ca_pem is not None:
                values[prefix + "ssl.truststore.type"] = "PEM"
                values[prefix + "ssl.truststore.location"] = str(self._tls.client_ca_pem)
                values[prefix + "ssl.client.auth"] = "required"
        return values

    # --- processes -------------------------------------------------------------------------------

    def _jvm(self, java: str, classpath: str) -> list[str]:
        assert self._home is not None
        return [
            java,
            f"-Xmx{HEAP}",
            "-Xms64m",
            "-XX:+UseSerialGC",  # one GC thread: these machines have 2 cores, shared
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._home / 'log4j2.properties'}",
            "-cp",
            classpath,
        ]

    def _format(self, java: str, classpath: str, properties: Path) -> None:
        cluster_id = _cluster_id()
        command = [*self._jvm(java, classpath), "kafka.tools.StorageTool", "format"]
        command += ["--cluster-id", cluster_id, "--config", str(properties), "--ignore-formatted"]
        for name, password in self._scram_users.items():
            command += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise KafkaUnavailable(f"formatting the Apache Kafka log directory failed:\n{tail}")

    def _launch(self, java: str, classpath: str, properties: Path) -> None:
        output_path = self._output_path()
        assert output_path is not None
        with open(output_path, "ab") as output:
            self._process = subprocess.Popen(
                [*self._jvm(java, classpath), "kafka.Kafka", str(properties)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=_prctl_parent_death_signal,  # only prctl, before exec
            )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise KafkaUnavailable(f"Apache Kafka exited at start:\n{self.log_tail()}")
            if accepts(self.port) and metadata_answers(self.bootstrap):
                return
            time.sleep(0.2)
        raise KafkaUnavailable(
            f"Apache Kafka did not answer on {self.bootstrap} within {timeout_s} s:\n{self.log_tail()}"
        )


def _cluster_id() -> str:
    """A random 16-byte UUID in Kafka's URL-safe base64 (what ``kafka-storage random-uuid`` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def metadata_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when a Metadata request (v4, no topics) to ``bootstrap`` is answered with at least one
    broker. Plain blocking sockets, so it works inside and outside an event loop."""
    host, _, port = bootstrap.rpartition(":")
    client_id = b"apache-kafka-ready"
    header = struct.pack(">hhih", _METADATA, _METADATA_VERSION, _CORRELATION_ID, len(client_id)) + client_id
    body = struct.pack(">i?", 0, False)  # an empty topic list, no auto-creation
    request = header + body
    try:
        with socket.create_connection((host, int(port)), timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _read_exactly(conn, 4))[0]
            response = _read_exactly(conn, size)
    except (OSError, struct.error, ConnectionError):
        return False
    if len(response) < 12:
        return False
    correlation_id, _throttle_ms, brokers = struct.unpack(">iii", response[:12])
    return correlation_id == _CORRELATION_ID and brokers > 0


_METADATA, _METADATA_VERSION, _CORRELATION_ID = 3, 4, 7


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:  # bounded: each recv blocks at most the socket timeout, and must progress
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


# --- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.apache_kafka", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, default=9092, help="client listener on 127.0.0.1 (default 9092)")
    parser.add_argument(
        "--log", type=Path, help="the broker's output goes here (default: its temporary folder)"
    )
    parser.add_argument("--log-level", default="WARN", choices=["ERROR", "WARN", "INFO", "DEBUG"])
    args = parser.parse_args(argv)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    kafka = ApacheKafka(args.port, log_path=args.log, log_level=args.log_level)
    try:
        kafka.start()
    except KafkaUnavailable as exc:
        print(f"apache_kafka: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        print(f"ready {kafka.bootstrap}", flush=True)
        while not stopping and kafka.running:
            time.sleep(0.2)
        if not stopping:
            print(f"apache_kafka: the broker exited:\n{kafka.log_tail()}", file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        kafka.stop()


if __name__ == "__main__":
    sys.exit(main())
