"""Shared building blocks of the contract: strict base model, constrained strings, references."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

#: The largest message the worker takes by default (``MESSAGE_MAX_BYTES``), and so the default bound on
#: what holds one: a batch's bytes, a DLQ record, a mask's PNG text.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Identifiers and names: 1..1024 characters, no control characters (null bytes included).
Name = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$")]
#: Free text (a text answer): newlines allowed, null bytes and other C0 controls but tab/newline not.
FreeText = Annotated[str, StringConstraints(max_length=65536, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$")]
#: A confidence score; absent means 1 to Labelbox.
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    """Base of every contract model: unknown fields, NaN/Infinity and over-long strings are errors."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        str_max_length=1024,
        revalidate_instances="never",
    )


def exactly_one(model: BaseModel, first: str, second: str) -> None:
    """Raise ``one_of_required`` unless exactly one of two optional fields is set."""
    has_first = getattr(model, first) is not None
    if has_first == (getattr(model, second) is not None):
        which = "both" if has_first else "neither"
        raise PydanticCustomError(
            "one_of_required",
            "exactly one of '{first}' or '{second}' is required ({which} given)",
            {"first": first, "second": second, "which": which},
        )


def at_least_one(model: BaseModel, first: str, second: str) -> None:
    """Raise ``one_of_required`` when neither of two optional fields is set (both is fine)."""
    if getattr(model, first) is None and getattr(model, second) is None:
        raise PydanticCustomError(
            "one_of_required",
            "at least one of '{first}' or '{second}' is required (neither given)",
            {"first": first, "second": second},
        )


class FeatureRef(Strict):
    """A reference to an ontology feature: exactly one of ``name`` or ``schema_id``."""

    name: Name | None = None
    schema_id: Name | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> Self:
        exactly_one(self, "name", "schema_id")
        return self

    def feature_key(self) -> str:
        """The key Labelbox counts predictions per feature by (name, or schema id)."""
        return self.name if self.name is not None else f"schemaId:{self.schema_id}"

    def ref_json(self) -> dict[str, Any]:
        """The NDJSON reference: ``{"name": …}`` or ``{"schemaId": …}``."""
        return {"name": self.name} if self.name is not None else {"schemaId": self.schema_id}


class DataRowRef(Strict):
    """The data row predicted on: exactly one of ``global_key`` or ``id``."""

    global_key: Name | None = None
    id: Name | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> Self:
        exactly_one(self, "global_key", "id")
        return self

    def to_json(self) -> dict[str, str]:
        """The NDJSON ``dataRow`` object."""
        if self.global_key is not None:
            return {"globalKey": self.global_key}
        return {"id": str(self.id)}


class CustomMetric(Strict):
    """A custom metric attached to an object, a text prediction or an answer."""

    name: Name
    value: float
