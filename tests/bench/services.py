"""The processes the benchmark starts besides the broker: the sandbox and the worker, with their probes.

Both run as separate processes (``python -m labelbox_sandbox`` / ``python -m worker run``) so that
neither steals the benchmark's event loop. They are the test suite's launchers (``tests.support.processes``:
context managers that stop their process with SIGTERM, then SIGKILL after a timeout, errors included),
with what the benchmark adds: a sandbox whose corpora's data rows are members of their model runs, and a
worker logging to one file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.support import processes
from tests.support.processes import http_json, http_status
from tests.support.workers import worker_env

__all__ = [
    "API_KEY",
    "SandboxProcess",
    "WorkerProcess",
    "cpu_seconds",
    "http_json",
    "http_status",
    "worker_env",
]

API_KEY = "bench-key-5d1e3f"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, in seconds (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SandboxProcess(processes.SandboxProcess):
    """``python -m labelbox_sandbox`` on a free loopback port, no processing delay (unless given).

    The sandbox, like Labelbox, FAILs rows on data rows that are not in their model run. The benchmarks
    measure throughput, not the registration workflow, so the corpora's data rows are made members
    through the admin API (``register``), again after every ``reset``, and neither the worker nor the
    SDK baseline spends requests on registering them. ``lean``: ``--lean``, lines stored unvalidated.
    """

    def __init__(self, log_path: Path, *, processing_delay_s: float = 0.0, lean: bool = False) -> None:
        self.lean = lean
        self.members: dict[str, set[str]] = {}
        super().__init__(
            log_path,
            API_KEY,
            processing_delay_s=processing_delay_s,
            task_delay_s=0.0,
            extra_args=["--lean"] if lean else [],
        )

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


class WorkerProcess(processes.WorkerProcess):
    """``python -m worker run`` with ``env``, its stdout and stderr in ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("the worker", env, stdout_path=log_path)
