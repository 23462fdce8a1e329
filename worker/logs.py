"""Structured logs: one JSON object per line on stdout (or a readable line for local runs).

Call sites log an *event* name and context fields: ``log.info("import_finished", extra=ctx(...))``.
Prediction payloads and the API key are never passed to a logger.

Repeats are folded (:class:`RepeatFolder`): while a broker or Labelbox is down, the Kafka client and
the worker's retry loops say the same thing many times a second; the first line is written, then at
most one per ``LOG_REPEAT_INTERVAL_S`` carrying how many were suppressed since the previous one, and a
library writes at most three lines per interval.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

if TYPE_CHECKING:
    from worker.settings import LogSettings

_CONTEXT = "ctx"
#: The worker's own loggers are ``worker`` and ``worker.*``; every other logger is a library's.
_OWN_LOGGER = "worker"
#: The worker's events that repeat for as long as a dependency is down; folded like a library's records.
REPEATING_EVENTS = frozenset({"commit_failed", "dlq_write_retry", "labelbox_retry", "ontology_fetch_retry"})
#: Lines one library may write per interval (see :class:`RepeatFolder`).
LIBRARY_LINES_PER_INTERVAL = 3
#: Distinct repeat keys remembered; library messages that are not templates could otherwise grow it.
_MAX_KEYS = 1024


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
    """``HH:MM:SS level event key=value …`` for humans (a library's lines name their logger)."""

    def format(self, record: logging.LogRecord) -> str:
        context = dict(getattr(record, _CONTEXT, {}))
        if not _is_own(record):
            context["logger"] = record.name
        fields = " ".join(f"{k}={v}" for k, v in context.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info and record.exc_info[1] is not None:
            line += f" error={type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return line


def _is_own(record: logging.LogRecord) -> bool:
    return record.name == _OWN_LOGGER or record.name.startswith(_OWN_LOGGER + ".")


@dataclass(slots=True)
class _Repeat:
    since: float  # when the current count began (this key's last line, or its first record)
    written_at: float | None = None  # when this key's last line was written; None: not yet
    suppressed: int = 0  # records of this key dropped since ``since``
    level: int = logging.WARNING
    message: str = ""


class RepeatFolder(logging.Filter):
    """A handler filter that folds repeated records.

    Folded: every record of a library's logger, and the worker's :data:`REPEATING_EVENTS`. A record's
    key is its logger and its message template (``record.msg`` before ``%`` formatting: the event
    name of the worker's own records), so "cannot connect to node 1" and "… node 2" are one key. The
    first record of a key passes; later ones within ``interval_s`` of the last one that passed are
    dropped and counted; the next one after that passes with ``suppressed=<count>`` and
    ``suppressed_over_s``.

    A library (top-level logger, e.g. ``aiokafka``) writes at most ``library_lines`` lines per
    ``interval_s``: a lost broker connection is reported by a dozen code paths of the Kafka client at
    once, each with its own message. A key held back by that budget is counted like a repeat and
    passes, with its count, at its next record once the library may write again (or at exit).
    ``interval_s`` 0 folds nothing. Thread-safe; never blocks on I/O.
    """

    def __init__(
        self,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        library_lines: int = LIBRARY_LINES_PER_INTERVAL,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._library_lines = library_lines
        self._repeats: dict[tuple[str, str], _Repeat] = {}
        self._written: dict[str, deque[float]] = {}  # per library: when its recent lines were written
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        own = _is_own(record)
        if self.interval_s <= 0 or (own and str(record.msg) not in REPEATING_EVENTS):
            return True
        key, now = (record.name, str(record.msg)), self._clock()
        with self._lock:
            seen = self._repeats.get(key)
            passes = self._due(seen, now) and (own or self._library_may_write(record.name, now))
            if not passes:
                self._count(key, seen, record, now)
                return False
            self._remember(key, _Repeat(since=now, written_at=now))
        if seen is not None and seen.suppressed:
            extra = {"suppressed": seen.suppressed, "suppressed_over_s": round(now - seen.since, 1)}
            setattr(record, _CONTEXT, {**getattr(record, _CONTEXT, {}), **extra})
        return True

    def _due(self, seen: _Repeat | None, now: float) -> bool:
        return seen is None or seen.written_at is None or now - seen.written_at >= self.interval_s

    def _library_may_write(self, logger: str, now: float) -> bool:
        written = self._written.setdefault(logger.partition(".")[0], deque())
        while written and now - written[0] >= self.interval_s:
            written.popleft()
        if len(written) >= self._library_lines:
            return False
        written.append(now)
        return True

    def _count(
        self, key: tuple[str, str], seen: _Repeat | None, record: logging.LogRecord, now: float
    ) -> None:
        if seen is None:
            seen = self._remember(key, _Repeat(since=now))
        seen.suppressed += 1
        seen.level, seen.message = record.levelno, record.getMessage()

    def _remember(self, key: tuple[str, str], repeat: _Repeat) -> _Repeat:
        if key not in self._repeats and len(self._repeats) >= _MAX_KEYS:
            by_age = sorted(self._repeats, key=lambda known: self._repeats[known].since)
            for known in by_age[: len(by_age) // 2]:
                del self._repeats[known]
        self._repeats[key] = repeat
        return repeat

    def take_pending(self) -> list[logging.LogRecord]:
        """One record per key with suppressed repeats not reported yet (and forget them): for exit."""
        with self._lock:
            pending = [(key, seen) for key, seen in self._repeats.items() if seen.suppressed]
            self._repeats.clear()
        now = self._clock()
        records = []
        for (name, _), seen in pending:
            record = logging.LogRecord(name, seen.level, __file__, 0, seen.message, None, None)
            extra = {"suppressed": seen.suppressed, "suppressed_over_s": round(now - seen.since, 1)}
            setattr(record, _CONTEXT, extra)
            records.append(record)
        return records


def configure(
    level: str = "INFO",
    fmt: Literal["json", "text"] = "json",
    *,
    repeat_interval_s: float = 30.0,
    stream: TextIO | None = None,
) -> None:
    """Route every logger (the Kafka clients' too) to one handler in the chosen format (idempotent).

    ``stream`` defaults to stdout; commands whose stdout is their output pass stderr. Repeats are
    folded every ``repeat_interval_s`` (0: not folded); what is still folded at exit is written then.
    """
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RepeatFolder(repeat_interval_s))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    atexit.unregister(flush_repeats)  # once, however often configure() is called
    atexit.register(flush_repeats)  # runs before logging's own exit hook (registered earlier)


def configure_command_logs(settings: LogSettings) -> None:
    """:func:`configure` for a command: its stdout is its output, so logs go to stderr."""
    configure(
        settings.log_level,
        settings.log_format,
        repeat_interval_s=settings.log_repeat_interval_s,
        stream=sys.stderr,
    )


def flush_repeats() -> None:
    """Write the repeats still folded (one line per key with their count); safe to call any time."""
    for handler in logging.getLogger().handlers:
        for folder in handler.filters:
            if isinstance(folder, RepeatFolder):
                for record in folder.take_pending():
                    _emit_unfiltered(handler, record)


def _emit_unfiltered(handler: logging.Handler, record: logging.LogRecord) -> None:
    """``handler.handle`` without the handler's filters (the folder would hold the summary back)."""
    handler.acquire()
    try:
        handler.emit(record)
    finally:
        handler.release()
