"""``worker.envelope``: the converter stage (``process_chunk``) fills each envelope in, and
``dead_letter_of`` turns one into its DLQ record. Pure: envelopes are built in memory."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import TopicPartition

import worker.envelope
from tests.support.factories import bbox, message
from worker.decode import Rejection
from worker.dlq import H_REPLAYS, H_SCHEMA_ID
from worker.envelope import Envelope, dead_letter_of, process_chunk
from worker.offsets import PartitionOffsets

TP = TopicPartition("predictions", 3)
GOOD = orjson.dumps(message(bbox(), bbox(name="other"), message_id="m-1"))
BAD = orjson.dumps(message(bbox(confidence=2), message_id="m-2"))


def envelope(value: bytes | None, offset: int = 0, **fields: object) -> Envelope:
    size = len(value or b"")
    return Envelope(TP, offset, b"key", value, size, PartitionOffsets(0), **fields)  # type: ignore[arg-type]


def test_an_accepted_record_gets_its_lines_ids_and_payload_key() -> None:
    [(filled, rejection)] = process_chunk([envelope(GOOD)], 1 << 20)
    assert rejection is None
    assert len(filled.lines) == 2
    assert {line.feature for line in filled.lines} == {"box", "other"}
    assert (filled.model_run_id, filled.message_id, filled.payload_key) == ("mr-1", "m-1", "predictions")
    assert filled.schema_id is None


def test_a_rejected_record_keeps_the_ids_that_could_be_read_and_no_lines() -> None:
    [(filled, rejection)] = process_chunk([envelope(BAD)], 1 << 20)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "out_of_range"
    assert (filled.model_run_id, filled.message_id) == ("mr-1", "m-2")
    assert filled.lines == []


def test_results_keep_the_order_of_the_chunk_and_check_sees_only_accepted_records() -> None:
    chunk = [envelope(GOOD, 0), envelope(BAD, 1), envelope(None, 2), envelope(GOOD, 3)]
    checked: list[int] = []
    results = process_chunk(chunk, 1 << 20, check=lambda e: checked.append(e.offset))
    assert [e.offset for e, _ in results] == [0, 1, 2, 3]
    assert [r.reason if r else None for _, r in results] == [None, "out_of_range", "empty_message", None]
    assert checked == [0, 3]


def test_the_size_limit_is_the_one_given() -> None:
    [(_, rejection)] = process_chunk([envelope(GOOD)], len(GOOD) - 1)
    assert rejection is not None
    assert rejection.reason == "message_too_large"


def test_a_confluent_prefix_is_stripped_and_its_schema_id_kept() -> None:
    framed = b"\x00" + (42).to_bytes(4, "big") + GOOD
    [(filled, rejection)] = process_chunk([envelope(framed)], 1 << 20)
    assert rejection is None
    assert filled.schema_id == "42"
    assert len(filled.lines) == 2


def test_a_conversion_that_raises_is_a_conversion_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: object) -> list[object]:
        raise ValueError("converter bug")

    monkeypatch.setattr(worker.envelope, "convert", broken)
    checked: list[Envelope] = []
    [(filled, rejection)] = process_chunk([envelope(GOOD)], 1 << 20, check=checked.append)
    assert rejection == Rejection("conversion_error", ["ValueError: converter bug"])
    assert filled.lines == []
    assert checked == [], "a record that did not convert is not checked"


def test_a_dead_letter_carries_the_record_and_why() -> None:
    source = envelope(GOOD, 17, replays=2, schema_id="7", model_run_id="mr-1", message_id="m-1")
    letter = dead_letter_of(source, "labelbox_rejected", ["u1: bad", "u2: worse"], "import-x")
    assert (letter.topic, letter.partition, letter.offset) == ("predictions", 3, 17)
    assert (letter.key, letter.value) == (b"key", GOOD)
    assert (letter.reason, letter.errors, letter.import_name) == (
        "labelbox_rejected",
        ("u1: bad", "u2: worse"),
        "import-x",
    )
    assert (letter.model_run_id, letter.message_id) == ("mr-1", "m-1")
    headers = dict(letter.headers())
    assert headers[H_REPLAYS] == b"2"
    assert headers[H_SCHEMA_ID] == b"7"
