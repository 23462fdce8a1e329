"""Child processes for the reliability tests and the benchmark: the one synchronous launcher.

:class:`Process` starts a command on loopback with ``PYTHONUNBUFFERED=1`` (so its log is complete when
read), its stdout (and stderr, or a file of its own) in files; waits for a log line or a probe, always
bounded by a deadline; and stops it with SIGTERM, then SIGKILL after a timeout (also on leaving its
``with`` block, errors included). :class:`SandboxProcess` is ``python -m labelbox_sandbox`` on a free
port with its admin API; :class:`WorkerProcess` is ``python -m worker run`` with its ops endpoints.
:class:`Processes` starts several under one directory and stops them all. HTTP calls are plain
``urllib`` on 127.0.0.1 with short timeouts. The environment comes from ``tests.support.workers.worker_env``.

(The async tests start workers with ``tests.support.workers.worker_process``: an asyncio child, so
that stopping it never blocks the event loop an in-process sandbox or broker runs on.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
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


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    answer = http_text(url, timeout_s)
    return None if answer is None else answer[0]


class Process:
    """One child process. Its stdout goes to ``stdout_path``, its stderr to ``stderr_path`` (None: into
    stdout's file); both are appended to, so a restarted process keeps its earlier log."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        stdout_path: Path,
        stderr_path: Path | None = None,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.killed_at = 0.0

    @property
    def log_path(self) -> Path:
        """Where its stdout goes (and its stderr, unless it has a file of its own)."""
        return self.stdout_path

    def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env) | {"PYTHONUNBUFFERED": "1"}
        with contextlib.ExitStack() as files:
            out = files.enter_context(self.stdout_path.open("ab"))
            err: Any = subprocess.STDOUT
            if self.stderr_path is not None:
                err = files.enter_context(self.stderr_path.open("ab"))
            self._process = subprocess.Popen(self.command, stdout=out, stderr=err, env=env, cwd=ROOT)
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

    def check_alive(self) -> None:
        """Raise (with the log's tail) if the process has exited."""
        if not self.alive():
            code = self._process.returncode if self._process is not None else None
            raise RuntimeError(f"{self.name} exited with status {code}:\n{self.tail()}")

    def wait_for(self, probe: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
        """Until ``probe()`` is true (an endpoint answers; a line is in :meth:`output`); raises (with the
        log's tail) if the process exits first or ``timeout_s`` passes."""
        if not until_blocking(lambda: not self.alive() or probe(), timeout_s, every_s=every_s):
            raise RuntimeError(f"{self.name}: no {what} within {timeout_s} s:\n{self.tail()}")
        self.check_alive()

    def terminate(self) -> None:
        """SIGTERM (a graceful stop); does not wait."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def kill9(self) -> None:
        """SIGKILL (no drain, no commit, no goodbye to the group) and reap."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.killed_at = time.monotonic()
        self.process.wait(timeout=10)

    def wait(self, timeout_s: float) -> int | None:
        """The exit status, or None if still running after ``timeout_s``."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait ``timeout_s`` (default ``stop_timeout_s``), then SIGKILL (idempotent); the exit
        status, or None if never started."""
        if self._process is None:
            return None
        self.terminate()
        if self.wait(self.stop_timeout_s if timeout_s is None else timeout_s) is None:
            self.process.kill()
            self.process.wait(timeout=10)
        return self.process.returncode

    def output(self) -> str:
        """Everything the process wrote so far (stdout, then stderr if it has its own file)."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path is not None:
                with contextlib.suppress(OSError):
                    parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:]) or "(no output)"

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


class SandboxProcess(Process):
    """``python -m labelbox_sandbox`` on a free loopback port; :meth:`start` waits for its admin API.

    ``task_delay_s``: how long registration tasks report RUNNING (None: the sandbox's default,
    ``processing_delay_s``). ``extra_args`` are appended to the command line."""

    def __init__(
        self,
        stdout_path: Path,
        api_key: str,
        *,
        processing_delay_s: float = 0.1,
        task_delay_s: float | None = None,
        stderr_path: Path | None = None,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        name: str = "the sandbox",
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.graphql_url = f"{self.base_url}/graphql"
        command = [sys.executable, "-m", "labelbox_sandbox", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--api-key", api_key, "--processing-delay-s", str(processing_delay_s)]
        if task_delay_s is not None:
            command += ["--task-delay-s", str(task_delay_s)]
        command += extra_args
        super().__init__(
            name,
            command,
            worker_env() if env is None else env,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
        )

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until the admin API answers."""
        super().start()
        self.wait_for(
            lambda: http_status(f"{self.base_url}/_sandbox/counts", 0.5) == 200, timeout_s, "answer"
        )

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

    def stored_rows(self) -> int:
        """Predictions stored over every model run."""
        return sum(int(c["rows"]) for c in self.counts().values())

    def uploads_by_uuid(self, model_run_id: str) -> dict[str, int]:
        return dict(self.admin("GET", f"model-runs/{model_run_id}/counts").get("uploads_by_uuid") or {})


class WorkerProcess(Process):
    """``python -m worker run`` configured by ``env`` (``worker_env``); its ops server on ``METRICS_PORT``."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        *,
        stdout_path: Path,
        stderr_path: Path | None = None,
        stop_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(
            name,
            [sys.executable, "-m", "worker", "run"],
            env,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            stop_timeout_s=stop_timeout_s,
        )
        self.ops_url = f"http://127.0.0.1:{env['METRICS_PORT']}"
        self.metrics_scrapes: list[str] = []

    def ready(self) -> bool:
        """``/readyz`` answers 200: joined the group, Labelbox reachable."""
        return http_status(f"{self.ops_url}/readyz", timeout_s=0.5) == 200

    def scrape_metrics(self) -> str | None:
        """GET /metrics; the body is kept (``metrics_scrapes``) for the secret scan (None when nothing
        answers)."""
        answer = http_text(f"{self.ops_url}/metrics", timeout_s=2.0)
        if answer is None or answer[0] != 200:
            return None
        self.metrics_scrapes.append(answer[1])
        return answer[1]

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, summed over labels (empty if it does not answer)."""
        answer = http_text(f"{self.ops_url}/metrics", timeout_s=2.0)
        return {} if answer is None or answer[0] != 200 else sum_samples(answer[1])

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

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the worker process, in KiB; (0, 0) once it has exited."""
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    fields[name] = int(value.split()[0])
        return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def sum_samples(text: str) -> dict[str, float]:
    """Prometheus text -> metric name -> the sum of its samples over labels."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def _event(raw: bytes) -> dict[str, Any]:
    with contextlib.suppress(orjson.JSONDecodeError):
        entry = orjson.loads(raw)
        if isinstance(entry, dict):
            return entry
    words = raw.decode("utf-8", "replace").split()  # text format: "HH:MM:SS level event key=value …"
    return {"event": words[2]} if len(words) >= 3 else {}


class Processes:
    """Starts sandboxes and workers under one directory (``<name>.out`` / ``<name>.err``) and stops all
    of them on exit, keeping every log file (for the secret scan)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Process] = []
        self._names: dict[str, int] = {}

    def sandbox(self, api_key: str, processing_delay_s: float = 0.1) -> SandboxProcess:
        sandbox = SandboxProcess(
            self.log_dir / "sandbox.out",
            api_key,
            processing_delay_s=processing_delay_s,
            stderr_path=self.log_dir / "sandbox.err",
            name="sandbox",
        )
        self.started.append(sandbox)
        sandbox.start()
        return sandbox

    def worker(self, name: str, **settings: object) -> WorkerProcess:
        """Start a worker; ``settings`` are Settings fields (METRICS_PORT gets a free port if absent)."""
        settings.setdefault("metrics_port", free_port())
        self._names[name] = self._names.get(name, 0) + 1
        unique = f"{name}-{self._names[name]}"
        worker = WorkerProcess(
            unique,
            worker_env(**settings),
            stdout_path=self.log_dir / f"{unique}.out",
            stderr_path=self.log_dir / f"{unique}.err",
        )
        self.started.append(worker)
        worker.start()
        return worker

    def workers(self) -> list[WorkerProcess]:
        return [p for p in self.started if isinstance(p, WorkerProcess)]

    def log_paths(self) -> list[Path]:
        return [path for p in self.started for path in (p.stdout_path, p.stderr_path) if path is not None]

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


@contextlib.asynccontextmanager
async def sandbox_cli(api_key: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m labelbox_sandbox --port 0 *args`` with its stdout piped, for tests of its command
    line; killed on the way out if the test did not stop it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "labelbox_sandbox",
        "--port",
        "0",
        *args,
        env={**os.environ, "SANDBOX_API_KEY": api_key},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
