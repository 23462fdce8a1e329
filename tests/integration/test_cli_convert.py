"""`python -m worker convert` and `python -m schemas export-json-schema`, run as real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from schemas.jsonschema import SCHEMA_PATH, render
from tests.support.factories import bbox, every_type, message

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, cwd=ROOT, timeout=60, check=False
    )


def test_convert_writes_ndjson_and_reports_rejections(tmp_path: Path) -> None:
    good = orjson.dumps(message(*every_type()))
    bad = orjson.dumps(message(bbox(confidence=3)))
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join([good, b"", bad, b"{oops", good]) + b"\n")
    done = _run("-m", "worker", "convert", str(source))
    assert done.returncode == 1
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 2 * len(every_type())
    assert lines[: len(every_type())] == lines[len(every_type()) :]  # deterministic
    assert all(line["dataRow"] == {"globalKey": "img-1.jpg"} and "uuid" in line for line in lines)
    reports = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert [(r["line"], r["reason"]) for r in reports] == [(3, "out_of_range"), (4, "invalid_json")]
    assert reports[0]["errors"][0].startswith("predictions.0.confidence")


def test_convert_reads_stdin_and_exits_0_when_all_valid() -> None:
    done = _run("-m", "worker", "convert", stdin=orjson.dumps(message()) + b"\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert orjson.loads(done.stdout)["bbox"] == {"top": 1.0, "left": 2.0, "height": 3.0, "width": 4.0}


def test_exported_json_schema_is_current() -> None:
    assert SCHEMA_PATH.read_bytes() == render(), (
        "stale: run `make schema` and commit schemas/message.schema.json"
    )


def test_export_command_writes_the_schema(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    done = _run("-m", "schemas", "export-json-schema", str(target))
    assert done.returncode == 0, done.stderr
    schema = orjson.loads(target.read_bytes())
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"PredictionMessage", "NdjsonMessage", "BBoxPrediction", "Rle"} <= set(schema["$defs"])
