"""Oracle tests: our NDJSON equals what the Labelbox SDK 7.17.0 serializes for the same annotations.

Each test builds a message with our models (or as JSON bytes through ``decode``), converts it, builds
the equivalent ``labelbox.types`` objects with the same uuid (``extra={"uuid": …}``), serializes them
with ``NDJsonConverter.serialize`` and compares the lines as parsed JSON; inline masks are compared by
decoded pixels. Where we deliberately differ from an SDK bug, the test is named after the bug and
asserts our behaviour (see the README, "Tests": the SDK's known bugs).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import labelbox.types as lb
import numpy as np
import orjson
import pytest
from labelbox.data.mixins import CustomMetric as SdkMetric
from labelbox.data.serialization.ndjson.objects import NDObject
from pycocotools import mask as coco_mask

from schemas import NdjsonMessage, PredictionMessage, mask_from_array
from tests.support.sdk_oracle import (
    camel_case_keys,
    comparable,
    png_b64,
    png_pixels,
    sdk_data,
    sdk_lines,
    sdk_model,
    snake_keys_in,
    uncompressed_rle,
    with_uuid,
)
from worker.convert import NdjsonLine, convert
from worker.decode import Rejection, decode
from worker.plain import PredictionMessage as PlainMessage

Json = dict[str, Any]
RUN = "clmodelrun000000000000001"
GK = "img-1.jpg"
ROW_ID = "ckrb1sfjx099a0y914hl319ie"
CUID = "ckrb1sfkn099c0y910wbo0p1a"  # featureSchemaIds are 25-character cuids (the SDK checks the length)
CUID2 = "ckrb1sfl8099e0y919v260awv"
U1 = "7f3c0c9e-3d0f-4c59-a5b4-4bd3f6a1b001"
U2 = "7f3c0c9e-3d0f-4c59-a5b4-4bd3f6a1b002"


# --- helpers ---------------------------------------------------------------------------------------


def typed(*predictions: Json, data_row: Json | None = None) -> PredictionMessage:
    """A typed message built with our models."""
    return PredictionMessage.model_validate(
        {"model_run_id": RUN, "data_row": data_row or {"global_key": GK}, "predictions": list(predictions)}
    )


def lines_of(message: PredictionMessage | NdjsonMessage) -> list[Json]:
    """Our lines as parsed JSON, after checking that each line's bytes parse to its ``body``."""
    lines = convert(message)
    for line in lines:
        assert isinstance(line, NdjsonLine)
        assert b"\n" not in line.data
        assert json.loads(line.data) == line.body
        assert line.body["uuid"] == line.uuid
    return [json.loads(line.data) for line in lines]


def sdk_for(message: PredictionMessage, annotations: list[Any], got: list[Json]) -> list[Json]:
    """The SDK's lines for ``annotations``, each given the uuid of our line at the same position."""
    row = message.data_row
    data = sdk_data(global_key=row.global_key, data_row_id=row.id)
    return sdk_lines([with_uuid(a, line["uuid"]) for a, line in zip(annotations, got, strict=True)], data)


def canonical(lines: list[Json]) -> list[str]:
    """Lines as canonical JSON text: unlike ``==`` on parsed JSON, tells 1 from 1.0 and from true."""
    return [json.dumps(comparable(line), sort_keys=True) for line in lines]


def assert_matches_sdk(message: PredictionMessage, *annotations: Any) -> list[Json]:
    got = lines_of(message)
    expected = sdk_for(message, list(annotations), got)
    assert [comparable(line) for line in got] == [comparable(line) for line in expected]
    assert canonical(got) == canonical(expected)  # same JSON types too (float stays float)
    return got


def answer(name: str, **kwargs: Any) -> lb.ClassificationAnswer:
    return lb.ClassificationAnswer(name=name, **kwargs)


def sdk_radio(name: str, answer_: lb.ClassificationAnswer, **kwargs: Any) -> lb.ClassificationAnnotation:
    return lb.ClassificationAnnotation(name=name, value=lb.Radio(answer=answer_), **kwargs)


def sdk_checklist(name: str, *answers: lb.ClassificationAnswer, **kwargs: Any) -> lb.ClassificationAnnotation:
    return lb.ClassificationAnnotation(name=name, value=lb.Checklist(answer=list(answers)), **kwargs)


def box(**extra: Any) -> Json:
    return {
        "type": "bbox",
        "name": "box",
        "bbox": {"top": 977.0, "left": 1690.0, "height": 330.0, "width": 225.0},
        **extra,
    }


SDK_BBOX = {"top": 977.0, "left": 1690.0, "height": 330.0, "width": 225.0}
SDK_BOX = lb.Rectangle(start=lb.Point(x=1690.0, y=977.0), end=lb.Point(x=1915.0, y=1307.0))


MASK = np.zeros((7, 5), dtype=np.uint8)
MASK[1:5, 1:3] = 1
MASK[6, 4] = 1


# --- classifications -------------------------------------------------------------------------------


def test_radio_without_confidences() -> None:
    message = typed({"type": "radio", "name": "radio_question", "answer": {"name": "first_radio_answer"}})
    assert_matches_sdk(message, sdk_radio("radio_question", answer("first_radio_answer")))


def test_radio_with_question_and_answer_confidence() -> None:
    message = typed(
        {
            "type": "radio",
            "name": "radio_question",
            "confidence": 0.9,
            "answer": {"name": "first_radio_answer", "confidence": 0.81},
        }
    )
    got = assert_matches_sdk(
        message, sdk_radio("radio_question", answer("first_radio_answer", confidence=0.81), confidence=0.9)
    )
    assert got[0]["answer"] == {"name": "first_radio_answer", "confidence": 0.81}


def test_radio_confidence_zero_is_kept_like_the_sdk_does_for_classifications() -> None:
    message = typed(
        {"type": "radio", "name": "q", "confidence": 0.0, "answer": {"name": "a", "confidence": 0.0}}
    )
    got = assert_matches_sdk(message, sdk_radio("q", answer("a", confidence=0.0), confidence=0.0))
    assert got[0]["confidence"] == 0.0


def test_radio_answer_custom_metrics() -> None:
    message = typed(
        {
            "type": "radio",
            "name": "q",
            "answer": {"name": "a", "custom_metrics": [{"name": "m", "value": 0.2}]},
        }
    )
    got = assert_matches_sdk(
        message, sdk_radio("q", answer("a", custom_metrics=[SdkMetric(name="m", value=0.2)]))
    )
    assert got[0]["answer"]["customMetrics"] == [{"name": "m", "value": 0.2}]


def test_checklist_several_answers_with_confidences() -> None:
    message = typed(
        {
            "type": "checklist",
            "name": "checklist_question",
            "confidence": 0.6,
            "answers": [
                {"name": "first", "confidence": 0.5},
                {"name": "second"},
                {"name": "third", "confidence": 0.1, "custom_metrics": [{"name": "m", "value": 3.5}]},
            ],
        }
    )
    assert_matches_sdk(
        message,
        sdk_checklist(
            "checklist_question",
            answer("first", confidence=0.5),
            answer("second"),
            answer("third", confidence=0.1, custom_metrics=[SdkMetric(name="m", value=3.5)]),
            confidence=0.6,
        ),
    )


def test_free_text_with_confidence_and_custom_metrics() -> None:
    # The SDK takes a text's confidence from Text(confidence=…), not from the annotation (quirk).
    message = typed(
        {
            "type": "text",
            "name": "free_text",
            "answer": "sample text\nwith a second line",
            "confidence": 0.5,
            "custom_metrics": [{"name": "bleu", "value": 0.25}, {"name": "len", "value": 27}],
        }
    )
    metrics = [SdkMetric(name="bleu", value=0.25), SdkMetric(name="len", value=27)]
    text = lb.Text(answer="sample text\nwith a second line", confidence=0.5, custom_metrics=metrics)
    got = assert_matches_sdk(message, lb.ClassificationAnnotation(name="free_text", value=text))
    assert got[0]["confidence"] == 0.5


def test_free_text_without_confidence() -> None:
    message = typed({"type": "text", "name": "free_text", "answer": ""})
    got = assert_matches_sdk(message, lb.ClassificationAnnotation(name="free_text", value=lb.Text(answer="")))
    assert "confidence" not in got[0]


def test_sdk_quirk_text_annotation_confidence_is_ignored() -> None:
    # Documents why the oracle puts a text's confidence on Text: the annotation's own is dropped.
    annotation = lb.ClassificationAnnotation(
        name="t", confidence=0.7, value=lb.Text(answer="x"), extra={"uuid": U1}
    )
    (line,) = sdk_lines([annotation], sdk_data(global_key=GK))
    assert "confidence" not in line


def test_schema_ids_instead_of_names() -> None:
    message = typed(
        {"type": "radio", "schema_id": CUID, "answer": {"schema_id": CUID2, "confidence": 0.3}},
        {"type": "checklist", "schema_id": CUID, "answers": [{"schema_id": CUID2}, {"name": "by-name"}]},
        {"type": "text", "schema_id": CUID, "answer": "x"},
        {**box(), "name": None, "schema_id": CUID},
    )
    got = assert_matches_sdk(
        message,
        lb.ClassificationAnnotation(
            feature_schema_id=CUID,
            value=lb.Radio(answer=lb.ClassificationAnswer(feature_schema_id=CUID2, confidence=0.3)),
        ),
        lb.ClassificationAnnotation(
            feature_schema_id=CUID,
            value=lb.Checklist(answer=[lb.ClassificationAnswer(feature_schema_id=CUID2), answer("by-name")]),
        ),
        lb.ClassificationAnnotation(feature_schema_id=CUID, value=lb.Text(answer="x")),
        lb.ObjectAnnotation(feature_schema_id=CUID, value=SDK_BOX),
    )
    assert all("name" not in line and line["schemaId"] == CUID for line in got)


# --- objects ---------------------------------------------------------------------------------------


def test_bbox_with_confidence_and_custom_metrics() -> None:
    message = typed(box(confidence=0.92, custom_metrics=[{"name": "iou2", "value": 0.5}]))
    got = assert_matches_sdk(
        message,
        lb.ObjectAnnotation(
            name="box",
            value=SDK_BOX,
            confidence=0.92,
            custom_metrics=[SdkMetric(name="iou2", value=0.5)],
        ),
    )
    assert got[0]["bbox"] == {"top": 977.0, "left": 1690.0, "height": 330.0, "width": 225.0}
    assert got[0]["classifications"] == []


def test_point() -> None:
    message = typed(
        {"type": "point", "name": "point", "point": {"x": 1166.6, "y": 1441.7}, "confidence": 0.4}
    )
    assert_matches_sdk(
        message, lb.ObjectAnnotation(name="point", value=lb.Point(x=1166.6, y=1441.7), confidence=0.4)
    )


def test_polyline() -> None:
    points = [(2534.3, 249.4), (2429.4, 182.0), (2294.2, 221.2)]
    message = typed({"type": "polyline", "name": "polyline", "line": [{"x": x, "y": y} for x, y in points]})
    line = lb.Line(points=[lb.Point(x=x, y=y) for x, y in points])
    assert_matches_sdk(message, lb.ObjectAnnotation(name="polyline", value=line))


def test_polygon_is_closed_like_the_sdk_closes_it() -> None:
    points = [(1489.5, 183.9), (2278.3, 256.8), (2428.1, 200.4)]
    message = typed({"type": "polygon", "name": "polygon", "polygon": [{"x": x, "y": y} for x, y in points]})
    polygon = lb.Polygon(points=[lb.Point(x=x, y=y) for x, y in points])
    got = assert_matches_sdk(message, lb.ObjectAnnotation(name="polygon", value=polygon))
    assert got[0]["polygon"][-1] == got[0]["polygon"][0]
    assert len(got[0]["polygon"]) == 4


@pytest.mark.parametrize(
    "points",
    [
        pytest.param([(0.0, 0.0), (4.0, 0.0), (4.0, 3.0), (0.0, 0.0)], id="closed-square-ring"),
        pytest.param([(1.0, 1.0), (2.0, 5.0), (1.0, 1.0)], id="three-points-first-equals-last"),
        pytest.param([(-0.0, 0.0), (4.0, 0.0), (4.0, 3.0), (0.0, 0.0)], id="minus-zero-equals-zero"),
    ],
)
def test_polygon_already_closed_is_not_closed_twice(points: list[tuple[float, float]]) -> None:
    # What the SDK does (experiment): Polygon's validator appends the first point only when it differs
    # from the last (pydantic equality, so -0.0 == 0.0); an already-closed ring is left as given.
    message = typed({"type": "polygon", "name": "polygon", "polygon": [{"x": x, "y": y} for x, y in points]})
    polygon = lb.Polygon(points=[lb.Point(x=x, y=y) for x, y in points])
    got = assert_matches_sdk(message, lb.ObjectAnnotation(name="polygon", value=polygon))
    assert len(got[0]["polygon"]) == len(points)


def test_object_custom_metrics_and_confidence_on_every_object_kind() -> None:
    extra = {"confidence": 0.3, "custom_metrics": [{"name": "iou2", "value": 0.75}]}
    sdk_extra = {"confidence": 0.3, "custom_metrics": [SdkMetric(name="iou2", value=0.75)]}
    message = typed(
        {"type": "point", "name": "pt", "point": {"x": 1, "y": 2}, **extra},
        {"type": "polyline", "name": "ln", "line": [{"x": 1, "y": 2}, {"x": 3, "y": 4}], **extra},
        {
            "type": "polygon",
            "name": "pg",
            "polygon": [{"x": 1, "y": 2}, {"x": 3, "y": 4}, {"x": 5, "y": 1}],
            **extra,
        },
        {
            "type": "mask",
            "name": "mk",
            "mask": {"url": "https://example.com/m.png", "color": [1, 2, 3]},
            **extra,
        },
    )
    assert_matches_sdk(
        message,
        lb.ObjectAnnotation(name="pt", value=lb.Point(x=1, y=2), **sdk_extra),
        lb.ObjectAnnotation(
            name="ln", value=lb.Line(points=[lb.Point(x=1, y=2), lb.Point(x=3, y=4)]), **sdk_extra
        ),
        lb.ObjectAnnotation(
            name="pg",
            value=lb.Polygon(points=[lb.Point(x=1, y=2), lb.Point(x=3, y=4), lb.Point(x=5, y=1)]),
            **sdk_extra,
        ),
        lb.ObjectAnnotation(
            name="mk",
            value=lb.Mask(mask=lb.MaskData(url="https://example.com/m.png"), color=(1, 2, 3)),
            **sdk_extra,
        ),
    )


OBJECTS_AND_SDK = [
    pytest.param(box(), SDK_BOX, id="bbox"),
    pytest.param({"type": "point", "name": "box", "point": {"x": 1, "y": 2}}, lb.Point(x=1, y=2), id="point"),
    pytest.param(
        {"type": "polyline", "name": "box", "line": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]},
        lb.Line(points=[lb.Point(x=1, y=2), lb.Point(x=3, y=4)]),
        id="polyline",
    ),
    pytest.param(
        {"type": "polygon", "name": "box", "polygon": [{"x": 1, "y": 2}, {"x": 3, "y": 4}, {"x": 5, "y": 1}]},
        lb.Polygon(points=[lb.Point(x=1, y=2), lb.Point(x=3, y=4), lb.Point(x=5, y=1)]),
        id="polygon",
    ),
    pytest.param(
        {"type": "mask", "name": "box", "mask": {"png": png_b64(MASK)}},
        lb.Mask(mask=lb.MaskData.from_2D_arr(MASK), color=(1, 1, 1)),
        id="mask",
    ),
]


@pytest.mark.parametrize(("prediction", "geometry"), OBJECTS_AND_SDK)
def test_sdk_bug_object_confidence_zero_is_dropped_we_keep_it(prediction: Json, geometry: Any) -> None:
    # SDK bug 2: NDObject.from_common tests ``if annotation.confidence:``, so 0.0 vanishes and Labelbox
    # reads the missing confidence as 1.0. We keep 0.0; everything else equals the SDK's line.
    message = typed({**prediction, "confidence": 0.0})
    got = lines_of(message)
    (expected,) = sdk_for(message, [lb.ObjectAnnotation(name="box", value=geometry, confidence=0.0)], got)
    assert "confidence" not in expected
    assert got[0]["confidence"] == 0.0
    assert comparable(got[0]) == comparable({**expected, "confidence": 0.0})


# --- nested classifications ------------------------------------------------------------------------


def nested_ours(depth: int, level: int = 1, *, by_id: bool = False) -> list[Json]:
    """Classifications at ``level``: radio (odd levels) or checklist (even levels) + a text sibling.

    The first answer of the radio / checklist holds the next level, down to ``depth``. With ``by_id``
    every feature is referenced by schema id and every answer and text carries custom metrics.
    """
    if level > depth:
        return []

    def ref(name: str) -> Json:
        return {"schema_id": CUID} if by_id else {"name": name}

    metrics = {"custom_metrics": [{"name": f"m{level}", "value": level / 10}]} if by_id else {}
    first = {
        **ref(f"a{level}"),
        "confidence": level / 10,
        "classifications": nested_ours(depth, level + 1, by_id=by_id),
    }
    first = {**first, **metrics}
    question: Json = (
        {"type": "radio", **ref(f"radio{level}"), "answer": first}
        if level % 2
        else {"type": "checklist", **ref(f"checklist{level}"), "answers": [first, {**ref(f"b{level}")}]}
    )
    text = {"type": "text", **ref(f"text{level}"), "answer": f"level {level}", "confidence": 0.5, **metrics}
    return [question, text]


def nested_sdk(depth: int, level: int = 1, *, by_id: bool = False) -> list[lb.ClassificationAnnotation]:
    """The SDK objects equivalent to :func:`nested_ours`."""
    if level > depth:
        return []

    def ref(name: str) -> Json:
        return {"feature_schema_id": CUID} if by_id else {"name": name}

    metrics = [SdkMetric(name=f"m{level}", value=level / 10)] if by_id else None
    inner = nested_sdk(depth, level + 1, by_id=by_id) or None
    first = lb.ClassificationAnswer(
        **ref(f"a{level}"), confidence=level / 10, classifications=inner, custom_metrics=metrics
    )
    value = (
        lb.Radio(answer=first)
        if level % 2
        else lb.Checklist(answer=[first, lb.ClassificationAnswer(**ref(f"b{level}"))])
    )
    question = lb.ClassificationAnnotation(
        **ref(f"radio{level}" if level % 2 else f"checklist{level}"), value=value
    )
    text = lb.Text(answer=f"level {level}", confidence=0.5, custom_metrics=metrics)
    return [question, lb.ClassificationAnnotation(**ref(f"text{level}"), value=text)]


CONTAINERS = ["object", "radio-answer", "checklist-answer"]


def container(kind: str, depth: int, by_id: bool) -> tuple[Json, Any]:
    """(our prediction, SDK annotation) holding the nested classifications in an object or an answer."""
    ours, sdk = nested_ours(depth, by_id=by_id), nested_sdk(depth, by_id=by_id)
    if kind == "object":
        return box(classifications=ours), lb.ObjectAnnotation(name="box", value=SDK_BOX, classifications=sdk)
    if kind == "radio-answer":
        return (
            {"type": "radio", "name": "top", "answer": {"name": "x", "classifications": ours}},
            sdk_radio("top", answer("x", classifications=sdk)),
        )
    answers = [{"name": "y"}, {"name": "x", "classifications": ours}]
    return (
        {"type": "checklist", "name": "top", "answers": answers},
        sdk_checklist("top", answer("y"), answer("x", classifications=sdk)),
    )


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("kind", CONTAINERS)
def test_nested_classifications_by_name(depth: int, kind: str) -> None:
    # Names only and no custom metrics: no key that SDK bug 1 renames, so the SDK line is the oracle as is.
    prediction, annotation = container(kind, depth, by_id=False)
    assert_matches_sdk(typed(prediction), annotation)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("kind", CONTAINERS)
def test_sdk_bug_snake_case_keys_under_answers_we_emit_camel_case(depth: int, kind: str) -> None:
    # SDK bug 1: NDAnswer re-dumps its classifications with ``model_dump(exclude_none=True)`` (no
    # by_alias), so under an answer the SDK writes ``schema_id`` / ``custom_metrics``. We emit
    # camelCase at every depth; with those keys renamed, our line equals the SDK's.
    prediction, annotation = container(kind, depth, by_id=True)
    message = typed(prediction)
    got = lines_of(message)
    (expected,) = sdk_for(message, [annotation], got)
    assert snake_keys_in(got) == set()
    under_answer = kind != "object" or depth > 1  # an object's own classifications are dumped by alias
    assert snake_keys_in(expected) == ({"schema_id", "custom_metrics"} if under_answer else set())
    assert got == [camel_case_keys(expected)]


def test_sdk_quirk_nested_question_confidence_is_dropped_we_keep_it() -> None:
    # Not among the commonly listed SDK quirks: for a *nested* radio / checklist the SDK's NDRadioSubclass /
    # NDChecklistSubclass.from_common never read the annotation's confidence, so a question-level
    # confidence is lost (the NDJSON models do have the field; the documented nested shape has
    # ``"confidence"?``). Nested text keeps it (read from Text). We keep it on every kind.
    message = typed(
        box(
            classifications=[
                {"type": "radio", "name": "r", "confidence": 0.4, "answer": {"name": "a", "confidence": 0.2}},
                {"type": "checklist", "name": "c", "confidence": 0.6, "answers": [{"name": "a"}]},
            ]
        )
    )
    got = lines_of(message)
    annotation = lb.ObjectAnnotation(
        name="box",
        value=SDK_BOX,
        classifications=[
            sdk_radio("r", answer("a", confidence=0.2), confidence=0.4),
            sdk_checklist("c", answer("a"), confidence=0.6),
        ],
    )
    (expected,) = sdk_for(message, [annotation], got)
    assert [c.get("confidence") for c in expected["classifications"]] == [None, None]
    assert [c["confidence"] for c in got[0]["classifications"]] == [0.4, 0.6]
    for ours in got[0]["classifications"]:
        del ours["confidence"]
    assert got == [expected]


# --- masks -----------------------------------------------------------------------------------------


def mask_message(mask: Any, **extra: Any) -> PredictionMessage:
    return typed({"type": "mask", "name": "mask", "mask": mask, **extra})


def sdk_mask(mask: lb.Mask, **extra: Any) -> lb.ObjectAnnotation:
    return lb.ObjectAnnotation(name="mask", value=mask, **extra)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(MASK.astype(bool), id="bool"),
        pytest.param(MASK, id="uint8-0-1"),
        pytest.param(MASK * 255, id="uint8-0-255"),
        pytest.param(MASK.astype(np.int64) * 7, id="int64-0-7"),
    ],
)
def test_mask_from_numpy_array(array: np.ndarray[Any, Any]) -> None:
    message = mask_message(mask_from_array(array), confidence=0.7)
    got = assert_matches_sdk(
        message, sdk_mask(lb.Mask(mask=lb.MaskData.from_2D_arr(MASK), color=(1, 1, 1)), confidence=0.7)
    )
    assert png_pixels(got[0]["mask"]["png"]) == MASK.tolist()


def test_mask_from_class_map_like_the_sdk_selects_one_class_by_colour() -> None:
    classes = np.zeros((6, 6), dtype=np.uint8)
    classes[:3, :] = 3
    classes[4:, 2:] = 7
    message = mask_message(mask_from_array(classes == 7))
    assert_matches_sdk(message, sdk_mask(lb.Mask(mask=lb.MaskData.from_2D_arr(classes), color=(7, 7, 7))))


def test_mask_from_rgb_array_and_colour() -> None:
    rgb = np.zeros((5, 6, 3), dtype=np.uint8)
    rgb[1:3, 2:5] = (255, 0, 0)
    rgb[4, :] = (0, 255, 0)
    rgb[0, 0] = (255, 0, 1)  # close to the colour but not it
    message = mask_message(mask_from_array(rgb, color=(255, 0, 0)))
    got = assert_matches_sdk(message, sdk_mask(lb.Mask(mask=lb.MaskData(arr=rgb), color=(255, 0, 0))))
    assert np.array(png_pixels(got[0]["mask"]["png"])).sum() == 6


def test_mask_from_url_and_colour() -> None:
    url = "https://storage.example.com/masks/img-1.png?sig=abc&x=1"
    message = mask_message({"url": url, "color": [255, 255, 255]})
    got = assert_matches_sdk(message, sdk_mask(lb.Mask(mask=lb.MaskData(url=url), color=(255, 255, 255))))
    assert got[0]["mask"] == {"instanceURI": url, "colorRGB": [255, 255, 255]}


@pytest.mark.parametrize("form", ["list", "string"])
def test_mask_from_coco_rle(form: str) -> None:
    encoded = coco_mask.encode(np.asfortranarray(MASK))
    counts: Any = encoded["counts"].decode() if form == "string" else uncompressed_rle(MASK)
    if form == "list":  # the two encodings describe the same mask
        assert coco_mask.frPyObjects({"size": list(MASK.shape), "counts": counts}, *MASK.shape) == encoded
    message = mask_message({"rle": {"size": list(encoded["size"]), "counts": counts}})
    got = assert_matches_sdk(message, sdk_mask(lb.Mask(mask=lb.MaskData.from_2D_arr(MASK), color=(1, 1, 1))))
    assert png_pixels(got[0]["mask"]["png"]) == MASK.tolist()


def test_mask_from_coco_rle_that_starts_inside() -> None:
    array = 1 - MASK  # pixel (0, 0) inside: the counts start with a zero-length background run
    encoded = coco_mask.encode(np.asfortranarray(array))
    counts = uncompressed_rle(array)
    assert counts[0] == 0
    for rle in (
        {"size": list(array.shape), "counts": counts},
        {**encoded, "counts": encoded["counts"].decode()},
    ):
        message = mask_message({"rle": rle})
        assert_matches_sdk(message, sdk_mask(lb.Mask(mask=lb.MaskData.from_2D_arr(array), color=(1, 1, 1))))


@pytest.mark.parametrize(
    ("png", "passed_through"),
    [
        pytest.param(png_b64(MASK), True, id="L-0-1"),
        pytest.param(png_b64(MASK * 255), False, id="L-0-255"),
        pytest.param(png_b64(MASK.astype(bool)), False, id="mode-1"),
        pytest.param(png_b64(MASK.astype(np.uint16) * 300), False, id="I16"),
    ],
)
def test_mask_inline_png(png: str, passed_through: bool) -> None:
    message = mask_message({"png": png}, classifications=[{"type": "text", "name": "t", "answer": "x"}])
    text = lb.ClassificationAnnotation(name="t", value=lb.Text(answer="x"))
    got = assert_matches_sdk(
        message,
        sdk_mask(lb.Mask(mask=lb.MaskData.from_2D_arr(MASK), color=(1, 1, 1)), classifications=[text]),
    )
    assert (got[0]["mask"]["png"] == png) is passed_through


# --- metrics ---------------------------------------------------------------------------------------
# Experiment: the SDK writes a metric's uuid when one is given as extra={"uuid": …} and none otherwise
# (test_sdk_quirk_metric_without_uuid). The oracle passes our uuid, so metric lines compare whole.


@pytest.mark.parametrize("aggregation", ["ARITHMETIC_MEAN", "GEOMETRIC_MEAN", "HARMONIC_MEAN", "SUM"])
def test_scalar_metric_plain_value_and_aggregations(aggregation: str) -> None:
    message = typed(
        {"type": "scalar_metric", "metric_name": "custom_iou", "value": 0.5, "aggregation": aggregation}
    )
    got = assert_matches_sdk(
        message,
        lb.ScalarMetric(
            value=0.5, metric_name="custom_iou", aggregation=lb.ScalarMetricAggregation[aggregation]
        ),
    )
    assert got[0]["aggregation"] == aggregation
    assert "name" not in got[0]
    assert "schemaId" not in got[0]


def test_scalar_metric_defaults_without_a_name() -> None:
    message = typed({"type": "scalar_metric", "value": 12})
    got = assert_matches_sdk(message, lb.ScalarMetric(value=12))
    assert got[0]["aggregation"] == "ARITHMETIC_MEAN"
    assert "metricName" not in got[0]


def test_scalar_metric_per_threshold_with_feature_and_subclass() -> None:
    value = {0.1: 0.2, 0.5: 0.7, 1: 0.0, 0.05: 100_000_000}
    message = typed(
        {
            "type": "scalar_metric",
            "metric_name": "custom_iou",
            "feature_name": "bounding_box",
            "subclass_name": "first_radio_answer",
            "value": {str(k): v for k, v in value.items()},
            "aggregation": "SUM",
        }
    )
    got = assert_matches_sdk(
        message,
        lb.ScalarMetric(
            value=value,
            metric_name="custom_iou",
            feature_name="bounding_box",
            subclass_name="first_radio_answer",
            aggregation=lb.ScalarMetricAggregation.SUM,
        ),
    )
    assert set(got[0]["metricValue"]) == {"0.1", "0.5", "1.0", "0.05"}


def test_confusion_matrix_metric_plain() -> None:
    message = typed(
        {
            "type": "confusion_matrix_metric",
            "metric_name": "cm",
            "feature_name": "bounding_box",
            "value": [1, 2, 3, 4],
        }
    )
    got = assert_matches_sdk(
        message, lb.ConfusionMatrixMetric(value=(1, 2, 3, 4), metric_name="cm", feature_name="bounding_box")
    )
    assert got[0]["aggregation"] == "CONFUSION_MATRIX"


def test_confusion_matrix_metric_per_threshold() -> None:
    value = {0.1: (1, 2, 3, 4), 0.9: (0, 0, 0, 10_000_000_000)}
    message = typed(
        {
            "type": "confusion_matrix_metric",
            "metric_name": "cm",
            "subclass_name": "s",
            "value": {str(k): list(v) for k, v in value.items()},
        }
    )
    assert_matches_sdk(message, lb.ConfusionMatrixMetric(value=value, metric_name="cm", subclass_name="s"))


def test_sdk_quirk_metric_without_uuid() -> None:
    # Without extra={"uuid"} the SDK writes no uuid on a metric (objects and classifications get a
    # random one). Our converter always emits one (uuids must be unique in an import); the rest is equal.
    message = typed(
        {"type": "scalar_metric", "metric_name": "m", "value": 0.5},
        {"type": "confusion_matrix_metric", "metric_name": "cm", "value": [1, 2, 3, 4]},
    )
    got = lines_of(message)
    expected = sdk_lines(
        [
            lb.ScalarMetric(value=0.5, metric_name="m"),
            lb.ConfusionMatrixMetric(value=(1, 2, 3, 4), metric_name="cm"),
        ],
        sdk_data(global_key=GK),
    )
    assert all("uuid" not in line for line in expected)
    assert all(uuid.UUID(line["uuid"]) for line in got)
    assert [{k: v for k, v in line.items() if k != "uuid"} for line in got] == expected


# --- data rows, whole messages, payload formats ----------------------------------------------------


def test_data_row_by_id() -> None:
    message = typed(box(), {"type": "scalar_metric", "value": 0.5}, data_row={"id": ROW_ID})
    got = assert_matches_sdk(
        message, lb.ObjectAnnotation(name="box", value=SDK_BOX), lb.ScalarMetric(value=0.5)
    )
    assert all(line["dataRow"] == {"id": ROW_ID} for line in got)


DESIGN_EXAMPLE = {
    "model_run_id": RUN,
    "data_row": {"global_key": GK},
    "message_id": "producer-42",
    "predictions": [
        box(
            name="bounding_box",
            confidence=0.92,
            classifications=[
                {
                    "type": "radio",
                    "name": "sub_radio_question",
                    "answer": {"name": "first_sub_radio_answer", "confidence": 0.5},
                }
            ],
        ),
        {
            "type": "radio",
            "name": "radio_question",
            "confidence": 0.8,
            "answer": {"name": "first_radio_answer"},
        },
        {"type": "checklist", "name": "checklist_question", "answers": [{"name": "a", "confidence": 0.7}]},
        {"type": "text", "name": "free_text", "answer": "sample text", "confidence": 0.5},
        {"type": "point", "name": "point", "point": {"x": 1166.6, "y": 1441.7}},
        {
            "type": "polyline",
            "name": "polyline",
            "line": [{"x": 2534.3, "y": 249.4}, {"x": 2429.4, "y": 182.0}],
        },
        {
            "type": "polygon",
            "name": "polygon",
            "polygon": [{"x": 1489.5, "y": 183.9}, {"x": 2278.3, "y": 256.8}, {"x": 2428.1, "y": 200.4}],
        },
        {"type": "mask", "name": "mask", "mask": {"png": png_b64(MASK * 255)}},
        {
            "type": "mask",
            "name": "mask",
            "mask": {"url": "https://example.com/mask.png", "color": [255, 255, 255]},
        },
        {
            "type": "mask",
            "name": "mask",
            "mask": {
                "rle": {
                    "size": list(MASK.shape),
                    "counts": coco_mask.encode(np.asfortranarray(MASK))["counts"].decode(),
                }
            },
        },
        {"type": "scalar_metric", "metric_name": "custom_iou", "value": 0.5, "feature_name": "bounding_box"},
        {"type": "confusion_matrix_metric", "metric_name": "cm", "value": [1, 2, 3, 4]},
    ],
}


def design_example_sdk() -> list[Any]:
    binary = lb.Mask(mask=lb.MaskData.from_2D_arr(MASK), color=(1, 1, 1))
    return [
        lb.ObjectAnnotation(
            name="bounding_box",
            value=SDK_BOX,
            confidence=0.92,
            classifications=[
                sdk_radio("sub_radio_question", answer("first_sub_radio_answer", confidence=0.5))
            ],
        ),
        sdk_radio("radio_question", answer("first_radio_answer"), confidence=0.8),
        sdk_checklist("checklist_question", answer("a", confidence=0.7)),
        lb.ClassificationAnnotation(name="free_text", value=lb.Text(answer="sample text", confidence=0.5)),
        lb.ObjectAnnotation(name="point", value=lb.Point(x=1166.6, y=1441.7)),
        lb.ObjectAnnotation(
            name="polyline", value=lb.Line(points=[lb.Point(x=2534.3, y=249.4), lb.Point(x=2429.4, y=182.0)])
        ),
        lb.ObjectAnnotation(
            name="polygon",
            value=lb.Polygon(
                points=[lb.Point(x=1489.5, y=183.9), lb.Point(x=2278.3, y=256.8), lb.Point(x=2428.1, y=200.4)]
            ),
        ),
        lb.ObjectAnnotation(name="mask", value=binary),
        lb.ObjectAnnotation(
            name="mask",
            value=lb.Mask(mask=lb.MaskData(url="https://example.com/mask.png"), color=(255, 255, 255)),
        ),
        lb.ObjectAnnotation(name="mask", value=binary),
        lb.ScalarMetric(value=0.5, metric_name="custom_iou", feature_name="bounding_box"),
        lb.ConfusionMatrixMetric(value=(1, 2, 3, 4), metric_name="cm"),
    ]


def test_design_example_as_json_bytes_through_decode() -> None:
    message = decode(orjson.dumps(DESIGN_EXAMPLE))
    assert isinstance(message, PlainMessage), message
    got = assert_matches_sdk(message, *design_example_sdk())
    assert len({line["uuid"] for line in got}) == len(got)


# --- NDJSON payload format -------------------------------------------------------------------------


def ndjson_message(lines: list[Json]) -> NdjsonMessage | Rejection:
    return decode(orjson.dumps({"model_run_id": RUN, "ndjson": lines}))


def sdk_example_lines() -> list[Json]:
    """SDK-serialized lines of every type (the nesting uses names: no SDK bug 1 keys in them)."""
    annotations = [
        *design_example_sdk(),
        lb.ObjectAnnotation(name="box", value=SDK_BOX, classifications=nested_sdk(3), confidence=0.1),
        sdk_radio(
            "top",
            answer("x", classifications=nested_sdk(3), custom_metrics=[SdkMetric(name="m", value=1)]),
        ),
        lb.ScalarMetric(
            value={0.1: 0.2, 0.5: 0.7}, metric_name="m2", aggregation=lb.ScalarMetricAggregation.HARMONIC_MEAN
        ),
        lb.ConfusionMatrixMetric(value={0.1: (1, 2, 3, 4), 0.9: (0, 0, 0, 1)}, metric_name="cm2"),
    ]
    uuids = [str(uuid.UUID(int=i + 1, version=4)) for i in range(len(annotations))]
    return sdk_lines(
        [with_uuid(a, u) for a, u in zip(annotations, uuids, strict=True)], sdk_data(global_key=GK)
    )


def test_ndjson_format_passes_sdk_lines_through() -> None:
    lines = sdk_example_lines()
    message = ndjson_message(lines)
    assert isinstance(message, NdjsonMessage), message
    got = lines_of(message)
    assert got == lines  # uuids given: kept; masks untouched (byte-identical base64)


def test_ndjson_format_fills_missing_uuids_deterministically() -> None:
    lines = [{k: v for k, v in line.items() if k != "uuid"} for line in sdk_example_lines()]
    lines[0]["uuid"] = U1
    message = ndjson_message(lines)
    assert isinstance(message, NdjsonMessage), message
    got = lines_of(message)
    assert got[0]["uuid"] == U1
    assert len({line["uuid"] for line in got}) == len(got)
    assert [{k: v for k, v in line.items() if k != "uuid"} for line in got[1:]] == lines[1:]
    assert lines_of(ndjson_message(lines)) == got


def test_ndjson_format_mixed_data_rows() -> None:
    lines = sdk_example_lines()[:3]
    lines[1]["dataRow"] = {"id": ROW_ID}
    message = ndjson_message(lines)
    assert isinstance(message, NdjsonMessage), message
    assert [line.data_row for line in convert(message)] == [GK, ROW_ID, GK]
    assert lines_of(message) == lines


def test_ndjson_format_equals_typed_format_for_the_same_annotations() -> None:
    typed_lines = lines_of(typed(*DESIGN_EXAMPLE["predictions"]))
    message = ndjson_message(typed_lines)
    assert isinstance(message, NdjsonMessage), message
    assert lines_of(message) == typed_lines


def test_ndjson_format_takes_sdk_bug_snake_case_keys_and_emits_camel_case() -> None:
    # A line straight from the SDK carries SDK bug 1 keys (schema ids and custom metrics under an
    # answer); the NDJSON format takes it, as Labelbox's own SDK wrote it, and passes it on camelCase.
    annotation = sdk_radio("q", answer("a", classifications=nested_sdk(2, by_id=True)))
    (line,) = sdk_lines([with_uuid(annotation, U1)], sdk_data(global_key=GK))
    assert snake_keys_in(line) == {"schema_id", "custom_metrics"}
    message = ndjson_message([line])
    assert isinstance(message, NdjsonMessage), message
    assert lines_of(message) == [camel_case_keys(line)]
    assert lines_of(ndjson_message([camel_case_keys(line)])) == [camel_case_keys(line)]


def test_ndjson_format_refuses_a_key_spelled_both_ways() -> None:
    nested = {"schemaId": CUID, "schema_id": CUID, "answer": "x"}
    line = {"dataRow": {"globalKey": GK}, "name": "q", "answer": {"name": "a", "classifications": [nested]}}
    rejection = ndjson_message([line])
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "unknown_field"
    assert rejection.errors[0] == (
        "ndjson.0.answer.classifications.0.schema_id: Extra inputs are not permitted ('schema_id' is taken "
        "only inside an answer's classifications, where Labelbox's SDK writes it, and not together with "
        "'schemaId')"
    )
    metrics = [{"name": "m", "value": 1.0}]
    twice = {"name": "t", "answer": "x", "custom_metrics": metrics, "customMetrics": metrics}
    rejection = ndjson_message([{**line, "answer": {"name": "a", "classifications": [twice]}}])
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "unknown_field"
    assert rejection.errors[0].startswith("ndjson.0.answer.classifications.0.custom_metrics: ")


def test_ndjson_format_snake_case_only_where_the_sdk_writes_it() -> None:
    # The SDK writes snake_case only inside an answer's classifications; elsewhere it stays unknown.
    lines = [
        {"dataRow": {"globalKey": GK}, "schema_id": CUID, "answer": "x"},
        {"dataRow": {"globalKey": GK}, "name": "q", "answer": {"schema_id": CUID}},
        {"dataRow": {"globalKey": GK}, "name": "box", "bbox": SDK_BBOX, "custom_metrics": []},
        {
            "dataRow": {"globalKey": GK},
            "name": "box",
            "bbox": SDK_BBOX,
            "classifications": [{"schema_id": CUID, "answer": "x"}],
        },
    ]
    paths = ["ndjson.0.schema_id", "ndjson.0.answer.schema_id", "ndjson.0.custom_metrics"]
    paths.append("ndjson.0.classifications.0.schema_id")
    for line, path in zip(lines, paths, strict=True):
        rejection = ndjson_message([line])
        assert isinstance(rejection, Rejection)
        assert (rejection.reason, rejection.errors[0].split(":")[0]) == ("unknown_field", path)
        assert "is taken only inside an answer's classifications" in rejection.errors[0]


@pytest.mark.parametrize(
    "png",
    [
        pytest.param(png_b64(MASK * 255), id="L-0-255"),
        pytest.param(png_b64(MASK.astype(np.uint16)), id="I16-0-1"),
    ],
)
def test_ndjson_format_inline_mask_reaches_labelbox_as_a_0_1_png(png: str) -> None:
    line = {"dataRow": {"globalKey": GK}, "name": "mask", "mask": {"png": png}, "classifications": []}
    message = ndjson_message([line])
    if isinstance(message, Rejection):  # rejecting the line is a fix too
        return
    (got,) = lines_of(message)
    assert png_pixels(got["mask"]["png"]) == MASK.tolist()  # 8-bit, single channel, 0/1, same pixels
    NDObject.to_common(sdk_model(got))


# --- determinism and uuids -------------------------------------------------------------------------


def test_same_message_same_bytes() -> None:
    value = orjson.dumps(DESIGN_EXAMPLE)
    first, second = decode(value), decode(value)
    assert isinstance(first, PlainMessage)
    assert isinstance(second, PlainMessage)
    data = [line.data for line in convert(first)]
    assert data == [line.data for line in convert(second)]
    assert data == [line.data for line in convert(first)]
    _, republished = PredictionMessage.model_validate_json(value).to_kafka()
    again = decode(republished)
    assert isinstance(again, PlainMessage)
    assert [line.data for line in convert(again)] == data


def uuids(message: PredictionMessage) -> list[str]:
    return [line.uuid for line in convert(message)]


def test_different_position_different_uuid() -> None:
    point = {"type": "point", "name": "pt", "point": {"x": 1, "y": 2}}
    first, second = uuids(typed(box(), point)), uuids(typed(point, box()))
    assert set(first).isdisjoint(second)
    twice = uuids(typed(point, point))  # the same prediction twice in one message: two uuids
    assert twice[0] != twice[1]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"confidence": 0.5}, id="confidence"),
        pytest.param({"name": "other"}, id="name"),
        pytest.param(
            {"bbox": {"top": 977.0, "left": 1690.0, "height": 330.0, "width": 225.5}}, id="geometry"
        ),
        pytest.param({"classifications": [{"type": "text", "name": "t", "answer": "x"}]}, id="nested"),
    ],
)
def test_different_content_different_uuid(change: Json) -> None:
    assert uuids(typed(box())) != uuids(typed(box(**change)))


def test_different_model_run_or_data_row_different_uuid() -> None:
    base = typed(box())
    other_run = PredictionMessage.model_validate(
        {**base.model_dump(exclude_none=True), "model_run_id": "run-2"}
    )
    assert uuids(base) != uuids(other_run)
    assert uuids(base) != uuids(typed(box(), data_row={"global_key": "img-2.jpg"}))
    assert uuids(base) != uuids(typed(box(), data_row={"id": GK}))


def test_message_id_does_not_change_uuids() -> None:
    # Redelivered or re-sent predictions must carry the same uuids: the producer's message id is not content.
    with_id = PredictionMessage.model_validate(
        {**typed(box()).model_dump(exclude_none=True), "message_id": "m-1"}
    )
    assert uuids(with_id) == uuids(typed(box()))


def test_explicit_uuid_passed_through() -> None:
    message = typed(
        box(uuid=U1),
        {"type": "scalar_metric", "value": 0.5, "uuid": U2.upper()},
        {"type": "text", "name": "t", "answer": "x"},
    )
    got = uuids(message)
    assert got[:2] == [U1, U2]  # normalised to the canonical lower-case form
    assert uuid.UUID(got[2]).version == 5
    u3 = "00000000-0000-4000-8000-000000000003"
    lines = lines_of(message)
    ndjson = ndjson_message([{**lines[0], "uuid": u3}, *lines[1:]])
    assert isinstance(ndjson, NdjsonMessage), ndjson
    assert [line.uuid for line in convert(ndjson)] == [u3, *got[1:]]


def test_data_parses_to_body_for_every_line() -> None:
    message = decode(orjson.dumps(DESIGN_EXAMPLE))
    assert isinstance(message, PlainMessage)
    for line in convert(message):
        assert orjson.loads(line.data) == line.body
        assert json.loads(line.data.decode("utf-8")) == line.body
        assert line.data_row == GK
        assert line.feature == line.body.get("name")  # every feature here is by name; None for metrics
