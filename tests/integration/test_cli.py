"""The command line as real processes: ``lbworker`` (the installed console script) and ``python -m
worker``, the version, the one-line errors and the exit statuses. The parser and the help text are
checked in-process in ``tests/unit/test_cli.py``.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import orjson
import pytest

from schemas.jsonschema import render
from tests.support.workers import worker_env
from worker.cli import COMMANDS, DISTRIBUTION

ROOT = Path(__file__).resolve().parents[2]
LBWORKER = Path(sys.executable).with_name("lbworker")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env=worker_env(**(env or {})),
    )


def test_module_help_exits_0_with_plain_text() -> None:
    done = _run(sys.executable, "-m", "worker", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m worker ")
    assert "`" not in done.stdout, "no reStructuredText markup"
    for command in COMMANDS:
        assert command.name in done.stdout


def test_installed_script_runs_with_the_package_version() -> None:
    assert LBWORKER.exists(), "pip install -e . installs the lbworker console script"
    done = _run(str(LBWORKER), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"lbworker {metadata.version(DISTRIBUTION)}"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["frobnicate"], "lbworker: argument COMMAND: invalid choice: 'frobnicate'"),
        (["convert", "/no/such/file"], "lbworker convert: argument FILE: cannot read '/no/such/file'"),
        (["check"], "lbworker check: the following arguments are required: --model-run"),
        (["replay-dlq", "--limit", "x"], "lbworker replay-dlq: argument --limit: not a whole number: 'x'"),
    ],
)
def test_a_usage_error_is_one_line_and_status_2(args: list[str], line: str) -> None:
    done = _run(str(LBWORKER), *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(line)
    prog = "lbworker" if args[0] == "frobnicate" else f"lbworker {args[0]}"
    assert done.stderr.rstrip().endswith(f"(see {prog} --help)")


def test_invalid_settings_are_one_line_and_status_2() -> None:
    done = _run(str(LBWORKER), "run", env={"LABELBOX_API_KEY": "k", "UPLOAD_CONCURRENCY": "0"})
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "KAFKA_BOOTSTRAP_SERVERS" in done.stderr
    assert "UPLOAD_CONCURRENCY" in done.stderr


def test_schema_prints_the_contract_and_a_registration_body() -> None:
    plain = _run(str(LBWORKER), "schema")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.encode() == render()
    body = orjson.loads(_run(str(LBWORKER), "schema", "--registration").stdout)
    assert body["schemaType"] == "JSON"
    assert orjson.loads(body["schema"]) == orjson.loads(render())
