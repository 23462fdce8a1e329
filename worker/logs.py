"""Structured logs: one JSON object per line on stdout (or a readable line for local runs).

Call sites log an *event* name and context fields: ``log.info("import_finished", extra=ctx(...))``.
Prediction payloads and the API key are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

_CONTEXT = "ctx"


def ctx(**fields: Any) -> dict[str, Any]:
    """The ``extra=`` argument carrying context fields to the formatter."""
    return {_CONTEXT: fields}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...context}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, _CONTEXT, {}))
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level event key=value …`` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, _CONTEXT, {}).items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info and record.exc_info[1] is not None:
            line += f" error={type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return line


def configure(level: str = "INFO", fmt: Literal["json", "text"] = "json") -> None:
    """Route every logger to stdout in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
