"""The processes the benchmark starts besides the broker: the sandbox and the worker, with their probes.

Both run as separate processes (``python -m labelbox_sandbox`` / ``python -m worker run``) so that
neither steals the benchmark's event loop. Both are context managers that stop their process (SIGTERM,
then SIGKILL after a timeout) on exit, errors included. HTTP probes are plain ``urllib`` calls with
short timeouts on loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

from devtools.embedded import free_port
from worker.settings import OWN_PREFIXES

API_KEY = "bench-key-5d1e3f"
ROOT = Path(__file__).resolve().parents[2]
_NOT_SETTINGS = ("LOG_LEVEL", "LOG_FORMAT")


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10.0) -> Any:
    """One JSON request; raises ``urllib.error.URLError`` on failure."""
    data = orjson.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return orjson.loads(response.read())


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return int(process.returncode)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, in seconds (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a process log, for error messages."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


class _Process:
    """A child process whose output goes to a log file; stopped on ``__exit__``."""

    stop_timeout_s = 15.0

    def __init__(
        self, name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self._command = command
        self._env = env
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, env=self._env, cwd=ROOT
            )

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the process is not started")
        return self._process

    def check_alive(self) -> None:
        """Raise (with the log's tail) if the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> int | None:
        """Stop the process (idempotent); its exit status, or None if it never started."""
        if self._process is None:
            return None
        return stop_process(self._process, self.stop_timeout_s)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class SandboxProcess(_Process):
    """``python -m labelbox_sandbox`` on a free loopback port, no processing delay.

    The sandbox, like Labelbox, FAILs rows on data rows that are not in their model run. The benchmarks
    measure throughput, not the registration workflow, so the corpora's data rows are made members
    through the admin API (``register``), again after every ``reset``, and neither the worker nor the
    SDK baseline spends requests on registering them. ``lean``: ``--lean``, lines stored unvalidated.
    """

    def __init__(self, log_path: Path, lean: bool = False) -> None:
        self.lean = lean
        self.members: dict[str, set[str]] = {}
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.graphql_url = f"{self.base_url}/graphql"
        command = [sys.executable, "-m", "labelbox_sandbox", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--api-key", API_KEY, "--processing-delay-s", "0", "--task-delay-s", "0"]
        command += ["--lean"] if lean else []
        super().__init__("the sandbox", command, log_path)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until the admin API answers."""
        super().start()
        deadline = time.monotonic() + timeout_s
        while http_status(f"{self.base_url}/_sandbox/counts") != 200:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not answer within {timeout_s} s")
            time.sleep(0.05)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """A call to the admin API under ``/_sandbox/``."""
        return http_json(method, f"{self.base_url}/_sandbox/{path}", body)

    def stored_rows(self) -> int:
        """Predictions stored over every model run."""
        return sum(int(c["rows"]) for c in self.admin("GET", "counts").values())

    def reset(self) -> None:
        """Forget everything but the registered data rows."""
        self.admin("POST", "reset")
        for run, keys in self.members.items():
            self.admin("POST", f"model-runs/{run}/data-rows", {"globalKeys": sorted(keys)})

    def register(self, messages: list[dict[str, Any]]) -> None:
        """Make the messages' data rows (by global key) members of their model runs, now and after resets."""
        added: dict[str, set[str]] = {}
        for message in messages:
            key = message["data_row"]["global_key"]
            added.setdefault(message["model_run_id"], set()).add(key)
            self.members.setdefault(message["model_run_id"], set()).add(key)
        for run, keys in added.items():
            self.admin("POST", f"model-runs/{run}/data-rows", {"globalKeys": sorted(keys)})


def worker_env(**settings: object) -> dict[str, str]:
    """This environment without any worker setting, plus ``settings`` (names are the Settings fields)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES) and k not in _NOT_SETTINGS}
    return base | {name.upper(): str(value) for name, value in settings.items()}


class WorkerProcess(_Process):
    """``python -m worker run`` with ``env``; its ops server on ``metrics_port`` (loopback probes)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("the worker", [sys.executable, "-m", "worker", "run"], log_path, env)
        self._ops = f"http://127.0.0.1:{env['METRICS_PORT']}"

    def ready(self) -> bool:
        """``/readyz`` answers 200: joined the group, Labelbox reachable."""
        return http_status(f"{self._ops}/readyz", timeout_s=0.5) == 200

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, summed over labels (empty if it does not answer)."""
        try:
            with urllib.request.urlopen(f"{self._ops}/metrics", timeout=2.0) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        return _sum_samples(text)

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the worker process, in KiB; (0, 0) once it has exited."""
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0])
        return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def _sum_samples(text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals
