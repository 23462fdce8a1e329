"""Commands for the workflow around the stream (settings LABELBOX_* from the environment).

- ``check --model-run ID [FILE]``: validate messages (Confluent-framed or not) against the model run's
  ontology, upload nothing;
  one JSON report per message on stdout; exit 1 if any message is rejected or does not fit.
- ``ontology --model-run ID``: the model run's features as a table (name, kind, schema id, options).
- ``send-ground-truth --model-run ID (--project ID | --label-ids FILE)``: register ground-truth labels
  with the model run and wait for the task, printing progress.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson

from worker.convert import convert
from worker.decode import Rejection, decode
from worker.framing import Framed, join_framed_lines, unwrap
from worker.labelbox import AuthenticationError, LabelboxClient, LabelboxError, TaskStatus
from worker.logs import configure_command_logs
from worker.ontology import Ontology
from worker.pipeline import EXIT_AUTH, EXIT_OK, EXIT_SETTINGS
from worker.retry import until_done
from worker.settings import LabelboxSettings, SettingsError

EXIT_FOUND_PROBLEMS = 1


def _client(settings: LabelboxSettings) -> LabelboxClient:
    return LabelboxClient(
        settings.labelbox_graphql_url,
        settings.labelbox_api_key,
        request_timeout_s=settings.labelbox_request_timeout_s,
        retry_max_s=settings.labelbox_retry_max_s,
    )


# --- check ---------------------------------------------------------------------------------------


def check_lines(ontology: Ontology, lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """One report per non-blank input line: ok, rejected (contract) or mismatch (ontology)."""
    for number, raw in enumerate(join_framed_lines(lines), start=1):
        value = raw.rstrip(b"\r\n")
        if not value.strip():
            continue
        framed = unwrap(value)  # a Confluent schema-id prefix, as a dumped topic has it
        outcome = decode(framed.payload) if isinstance(framed, Framed) else framed
        if isinstance(outcome, Rejection):
            yield {"line": number, "status": "rejected", "reason": outcome.reason, "errors": outcome.errors}
            continue
        converted = convert(outcome)
        where = "ndjson" if hasattr(outcome, "ndjson") else "predictions"
        problems = [
            f"{where}.{index}.{m.path}: {m.code}: {m.message}"
            for index, line in enumerate(converted)
            if (m := ontology.check(line.body)) is not None
        ]
        if problems:
            yield {"line": number, "status": "mismatch", "reason": "ontology_mismatch", "errors": problems}
        else:
            yield {"line": number, "status": "ok", "predictions": len(converted)}


async def _check(settings: LabelboxSettings, model_run_id: str, lines: Iterable[bytes], out: TextIO) -> int:
    async with _client(settings) as client:
        ontology = Ontology.from_normalized(await client.fetch_ontology(model_run_id))
    if ontology.is_empty:
        print(f"warning: model run {model_run_id} has an empty ontology; nothing can fit it", file=sys.stderr)
    counts = {"ok": 0, "rejected": 0, "mismatch": 0}
    for report in check_lines(ontology, lines):
        counts[report["status"]] += 1
        out.write(orjson.dumps(report).decode() + "\n")
    print(
        f"checked {sum(counts.values())} messages: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        file=sys.stderr,
    )
    return EXIT_FOUND_PROBLEMS if counts["rejected"] or counts["mismatch"] else EXIT_OK


# --- ontology ------------------------------------------------------------------------------------


def feature_rows(normalized: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(name, kind, schema id, options) per feature, nested ones as ``parent > answer > child``."""
    rows: list[tuple[str, str, str, str]] = []
    for tool in normalized.get("tools", []):
        rows.append((str(tool.get("name")), f"tool:{tool.get('tool')}", str(tool.get("featureSchemaId")), ""))
        _classification_rows(tool.get("classifications", []), str(tool.get("name")), rows)
    _classification_rows(normalized.get("classifications", []), "", rows)
    return rows


def _classification_rows(
    items: list[dict[str, Any]], parent: str, rows: list[tuple[str, str, str, str]]
) -> None:
    for item in items:
        name = str(item.get("name") or item.get("instructions"))
        path = f"{parent} > {name}" if parent else name
        options = item.get("options", [])
        labels = ", ".join(str(o.get("value") or o.get("label")) for o in options)
        rows.append((path, str(item.get("type")), str(item.get("featureSchemaId")), labels))
        for option in options:
            answer = str(option.get("value") or option.get("label"))
            _classification_rows(option.get("options", []), f"{path} > {answer}", rows)


def format_table(rows: list[tuple[str, str, str, str]]) -> str:
    """A plain aligned text table with a header."""
    header = ("name", "kind", "schema id", "options")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


async def _ontology(settings: LabelboxSettings, model_run_id: str, out: TextIO) -> int:
    async with _client(settings) as client:
        normalized = await client.fetch_ontology(model_run_id)
    out.write(format_table(feature_rows(normalized)) + "\n")
    return EXIT_OK


# --- send-ground-truth ---------------------------------------------------------------------------


def read_label_ids(path: Path) -> list[str]:
    """Label ids from a file: a JSON list, or one id per line."""
    text = path.read_text().strip()
    if text.startswith("["):
        return [str(item) for item in orjson.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


async def _send_ground_truth(settings: LabelboxSettings, args: argparse.Namespace, out: TextIO) -> int:
    label_ids = read_label_ids(args.label_ids) if args.label_ids else None
    async with _client(settings) as client:
        task_id = await client.register_labels(args.model_run, project_id=args.project, label_ids=label_ids)
        what = f"project {args.project}" if args.project else f"{len(label_ids or [])} labels"
        out.write(f"registering {what} with model run {args.model_run}: task {task_id}\n")
        started = time.monotonic()

        def progress(status: TaskStatus) -> None:
            out.write(f"  {time.monotonic() - started:6.1f}s  {status.reported_status}\n")
            out.flush()

        status = await until_done(
            lambda: client.task_status("labels", task_id),
            lambda s: s.done,
            interval_s=settings.labelbox_poll_interval_s,
            timeout_s=settings.labelbox_task_timeout_s,
            clock=time.monotonic,
            sleep=asyncio.sleep,
            seen=progress,
        )
    if status.status == "COMPLETE":
        out.write("ground truth registered\n")
        return EXIT_OK
    out.write(
        f"ground truth NOT registered: {status.reported_status} {status.error_message or ''}\n".rstrip()
        + "\n"
    )
    return EXIT_FOUND_PROBLEMS


# --- entry points --------------------------------------------------------------------------------


def main(command: str, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``check``, ``ontology`` or ``send-ground-truth`` with its parsed arguments (``worker.cli``);
    returns the exit status."""
    try:
        settings = LabelboxSettings.from_env()
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    configure_command_logs(settings)
    try:
        return asyncio.run(_dispatch(command, settings, args, out))
    except AuthenticationError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except (LabelboxError, ValueError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_FOUND_PROBLEMS


async def _dispatch(command: str, settings: LabelboxSettings, args: argparse.Namespace, out: TextIO) -> int:
    if command == "check":
        if args.file is None or str(args.file) == "-":
            return await _check(settings, args.model_run, sys.stdin.buffer, out)
        with args.file.open("rb") as handle:
            return await _check(settings, args.model_run, handle, out)
    if command == "ontology":
        return await _ontology(settings, args.model_run, out)
    return await _send_ground_truth(settings, args, out)
