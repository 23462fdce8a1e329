"""Real processes for the reliability tests: ``python -m labelbox_sandbox`` and ``python -m worker run``.

Each is a subprocess on loopback whose stdout and stderr go to files under the test's directory;
:class:`Processes` stops every process it started (SIGTERM, then SIGKILL after a timeout) when its
``with`` block ends, errors included, and keeps every log file for the secret scan. Every wait is
bounded by a deadline. HTTP calls are plain ``urllib`` on 127.0.0.1 with short timeouts.
"""

from __future__ import annotations

import contextlib
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
from tests.support.waiting import until_blocking
from tests.support.workers import worker_env

ROOT = Path(__file__).resolve().parents[2]


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 5.0) -> Any:
    """One JSON request to 127.0.0.1; raises ``urllib.error.URLError`` on failure."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return orjson.loads(response.read())


def http_text(url: str, timeout_s: float = 2.0) -> tuple[int, str] | None:
    """(status, body) of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None


class Process:
    """One child process; stdout and stderr in ``<dir>/<name>.out`` / ``.err``."""

    def __init__(self, name: str, command: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.killed_at = 0.0

    def start(self) -> None:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._process = subprocess.Popen(self.command, stdout=out, stderr=err, env=self.env, cwd=ROOT)
        self.started_at = time.monotonic()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill9(self) -> None:
        """SIGKILL (no drain, no commit, no goodbye to the group) and reap."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.killed_at = time.monotonic()
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM (a graceful stop); does not wait."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """The exit status, or None if still running after ``timeout_s``."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL (idempotent); the exit status, or None if never started."""
        if self._process is None:
            return None
        self.terminate()
        if self.wait(timeout_s) is None:
            self.process.kill()
            self.process.wait(timeout=10)
        return self.process.returncode

    def output(self) -> str:
        """Everything the process wrote so far (stdout then stderr)."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            code = self.process.returncode if self._process is not None else None
            raise RuntimeError(f"{self.name} exited with status {code}:\n{self.tail()}")


class SandboxProcess(Process):
    """``python -m labelbox_sandbox`` on a free loopback port, with its admin API."""

    def __init__(self, log_dir: Path, api_key: str, processing_delay_s: float, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.graphql_url = f"{self.base_url}/graphql"
        command = [sys.executable, "-m", "labelbox_sandbox", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--api-key", api_key, "--processing-delay-s", str(processing_delay_s)]
        super().__init__("sandbox", command, log_dir, env)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until the admin API answers."""
        super().start()
        if not until_blocking(lambda: not self.alive() or self._answers(), timeout_s):
            raise RuntimeError(f"the sandbox did not answer within {timeout_s} s:\n{self.tail()}")
        self.check_alive()

    def _answers(self) -> bool:
        answer = http_text(f"{self.base_url}/_sandbox/counts", timeout_s=0.5)
        return answer is not None and answer[0] == 200

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """A call to the admin API under ``/_sandbox/``."""
        return http_json(method, f"{self.base_url}/_sandbox/{path}", body, timeout_s=30.0)

    def add_fault(self, **rule: Any) -> int:
        return int(self.admin("POST", "faults", rule)["ids"][0])

    def clear_faults(self) -> None:
        self.admin("DELETE", "faults")

    def fault(self, fault_id: int) -> dict[str, Any]:
        return next(f for f in self.admin("GET", "faults") if f["id"] == fault_id)

    def imports(self) -> list[dict[str, Any]]:
        return list(self.admin("GET", "imports"))

    def counts(self) -> dict[str, dict[str, Any]]:
        return dict(self.admin("GET", "counts"))

    def stored(self, model_run_id: str) -> dict[str, dict[str, Any]]:
        """uuid -> stored NDJSON line of one model run."""
        return {line["uuid"]: line for line in self.admin("GET", f"model-runs/{model_run_id}/predictions")}

    def uploads_by_uuid(self, model_run_id: str) -> dict[str, int]:
        return dict(self.admin("GET", f"model-runs/{model_run_id}/counts").get("uploads_by_uuid") or {})


class WorkerProcess(Process):
    """``python -m worker run`` configured by ``env``; its ops server on ``METRICS_PORT`` (loopback)."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str]) -> None:
        super().__init__(name, [sys.executable, "-m", "worker", "run"], log_dir, env)
        self.ops_url = f"http://127.0.0.1:{env['METRICS_PORT']}"
        self.metrics_scrapes: list[str] = []

    def events(self) -> list[dict[str, Any]]:
        """The log lines written so far: JSON objects, or ``{"event": …}`` of a LOG_FORMAT=text line."""
        out: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            out = [_event(raw) for raw in self.stdout_path.read_bytes().splitlines()]
        return out

    def count_events(self, event: str) -> int:
        return sum(1 for entry in self.events() if entry.get("event") == event)

    def wait_for_event(self, event: str, timeout_s: float, at_least: int = 1) -> bool:
        """Wait until the log holds ``at_least`` lines of ``event`` (False on timeout or exit)."""
        return until_blocking(
            lambda: not self.alive() or self.count_events(event) >= at_least, timeout_s, every_s=0.02
        ) and (self.count_events(event) >= at_least)

    def scrape_metrics(self) -> str | None:
        """GET /metrics; the body is kept for the secret scan (None when nothing answers)."""
        answer = http_text(f"{self.ops_url}/metrics", timeout_s=2.0)
        if answer is None or answer[0] != 200:
            return None
        self.metrics_scrapes.append(answer[1])
        return answer[1]


def _event(raw: bytes) -> dict[str, Any]:
    with contextlib.suppress(orjson.JSONDecodeError):
        entry = orjson.loads(raw)
        if isinstance(entry, dict):
            return entry
    words = raw.decode("utf-8", "replace").split()  # text format: "HH:MM:SS level event key=value …"
    return {"event": words[2]} if len(words) >= 3 else {}


class Processes:
    """Starts sandboxes and workers under one directory and stops all of them on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Process] = []
        self._names: dict[str, int] = {}

    def sandbox(self, api_key: str, processing_delay_s: float = 0.1) -> SandboxProcess:
        sandbox = SandboxProcess(self.log_dir, api_key, processing_delay_s, worker_env())
        self.started.append(sandbox)
        sandbox.start()
        return sandbox

    def worker(self, name: str, **settings: object) -> WorkerProcess:
        """Start a worker; ``settings`` are Settings fields (METRICS_PORT gets a free port if absent)."""
        settings.setdefault("metrics_port", free_port())
        self._names[name] = self._names.get(name, 0) + 1
        worker = WorkerProcess(f"{name}-{self._names[name]}", self.log_dir, worker_env(**settings))
        self.started.append(worker)
        worker.start()
        return worker

    def workers(self) -> list[WorkerProcess]:
        return [p for p in self.started if isinstance(p, WorkerProcess)]

    def log_paths(self) -> list[Path]:
        return [path for p in self.started for path in (p.stdout_path, p.stderr_path)]

    def stop_all(self) -> None:
        for process in reversed(self.started):
            with contextlib.suppress(Exception):
                process.stop(timeout_s=15.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
