"""The contract as JSON Schema, for producers in other languages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from schemas.message import CONTRACT_VERSION, MESSAGE_ADAPTER

#: The exported schema, kept in the repository; a test fails when it is stale.
SCHEMA_PATH = Path(__file__).with_name("message.schema.json")


def contract_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a v1 prediction message."""
    schema = MESSAGE_ADAPTER.json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:labelbox-prediction-worker:message:v{CONTRACT_VERSION}",
        "title": "Prediction message (contract v1)",
        **schema,
    }


def render() -> bytes:
    """The schema file's exact bytes (sorted keys, indented, trailing newline)."""
    return orjson.dumps(contract_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def export(path: Path = SCHEMA_PATH) -> Path:
    """Write the schema file; returns its path."""
    path.write_bytes(render())
    return path
