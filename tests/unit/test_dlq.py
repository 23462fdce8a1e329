"""``worker.dlq``: the headers of a dead letter, the replay count, and the writer's answer to a value
the broker refuses as too large, over a fake producer (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from worker.dlq import (
    H_ERROR,
    H_IMPORT,
    H_MESSAGE_ID,
    H_MODEL_RUN,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_REPLAYS,
    H_SCHEMA_ID,
    H_TOPIC,
    H_TRUNCATED,
    DeadLetter,
    DeadLetterWriter,
    replay_count,
)


def letter(**fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "topic": "predictions",
        "partition": 2,
        "offset": 41,
        "key": b"k",
        "value": b'{"x": 1}',
        "reason": "invalid_json",
        "errors": ("first", "second"),
        **fields,
    }
    return DeadLetter(**values)


def test_the_headers_say_where_the_record_came_from_and_why_in_a_fixed_order() -> None:
    headers = letter().headers()
    assert headers == [
        (H_TOPIC, b"predictions"),
        (H_PARTITION, b"2"),
        (H_OFFSET, b"41"),
        (H_REASON, b"invalid_json"),
        (H_ERROR, b"first; second"),
    ], "optional headers only when known"


def test_optional_headers_are_added_when_known() -> None:
    full = letter(model_run_id="mr-1", message_id="m-1", import_name="imp", replays=2, schema_id="9")
    headers = dict(full.headers())
    assert headers[H_MODEL_RUN] == b"mr-1"
    assert headers[H_MESSAGE_ID] == b"m-1"
    assert headers[H_IMPORT] == b"imp"
    assert headers[H_REPLAYS] == b"2"
    assert headers[H_SCHEMA_ID] == b"9"
    assert H_REPLAYS not in dict(letter(replays=0).headers()), "never replayed: no count"


def test_the_error_header_is_capped_and_utf8() -> None:
    long = letter(errors=("é" * 5000,))
    error = dict(long.headers())[H_ERROR]
    assert error.decode() == "é" * 4000


@pytest.mark.parametrize(
    ("headers", "count"),
    [
        ([], 0),
        ([(H_REPLAYS, b"3")], 3),
        ([("other", b"9"), (H_REPLAYS, b"1")], 1),
        ([(H_REPLAYS, b"x")], 0),
        ([(H_REPLAYS, b"-4")], 0),
    ],
)
def test_replay_count_reads_the_header_or_zero(headers: list[tuple[str, bytes]], count: int) -> None:
    assert replay_count(headers) == count


def test_replay_count_round_trips_through_the_headers() -> None:
    assert replay_count(letter(replays=5).headers()) == 5


class FakeProducer:
    """Refuses any value longer than ``max_value`` bytes as too large (None: accepts all)."""

    def __init__(self, max_value: int | None = None) -> None:
        self.max_value = max_value
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self, topic: str, *, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.max_value is not None and len(value or b"") > self.max_value:
            raise MessageSizeTooLargeError()
        self.sent.append((topic, key, value, headers))


async def test_a_record_is_written_to_the_dlq_topic_as_it_came() -> None:
    producer = FakeProducer()
    await DeadLetterWriter(producer, "predictions.dlq").write(letter())  # type: ignore[arg-type]
    [(topic, key, value, headers)] = producer.sent
    assert (topic, key, value) == ("predictions.dlq", b"k", b'{"x": 1}')
    assert headers == letter().headers()


async def test_a_value_too_large_is_kept_to_64_kib_with_its_size_in_a_header() -> None:
    producer = FakeProducer(max_value=100 * 1024)
    big = b"x" * (200 * 1024)
    await DeadLetterWriter(producer, "dlq").write(letter(value=big))  # type: ignore[arg-type]
    [(_, _, value, headers)] = producer.sent
    assert value == big[: 64 * 1024]
    assert headers[-1] == (H_TRUNCATED, str(len(big)).encode())
    assert headers[:-1] == letter(value=big).headers()


async def test_a_dlq_refusing_even_64_kib_gets_the_headers_alone() -> None:
    producer = FakeProducer(max_value=1000)
    await DeadLetterWriter(producer, "dlq").write(letter(value=b"y" * 70_000))  # type: ignore[arg-type]
    [(_, _, value, headers)] = producer.sent
    assert value == b""
    assert (H_TRUNCATED, b"70000") in headers


async def test_a_record_refused_even_without_its_value_raises() -> None:
    class RefusesAll(FakeProducer):
        async def send_and_wait(self, topic: str, **_: Any) -> None:
            raise MessageSizeTooLargeError()

    with pytest.raises(MessageSizeTooLargeError):
        await DeadLetterWriter(RefusesAll(), "dlq").write(letter())  # type: ignore[arg-type]
