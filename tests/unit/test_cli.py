"""``worker.cli``: the parser and the help text, in-process (no subprocess, nothing run). The real
entry points, the version and the exit statuses are in ``tests/integration/test_cli.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from schemas.jsonschema import render
from worker.cli import COMMANDS, build_parser, main, program_name, settings_help
from worker.settings import KafkaSettings, LabelboxSettings, Settings

#: The statuses of "run" as the README's "Exit statuses" table documents them.
RUN_STATUSES = {0, 1, 2, 3, 4}


def _help(*command: str) -> str:
    parser = build_parser("lbworker")
    if not command:
        return parser.format_help()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices[command[0]].format_help()  # type: ignore[attr-defined,no-any-return]


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


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("lbworker").parse_args(list(argv))


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a usage error writes (it exits with status 2)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    return err.rstrip("\n")


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("/usr/local/bin/lbworker", "lbworker"),
        ("/src/worker/__main__.py", "python -m worker"),
        ("-m", "python -m worker"),
    ],
)
def test_the_program_is_named_as_it_was_started(argv0: str, name: str) -> None:
    assert program_name(argv0) == name


def test_replay_arguments_and_their_defaults() -> None:
    args = parse("replay-dlq")
    assert (args.command, args.reason, args.model_run_id, args.limit, args.max_replays, args.dry_run) == (
        "replay-dlq",
        None,
        None,
        None,
        3,
        False,
    )
    args = parse("replay-dlq", "--reason", "ontology_mismatch", "--model-run", "mr-1", "--limit", "0")
    assert (args.reason, args.model_run_id, args.limit) == ("ontology_mismatch", "mr-1", 0)
    assert parse("replay-dlq", "--max-replays", "7", "--dry-run").max_replays == 7


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["replay-dlq", "--limit", "x"], "lbworker replay-dlq: argument --limit: not a whole number: 'x'"),
        (["replay-dlq", "--limit", "-1"], "lbworker replay-dlq: argument --limit: must be 0 or more: -1"),
        (["check"], "lbworker check: the following arguments are required: --model-run"),
        (["send-ground-truth", "--model-run", "mr"], "lbworker send-ground-truth: one of the arguments"),
        (["frobnicate"], "lbworker: argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_a_usage_error_is_one_line_that_points_to_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], line: str
) -> None:
    monkeypatch.setattr("sys.argv", ["lbworker"])
    error = usage_error(capsys, *argv)
    assert error.startswith(line), error
    prog = "lbworker" if argv[0] == "frobnicate" else f"lbworker {argv[0]}"
    assert error.endswith(f"(see {prog} --help)")


def test_ground_truth_takes_a_project_or_a_label_file_not_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text('["l1"]')
    args = parse("send-ground-truth", "--model-run", "mr", "--label-ids", str(labels))
    assert (args.model_run, args.project, args.label_ids) == ("mr", None, labels)
    assert parse("send-ground-truth", "--model-run", "mr", "--project", "p").project == "p"
    monkeypatch.setattr("sys.argv", ["lbworker"])
    both = ("send-ground-truth", "--model-run", "mr", "--project", "p", "--label-ids", str(labels))
    assert "not allowed with argument" in usage_error(capsys, *both)


def test_a_file_argument_must_be_readable_but_dash_is_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse("convert").file is None
    assert parse("convert", "-").file == Path("-")
    monkeypatch.setattr("sys.argv", ["lbworker"])
    assert f"cannot read '{tmp_path}'" in usage_error(capsys, "convert", str(tmp_path)), "a directory"
    missing = tmp_path / "missing.jsonl"
    assert f"cannot read '{missing}'" in usage_error(capsys, "check", "--model-run", "mr", str(missing))


def test_no_command_prints_the_help_to_stderr_and_returns_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["lbworker"])
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: lbworker ")
    for command in COMMANDS:
        assert command.name in err


def test_version_exits_0(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["lbworker"])
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("lbworker ")


def test_schema_runs_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out.encode() == render()
