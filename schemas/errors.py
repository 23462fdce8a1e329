"""Stable reason codes for rejected messages, derived from validation errors.

A reason code is part of the contract: it names the first thing wrong with a message, it is what
the DLQ header ``reason`` carries and what operators filter and alert on. Codes never change meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic_core import ErrorDetails

from schemas.ndjson import SDK_SNAKE_CASE

#: pydantic's built-in error types, mapped to our codes. Custom errors already carry their code.
_BUILTIN: dict[str, str] = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "union_tag_invalid": "unknown_prediction_type",
    "union_tag_not_found": "missing_field",
    "finite_number": "non_finite_number",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "too_short": "too_few_items",
    "too_long": "too_many_items",
    "string_too_short": "empty_string",
    "string_too_long": "string_too_long",
    "string_pattern_mismatch": "invalid_string",
    "uuid_parsing": "invalid_uuid",
    "uuid_type": "invalid_uuid",
    "uuid_version": "invalid_uuid",
    "literal_error": "invalid_value",
    "json_invalid": "invalid_json",
    "recursion_loop": "nesting_too_deep",
}
_WRONG_TYPE_SUFFIXES = ("_type", "_parsing", "_from_float", "_fraction")
#: Fields whose ``too_short`` means "not enough points".
_POINT_LISTS = frozenset({"line", "polygon"})

#: Union tags pydantic puts in error locations: of the message, of list items, of some fields.
_MESSAGE_TAGS = frozenset({"typed", "ndjson"})
_ITEM_TAGS = frozenset(
    {
        *("radio", "checklist", "text", "bbox", "point", "polyline", "polygon", "mask"),
        *("scalar_metric", "confusion_matrix_metric", "line", "classification", "confusion_matrix"),
        *("not_an_object", "unsupported_media"),
    }
)
_VALUE_TAGS = frozenset({"value", "thresholds"})
_FIELD_TAGS = {
    "counts": frozenset({"string", "list"}),
    "value": _VALUE_TAGS,
    "metricValue": _VALUE_TAGS,
    "mask": frozenset({"png", "url", "rle", "instanceURI"}),
    "answer": frozenset({"radio", "checklist", "text"}),
}

#: Every code a rejection can carry (before upload), for docs and tests.
REASON_CODES = frozenset(
    {
        *_BUILTIN.values(),
        "wrong_type",
        "empty_message",
        "decoder_error",
        "conversion_error",
        "invalid_utf8",
        "not_an_object",
        "message_too_large",
        "too_few_points",
        "one_of_required",
        "unknown_payload_format",
        "invalid_mask_source",
        "invalid_base64",
        "invalid_png",
        "mask_not_single_channel",
        "mask_too_large",
        "invalid_mask_size",
        "invalid_rle",
        "invalid_metric_thresholds",
        "reserved_metric_name",
        "duplicate_uuid",
        "too_many_predictions",
        "unsupported_media",
    }
)


def reason_of(error: ErrorDetails) -> str:
    """The reason code of one pydantic error."""
    kind = error["type"]
    if kind == "too_short" and error["loc"] and error["loc"][-1] in _POINT_LISTS:
        return "too_few_points"
    if kind == "json_invalid" and "recursion limit" in error["msg"]:
        return "nesting_too_deep"
    if kind in _BUILTIN:
        return _BUILTIN[kind]
    if kind in REASON_CODES:
        return kind
    if kind.endswith(_WRONG_TYPE_SUFFIXES):
        return "wrong_type"
    return "invalid_value"


def field_path(loc: tuple[int | str, ...]) -> str:
    """The dotted path of a pydantic location, without the union tags pydantic inserts.

    ``("typed", "predictions", 0, "bbox", "bbox", "width")`` -> ``predictions.0.bbox.width``.
    """
    kept: list[str] = []
    previous: int | str | None = None
    for part in loc:
        if not _is_tag(previous, part):
            kept.append(str(part))
        previous = part
    return ".".join(kept)


def _is_tag(previous: int | str | None, part: int | str) -> bool:
    if previous is None:
        return part in _MESSAGE_TAGS
    if isinstance(previous, int):
        return part in _ITEM_TAGS
    return part in _FIELD_TAGS.get(previous, ())


def describe(error: ErrorDetails) -> str:
    """``path: message`` for one error (``predictions.0.bbox.width: Input should be …``)."""
    loc = error["loc"]
    path, message = field_path(loc), error["msg"]
    key = loc[-1] if loc else None
    if error["type"] == "extra_forbidden" and key in SDK_SNAKE_CASE and loc[0] == "ndjson":
        message += (
            f" ('{key}' is taken only inside an answer's classifications, where Labelbox's SDK writes it, "
            f"and not together with '{SDK_SNAKE_CASE[str(key)]}')"
        )
    return f"{path}: {message}" if path else message


def summarize(errors: Sequence[ErrorDetails], limit: int = 10) -> tuple[str, list[str]]:
    """(reason code of the first error, up to ``limit`` descriptions)."""
    return reason_of(errors[0]), [describe(error) for error in errors[:limit]]
