"""worker.framing: Confluent Schema Registry frames, as confluent-kafka's own serializers write them.

Pure: no broker, no registry. The frames are built with confluent-kafka's ``SchemaId`` (what its
``prefix_schema_id_serializer`` and ``header_schema_id_serializer`` write), not by hand.
"""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from confluent_kafka.schema_registry.common.serde import SchemaId

from tests.support.factories import message
from worker.cli_convert import convert_stream
from worker.cli_modelrun import check_lines
from worker.decode import Rejection
from worker.framing import VALUE_SCHEMA_ID_HEADER, Framed, join_framed_lines, schema_id_header, unwrap
from worker.ontology import Ontology

JSON = orjson.dumps(message())
DATA = Path(__file__).parents[1] / "data"
GUID = "6f1c2a4e-9b3d-4c5e-8f70-112233445566"


def _prefix(schema_id: int) -> bytes:
    return bytes(SchemaId("JSON", schema_id=schema_id).id_to_bytes())


def _guid_frame() -> bytes:
    return bytes(SchemaId("JSON", guid=GUID).guid_to_bytes())


@pytest.mark.parametrize("schema_id", [1, 10, 13, 2**31 + 5, 2**32 - 1])
def test_a_magic_0_prefix_is_stripped_and_its_id_kept(schema_id: int) -> None:
    assert unwrap(_prefix(schema_id) + JSON) == Framed(JSON, str(schema_id))


def test_a_magic_1_guid_prefix_is_read_like_confluent_kafka_reads_it() -> None:
    assert unwrap(_guid_frame() + JSON) == Framed(JSON, GUID)


def test_the_header_carries_the_guid_and_the_value_is_the_json_alone() -> None:
    headers = [("other", b"x"), (VALUE_SCHEMA_ID_HEADER, _guid_frame())]
    assert unwrap(JSON, headers) == Framed(JSON, GUID)
    assert unwrap(JSON, [(VALUE_SCHEMA_ID_HEADER, _prefix(7))]) == Framed(JSON, "7")


@pytest.mark.parametrize("value", [JSON, b"  " + JSON, b"\n" + JSON, b"not json", b"\xff\xfe", b"", None])
def test_an_unframed_value_passes_unchanged(value: bytes | None) -> None:
    assert unwrap(value) == Framed(value, None)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"\x00\x00\x00", "truncated Confluent prefix: magic byte 0 needs 5 bytes, the value has 3"),
        (b"\x01" + bytes(10), "truncated Confluent prefix: magic byte 1 needs 17 bytes, the value has 11"),
        (b"\x02\x00\x00\x00\x07" + JSON, "the value starts with byte 0x02: neither JSON nor a Confluent"),
    ],
)
def test_a_truncated_or_unknown_prefix_is_invalid_json_with_what_was_wrong(value: bytes, error: str) -> None:
    rejected = unwrap(value)
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "invalid_json"
    assert rejected.errors[0].startswith(error)


@pytest.mark.parametrize("header", [b"", b"\x01" + bytes(15), b"\x01" + bytes(17), b"\x05" + bytes(16)])
def test_a_malformed_header_is_invalid_json(header: bytes) -> None:
    rejected = unwrap(JSON, [(VALUE_SCHEMA_ID_HEADER, header)])
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "invalid_json"
    assert rejected.errors[0].startswith(f"header {VALUE_SCHEMA_ID_HEADER} ({len(header)} bytes)")


def test_a_header_and_a_prefix_at_once_is_refused_not_misread() -> None:
    rejected = unwrap(_prefix(3) + JSON, [(VALUE_SCHEMA_ID_HEADER, _guid_frame())])
    assert isinstance(rejected, Rejection)
    assert "must then be the JSON alone" in rejected.errors[0]


def test_the_empty_payload_of_a_frame_is_left_to_the_decoder() -> None:
    assert unwrap(_prefix(4)) == Framed(b"", "4")


def test_a_newline_inside_a_prefix_does_not_split_the_record() -> None:
    records = [_prefix(10) + JSON, JSON, _prefix(13 * 256 + 10) + JSON, _guid_frame() + JSON]
    dumped = b"".join(record + b"\n" for record in records)
    assert [r.rstrip(b"\n") for r in join_framed_lines(io.BytesIO(dumped))] == records


def test_convert_reads_framed_lines_and_names_the_schema_of_a_rejection() -> None:
    bad = orjson.dumps(message(model_run_id=""))
    lines = [_prefix(10) + JSON, JSON, _guid_frame() + JSON, _prefix(42) + bad, b"\x00\x00"]
    out, err = io.BytesIO(), io.BytesIO()
    assert convert_stream(io.BytesIO(b"\n".join(lines) + b"\n"), out, err) == 2
    ndjson = out.getvalue().splitlines()
    assert len(ndjson) == 3
    assert len(set(ndjson)) == 1, "framed or not, the same NDJSON"
    reports = [orjson.loads(line) for line in err.getvalue().splitlines()]
    assert [(r["line"], r["reason"], r.get("schema_id")) for r in reports] == [
        (4, "empty_string", "42"),
        (5, "invalid_json", None),
    ]


def test_a_dead_letter_gets_its_schema_id_header_back_for_replay() -> None:
    assert schema_id_header(GUID, JSON) == [(VALUE_SCHEMA_ID_HEADER, _guid_frame())]
    assert schema_id_header("7", JSON) == [(VALUE_SCHEMA_ID_HEADER, _prefix(7))]
    assert schema_id_header("7", _prefix(7) + JSON) == [], "a prefixed value carries its own"
    assert schema_id_header("not-an-id", JSON) == []
    for header in (schema_id_header(GUID, JSON), schema_id_header("7", JSON)):
        assert isinstance(unwrap(JSON, header), Framed)


def test_check_reads_framed_lines_too() -> None:
    ontology = Ontology.from_normalized(orjson.loads((DATA / "ontology_every_type.json").read_bytes()))
    lines = [_prefix(10) + JSON + b"\n", _guid_frame() + JSON + b"\n", b"\x00\x00\n"]
    reports = list(check_lines(ontology, lines))
    assert [(r["line"], r["status"]) for r in reports] == [(1, "ok"), (2, "ok"), (3, "rejected")]
    assert reports[2]["reason"] == "invalid_json"
