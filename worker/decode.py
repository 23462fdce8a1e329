"""Pure decoding: a Kafka record value -> a validated message, or a rejection with a reason code.

Never raises for any input: every failure becomes a :class:`Rejection` whose ``reason`` is a stable
code (see ``schemas.errors``) and whose ``errors`` name the field paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from schemas import MAX_MESSAGE_BYTES, MESSAGE_ADAPTER, NdjsonMessage, PredictionMessage
from schemas.errors import summarize
from worker import plain

#: A decoded message: the fast path's plain struct (``worker.plain.PredictionMessage``, typed format),
#: or a pydantic model when pydantic accepted what the fast path left to it (NDJSON format, lax input).
Message = plain.PredictionMessage | PredictionMessage | NdjsonMessage


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was not accepted. ``model_run_id`` / ``message_id`` when they could be read."""

    reason: str
    errors: list[str]
    model_run_id: str | None = None
    message_id: str | None = None


def decode(value: bytes | None, max_bytes: int = MAX_MESSAGE_BYTES) -> Message | Rejection:
    """Validate one record value against contract v1.

    The fast path (``worker.plain``) answers for the typed messages it is sure of; for everything
    else, rejections included, pydantic gives the verdict, the reason codes and the field paths.
    """
    if not value:
        return Rejection("empty_message", ["the record has no value"])
    if len(value) > max_bytes:
        return Rejection("message_too_large", [f"{len(value)} bytes exceeds the limit of {max_bytes} bytes"])
    fast = plain.decode_fast(value)
    if fast is not None:
        return fast
    try:
        return MESSAGE_ADAPTER.validate_json(value)
    except ValidationError as exc:
        return _rejection(value, exc)
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:  # defensive: a validator bug
        return Rejection("decoder_error", [f"{type(exc).__name__}: {exc}"])


def _rejection(value: bytes, exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    reason, described = summarize(errors)
    if errors[0]["type"] == "json_invalid":
        return Rejection(_json_failure(value, reason), described)
    if errors[0]["loc"] == () and not value.lstrip().startswith(b"{"):
        return Rejection("not_an_object", ["the message must be a JSON object"])
    run_id, message_id = _envelope_ids(value)
    return Rejection(reason, described, run_id, message_id)


def _json_failure(value: bytes, reason: str) -> str:
    """invalid_utf8, nesting_too_deep (``reason`` says so for the parser's own limit) or invalid_json."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    if reason == "nesting_too_deep":
        return reason
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        text = str(exc).lower()
        return "nesting_too_deep" if "recursion" in text or "depth limit" in text else "invalid_json"
    return "invalid_json"


def _envelope_ids(value: bytes) -> tuple[str | None, str | None]:
    """Best-effort model run and message ids of an invalid message, for DLQ headers and logs."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    run_id, message_id = parsed.get("model_run_id"), parsed.get("message_id")
    return (
        run_id[:128] if isinstance(run_id, str) else None,
        message_id[:256] if isinstance(message_id, str) else None,
    )
