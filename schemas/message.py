"""The Kafka record: one model's predictions for one data row in one model run (contract v1)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal, Self

import orjson
from pydantic import Discriminator, Field, Tag, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError

from schemas._base import DataRowRef, Name, Strict
from schemas.ndjson import NdInputLine
from schemas.predictions import METRIC_TYPES, Prediction

#: Labelbox imports at most this many predictions per data row per feature name.
MAX_PER_FEATURE = 5000
#: Contract version carried by this package.
CONTRACT_VERSION = 1


def _check_unique_uuids(uuids: Iterable[object]) -> None:
    seen: set[object] = set()
    for uuid in uuids:
        if uuid is None:
            continue
        if uuid in seen:
            raise PydanticCustomError("duplicate_uuid", "uuid {uuid} is used twice", {"uuid": str(uuid)})
        seen.add(uuid)


def _check_per_feature(keys: Iterable[tuple[str, str]]) -> None:
    for (_, feature), count in Counter(keys).items():
        if count > MAX_PER_FEATURE:
            raise PydanticCustomError(
                "too_many_predictions",
                "{count} predictions of feature '{feature}' on one data row; Labelbox takes at most {limit}",
                {"count": count, "feature": feature, "limit": MAX_PER_FEATURE},
            )


#: Where a message's predictions are (``predictions``: typed format, ``ndjson``: NDJSON format).
PayloadKey = Literal["predictions", "ndjson"]


class _MessageBase(Strict):
    model_run_id: Annotated[Name, Field(max_length=128)]
    message_id: Name | None = None

    def to_kafka(self) -> tuple[bytes, bytes]:
        """The Kafka record for this message: (key, value); the key is the model run id."""
        value = self.model_dump(mode="json", exclude_none=True)
        return self.model_run_id.encode(), orjson.dumps(value)


class PredictionMessage(_MessageBase):
    """Typed format: predictions built from this package's models."""

    #: The key the message's predictions are under: what an error path starts with.
    payload_key: ClassVar[PayloadKey] = "predictions"

    data_row: DataRowRef
    predictions: list[Prediction] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _labelbox_limits(self) -> Self:
        _check_unique_uuids(p.uuid for p in self.predictions)
        _check_per_feature(("", p.feature_key()) for p in self.predictions if not isinstance(p, METRIC_TYPES))
        return self


class NdjsonMessage(_MessageBase):
    """NDJSON format: Labelbox NDJSON lines, each with its own ``dataRow``."""

    payload_key: ClassVar[PayloadKey] = "ndjson"

    ndjson: list[NdInputLine] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _labelbox_limits(self) -> Self:
        _check_unique_uuids(getattr(line, "uuid", None) for line in self.ndjson)
        _check_per_feature(
            (repr(sorted(line.dataRow.model_dump(exclude_none=True).items())), _nd_feature(line))
            for line in self.ndjson
            if hasattr(line, "schemaId") and hasattr(line, "dataRow")
        )
        return self


def _nd_feature(line: Any) -> str:
    return str(line.name) if line.name is not None else f"schemaId:{line.schemaId}"


def _payload_format(value: Any) -> str | None:
    if isinstance(value, dict):
        has_typed, has_ndjson = "predictions" in value, "ndjson" in value
        if has_typed != has_ndjson:
            return "typed" if has_typed else "ndjson"
        return None
    return _FORMATS.get(type(value))


_FORMATS: dict[type[Any], str] = {PredictionMessage: "typed", NdjsonMessage: "ndjson"}


#: A prediction message in either payload format.
Message = Annotated[
    Annotated[PredictionMessage, Tag("typed")] | Annotated[NdjsonMessage, Tag("ndjson")],
    Discriminator(
        _payload_format,
        custom_error_type="unknown_payload_format",
        custom_error_message="a message needs exactly one of 'predictions' (typed) or 'ndjson' (NDJSON)",
    ),
]
MESSAGE_ADAPTER: TypeAdapter[PredictionMessage | NdjsonMessage] = TypeAdapter(Message)
