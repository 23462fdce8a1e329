"""``worker.decode.decode``: one record value -> a message, or a rejection with a reason code, the field
paths and the ids that could be read. Only the public contract (which class carries an accepted
message, the fast path's or pydantic's, is not part of it); every rule of the schema itself is in
``test_schemas.py``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas import MAX_MESSAGE_BYTES, REASON_CODES
from tests.support.factories import bbox, message
from worker.decode import Message, Rejection, decode


def accepted(value: bytes, **kwargs: Any) -> Message:
    outcome = decode(value, **kwargs)
    assert not isinstance(outcome, Rejection), f"rejected: {outcome!r}"
    return outcome


def rejected(value: bytes | None, **kwargs: Any) -> Rejection:
    outcome = decode(value, **kwargs)
    assert isinstance(outcome, Rejection), f"accepted: {outcome!r}"
    assert outcome.reason in REASON_CODES, outcome.reason
    assert outcome.errors, "a rejection always says why"
    return outcome


def test_a_valid_typed_message_is_accepted() -> None:
    outcome = accepted(orjson.dumps(message(bbox(), bbox(name="other"), message_id="m-1")))
    assert (outcome.model_run_id, outcome.message_id, outcome.payload_key) == ("mr-1", "m-1", "predictions")
    assert [p.name for p in outcome.predictions] == ["box", "other"]  # type: ignore[union-attr]


def test_a_valid_ndjson_message_is_accepted() -> None:
    line = {
        "uuid": "00000000-0000-4000-8000-000000000001",
        "dataRow": {"globalKey": "img-1.jpg"},
        "name": "box",
        "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
    }
    outcome = accepted(orjson.dumps({"model_run_id": "mr-1", "ndjson": [line]}))
    assert (outcome.model_run_id, outcome.message_id, outcome.payload_key) == ("mr-1", None, "ndjson")


@pytest.mark.parametrize("value", [None, b""])
def test_no_value_is_an_empty_message(value: bytes | None) -> None:
    assert rejected(value).reason == "empty_message"


def test_the_size_limit_is_checked_before_parsing_and_named_in_the_error() -> None:
    value = orjson.dumps(message(bbox()))
    accepted(value, max_bytes=len(value))  # the limit itself is allowed
    too_large = rejected(value, max_bytes=len(value) - 1)
    assert too_large.reason == "message_too_large"
    assert too_large.errors == [f"{len(value)} bytes exceeds the limit of {len(value) - 1} bytes"]
    assert (too_large.model_run_id, too_large.message_id) == (None, None), "not parsed, so no ids"
    garbage = b"\xff" * 10
    assert rejected(garbage, max_bytes=5).reason == "message_too_large", "before the UTF-8 check"


def test_the_default_limit_is_the_contracts() -> None:
    assert rejected(b" " * (MAX_MESSAGE_BYTES + 1)).reason == "message_too_large"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"model_run_id": "mr-1"', "invalid_json"),
        (b"{'single': 'quotes'}", "invalid_json"),
        (b"[" * 1000 + b"]" * 1000, "nesting_too_deep"),
        (b"[1]", "not_an_object"),
        (b"42", "not_an_object"),
        (b"  null", "not_an_object"),
    ],
)
def test_bytes_that_are_no_json_object_have_their_own_reason_and_no_ids(value: bytes, reason: str) -> None:
    outcome = rejected(value)
    assert outcome.reason == reason
    assert (outcome.model_run_id, outcome.message_id) == (None, None)


def test_a_schema_violation_names_the_field_path_and_keeps_the_ids() -> None:
    outcome = rejected(orjson.dumps(message(bbox(), bbox(confidence=2), message_id="producer-7")))
    assert outcome.reason == "out_of_range"
    assert outcome.errors[0].startswith("predictions.1.confidence: ")
    assert (outcome.model_run_id, outcome.message_id) == ("mr-1", "producer-7")


def test_ids_that_are_not_strings_are_not_reported() -> None:
    outcome = rejected(orjson.dumps({"model_run_id": 5, "message_id": ["x"], "predictions": [bbox()]}))
    assert (outcome.model_run_id, outcome.message_id) == (None, None)


def test_ids_of_an_invalid_message_are_cut_to_what_a_header_may_carry() -> None:
    long_run, long_id = "r" * 300, "m" * 400
    outcome = rejected(orjson.dumps(message(bbox(), model_run_id=long_run, message_id=long_id)))
    assert outcome.model_run_id == long_run[:128]
    assert outcome.message_id == long_id[:256]


def test_errors_are_at_most_ten() -> None:
    predictions = [bbox(confidence=2) for _ in range(25)]
    outcome = rejected(orjson.dumps(message(*predictions)))
    assert len(outcome.errors) == 10
    assert [error.split(":")[0] for error in outcome.errors] == [
        f"predictions.{i}.confidence" for i in range(10)
    ]


@pytest.mark.parametrize(
    "value",
    [b"{", b"}", b"\x00", b'{"predictions": null}', b'{"model_run_id": {}}', b"\xef\xbb\xbf{}", b"1e999"],
)
def test_decode_never_raises(value: bytes) -> None:
    assert isinstance(decode(value), Rejection)
