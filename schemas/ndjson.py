"""Raw Labelbox NDJSON lines (contract v1, "NDJSON format"), validated against Labelbox's shapes.

Field names here are Labelbox's camelCase. A line is passed on to Labelbox as given (a missing
``uuid`` is filled by the converter), so these models only check; they never reshape, with one
exception: under an answer, Labelbox's own SDK writes ``schema_id`` / ``custom_metrics`` (its known
bug, named in the README's Tests section), so there those spellings are accepted too and stored camelCase.

Where the NDJSON format is more lenient than the typed format, it follows what Labelbox takes: a
feature or an answer may carry ``name``, ``schemaId`` or both (at least one), as the SDK writes for
annotations that carry both; the typed format keeps its exactly-one rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import (
    AliasChoices,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas._base import Confidence, CustomMetric, FreeText, Name, Strict, at_least_one, exactly_one
from schemas.masks import PngMask
from schemas.predictions import (
    BBox,
    ConfusionMetricValue,
    Point,
    ScalarAggregation,
    ScalarMetricValue,
    check_metric_name,
    check_thresholds,
)


class _Camel(Strict):
    model_config = ConfigDict(populate_by_name=False)


class NdDataRow(_Camel):
    """``{"globalKey": …}`` or ``{"id": …}``."""

    globalKey: Name | None = None
    id: Name | None = None

    @model_validator(mode="after")
    def _one_reference(self) -> Self:
        exactly_one(self, "globalKey", "id")
        return self


class _NdFeature(_Camel):
    name: Name | None = None
    schemaId: Name | None = None

    @model_validator(mode="after")
    def _a_reference(self) -> Self:
        at_least_one(self, "name", "schemaId")
        return self


_Metrics = Annotated[list[CustomMetric], Field(max_length=1000)]


class NdAnswer(_NdFeature):
    """An answer of a radio or checklist, with nested classifications."""

    confidence: Confidence | None = None
    classifications: list[NdSubclassification] = Field(default_factory=list, max_length=1000)
    customMetrics: _Metrics = Field(default_factory=list)


def _answer_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "checklist"
    return "radio" if isinstance(value, dict | NdAnswer) else None


_ANSWER_SHAPE = Discriminator(
    _answer_kind,
    custom_error_type="wrong_type",
    custom_error_message="an answer is an object (radio), a list (checklist) or a string (text)",
)
NdAnswerValue = Annotated[
    Annotated[NdAnswer, Tag("radio")]
    | Annotated[list[NdAnswer], Tag("checklist")]
    | Annotated[FreeText, Tag("text")],
    _ANSWER_SHAPE,
]


class NdClassification(_NdFeature):
    """A classification: radio (one answer object), checklist (a list) or text (a string)."""

    answer: NdAnswerValue
    confidence: Confidence | None = None
    customMetrics: _Metrics = Field(default_factory=list)


# --- under an answer: the SDK's snake_case spellings too ---

#: The snake_case keys the SDK writes under an answer, and the camelCase key each stands for. Both
#: spellings on one object: pydantic refuses the second as an extra field (``unknown_field``).
SDK_SNAKE_CASE = {"schema_id": "schemaId", "custom_metrics": "customMetrics"}
_SchemaIdEitherCase = Annotated[Name | None, Field(validation_alias=AliasChoices("schemaId", "schema_id"))]
_MetricsEitherCase = Annotated[
    _Metrics, Field(validation_alias=AliasChoices("customMetrics", "custom_metrics"))
]


class NdSubAnswer(NdAnswer):
    """An answer inside an answer's classifications: ``schema_id`` / ``custom_metrics`` accepted too."""

    schemaId: _SchemaIdEitherCase = None
    customMetrics: _MetricsEitherCase = Field(default_factory=list)


NdSubAnswerValue = Annotated[
    Annotated[NdSubAnswer, Tag("radio")]
    | Annotated[list[NdSubAnswer], Tag("checklist")]
    | Annotated[FreeText, Tag("text")],
    _ANSWER_SHAPE,
]


class NdSubclassification(_NdFeature):
    """A classification inside an answer: ``schema_id`` / ``custom_metrics`` accepted too (SDK bug)."""

    schemaId: _SchemaIdEitherCase = None
    answer: NdSubAnswerValue
    confidence: Confidence | None = None
    customMetrics: _MetricsEitherCase = Field(default_factory=list)


class _NdLine(_Camel):
    uuid: UUID | None = None
    dataRow: NdDataRow


class NdClassificationLine(NdClassification, _NdLine):
    """A classification on the whole data row."""


class _NdObject(_NdFeature, _NdLine):
    confidence: Confidence | None = None
    classifications: list[NdClassification] = Field(default_factory=list, max_length=1000)
    customMetrics: list[CustomMetric] = Field(default_factory=list, max_length=1000)


class NdBBoxLine(_NdObject):
    bbox: BBox


class NdPointLine(_NdObject):
    point: Point


class NdLineLine(_NdObject):
    line: list[Point] = Field(min_length=2, max_length=100_000)


class NdPolygonLine(_NdObject):
    polygon: list[Point] = Field(min_length=3, max_length=100_000)


class NdUrlMask(_Camel):
    instanceURI: str = Field(min_length=1, max_length=4096, pattern=r"^https?://[^\s\x00-\x1f]+$")
    colorRGB: tuple[
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
        Annotated[int, Field(ge=0, le=255)],
    ]


def _nd_mask_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "png" if "png" in value else "instanceURI" if "instanceURI" in value else None
    return _ND_MASK_KINDS.get(type(value))


_ND_MASK_KINDS: dict[type[Any], str] = {PngMask: "png", NdUrlMask: "instanceURI"}


class NdMaskLine(_NdObject):
    mask: Annotated[
        Annotated[PngMask, Tag("png")] | Annotated[NdUrlMask, Tag("instanceURI")],
        Discriminator(
            _nd_mask_kind,
            custom_error_type="invalid_mask_source",
            custom_error_message="mask needs 'png' or 'instanceURI' + 'colorRGB'",
        ),
    ]


class NdScalarMetricLine(_NdLine):
    metricValue: ScalarMetricValue
    metricName: Name | None = None
    featureName: Name | None = None
    subclassName: Name | None = None
    aggregation: ScalarAggregation = "ARITHMETIC_MEAN"

    _not_reserved = field_validator("metricName")(check_metric_name)
    _threshold_count = field_validator("metricValue")(check_thresholds)


class NdConfusionMatrixLine(_NdLine):
    metricValue: ConfusionMetricValue
    metricName: Name
    featureName: Name | None = None
    subclassName: Name | None = None
    aggregation: Literal["CONFUSION_MATRIX"]

    _threshold_count = field_validator("metricValue")(check_thresholds)


class NdNotAnObject(Strict):
    """Matches nothing: a line that is not a JSON object is refused as ``wrong_type``."""

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise PydanticCustomError("wrong_type", "an NDJSON line must be a JSON object")


#: Keys that only Labelbox NDJSON lines of other media than images carry, and those media; the most
#: telling first (a conversation's entity has a text entity's ``location`` and its own ``messageId``).
OTHER_MEDIA_KEYS: dict[str, str] = {
    **dict.fromkeys(("messageId", "messageEvaluationTask"), "conversational text"),
    **dict.fromkeys(("textSelections", "page", "unit"), "document"),
    **dict.fromkeys(("frames", "frame", "segments", "keyframe", "keyframes", "masks"), "video"),
    "location": "text",
}
_OTHER_MEDIA = frozenset(OTHER_MEDIA_KEYS)


class NdOtherMedia(Strict):
    """Matches nothing: a line of a video, text, conversation or document row is ``unsupported_media``."""

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        key = next(key for key in OTHER_MEDIA_KEYS if key in value)  # the discriminator saw one
        raise PydanticCustomError(
            "unsupported_media",
            "'{key}' belongs to {media} annotations; this worker takes image data rows only",
            {"key": key, "media": OTHER_MEDIA_KEYS[key]},
        )


_GEOMETRY_KEYS = ("bbox", "point", "line", "polygon", "mask")


def _line_kind(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not_an_object"
    if not _OTHER_MEDIA.isdisjoint(value):
        return "unsupported_media"
    for key in _GEOMETRY_KEYS:
        if key in value:
            return key
    if "metricValue" in value:
        return "confusion_matrix" if value.get("aggregation") == "CONFUSION_MATRIX" else "scalar_metric"
    return "classification" if "answer" in value else None


#: One Labelbox NDJSON prediction line of a message (the input), told apart by which payload key it carries.
NdInputLine = Annotated[
    Annotated[NdBBoxLine, Tag("bbox")]
    | Annotated[NdPointLine, Tag("point")]
    | Annotated[NdLineLine, Tag("line")]
    | Annotated[NdPolygonLine, Tag("polygon")]
    | Annotated[NdMaskLine, Tag("mask")]
    | Annotated[NdClassificationLine, Tag("classification")]
    | Annotated[NdScalarMetricLine, Tag("scalar_metric")]
    | Annotated[NdConfusionMatrixLine, Tag("confusion_matrix")]
    | Annotated[NdNotAnObject, Tag("not_an_object")]
    | Annotated[NdOtherMedia, Tag("unsupported_media")],
    Discriminator(
        _line_kind,
        custom_error_type="unknown_prediction_type",
        custom_error_message=(
            "an NDJSON line needs one of bbox, point, line, polygon, mask, answer or metricValue"
        ),
    ),
]
