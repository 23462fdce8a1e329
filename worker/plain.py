"""The fast path of validation: typed-format messages decoded by msgspec into plain structs.

These structs mirror ``schemas._base``, ``schemas.predictions`` and ``schemas.message`` (the pydantic
models stay the producers' API and the source of the JSON Schema). They are a *filter*, not a second
contract: :func:`decode_fast` returns a message only when it is sure pydantic would accept the same
bytes and hold the same values; on anything else (a rejection, a lax coercion pydantic would make,
classifications nested deeper than the structs go) it returns ``None`` and ``worker.decode`` asks
pydantic, which gives the verdict, the reason codes and the field paths as before.

What msgspec cannot express is checked in ``__post_init__`` (called as each struct is decoded; a
``ValueError`` there fails the decode): exactly one of ``name``/``schema_id`` and of
``global_key``/``id``, reserved metric names, threshold keys and counts, unique uuids, predictions per
feature. A mask's sub-object is kept as raw JSON and validated by the pydantic mask models themselves
(``schemas.masks.MaskSource``), so every mask rule and ``png01_base64()`` stay there.

Four decoders: a record with no backslash and no DEL byte cannot hold a control character in any
string (JSON has none raw), so it is decoded by structs without the regex patterns (a third of the
decoding time); any other record by structs with them. And a record without the bytes ``schema_id``
is decoded by structs whose references require a ``name`` and have no ``schema_id`` field, so that
exactly one of the two holds without a Python ``__post_init__`` per object, question and answer
(13 % of the decoding time on the mixed bench corpus); a reference by schema id in such a record
(only possible with an escaped key) fails the decode and pydantic decides.

Regex patterns use ``\\Z``, not ``$``: msgspec matches with Python's ``re.search``, where ``$`` also
matches before a trailing newline; pydantic's (Rust) regex does not.
"""

import re
from collections import Counter
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

import msgspec
from msgspec import Meta
from pydantic import TypeAdapter

from schemas.masks import MaskSource, PngMask, RleMask, UrlMask
from schemas.message import MAX_PER_FEATURE, PayloadKey
from schemas.predictions import MAX_THRESHOLDS, MIN_THRESHOLDS, RESERVED_METRIC_NAMES

#: Classification levels the structs go (a question under an object or a top-level question is
#: level 1, a question under one of its answers level 2, …). Deeper messages take the pydantic path.
MAX_FAST_LEVELS = 8

_NAME = r"^[^\x00-\x1f\x7f]+\Z"
_FREE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*\Z"
Confidence = Annotated[float, Meta(ge=0.0, le=1.0)]
Size = Annotated[float, Meta(ge=0.0)]
ScalarValue = Annotated[float, Meta(ge=0.0, le=100_000_000.0)]
Count = Annotated[int, Meta(ge=0, le=10_000_000_000)]
ConfusionValue = tuple[Count, Count, Count, Count]
ScalarAggregation = Literal["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"]
#: A threshold key as pydantic reads it for certain (a JSON number, not too long): others fall back.
_THRESHOLD_KEY = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_MAX_KEY_CHARS = 32
#: Kinds of prediction that are metrics (no feature, no per-feature limit).
METRIC_KINDS = frozenset({"scalar_metric", "confusion_matrix_metric"})

MASK_ADAPTER: TypeAdapter[PngMask | UrlMask | RleMask] = TypeAdapter(MaskSource)


class Unsure(ValueError):
    """Raised in a ``__post_init__``: not for the fast path to accept (pydantic decides)."""


def _thresholds(value: dict[str, Any]) -> dict[float, Any]:
    """Threshold keys read as floats in [0, 1], as pydantic reads them; 2..15 of them."""
    out: dict[float, Any] = {}
    for key, item in value.items():
        if len(key) > _MAX_KEY_CHARS or _THRESHOLD_KEY.match(key) is None:
            raise Unsure("threshold key")
        threshold = float(key)
        if not 0.0 <= threshold <= 1.0:
            raise Unsure("threshold out of range")
        out[threshold] = item
    if not MIN_THRESHOLDS <= len(out) <= MAX_THRESHOLDS:
        raise Unsure("threshold count")
    return out


class _Struct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    pass


class PredictionMessage(_Struct, kw_only=True):
    """A typed-format message (``schemas.message.PredictionMessage``) validated by the fast path.

    The class of both families (strings checked by regex or not); its fields are theirs.
    """

    payload_key: ClassVar[PayloadKey] = "predictions"

    # declared for readers of a decoded message; each family redeclares them with their constraints
    model_run_id: str
    message_id: str | None = None
    data_row: Any
    predictions: list[Any]


def _family(checked: bool, named: bool) -> Any:  # noqa: C901 - one struct per contract model, defined together
    """The message struct, its strings' control characters checked by regex or not.

    Unchecked is for records with no ``\\`` and no DEL byte: JSON has no raw control characters in
    strings, so none of their strings can hold one and the patterns cannot fail. ``named`` is for
    records without the bytes ``schema_id``: every feature reference must then have a ``name`` (the
    field is required and has no ``schema_id`` beside it, so a reference by schema id, however
    spelt, fails the decode), which makes exactly-one-of hold without a ``__post_init__`` per
    reference (a call into Python for every object, question and answer).
    """

    def text(pattern: str, min_length: int | None = None, max_length: int | None = None) -> Any:
        meta = Meta(min_length=min_length, max_length=max_length, pattern=pattern if checked else None)
        return Annotated[str, meta]

    name_t = text(_NAME, min_length=1, max_length=1024)
    run_id_t = text(_NAME, min_length=1, max_length=128)
    free_text_t = text(_FREE_TEXT, max_length=65536)
    opt_name: Any = name_t | None
    opt_confidence: Any = Confidence | None

    class Base(_Struct):
        pass

    class Ref(Base, kw_only=True):
        """Exactly one of ``name`` or ``schema_id`` (``schemas._base.FeatureRef``).

        In the ``named`` family, a required ``name`` and no ``schema_id`` field (read as ``None``).
        """

        if named:
            name: name_t  # type: ignore[valid-type]
            schema_id: ClassVar[None] = None
        else:
            name: opt_name = None  # type: ignore[no-redef]
            schema_id: opt_name = None  # type: ignore[no-redef]

            def __post_init__(self) -> None:
                if (self.name is None) is (self.schema_id is None):
                    raise Unsure("one_of_required")

    ref_check = getattr(Ref, "__post_init__", None)

    class DataRowRef(Base, kw_only=True):
        global_key: opt_name = None
        id: opt_name = None

        def __post_init__(self) -> None:
            if (self.global_key is None) is (self.id is None):
                raise Unsure("one_of_required")

    class CustomMetric(Base, kw_only=True):
        name: name_t  # type: ignore[valid-type]
        value: float

    metrics_t: Any = Annotated[list[CustomMetric], Meta(max_length=1000)]
    no_default: Any = msgspec.NODEFAULT

    def empty() -> Any:
        return msgspec.field(default_factory=list)

    def struct(name: str, fields: list[tuple[str, Any, Any]], base: Any, tag: str | None = None) -> Any:
        extra: dict[str, Any] = (
            {} if tag is None else {"namespace": {"type": tag}, "tag_field": "type", "tag": tag}
        )
        return msgspec.defstruct(
            name, fields, bases=(base,), module=__name__, forbid_unknown_fields=True, kw_only=True, **extra
        )

    def questions(level: int, answer: Any, base: Any) -> Any:
        confidence = ("confidence", opt_confidence, None)
        many: Any = Annotated[list[answer], Meta(min_length=1, max_length=1000)]
        return (
            struct(f"Radio{level}", [confidence, ("answer", answer, no_default)], base, "radio")
            | struct(f"Checklist{level}", [confidence, ("answers", many, no_default)], base, "checklist")
            | struct(
                f"Text{level}",
                [confidence, ("answer", free_text_t, no_default), ("custom_metrics", metrics_t, empty())],
                base,
                "text",
            )
        )

    # Level n's answers hold level n+1's questions; the deepest answers hold none.
    below: Any = Annotated[list[Any], Meta(max_length=0)]
    for level in range(MAX_FAST_LEVELS, -1, -1):
        answer = struct(
            f"Answer{level}",
            [
                ("confidence", opt_confidence, None),
                ("classifications", below, empty()),
                ("custom_metrics", metrics_t, empty()),
            ],
            Ref,
        )
        if level == 0:
            break
        below = Annotated[list[questions(level, answer, Ref)], Meta(max_length=1000)]  # type: ignore[misc]
    level_one = below  # level 1: under an object, or under a top-level question's answer

    class TopRef(Ref, kw_only=True):
        uuid: UUID | None = None

    top_questions = questions(0, answer, TopRef)  # a top-level question; its answer holds level 1

    class Object(TopRef, kw_only=True):
        confidence: opt_confidence = None
        classifications: level_one = msgspec.field(default_factory=list)  # type: ignore[valid-type]
        custom_metrics: metrics_t = msgspec.field(default_factory=list)

    class BBox(Base, kw_only=True):
        top: float
        left: float
        height: Size
        width: Size

    class Point(Base, kw_only=True):
        x: float
        y: float

    class BBoxPrediction(Object, tag_field="type", tag="bbox", kw_only=True):
        type: ClassVar[str] = "bbox"
        bbox: BBox

    class PointPrediction(Object, tag_field="type", tag="point", kw_only=True):
        type: ClassVar[str] = "point"
        point: Point

    class PolylinePrediction(Object, tag_field="type", tag="polyline", kw_only=True):
        type: ClassVar[str] = "polyline"
        line: Annotated[list[Point], Meta(min_length=2, max_length=100_000)]

    class PolygonPrediction(Object, tag_field="type", tag="polygon", kw_only=True):
        type: ClassVar[str] = "polygon"
        polygon: Annotated[list[Point], Meta(min_length=3, max_length=100_000)]

    class MaskPrediction(Object, tag_field="type", tag="mask", kw_only=True):
        """``mask`` arrives as raw JSON and leaves validated by the pydantic mask models."""

        type: ClassVar[str] = "mask"
        mask: msgspec.Raw  # then a schemas.masks PngMask, UrlMask or RleMask

        def __post_init__(self) -> None:
            if ref_check is not None:
                ref_check(self)
            # a pydantic ValidationError is a ValueError: msgspec fails the decode
            self.mask = MASK_ADAPTER.validate_json(bytes(self.mask))  # type: ignore[assignment]

    class ScalarMetric(Base, tag_field="type", tag="scalar_metric", kw_only=True):
        type: ClassVar[str] = "scalar_metric"
        uuid: UUID | None = None
        metric_name: opt_name = None
        value: ScalarValue | dict[str, ScalarValue]
        feature_name: opt_name = None
        subclass_name: opt_name = None
        aggregation: ScalarAggregation = "ARITHMETIC_MEAN"

        def __post_init__(self) -> None:
            if self.metric_name is not None and self.metric_name.lower().strip() in RESERVED_METRIC_NAMES:
                raise Unsure("reserved_metric_name")
            if type(self.value) is dict:
                self.value = _thresholds(self.value)  # type: ignore[assignment]

    class ConfusionMatrixMetric(Base, tag_field="type", tag="confusion_matrix_metric", kw_only=True):
        type: ClassVar[str] = "confusion_matrix_metric"
        uuid: UUID | None = None
        metric_name: name_t  # type: ignore[valid-type]
        value: ConfusionValue | dict[str, ConfusionValue]
        feature_name: opt_name = None
        subclass_name: opt_name = None

        def __post_init__(self) -> None:
            if type(self.value) is dict:
                self.value = _thresholds(self.value)  # type: ignore[assignment]

    prediction: Any = (
        top_questions
        | BBoxPrediction
        | PointPrediction
        | PolylinePrediction
        | PolygonPrediction
        | MaskPrediction
        | ScalarMetric
        | ConfusionMatrixMetric
    )

    class Message(PredictionMessage, kw_only=True):
        model_run_id: run_id_t  # type: ignore[valid-type]
        message_id: opt_name = None
        data_row: DataRowRef
        predictions: Annotated[list[prediction], Meta(min_length=1, max_length=100_000)]

        def __post_init__(self) -> None:
            predictions: list[Any] = self.predictions
            uuids = [p.uuid for p in predictions if p.uuid is not None]
            if len(set(uuids)) != len(uuids):
                raise Unsure("duplicate_uuid")
            if len(predictions) > MAX_PER_FEATURE:
                counts = Counter(feature_key(p) for p in predictions if p.type not in METRIC_KINDS)
                if max(counts.values(), default=0) > MAX_PER_FEATURE:
                    raise Unsure("too_many_predictions")

    return Message


def feature_key(reference: Any) -> str:
    """The key Labelbox counts predictions per feature by (name, or ``schemaId:`` schema id)."""
    name: str | None = reference.name
    return name if name is not None else f"schemaId:{reference.schema_id}"


_CHECKED = msgspec.json.Decoder(_family(checked=True, named=False))
_UNCHECKED = msgspec.json.Decoder(_family(checked=False, named=False))
_CHECKED_NAMED = msgspec.json.Decoder(_family(checked=True, named=True))
_UNCHECKED_NAMED = msgspec.json.Decoder(_family(checked=False, named=True))


def decode_fast(value: bytes) -> PredictionMessage | None:
    """The validated message, or ``None`` when pydantic must decide (rejections included)."""
    if b"schema_id" in value:
        decoder = _CHECKED if b"\\" in value or b"\x7f" in value else _UNCHECKED
    else:
        decoder = _CHECKED_NAMED if b"\\" in value or b"\x7f" in value else _UNCHECKED_NAMED
    try:
        message: PredictionMessage = decoder.decode(value)
    except Exception:  # a rejection, or anything unforeseen: pydantic decides, as it did before
        return None
    return message
