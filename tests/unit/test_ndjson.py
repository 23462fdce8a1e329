"""Conformance: every image annotation the Labelbox SDK 7.17.0 builds passes the NDJSON format unchanged.

A producer that builds ``labelbox.types`` annotations and serializes them with ``NDJsonConverter.serialize``
sends those lines as ``{"model_run_id": …, "ndjson": [...]}``. For every kind of image annotation the SDK
builds (bbox, point, polyline, polygon, mask by URL + colour and by array, radio, checklist, free text,
classifications nested under objects and under answers to depth 3, confidences and custom metrics, scalar
and confusion-matrix metrics), each with features given by name only, by schema id only and by both:

- the message is accepted;
- every line comes out as it went in, compared as canonical JSON text (so 1.0 stays a float), except for
  what the worker normalises: SDK bug 1's snake_case ``schema_id`` / ``custom_metrics`` under answers come
  out camelCase, inline masks are re-encoded as the 0/1 PNG Labelbox takes (compared by decoded pixels), and
  a line without a uuid (the SDK writes none for metrics) gets a derived one.

A hypothesis property draws from the same space (features referenced in any of the three ways, chosen
independently at every place). And the SDK's lines for other media (video, text, conversation, document)
are refused as ``unsupported_media``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import labelbox.types as lb
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from labelbox.data.mixins import CustomMetric as SdkMetric

from schemas import NdjsonMessage
from schemas.predictions import RESERVED_METRIC_NAMES
from tests.support.sdk_oracle import camel_case_keys, comparable, sdk_data, sdk_lines, snake_keys_in
from worker.convert import convert
from worker.decode import Rejection, decode

Json = dict[str, Any]
RUN = "clmodelrun000000000000001"
GK = "img-1.jpg"
ROW_ID = "ckrb1sfjx099a0y914hl319ie"
MODES = ("name", "schema_id", "both")


# --- the check -------------------------------------------------------------------------------------


def canonical(line: Json) -> str:
    """A line as canonical JSON text, masks by pixels: tells 1 from 1.0 and from true."""
    return json.dumps(comparable(line), sort_keys=True)


def send(lines: list[Json]) -> NdjsonMessage | Rejection:
    return decode(orjson.dumps({"model_run_id": RUN, "ndjson": lines}))


def assert_passes_through(annotations: list[Any], data: Json | None = None) -> list[Json]:
    """Serialize ``annotations`` with the SDK, send them as an NDJSON message, compare line by line."""
    sent = sdk_lines(annotations, data or sdk_data(global_key=GK))
    message = send(sent)
    assert isinstance(message, NdjsonMessage), message
    got = [orjson.loads(line.data) for line in convert(message)]
    assert len(got) == len(sent)
    for before, after in zip(sent, got, strict=True):
        if "uuid" not in before:
            assert uuid.UUID(after.pop("uuid")).version == 5  # derived, deterministic
        assert snake_keys_in(after) == set()
        assert canonical(after) == canonical(camel_case_keys(before))
    return sent


# --- SDK annotations, features referenced by name, by schema id or both ----------------------------


def cuid(name: str) -> str:
    """A featureSchemaId for a name: a 25-character cuid (the SDK checks the length)."""
    return "c" + hashlib.sha1(name.encode()).hexdigest()[:24]


def ref(mode: str, name: str) -> Json:
    by_name, by_id = {"name": name}, {"feature_schema_id": cuid(name)}
    return by_name if mode == "name" else by_id if mode == "schema_id" else {**by_name, **by_id}


def metrics(level: int) -> list[SdkMetric]:
    return [SdkMetric(name=f"m{level}", value=level / 10), SdkMetric(name="n", value=2.0)]


def nested(mode: str, depth: int, level: int = 1) -> list[lb.ClassificationAnnotation] | None:
    """A radio, a checklist and a text at ``level``; the first answer of each question holds the next level.

    Answers carry confidences and custom metrics; texts confidence and custom metrics.
    """
    if level > depth:
        return None

    def answer(name: str, inner: list[lb.ClassificationAnnotation] | None = None) -> lb.ClassificationAnswer:
        return lb.ClassificationAnswer(
            **ref(mode, name), confidence=level / 10, custom_metrics=metrics(level), classifications=inner
        )

    inner = nested(mode, depth, level + 1)
    radio = lb.Radio(answer=answer(f"ra{level}", inner))
    checklist = lb.Checklist(answer=[answer(f"ca{level}", inner), answer(f"cb{level}")])
    text = lb.Text(answer=f"level {level}\nnote", confidence=0.5, custom_metrics=metrics(level))
    return [
        lb.ClassificationAnnotation(**ref(mode, f"radio{level}"), value=radio),
        lb.ClassificationAnnotation(**ref(mode, f"checklist{level}"), value=checklist),
        lb.ClassificationAnnotation(**ref(mode, f"text{level}"), value=text),
    ]


RECTANGLE = lb.Rectangle(start=lb.Point(x=1690.0, y=977.0), end=lb.Point(x=1915.5, y=1307.25))
POINTS = [lb.Point(x=2534.3, y=249.4), lb.Point(x=2429.4, y=182.0), lb.Point(x=2300.0, y=300.5)]
MASK = np.zeros((7, 5), dtype=np.uint8)
MASK[1:5, 1:3] = 1
RGB = np.zeros((4, 6, 3), dtype=np.uint8)
RGB[1:3, 2:5] = (0, 255, 0)
RGB[0, :] = (255, 0, 0)
GEOMETRIES: dict[str, Any] = {
    "bbox": RECTANGLE,
    "point": lb.Point(x=1166.6, y=1441.7),
    "polyline": lb.Line(points=POINTS),
    "polygon": lb.Polygon(points=POINTS),
    "mask by url and colour": lb.Mask(
        mask=lb.MaskData(url="https://storage.example.com/masks/m.png"), color=(255, 255, 255)
    ),
    "mask by array": lb.Mask(mask=lb.MaskData.from_2D_arr(MASK), color=(1, 1, 1)),
    "mask by rgb array and colour": lb.Mask(mask=lb.MaskData(arr=RGB), color=(0, 255, 0)),
}


def obj(mode: str, geometry: str, **extra: Any) -> lb.ObjectAnnotation:
    return lb.ObjectAnnotation(**ref(mode, geometry.split()[0]), value=GEOMETRIES[geometry], **extra)


def question(mode: str, kind: str, **extra: Any) -> lb.ClassificationAnnotation:
    """A top-level radio / checklist / text, its answers with confidence and custom metrics."""
    inner = nested(mode, 1)
    if kind == "radio":
        value: Any = lb.Radio(
            answer=lb.ClassificationAnswer(**ref(mode, "first"), confidence=0.7, custom_metrics=metrics(1))
        )
    elif kind == "checklist":
        first = lb.ClassificationAnswer(**ref(mode, "a"), confidence=0.7, classifications=inner)
        value = lb.Checklist(answer=[first, lb.ClassificationAnswer(**ref(mode, "b"))])
    else:
        value = lb.Text(answer="sample text", confidence=0.5, custom_metrics=metrics(1))
    return lb.ClassificationAnnotation(**ref(mode, f"{kind}_question"), value=value, **extra)


def under_answer(mode: str, kind: str, depth: int) -> lb.ClassificationAnnotation:
    """A top-level radio or checklist whose answer holds classifications ``depth`` levels deep."""
    holder = lb.ClassificationAnswer(**ref(mode, "holder"), classifications=nested(mode, depth))
    if kind == "radio":
        return lb.ClassificationAnnotation(**ref(mode, "top_radio"), value=lb.Radio(answer=holder))
    other = lb.ClassificationAnswer(**ref(mode, "other"))
    return lb.ClassificationAnnotation(
        **ref(mode, "top_checklist"), value=lb.Checklist(answer=[other, holder])
    )


ANNOTATIONS: dict[str, Callable[[str], list[Any]]] = {
    **{geometry: functools.partial(lambda m, g: [obj(m, g)], g=geometry) for geometry in GEOMETRIES},
    "objects with confidence and custom metrics": lambda m: [
        obj(m, g, confidence=0.25, custom_metrics=metrics(0)) for g in GEOMETRIES
    ],
    "object with confidence 0": lambda m: [obj(m, "bbox", confidence=0.0)],
    "radio": lambda m: [question(m, "radio", confidence=0.8)],
    "checklist": lambda m: [question(m, "checklist", confidence=0.6)],
    "free text": lambda m: [question(m, "text")],
    **{
        f"nested under an object, depth {depth}": functools.partial(
            lambda m, d: [obj(m, "bbox", classifications=nested(m, d))], d=depth
        )
        for depth in (1, 2, 3)
    },
    **{
        f"nested under a {kind} answer, depth {depth}": functools.partial(
            lambda m, k, d: [under_answer(m, k, d)], k=kind, d=depth
        )
        for kind in ("radio", "checklist")
        for depth in (1, 2, 3)
    },
}
METRICS: dict[str, Any] = {
    **{
        f"scalar metric, {aggregation.name}": lb.ScalarMetric(
            value=0.5, metric_name="custom_iou", feature_name="box", aggregation=aggregation
        )
        for aggregation in lb.ScalarMetricAggregation
    },
    "scalar metric without names": lb.ScalarMetric(value=12.0),
    "scalar metric by threshold": lb.ScalarMetric(
        value={0.1: 0.2, 0.5: 0.7, 0.9: 1.0}, metric_name="m", feature_name="box", subclass_name="radio1"
    ),
    "confusion matrix": lb.ConfusionMatrixMetric(value=(1, 2, 3, 4), metric_name="cm", feature_name="box"),
    "confusion matrix by threshold": lb.ConfusionMatrixMetric(
        value={0.1: (1, 2, 3, 4), 0.9: (0, 0, 0, 1)}, metric_name="cm2"
    ),
}


# --- the cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(ANNOTATIONS))
def test_sdk_lines_pass_through(kind: str, mode: str) -> None:
    sent = assert_passes_through(ANNOTATIONS[kind](mode))
    keys = {"name": {"name"}, "schema_id": {"schemaId"}, "both": {"name", "schemaId"}}[mode]
    for line in sent:
        assert keys <= line.keys()
        assert line.keys().isdisjoint({"name", "schemaId"} - keys)


@pytest.mark.parametrize("kind", list(METRICS))
def test_sdk_metric_lines_pass_through(kind: str) -> None:
    (line,) = assert_passes_through([METRICS[kind]])
    assert "metricValue" in line


@pytest.mark.parametrize("mode", MODES)
def test_sdk_bug_snake_case_under_answers_is_taken_and_comes_out_camel_case(mode: str) -> None:
    (line,) = sdk_lines([under_answer(mode, "radio", 3)], sdk_data(global_key=GK))
    expected = {"custom_metrics"} | ({"schema_id"} if mode != "name" else set())
    assert snake_keys_in(line) == expected  # the SDK's bug is there to be normalised
    assert_passes_through([under_answer(mode, "radio", 3)])


@pytest.mark.parametrize("mode", MODES)
def test_every_kind_in_one_message_by_data_row_id(mode: str) -> None:
    annotations = [a for build in ANNOTATIONS.values() for a in build(mode)] + list(METRICS.values())
    sent = assert_passes_through(annotations, sdk_data(data_row_id=ROW_ID))
    assert len(sent) == len(annotations)
    assert {line["dataRow"]["id"] for line in sent} == {ROW_ID}


def test_inline_masks_reach_labelbox_as_the_same_pixels() -> None:
    (by_array,) = assert_passes_through([obj("both", "mask by array")])
    (by_rgb,) = assert_passes_through([obj("both", "mask by rgb array and colour")])
    assert comparable(by_array)["mask"]["pixels"] == MASK.tolist()
    assert comparable(by_rgb)["mask"]["pixels"] == np.all(RGB == (0, 255, 0), axis=-1).astype(int).tolist()


# --- other media: what the SDK writes for them is unsupported_media --------------------------------


def video_box() -> list[Any]:
    return [
        lb.VideoObjectAnnotation(name="box", frame=frame, keyframe=True, segment_index=0, value=RECTANGLE)
        for frame in (1, 5)
    ]


OTHER_MEDIA: dict[str, tuple[Callable[[], list[Any]], str]] = {
    "video object": (video_box, "segments"),
    "video classification": (
        lambda: [
            lb.VideoClassificationAnnotation(
                name="q", frame=frame, value=lb.Radio(answer=lb.ClassificationAnswer(name="a"))
            )
            for frame in (1, 2)
        ],
        "frames",
    ),
    "text entity": (
        lambda: [lb.ObjectAnnotation(name="ner", value=lb.TextEntity(start=0, end=4))],
        "location",
    ),
    "conversation entity": (
        lambda: [
            lb.ObjectAnnotation(name="ner", value=lb.ConversationEntity(start=0, end=4, message_id="m1"))
        ],
        "messageId",
    ),
    "document entity": (
        lambda: [
            lb.ObjectAnnotation(
                name="ner",
                value=lb.DocumentEntity(
                    text_selections=[lb.DocumentTextSelection(token_ids=["t1"], group_id="g1", page=1)]
                ),
            )
        ],
        "textSelections",
    ),
    "document rectangle": (
        lambda: [
            lb.ObjectAnnotation(
                name="box",
                value=lb.DocumentRectangle(
                    start=lb.Point(x=1, y=2), end=lb.Point(x=3, y=4), page=2, unit=lb.RectangleUnit.POINTS
                ),
            )
        ],
        "page",
    ),
}


@pytest.mark.parametrize("kind", list(OTHER_MEDIA))
def test_sdk_lines_of_other_media_are_unsupported_media(kind: str) -> None:
    build, key = OTHER_MEDIA[kind]
    lines = sdk_lines(build(), sdk_data(global_key=GK))
    assert lines
    image_line = sdk_lines([obj("name", "point")], sdk_data(global_key=GK))[0]
    rejection = send([image_line, *lines])
    assert isinstance(rejection, Rejection), rejection
    assert rejection.reason == "unsupported_media", rejection.errors
    assert rejection.errors[0].startswith(f"ndjson.1: '{key}' belongs to ")
    assert "this worker takes image data rows only" in rejection.errors[0]


# --- the property ----------------------------------------------------------------------------------

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cc",)), min_size=1, max_size=8)
CUIDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=24, max_size=24).map(lambda s: f"c{s}")
REFS = st.one_of(
    NAMES.map(lambda n: {"name": n}),
    CUIDS.map(lambda c: {"feature_schema_id": c}),
    st.tuples(NAMES, CUIDS).map(lambda pair: {"name": pair[0], "feature_schema_id": pair[1]}),
)
CONFIDENCES = st.none() | st.floats(0.0, 1.0)
CUSTOM_METRICS = st.none() | st.lists(
    st.builds(SdkMetric, name=NAMES, value=st.floats(allow_nan=False, allow_infinity=False)),
    min_size=1,
    max_size=2,
)
FREE_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc",)) | st.sampled_from("\t\n\r"), max_size=12
)
COORD = st.floats(-1e6, 1e6)
POINT = st.builds(lb.Point, x=COORD, y=COORD)


@functools.cache
def answers(depth: int) -> st.SearchStrategy[lb.ClassificationAnswer]:
    inner = st.lists(classifications(depth), max_size=2).map(lambda c: c or None) if depth else st.none()

    def build(reference: Json, confidence: float | None, custom: Any, nested: Any) -> lb.ClassificationAnswer:
        return lb.ClassificationAnswer(
            **reference, confidence=confidence, custom_metrics=custom, classifications=nested
        )

    return st.builds(build, REFS, CONFIDENCES, CUSTOM_METRICS, inner)


@functools.cache
def classifications(depth: int) -> st.SearchStrategy[lb.ClassificationAnnotation]:
    """A radio, checklist or text, ``depth`` levels deep at most (itself included)."""
    values = st.one_of(
        st.builds(lb.Radio, answer=answers(depth - 1)),
        st.builds(lb.Checklist, answer=st.lists(answers(depth - 1), min_size=1, max_size=2)),
        st.builds(lb.Text, answer=FREE_TEXT, confidence=CONFIDENCES, custom_metrics=CUSTOM_METRICS),
    )

    def build(reference: Json, value: Any, confidence: float | None) -> lb.ClassificationAnnotation:
        return lb.ClassificationAnnotation(**reference, value=value, confidence=confidence)

    return st.builds(build, REFS, values, CONFIDENCES)


BOOL_MASKS = hnp.arrays(
    np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6), elements=st.just(0) | st.just(1)
)
GEOMETRY = st.one_of(
    st.builds(lb.Rectangle, start=POINT, end=POINT),
    POINT,
    st.lists(POINT, min_size=2, max_size=5).map(lambda p: lb.Line(points=p)),
    st.lists(POINT, min_size=3, max_size=5).map(lambda p: lb.Polygon(points=p)),
    BOOL_MASKS.map(lambda a: lb.Mask(mask=lb.MaskData.from_2D_arr(a), color=(1, 1, 1))),
    st.builds(
        lambda path, color: lb.Mask(mask=lb.MaskData(url=f"https://example.com/{path}.png"), color=color),
        st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=8),
        st.tuples(*[st.integers(0, 255)] * 3),
    ),
)
OBJECTS = st.builds(
    lambda reference, value, confidence, custom, nested: lb.ObjectAnnotation(
        **reference, value=value, confidence=confidence, custom_metrics=custom, classifications=nested
    ),
    REFS,
    GEOMETRY,
    CONFIDENCES,
    CUSTOM_METRICS,
    st.lists(classifications(3), max_size=2),
)
THRESHOLDS = st.floats(0.0, 1.0)
SCALARS = st.floats(0.0, 1e8)
COUNTS = st.tuples(*[st.integers(0, 10_000_000_000)] * 4)
METRIC_LINES = st.one_of(
    st.builds(
        lb.ScalarMetric,
        value=SCALARS | st.dictionaries(THRESHOLDS, SCALARS, min_size=2, max_size=15),
        metric_name=st.none() | NAMES.filter(lambda n: n.lower().strip() not in RESERVED_METRIC_NAMES),
        feature_name=st.none() | NAMES,
        subclass_name=st.none() | NAMES,
        aggregation=st.sampled_from(lb.ScalarMetricAggregation),
    ),
    st.builds(
        lb.ConfusionMatrixMetric,
        value=COUNTS | st.dictionaries(THRESHOLDS, COUNTS, min_size=2, max_size=15),
        metric_name=NAMES,
        feature_name=st.none() | NAMES,
        subclass_name=st.none() | NAMES,
    ),
)
DATA = st.one_of(NAMES.map(lambda k: sdk_data(global_key=k)), NAMES.map(lambda i: sdk_data(data_row_id=i)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(OBJECTS, classifications(4), METRIC_LINES), min_size=1, max_size=4), DATA)
def test_any_sdk_image_annotations_pass_through(annotations: list[Any], data: Json) -> None:
    # classifications(4): a top-level question whose answers nest three more levels.
    assert_passes_through(annotations, data)
