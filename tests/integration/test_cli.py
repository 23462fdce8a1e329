"""The command line: ``lbworker`` (the installed console script) and ``python -m worker``.

Help is checked in-process (fast); the entry points, the version and the one-line errors as real
processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import orjson
import pytest

from schemas.jsonschema import render
from worker.cli import COMMANDS, DISTRIBUTION, build_parser, settings_help
from worker.settings import KafkaSettings, LabelboxSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
LBWORKER = Path(sys.executable).with_name("lbworker")
#: The statuses of "run" as the README's "Exit statuses" table documents them.
RUN_STATUSES = {0, 1, 2, 3, 4}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LABELBOX_"))}
    return subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**clean, **(env or {})},
    )


def _help(*command: str) -> str:
    parser = build_parser("lbworker")
    if not command:
        return parser.format_help()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices[command[0]].format_help()  # type: ignore[attr-defined,no-any-return]


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


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_each_command_help_says_what_it_reads_and_returns(command: str) -> None:
    text = _help(command)
    spec = next(c for c in COMMANDS if c.name == command)
    assert "`" not in text
    assert "lbworker " in text.split("example:\n  ")[1].splitlines()[0]
    assert "exit statuses:" in text
    for status in spec.statuses:
        assert f"\n  {status:<3}  " in text
    assert ("environment (default in brackets):" in text) == (spec.settings is not None)


@pytest.mark.parametrize(
    ("command", "model"),
    [
        ("run", Settings),
        ("replay-dlq", KafkaSettings),
        ("check", LabelboxSettings),
        ("ontology", LabelboxSettings),
    ],
)
def test_the_settings_listed_are_the_models_fields_with_their_defaults(command: str, model: type) -> None:
    text = _help(command)
    flat = " ".join(text.split())
    for name in model.model_fields:
        assert f"\n  {name.upper()} " in text, f"{name.upper()} missing from {command} --help"
    assert "[required]" in text
    if command == "run":
        assert text.count("\n  ") >= len(Settings.model_fields)
        assert "UPLOAD_CONCURRENCY           [4]" in text
        assert "ADAPTIVE_CONCURRENCY         [true]" in text
        assert "one of strict, off" in flat
        assert "range [1, 256]" in flat
        assert set(next(spec for spec in COMMANDS if spec.name == "run").statuses) == RUN_STATUSES


def test_every_setting_has_a_description() -> None:
    assert not [name for name, field in Settings.model_fields.items() if not field.description]
    assert "KAFKA_TOPIC" in settings_help(KafkaSettings)


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
