"""Typed predictions (contract v1, "typed format"): one model per Labelbox image prediction type."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Discriminator, Field, Tag, field_validator
from pydantic_core import PydanticCustomError

from schemas._base import Confidence, CustomMetric, FeatureRef, FreeText, Name, Strict
from schemas.masks import MaskSource

#: Finite image-pixel coordinate.
Coordinate = float
#: A bbox side: finite and not negative.
Size = Annotated[float, Field(ge=0.0)]
#: Labelbox thresholds on metric values (2..15 of them, each in [0, 1]).
Threshold = Annotated[float, Field(ge=0.0, le=1.0)]
ScalarValue = Annotated[float, Field(ge=0.0, le=100_000_000.0)]
Count = Annotated[int, Field(ge=0, le=10_000_000_000)]
ConfusionValue = tuple[Count, Count, Count, Count]


def _value_shape(value: Any) -> str:
    return "thresholds" if isinstance(value, dict) else "value"


ScalarMetricValue = Annotated[
    Annotated[ScalarValue, Tag("value")] | Annotated[dict[Threshold, ScalarValue], Tag("thresholds")],
    Discriminator(_value_shape),
]
ConfusionMetricValue = Annotated[
    Annotated[ConfusionValue, Tag("value")] | Annotated[dict[Threshold, ConfusionValue], Tag("thresholds")],
    Discriminator(_value_shape),
]
MIN_THRESHOLDS, MAX_THRESHOLDS = 2, 15
ScalarAggregation = Literal["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"]
RESERVED_METRIC_NAMES = frozenset(
    {
        "true_positive_count",
        "false_positive_count",
        "true_negative_count",
        "false_negative_count",
        "precision",
        "recall",
        "f1",
        "iou",
    }
)


class Answer(FeatureRef):
    """An answer of a radio or checklist question, with its own nested questions."""

    confidence: Confidence | None = None
    classifications: list[Classification] = Field(default_factory=list, max_length=1000)
    custom_metrics: list[CustomMetric] = Field(default_factory=list, max_length=1000)


class Radio(FeatureRef):
    """A single-choice question."""

    type: Literal["radio"]
    confidence: Confidence | None = None
    answer: Answer


class Checklist(FeatureRef):
    """A multiple-choice question: one or more answers."""

    type: Literal["checklist"]
    confidence: Confidence | None = None
    answers: list[Answer] = Field(min_length=1, max_length=1000)


class Text(FeatureRef):
    """A free-form text answer."""

    type: Literal["text"]
    confidence: Confidence | None = None
    answer: FreeText
    custom_metrics: list[CustomMetric] = Field(default_factory=list, max_length=1000)


#: A classification nested under an object or an answer (any depth).
Classification = Annotated[Radio | Checklist | Text, Field(discriminator="type")]


class _TopLevel(Strict):
    uuid: UUID | None = None


class RadioPrediction(Radio, _TopLevel):
    """A radio question on the whole image."""


class ChecklistPrediction(Checklist, _TopLevel):
    """A checklist question on the whole image."""


class TextPrediction(Text, _TopLevel):
    """A free-text answer on the whole image."""


class _Object(FeatureRef, _TopLevel):
    confidence: Confidence | None = None
    classifications: list[Classification] = Field(default_factory=list, max_length=1000)
    custom_metrics: list[CustomMetric] = Field(default_factory=list, max_length=1000)


class BBox(Strict):
    """An axis-aligned box in image pixels."""

    top: Coordinate
    left: Coordinate
    height: Size
    width: Size

    @classmethod
    def from_corners(cls, x1: float, y1: float, x2: float, y2: float) -> BBox:
        """The box spanning two opposite corners, in any order."""
        return cls(top=min(y1, y2), left=min(x1, x2), height=abs(y2 - y1), width=abs(x2 - x1))


class Point(Strict):
    """A point in image pixels."""

    x: Coordinate
    y: Coordinate


class BBoxPrediction(_Object):
    """A bounding box."""

    type: Literal["bbox"]
    bbox: BBox


class PointPrediction(_Object):
    """A point."""

    type: Literal["point"]
    point: Point


class PolylinePrediction(_Object):
    """A polyline of two or more points."""

    type: Literal["polyline"]
    line: list[Point] = Field(min_length=2, max_length=100_000)


class PolygonPrediction(_Object):
    """A polygon of three or more points (closed by the converter)."""

    type: Literal["polygon"]
    polygon: list[Point] = Field(min_length=3, max_length=100_000)


class MaskPrediction(_Object):
    """A segmentation mask: inline PNG, URL + colour, or COCO RLE."""

    type: Literal["mask"]
    mask: MaskSource


def check_metric_name(name: str | None) -> str | None:
    """Reject Labelbox's reserved scalar metric names (case and spaces ignored, as the SDK does)."""
    if name is not None and name.lower().strip() in RESERVED_METRIC_NAMES:
        raise PydanticCustomError(
            "reserved_metric_name", "'{name}' is a reserved metric name", {"name": name}
        )
    return name


def check_thresholds(value: Any) -> Any:
    """Reject a per-threshold metric value with fewer than 2 or more than 15 thresholds."""
    if isinstance(value, dict) and not MIN_THRESHOLDS <= len(value) <= MAX_THRESHOLDS:
        raise PydanticCustomError(
            "invalid_metric_thresholds",
            "a metric by threshold needs {low} to {high} thresholds, got {count}",
            {"low": MIN_THRESHOLDS, "high": MAX_THRESHOLDS, "count": len(value)},
        )
    return value


class ScalarMetric(_TopLevel):
    """A scalar metric on the data row, or on one feature when ``feature_name`` is set."""

    type: Literal["scalar_metric"]
    metric_name: Name | None = None
    value: ScalarMetricValue
    feature_name: Name | None = None
    subclass_name: Name | None = None
    aggregation: ScalarAggregation = "ARITHMETIC_MEAN"

    _not_reserved = field_validator("metric_name")(check_metric_name)
    _threshold_count = field_validator("value")(check_thresholds)


class ConfusionMatrixMetric(_TopLevel):
    """A confusion matrix ``[tp, fp, tn, fn]``, optionally one per threshold."""

    type: Literal["confusion_matrix_metric"]
    metric_name: Name
    value: ConfusionMetricValue
    feature_name: Name | None = None
    subclass_name: Name | None = None

    _threshold_count = field_validator("value")(check_thresholds)


#: Any prediction of a typed message, told apart by ``type``.
Prediction = Annotated[
    RadioPrediction
    | ChecklistPrediction
    | TextPrediction
    | BBoxPrediction
    | PointPrediction
    | PolylinePrediction
    | PolygonPrediction
    | MaskPrediction
    | ScalarMetric
    | ConfusionMatrixMetric,
    Field(discriminator="type"),
]
OBJECT_TYPES = (BBoxPrediction, PointPrediction, PolylinePrediction, PolygonPrediction, MaskPrediction)
METRIC_TYPES = (ScalarMetric, ConfusionMatrixMetric)
