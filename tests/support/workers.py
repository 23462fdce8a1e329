"""Worker processes for tests: the one environment builder (``worker_env``, also for the sandbox, the demo
and the command line), ``python -m worker run`` as an asyncio child (``worker_process``), and its JSON
log read back (``read_jsonl``). The synchronous launcher is ``tests.support.processes``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from worker.settings import OWN_PREFIXES, Settings

#: Variables a worker reads besides its Settings fields: left to each test, never inherited.
_NOT_SETTINGS = ("LOG_LEVEL", "LOG_FORMAT")


def worker_env(settings: Settings | None = None, **fields: object) -> dict[str, str]:
    """This environment without any worker setting, plus ``settings`` and ``fields`` (Settings field
    names, or other variables, upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES) and k not in _NOT_SETTINGS}
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in (settings.model_dump() if settings is not None else {}).items():
        if value is not None:
            env[name.upper()] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return env | {name.upper(): str(value) for name, value in fields.items()}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (a log), skipping any other line; [] if there is none."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(raw)
            if isinstance(entry, dict):
                out.append(entry)
    return out


async def stop_process(process: asyncio.subprocess.Process, timeout_s: float = 10) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status."""
    if process.returncode is None:
        process.terminate()
    try:
        return await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        process.kill()
        return await asyncio.wait_for(process.wait(), timeout_s)


@dataclass
class RunningWorker:
    """``python -m worker run`` (or another module), with stdout and stderr in one file."""

    process: asyncio.subprocess.Process
    log_path: Path

    def entries(self) -> list[dict[str, Any]]:
        """Every line; one that is not a JSON object comes back as ``{"raw": line}``."""
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                entry = None
            out.append(entry if isinstance(entry, dict) else {"raw": raw.decode("utf-8", "replace")})
        return out

    def events(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e.get("event") in names]


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings,
    directory: Path,
    *,
    module: tuple[str, ...] = ("worker", "run"),
    stop_timeout_s: float = 10,
    **fields: object,
) -> AsyncIterator[RunningWorker]:
    """``python -m worker run`` with exactly these settings (JSON logs at INFO) and ``fields`` in its
    environment, its log in ``directory/worker.log``; stopped (SIGTERM, then SIGKILL) at the end."""
    log_path = directory / "worker.log"
    env = worker_env(settings, log_format="json", log_level="INFO", **fields)
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *module, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        yield RunningWorker(process, log_path)
    finally:
        await stop_process(process, stop_timeout_s)
