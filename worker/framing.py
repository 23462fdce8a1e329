"""Pure: Confluent Schema Registry framing of a record value -> (JSON payload, schema id), or a rejection.

Producers that serialize with confluent-kafka's ``JSONSerializer`` mark each value with the id of the
schema it was written with, in one of two places (confluent-kafka's ``dual_schema_id_deserializer``
reads both, header first):

- a prefix of the value: magic byte 0 and a 4-byte big-endian schema id (the classic wire format), or
  magic byte 1 and a 16-byte schema GUID;
- a ``__value_schema_id`` record header (``header_schema_id_serializer``, confluent-kafka 2.16): magic
  byte 1 and a 16-byte GUID (or magic byte 0 and a 4-byte id); the value is then the JSON alone.

A value that starts with ``{``, whitespace or any other byte a JSON text may start with is not framed
and passes unchanged. No I/O, no clock, no logging; never raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from worker.decode import Rejection

#: The record header confluent-kafka's header_schema_id_serializer writes for a value's schema.
VALUE_SCHEMA_ID_HEADER = "__value_schema_id"
MAGIC_ID = 0  # followed by a 4-byte big-endian schema id
MAGIC_GUID = 1  # followed by a 16-byte schema GUID
_ID_BYTES = {MAGIC_ID: 4, MAGIC_GUID: 16}
#: Bytes a JSON text may begin with besides the value itself: whitespace (RFC 8259).
_JSON_WHITESPACE = frozenset(b" \t\n\r")


@dataclass(frozen=True, slots=True)
class Framed:
    """The JSON payload of a record value, and the schema id it was framed with (None: not framed).

    ``schema_id`` is the decimal id (``"42"``) of a magic-0 frame, or the GUID (``"1f0e…"``, the
    canonical 36-character form) of a magic-1 frame.
    """

    payload: bytes | None
    schema_id: str | None = None


def unwrap(value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> Framed | Rejection:
    """The JSON payload of ``value`` and its schema id, from the header or the prefix.

    A ``__value_schema_id`` header wins (the value is then the payload as is, as confluent-kafka
    reads it). A truncated or unknown frame is rejected as ``invalid_json`` with what was wrong.
    """
    header = _header(headers)
    if header is not None:
        return _from_header(value, header)
    if not value or value[0] not in _ID_BYTES:
        return _unframed(value)
    schema_id = _schema_id(value)
    if schema_id is None:
        need = 1 + _ID_BYTES[value[0]]
        return _invalid(
            f"truncated Confluent prefix: magic byte {value[0]} needs {need} bytes, "
            f"the value has {len(value)}"
        )
    return Framed(value[1 + _ID_BYTES[value[0]] :], schema_id)


def _unframed(value: bytes | None) -> Framed | Rejection:
    """A value without a known magic byte: JSON (or garbage for the decoder), unless it begins with a
    control byte that no JSON text begins with, which is taken for an unknown frame."""
    if value and value[0] < 0x20 and value[0] not in _JSON_WHITESPACE:
        return _invalid(
            f"the value starts with byte 0x{value[0]:02x}: neither JSON nor a Confluent schema id "
            f"prefix (magic byte {MAGIC_ID} or {MAGIC_GUID})"
        )
    return Framed(value)


def _header(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    for name, header_value in headers:
        if name == VALUE_SCHEMA_ID_HEADER:
            return header_value or b""  # a header without a value is no schema id either
    return None


def _from_header(value: bytes | None, header: bytes) -> Framed | Rejection:
    schema_id = _schema_id(header) if header and header[0] in _ID_BYTES else None
    if schema_id is None or len(header) != 1 + _ID_BYTES[header[0]]:
        return _invalid(
            f"header {VALUE_SCHEMA_ID_HEADER} ({len(header)} bytes) is not a schema id: expected magic "
            f"byte {MAGIC_GUID} and a 16-byte GUID, or magic byte {MAGIC_ID} and a 4-byte id"
        )
    if value and value[0] in _ID_BYTES:
        return _invalid(
            f"the value starts with magic byte {value[0]} although header {VALUE_SCHEMA_ID_HEADER} "
            "carries the schema id: the value must then be the JSON alone"
        )
    return Framed(value, schema_id)


def _schema_id(frame: bytes) -> str | None:
    """The schema id of a frame starting with a known magic byte; None if it is too short."""
    size = _ID_BYTES[frame[0]]
    if len(frame) < 1 + size:
        return None
    body = frame[1 : 1 + size]
    return str(int.from_bytes(body, "big")) if frame[0] == MAGIC_ID else str(uuid.UUID(bytes=body))


def _invalid(error: str) -> Rejection:
    return Rejection("invalid_json", [error])


def join_framed_lines(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Records from a file of one record per line, such as ``kcat -e -f '%s\\n'`` writes.

    A framed record's binary prefix may itself hold a newline byte (schema id 10, say): a line that
    ends inside a prefix is joined with the next one. Each record keeps its line ending.
    """
    pending = b""
    for line in lines:
        pending += line
        if pending[:1] and pending[0] in _ID_BYTES and len(pending) <= 1 + _ID_BYTES[pending[0]]:
            continue  # the newline is part of the schema id: the record goes on
        yield pending
        pending = b""
    if pending:
        yield pending


def schema_id_header(schema_id: str, value: bytes | None) -> list[tuple[str, bytes]]:
    """The ``__value_schema_id`` header that carried ``schema_id`` for this value, to replay a dead
    letter as it came: none when the value carries its own prefix (or the id is not one of ours)."""
    if value and value[0] in _ID_BYTES:
        return []
    if schema_id.isdigit() and int(schema_id) < 2**32:
        return [(VALUE_SCHEMA_ID_HEADER, bytes([MAGIC_ID]) + int(schema_id).to_bytes(4, "big"))]
    try:
        return [(VALUE_SCHEMA_ID_HEADER, bytes([MAGIC_GUID]) + uuid.UUID(schema_id).bytes)]
    except ValueError:
        return []
