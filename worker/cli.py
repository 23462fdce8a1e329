"""``lbworker`` (also ``python -m worker``): the command line, its subcommands and their help.

Each subcommand's ``--help`` says what it does, its arguments, the environment settings it reads with
their defaults (generated from the Settings models, so it cannot drift), an example and its exit
statuses. A usage error is one line on stderr and exit status 2. The commands' modules are imported
only when they run, so ``--help`` is fast and needs no broker.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from worker.settings import KafkaSettings, LabelboxSettings, Settings

DISTRIBUTION = "labelbox-prediction-worker"
_WIDTH = 100
_RUN_STATUSES = {
    0: "stopped cleanly (SIGTERM/SIGINT): drained, committed",
    1: "internal error (an unexpected exception, logged as stage_crashed or task_crashed)",
    2: "invalid settings or arguments (the message names the variable)",
    3: "Labelbox refused the API key",
    4: "a record batch could not be decoded (undecodable_record_batch names topic, partition, offset)",
}


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line summary, what it does, what it reads and returns."""

    name: str
    summary: str
    description: str
    example: str
    statuses: dict[int, str]
    settings: type[BaseSettings] | None = None
    settings_note: str = ""


COMMANDS: tuple[Command, ...] = (
    Command(
        "run",
        "the streaming worker: Kafka -> validate -> Labelbox model-run prediction imports",
        "Consume KAFKA_TOPIC in consumer group KAFKA_GROUP_ID, validate and convert each message to "
        "Labelbox NDJSON, import it into its model run, send what is rejected to KAFKA_DLQ_TOPIC with "
        "the reason, and commit only settled offsets. Values framed by a Confluent Schema Registry "
        "serializer (a schema-id prefix or a __value_schema_id header) are read as plain JSON. Serves "
        "/metrics, /healthz and /readyz on METRICS_PORT. Configured only by the environment; stops "
        "in order on SIGTERM or SIGINT within SHUTDOWN_TIMEOUT_S.",
        "KAFKA_BOOTSTRAP_SERVERS=localhost:9092 LABELBOX_API_KEY=... lbworker run",
        _RUN_STATUSES,
        Settings,
    ),
    Command(
        "convert",
        "messages (one per line) -> Labelbox NDJSON on stdout, without Kafka or Labelbox",
        "Validate and convert each message of FILE (stdin when absent or '-'), one per line, as the "
        "worker does; NDJSON on stdout. A line may start with a Confluent schema-id prefix, as "
        "kcat -C -e -f '%s\\n' dumps a topic. Each rejected message is written to stderr as "
        '{"line": n, "reason": code, "errors": [...], "schema_id": id (when framed)}. '
        "Blank lines are skipped.",
        "lbworker convert messages.jsonl > predictions.ndjson",
        {0: "every message converted", 1: "at least one message rejected (see stderr)", 2: "bad arguments"},
    ),
    Command(
        "replay-dlq",
        "re-publish dead-lettered records to the main topic",
        "Read KAFKA_DLQ_TOPIC from its beginning to its end and publish each selected record to "
        "KAFKA_TOPIC with its original key and value and a dlq.replay_count header one higher. A record "
        "replayed --max-replays times is skipped, so nothing loops for ever. Replaying twice "
        "publishes twice (harmless: the same uuids replace in Labelbox); filter with --reason, "
        "--model-run, --limit, and look first with --dry-run.",
        "lbworker replay-dlq --reason ontology_mismatch --dry-run",
        {0: "done (the report is on stdout)", 1: "Kafka failed (one line on stderr)", 2: "invalid settings"},
        KafkaSettings,
    ),
    Command(
        "check",
        "validate messages against a model run's ontology, without uploading",
        "Fetch the model run's ontology and check each message of FILE (stdin when absent), one per "
        'line: one JSON report per message on stdout ({"line", "status": ok | rejected | mismatch, '
        '"reason", "errors"}), a count on stderr. Nothing is uploaded.',
        "lbworker check --model-run clmodelrun000000000000001 sample.jsonl",
        {
            0: "every message fits",
            1: "a message was rejected or does not fit, or Labelbox answered an error",
            2: "invalid settings or arguments",
            3: "Labelbox refused the API key",
        },
        LabelboxSettings,
    ),
    Command(
        "ontology",
        "print a model run's ontology features (the names to use in messages)",
        "A table of the model run's features: name, kind, schema id, options; nested classifications "
        "as 'parent > answer > child'.",
        "lbworker ontology --model-run clmodelrun000000000000001",
        {
            0: "printed",
            1: "Labelbox answered an error",
            2: "invalid settings or arguments",
            3: "Labelbox refused the API key",
        },
        LabelboxSettings,
    ),
    Command(
        "send-ground-truth",
        "register ground-truth labels with a model run",
        "Register every label of --project, or the labels listed in --label-ids (a JSON list or one id "
        "per line), with the model run, and wait for Labelbox's task, printing its progress.",
        "lbworker send-ground-truth --model-run clmodelrun000000000000001 --project clproject0000001",
        {
            0: "registered",
            1: "the task failed or timed out, or Labelbox answered an error",
            2: "invalid settings or arguments",
            3: "Labelbox refused the API key",
        },
        LabelboxSettings,
    ),
    Command(
        "schema",
        "print the contract's JSON Schema, to register under the topic's value subject",
        "Print the JSON Schema (draft 2020-12) of a prediction message, as producers in any language "
        "validate against it. With --registration, print the body of a Schema Registry "
        '"register schema" request instead ({"schemaType": "JSON", "schema": "..."}), to POST to '
        "/subjects/<topic>-value/versions (TopicNameStrategy), after which confluent-kafka's "
        "JSONSerializer frames values with its id.",
        "lbworker schema --registration |\n    curl -H 'Content-Type: application/vnd.schemaregistry.v1+json'"
        " --data @- \\\n      http://registry:8081/subjects/predictions-value/versions",
        {0: "printed"},
    ),
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: ``<prog>: <what> (see <prog> --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def program_name(argv0: str | None = None) -> str:
    """``lbworker``, or ``python -m worker`` when run as a module."""
    name = os.path.basename(argv0 if argv0 is not None else sys.argv[0])
    return "python -m worker" if name in ("__main__.py", "-m", "") else name


def version() -> str:
    """The installed package's version (its metadata)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The whole command line: every subcommand with its arguments and help."""
    prog = prog or program_name()
    parser = _Parser(
        prog=prog,
        description=_wrap(
            "Streams model predictions from Kafka into Labelbox model runs, and the commands around "
            "it. Every command is configured by environment variables (see each command's --help)."
        ),
        epilog=_top_epilog(prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {version()}")
    commands = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND", parser_class=_Parser
    )
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.summary,
            description=_wrap(command.description),
            epilog=_epilog(command),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments = _ARGUMENTS.get(command.name)
        if add_arguments is not None:
            add_arguments(sub)
    return parser


def _top_epilog(prog: str) -> str:
    statuses = "\n".join(f"  {status}  {meaning}" for status, meaning in _RUN_STATUSES.items())
    return (
        f"Run '{prog} COMMAND --help' for what a command reads and returns.\n\n"
        f"example:\n  KAFKA_BOOTSTRAP_SERVERS=localhost:9092 LABELBOX_API_KEY=... {prog} run\n\n"
        f"exit statuses of run:\n{statuses}"
    )


def _epilog(command: Command) -> str:
    parts = []
    if command.settings is not None:
        parts.append("environment (default in brackets):\n" + settings_help(command.settings))
    else:
        parts.append(_wrap("environment: " + (command.settings_note or "none read.")))
    parts.append(f"example:\n  {command.example}")
    statuses = "\n".join(f"  {status:<3}  {meaning}" for status, meaning in command.statuses.items())
    parts.append(f"exit statuses:\n{statuses}")
    return "\n\n".join(parts)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=_WIDTH - 2)


# --- settings help, from the models ---------------------------------------------------------------


def settings_help(model: type[BaseSettings]) -> str:
    """One entry per field of ``model``: VARIABLE [default] description; allowed values or range."""
    fields = sorted(model.model_fields.items(), key=lambda item: _GROUP_ORDER.get(item[0].split("_")[0], 2))
    width = max(len(name) for name, _ in fields) + 2
    lines = []
    for name, field in fields:
        head = f"  {name.upper():<{width}}[{_default(field)}]"
        text = "; ".join(part for part in (field.description or "", _allowed(field)) if part)
        lines.append(head)
        lines.extend(
            textwrap.wrap(text, width=_WIDTH - 6, initial_indent="      ", subsequent_indent="      ")
        )
    return "\n".join(lines)


#: Kafka first, then Labelbox, then the rest as defined, logging last (the order is stable).
_GROUP_ORDER = {"kafka": 0, "labelbox": 1, "log": 3}


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _allowed(field: FieldInfo) -> str:
    choices = _literal_choices(field.annotation)
    if choices:
        return "one of " + ", ".join(choices)
    if field.annotation is bool:
        return "true or false"
    bounds = {
        kind: value
        for constraint in field.metadata
        for kind in ("ge", "gt", "le")
        if (value := getattr(constraint, kind, None)) is not None
    }
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le")
    if low is None:
        return ""
    if high is None:
        return f"more than {_num(low)}" if "gt" in bounds else f"at least {_num(low)}"
    return f"range {'(' if 'gt' in bounds else '['}{_num(low)}, {_num(high)}]"


def _literal_choices(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(choice) for choice in get_args(annotation)]
    for arg in get_args(annotation):  # Optional[Literal[...]]
        if get_origin(arg) is Literal:
            return [str(choice) for choice in get_args(arg)]
    return []


def _num(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- arguments ------------------------------------------------------------------------------------


def _readable_file(text: str) -> Path:
    """An argparse type: a readable file or pipe ('-' is handled by the commands as stdin)."""
    path = Path(text)
    if text != "-" and (path.is_dir() or not os.access(path, os.R_OK)):
        raise argparse.ArgumentTypeError(f"cannot read {text!r}")
    return path


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        nargs="?",
        type=_readable_file,
        metavar="FILE",
        help="messages, one per line; stdin when absent or '-'",
    )


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="only records with this dlq.reason code")
    parser.add_argument(
        "--model-run", dest="model_run_id", metavar="ID", help="only records of this model run"
    )
    parser.add_argument("--limit", type=_count, metavar="N", help="replay at most N records")
    parser.add_argument(
        "--max-replays", type=_count, default=3, metavar="N", help="skip records replayed N times (3)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be replayed; publish nothing"
    )


def _model_run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-run", required=True, metavar="ID", help="the model run id")


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    _model_run_argument(parser)
    parser.add_argument(
        "file",
        nargs="?",
        type=_readable_file,
        metavar="FILE",
        help="messages, one per line (stdin if absent)",
    )


def _ground_truth_arguments(parser: argparse.ArgumentParser) -> None:
    _model_run_argument(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", metavar="ID", help="register every label of this project")
    source.add_argument(
        "--label-ids", type=_readable_file, metavar="FILE", help="label ids: a JSON list or one per line"
    )


def _schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registration",
        action="store_true",
        help='print a Schema Registry request body {"schemaType": "JSON", "schema": ...} instead',
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "convert": _convert_arguments,
    "replay-dlq": _replay_arguments,
    "check": _check_arguments,
    "ontology": _model_run_argument,
    "send-ground-truth": _ground_truth_arguments,
    "schema": _schema_arguments,
}


# --- running --------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from worker import service

    return service.main()


def _convert(args: argparse.Namespace) -> int:
    from worker import cli_convert

    path = None if args.file is None else str(args.file)
    return cli_convert.run(path, sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)


def _replay(args: argparse.Namespace) -> int:
    from worker import replay

    return replay.main(args)


def _model_run_command(args: argparse.Namespace) -> int:
    from worker import cli_modelrun

    return cli_modelrun.main(args.command, args)


def _schema(args: argparse.Namespace) -> int:
    import orjson

    from schemas.jsonschema import render

    schema = render()
    if args.registration:
        body = {"schemaType": "JSON", "schema": orjson.dumps(orjson.loads(schema)).decode()}
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
    else:
        sys.stdout.write(schema.decode())
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "convert": _convert,
    "replay-dlq": _replay,
    "check": _model_run_command,
    "ontology": _model_run_command,
    "send-ground-truth": _model_run_command,
    "schema": _schema,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run; returns the exit status (2 for a usage error, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _HANDLERS[args.command](args)
    except KeyboardInterrupt:
        return 130
