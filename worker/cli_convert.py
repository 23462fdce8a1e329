"""``lbworker convert [FILE]``: messages (one per line) -> Labelbox NDJSON on stdout, without Kafka.

A message may carry a Confluent Schema Registry prefix (magic byte 0 and a 4-byte schema id, or magic
byte 1 and a 16-byte GUID), as ``kcat -e -f '%s\\n'`` dumps a topic of ``JSONSerializer`` values; the
JSON after it is converted. Each rejected message is written to stderr as ``{"line": n, "reason": code,
"errors": [...]}`` (and ``"schema_id"`` when it was framed). Exit status 1 when any message was
rejected, 0 otherwise. Blank lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

import orjson

from worker.convert import convert, encode
from worker.decode import Rejection, decode
from worker.framing import Framed, join_framed_lines, unwrap


def convert_stream(lines: Iterable[bytes], out: BinaryIO, err: BinaryIO) -> int:
    """Convert every record; returns the number of rejected messages."""
    rejected = 0
    for number, raw in enumerate(join_framed_lines(lines), start=1):
        value = raw.rstrip(b"\r\n")
        if not value.strip():
            continue
        framed = unwrap(value)
        result = decode(framed.payload) if isinstance(framed, Framed) else framed
        if isinstance(result, Rejection):
            rejected += 1
            report: dict[str, Any] = {"line": number, "reason": result.reason, "errors": result.errors}
            if isinstance(framed, Framed) and framed.schema_id is not None:
                report["schema_id"] = framed.schema_id
            err.write(orjson.dumps(report) + b"\n")
            continue
        out.write(encode(convert(result)))
    return rejected


def run(path: str | None, stdin: BinaryIO, stdout: BinaryIO, stderr: BinaryIO) -> int:
    """The command's body; returns the exit status."""
    if path is None or path == "-":
        return 1 if convert_stream(stdin, stdout, stderr) else 0
    with open(path, "rb") as handle:
        return 1 if convert_stream(handle, stdout, stderr) else 0
