"""``worker.kafka_clients``: what an undecodable batch means, and how much one fetch takes; no broker."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from worker.kafka_clients import CorruptBatches, UndecodableBatch, fetch_max_bytes
from worker.settings import Settings

TP = TopicPartition("t", 3)


def test_a_missing_codec_stops_at_once_with_its_place_and_action() -> None:
    with pytest.raises(UndecodableBatch) as stopped:
        CorruptBatches().failed((TP, 42), UnsupportedCodecError("no zstd"))
    assert (stopped.value.topic, stopped.value.partition, stopped.value.offset) == ("t", 3, 42)
    assert "pip install" in stopped.value.action


def test_a_corrupt_batch_is_fetched_again_and_stops_only_if_it_persists() -> None:
    corrupt = CorruptBatches(max_fetches=3)
    corrupt.failed((TP, 42), CorruptRecordException("crc"))
    corrupt.failed((TP, 42), CorruptRecordException("crc"))
    with pytest.raises(UndecodableBatch):
        corrupt.failed((TP, 42), CorruptRecordException("crc"))
    passing = CorruptBatches(max_fetches=2)
    passing.failed((TP, 42), CorruptRecordException("crc"))
    passing.fetched([TP])  # records of the partition came through: it passed
    passing.failed((TP, 42), CorruptRecordException("crc"))


def test_one_fetch_takes_a_quarter_of_the_buffer_within_kafkas_usual_bounds() -> None:
    def fetch(buffer_max_bytes: int) -> int:
        settings = Settings(
            kafka_bootstrap_servers="127.0.0.1:9092", labelbox_api_key="k", buffer_max_bytes=buffer_max_bytes
        )
        return fetch_max_bytes(settings)

    assert fetch(64 * 1024 * 1024) == 16 * 1024 * 1024
    assert fetch(2 * 1024 * 1024) == 1024 * 1024
    assert fetch(1024 * 1024 * 1024) == 50 * 1024 * 1024
