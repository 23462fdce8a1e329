"""Derived uuids: RFC 4122 version-5 layout over SHA-1, stable across releases (Labelbox stores them)."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import orjson
import pytest

from schemas import MESSAGE_ADAPTER, PredictionMessage
from schemas.masks import mask_to_rle_counts
from tests.support.factories import every_type, message, png_b64
from worker.convert import _UUID_NAMESPACE, NdjsonLine, convert, derive_uuid
from worker.decode import Rejection, decode


def test_derived_uuid_is_a_version_5_uuid_of_the_documented_input() -> None:
    for index in range(300):
        content = b'{"dataRow":{"globalKey":"k"},"name":"box"}' * (index % 7)
        expected = uuid.UUID(
            bytes=hashlib.sha1(_UUID_NAMESPACE + f"run\x1f{index}\x1f".encode() + content).digest()[:16],
            version=5,
        )
        derived = derive_uuid("run", index, content)
        assert derived == str(expected)
        assert uuid.UUID(derived).version == 5


def test_a_known_value_never_changes() -> None:
    # Changing this value re-keys every prediction already imported: redelivered messages would
    # duplicate instead of replacing. Only change it with a migration plan.
    assert derive_uuid("run", 0, b"{}") == "d3e064c2-02db-58e9-a3b0-e30046daee49"


def test_a_line_is_immutable_hashable_and_positional() -> None:
    fields = ("u", "row", None, b'{"a":1}', "bbox", "id")
    line = NdjsonLine(*fields)
    assert line == NdjsonLine(**dict(zip(NdjsonLine.__struct_fields__, fields, strict=True)))
    assert line != NdjsonLine(*fields[:-1], "globalKey")
    assert hash(line) == hash(NdjsonLine(*fields))
    assert [getattr(line, name) for name in NdjsonLine.__struct_fields__] == list(fields)
    assert NdjsonLine.__struct_fields__ == ("uuid", "data_row", "feature", "data", "kind", "data_row_kind")
    defaults = NdjsonLine("u", "r", "f", b"{}")
    assert (defaults.kind, defaults.data_row_kind) == ("unknown", "globalKey")
    with pytest.raises(AttributeError):
        line.uuid = "other"  # type: ignore[misc]


def test_the_typed_loop_derives_the_documented_uuid() -> None:
    # convert() hashes with a per-message SHA-1 state copied per line: the same uuid as derive_uuid
    by_schema_id = {"type": "point", "schema_id": "s", "point": {"x": 1, "y": 2}}
    value = orjson.dumps(message(*every_type(), by_schema_id))
    decoded = decode(value)
    assert not isinstance(decoded, Rejection)
    lines = convert(decoded)
    assert len(lines) >= 9
    for index, line in enumerate(lines):
        body = line.body
        assert body.pop("uuid") == line.uuid
        if line.kind == "mask" and "png" in body["mask"]:
            continue  # derived from the pixels: tests/unit/test_masks.py
        assert line.uuid == derive_uuid(decoded.model_run_id, index, orjson.dumps(body))


def test_a_known_mask_uuid_never_changes() -> None:
    # A mask line's derived uuid comes from its pixels (shape, packed bits), not its PNG bytes, since
    # issue 15 (which changed it once: a mask message redelivered across that upgrade was imported again
    # under the new uuid). The same rule as above: only change it with a migration plan.
    inside = np.zeros((6, 10), dtype=np.uint8)
    inside[1:4, 2:9] = 1
    sources = [
        {"png": png_b64(inside)},
        {"png": png_b64(inside * 255)},
        {"rle": {"size": [6, 10], "counts": mask_to_rle_counts(inside.astype(bool))}},
    ]
    for source in sources:
        prediction = {"type": "mask", "name": "mk", "confidence": 0.5, "mask": source}
        parsed = MESSAGE_ADAPTER.validate_python(message(prediction))
        assert isinstance(parsed, PredictionMessage)
        assert convert(parsed)[0].uuid == "933659c1-3dfe-51ce-9297-5888b95e0bc0"
        fast = decode(orjson.dumps(message(prediction)))  # the worker's own path (worker.plain first)
        assert not isinstance(fast, Rejection)
        assert convert(fast)[0].uuid == "933659c1-3dfe-51ce-9297-5888b95e0bc0"


def test_uuids_past_the_precomputed_positions_are_derived_the_same() -> None:
    points = [{"type": "point", "name": f"p{i}", "point": {"x": i, "y": 1}} for i in range(1030)]
    decoded = decode(orjson.dumps(message(*points)))
    assert not isinstance(decoded, Rejection)
    lines = convert(decoded)
    for index in (0, 1023, 1024, 1029):
        body = lines[index].body
        del body["uuid"]
        assert lines[index].uuid == derive_uuid(decoded.model_run_id, index, orjson.dumps(body))
