"""``python -m worker convert [FILE]``: messages (one JSON per line) -> NDJSON on stdout.

Each rejected message is written to stderr as ``{"line": n, "reason": code, "errors": [...]}``.
Exit status 1 when any message was rejected, 0 otherwise. Blank lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

import orjson

from worker.convert import convert, encode
from worker.decode import Rejection, decode


def convert_stream(lines: Iterable[bytes], out: BinaryIO, err: BinaryIO) -> int:
    """Convert every line; returns the number of rejected messages."""
    rejected = 0
    for number, raw in enumerate(lines, start=1):
        value = raw.rstrip(b"\r\n")
        if not value.strip():
            continue
        result = decode(value)
        if isinstance(result, Rejection):
            rejected += 1
            report = {"line": number, "reason": result.reason, "errors": result.errors}
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
