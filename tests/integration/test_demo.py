"""``make run`` (``python -m devtools.demo``) as a person at a terminal meets it.

Ctrl-C mid-stream (SIGINT to the demo's whole process group, as a terminal sends it) stops it in order
with the summary so far and exit status 130; a second Ctrl-C stops it at once; no process outlives
the demo, not even when the demo itself is killed. Prints one greppable line (``pytest -s``)::

    DEMO ctrl-c: exit 130 in … s after SIGINT, consumed and committed: …, predictions imported: …
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.support.workers import worker_env

pytestmark = pytest.mark.integration

#: A person expects a prompt back within a few seconds of Ctrl-C.
CTRL_C_EXIT_S = 15.0


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live or zombie process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process below ``root`` (pid -> start time, so a reused pid is not mistaken for it)."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = (stat[0], stat[2])
    found: dict[int, int] = {}
    frontier = [root]
    for _ in range(10):  # a shallow tree: demo -> children
        frontier = [pid for pid, (ppid, _) in parents.items() if ppid in frontier]
        found.update({pid: parents[pid][1] for pid in frontier})
    return found


def survivors(processes: dict[int, int]) -> list[int]:
    """Those still running (a zombie has ended; this machine's init may be slow to reap)."""
    out = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started and stat[1] != "Z":
            out.append(pid)
    return out


class Demo:
    """``python -m devtools.demo`` in its own process group, its output collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def read_until(self, condition: Callable[[str], bool], timeout_s: float) -> bool:
        """Read lines until one satisfies ``condition`` (True) or the output ends or time runs out."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        for _ in range(100_000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), remaining)
            except TimeoutError:
                return False
            if not raw:
                return False
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            if condition(self.lines[-1]):
                return True
        return False

    async def finish(self, timeout_s: float) -> int:
        await self.read_until(lambda _: False, timeout_s)
        return await asyncio.wait_for(self.process.wait(), 5)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def demo() -> AsyncIterator[Demo]:
    env = worker_env()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.demo",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    started = Demo(process)
    try:
        yield started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def started(line: str) -> bool:
    return "worker pid" in line


async def test_ctrl_c_mid_stream_stops_in_order_with_a_summary_and_exit_130() -> None:
    async with demo() as run:
        assert await run.read_until(lambda line: "import_started" in line, 90), run.output
        children = descendants(run.process.pid)
        assert len(children) >= 3, "broker, local Labelbox-compatible server, worker"
        interrupted_at = time.monotonic()
        os.killpg(run.process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        status = await run.finish(CTRL_C_EXIT_S + 10)
        took = time.monotonic() - interrupted_at
    output = run.output
    committed = re.search(r"consumed and committed: (\d+)", output)
    imported = re.search(r"predictions imported: (\d+)", output)
    figures = ", ".join(match[0] for match in (committed, imported) if match is not None)
    print(f"\nDEMO ctrl-c: exit {status} in {took:.1f} s after SIGINT, {figures}")
    assert status == 130, output
    assert took < CTRL_C_EXIT_S
    assert "=== summary ===" in output
    assert "finished: NO (interrupted by SIGINT)" in output
    assert "worker exited with status 0" in output, "the worker drained and committed"
    assert committed is not None
    assert int(committed[1]) > 0
    assert imported is not None
    assert "Traceback" not in output
    assert not survivors(children)


async def test_a_second_ctrl_c_stops_everything_at_once() -> None:
    async with demo() as run:
        assert await run.read_until(started, 60), run.output
        children = descendants(run.process.pid)
        os.killpg(run.process.pid, signal.SIGINT)
        assert await run.read_until(lambda line: line.startswith("interrupted:"), 10), run.output
        again_at = time.monotonic()
        os.killpg(run.process.pid, signal.SIGINT)
        status = await run.finish(10)
        took = time.monotonic() - again_at
    assert status == 130, run.output
    assert took < 3.0
    assert "stopped at once" in run.output
    assert not survivors(children)


async def test_no_child_outlives_a_killed_demo() -> None:
    async with demo() as run:
        assert await run.read_until(started, 60), run.output
        children = descendants(run.process.pid)
        assert len(children) >= 3
        run.process.kill()
        await run.process.wait()
        for _ in range(50):  # 5 s at most
            if not survivors(children):
                break
            await asyncio.sleep(0.1)
    assert not survivors(children), "the kernel ends the children with the demo (PR_SET_PDEATHSIG)"
