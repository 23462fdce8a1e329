"""worker.ontology: NDJSON lines, exactly as the worker converts them, checked against a normalized ontology.

The ontology is tests/data/ontology_every_type.json (also loaded into the sandbox by integration tests and
the demo): a rectangle ``box`` with a nested radio ``sub`` whose option ``s1`` holds a checklist
``sub_detail`` and a radio ``sub_grade`` (depth 2), a nested checklist ``box_flags`` and text ``box_note``;
polygon ``pg``, point ``pt``, line ``ln``, raster-segmentation ``mk``; top-level radio ``q`` (option ``a``
holds another radio ``sub``, with its own featureSchemaIds, whose ``s1`` holds a checklist ``sub_detail``),
checklist ``cl`` (option ``b`` holds a radio ``cl_reason``) and text ``tx``. Every message of
``tests.support.factories.every_type`` fits it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import MESSAGE_ADAPTER, PredictionMessage
from tests.support import factories
from worker.convert import convert
from worker.ontology import (
    CONFLICTING_REFERENCE,
    MALFORMED_LINE,
    MISPLACED_CLASSIFICATION,
    UNKNOWN_ANSWER,
    UNKNOWN_FEATURE,
    WRONG_CLASSIFICATION_TYPE,
    WRONG_TOOL_TYPE,
    Mismatch,
    Ontology,
)

Json = dict[str, Any]
CODES = {
    UNKNOWN_FEATURE,
    WRONG_TOOL_TYPE,
    WRONG_CLASSIFICATION_TYPE,
    UNKNOWN_ANSWER,
    MISPLACED_CLASSIFICATION,
    CONFLICTING_REFERENCE,
    MALFORMED_LINE,
}
NORMALIZED: Json = factories.ontology_every_type()
ONTOLOGY = Ontology.from_normalized(NORMALIZED)


GEOMETRY: dict[str, Json] = {
    "rectangle": {"type": "bbox", "bbox": {"top": 1, "left": 2, "height": 3, "width": 4}},
    "polygon": {
        "type": "polygon",
        "polygon": [factories.point(), factories.point(3, 4), factories.point(5, 1)],
    },
    "point": {"type": "point", "point": factories.point()},
    "line": {"type": "polyline", "line": [factories.point(), factories.point(3, 4)]},
    "raster-segmentation": {
        "type": "mask",
        "mask": {"url": "https://example.invalid/m.png", "color": [255, 0, 0]},
    },
}


# --- helpers ---------------------------------------------------------------------------------------


def node(*chain: str) -> Json:
    """The ontology node at a chain of names: a feature, then alternately an option value and a nested
    classification name (``node("q", "a", "sub", "s1")`` is option s1 of the radio under q's answer a)."""
    first, *rest = chain
    found: Json = next(
        f for f in [*NORMALIZED["tools"], *NORMALIZED["classifications"]] if f["name"] == first
    )
    for name in rest:
        children: list[Json] = found.get("classifications") or found.get("options") or []
        found = next(child for child in children if child.get("name", child.get("value")) == name)
    return found


def sid(*chain: str) -> str:
    return str(node(*chain)["featureSchemaId"])


def ref(by: str, *chain: str) -> Json:
    """A typed-format reference to the node at ``chain``, by ``name`` or by ``schema_id``."""
    return {"name": chain[-1]} if by == "name" else {"schema_id": sid(*chain)}


def bodies(*predictions: Json) -> list[Json]:
    """The NDJSON lines the worker uploads for a typed message of these predictions."""
    message = PredictionMessage.model_validate(factories.message(*predictions))
    return [line.body for line in convert(message)]


def check_one(prediction: Json) -> Mismatch | None:
    (body,) = bodies(prediction)
    return ONTOLOGY.check(body)


def found(mismatch: Mismatch | None) -> Mismatch:
    assert mismatch is not None
    return mismatch


def radio(*chain: str, answer: Json, by: str = "name") -> Json:
    return {"type": "radio", **ref(by, *chain), "answer": answer}


def checklist(*chain: str, answers: list[Json], by: str = "name") -> Json:
    return {"type": "checklist", **ref(by, *chain), "answers": answers}


def answer(*chain: str, by: str = "name", nested: list[Json] | None = None) -> Json:
    return {**ref(by, *chain), "classifications": nested or []}


def box(*nested: Json, by: str = "name") -> Json:
    return factories.bbox(**{"name": None, **ref(by, "box"), "classifications": list(nested)})


def deep_predictions(by: str) -> list[Json]:
    """Every nesting the fixture allows, at depths 1 and 2, under a tool and under answers."""
    s1 = ("box", "sub", "s1")
    qs1 = ("q", "a", "sub", "s1")
    return [
        box(
            radio(
                "box",
                "sub",
                by=by,
                answer=answer(
                    *s1,
                    by=by,
                    nested=[
                        checklist(*s1, "sub_detail", by=by, answers=[answer(*s1, "sub_detail", "d1", by=by)]),
                        radio(*s1, "sub_grade", by=by, answer=answer(*s1, "sub_grade", "g2", by=by)),
                    ],
                ),
            ),
            checklist("box", "box_flags", by=by, answers=[answer("box", "box_flags", "truncated", by=by)]),
            {"type": "text", **ref(by, "box", "box_note"), "answer": "partly hidden"},
            by=by,
        ),
        radio(
            "q",
            by=by,
            answer=answer(
                "q",
                "a",
                by=by,
                nested=[
                    radio(
                        "q",
                        "a",
                        "sub",
                        by=by,
                        answer=answer(
                            *qs1,
                            by=by,
                            nested=[
                                checklist(
                                    *qs1, "sub_detail", by=by, answers=[answer(*qs1, "sub_detail", "d2")]
                                )
                            ],
                        ),
                    )
                ],
            ),
        ),
        checklist(
            "cl",
            by=by,
            answers=[
                answer("cl", "a", by=by),
                answer("cl", "b", by=by, nested=[radio("cl", "b", "cl_reason", by=by, answer=answer("r2"))]),
            ],
        ),
        {"type": "text", **ref(by, "tx"), "answer": "a sunny day"},
        {
            "type": "polygon",
            **ref(by, "pg"),
            "polygon": [factories.point(), factories.point(3, 4), factories.point(5, 1)],
        },
        {"type": "point", **ref(by, "pt"), "point": factories.point()},
        {"type": "polyline", **ref(by, "ln"), "line": [factories.point(), factories.point(3, 4)]},
        {
            "type": "mask",
            **ref(by, "mk"),
            "mask": {"url": "https://example.invalid/m.png", "color": [255, 0, 0]},
        },
    ]


# --- lines that fit ------------------------------------------------------------------------------


def test_every_factory_type_fits() -> None:
    lines = bodies(*factories.every_type())
    assert len(lines) == len(factories.every_type())
    assert [ONTOLOGY.check(body) for body in lines] == [None] * len(lines)


def test_ndjson_format_lines_fit_as_passed_through() -> None:
    typed = bodies(*factories.every_type())
    for body in typed:
        body.pop("uuid")
    message = MESSAGE_ADAPTER.validate_python({"model_run_id": "mr-1", "ndjson": typed})
    assert [ONTOLOGY.check(line.body) for line in convert(message)] == [None] * len(typed)


@pytest.mark.parametrize("by", ["name", "schema_id"])
def test_every_nesting_fits_by_name_and_by_schema_id(by: str) -> None:
    lines = bodies(*deep_predictions(by))
    key = "name" if by == "name" else "schemaId"
    assert all(key in body for body in lines)
    assert [ONTOLOGY.check(body) for body in lines] == [None] * len(lines)


def test_metric_lines_fit_with_a_known_feature_name_or_none() -> None:
    metrics: list[Json] = [
        {"type": "scalar_metric", "value": 0.5, "feature_name": "box"},
        {"type": "scalar_metric", "value": 0.5, "feature_name": "q", "subclass_name": "anything"},
        {"type": "confusion_matrix_metric", "metric_name": "cm", "value": [1, 2, 3, 4]},
    ]
    assert [ONTOLOGY.check(body) for body in bodies(*metrics)] == [None, None, None]


# --- lines that do not fit -------------------------------------------------------------------------

S1 = ("box", "sub", "s1")
QS1 = ("q", "a", "sub", "s1")


def in_box_s1(*nested: Json) -> Json:
    """A box whose radio ``sub`` is answered ``s1``, holding ``nested`` (depth 2 under a tool)."""
    return box(radio("box", "sub", answer=answer("s1", nested=list(nested))))


def in_q_a_s1(*nested: Json) -> Json:
    """Radio ``q`` answered ``a``, whose radio ``sub`` is answered ``s1``, holding ``nested`` (depth 2
    under a question's answer)."""
    return radio(
        "q", answer=answer("a", nested=[radio("q", "a", "sub", answer=answer("s1", nested=list(nested)))])
    )


MISMATCHES: list[tuple[str, Json, str, str]] = [
    ("unknown tool name", factories.bbox(name="car"), UNKNOWN_FEATURE, "name"),
    (
        "unknown schema id",
        factories.bbox(name=None, schema_id="clq8zzzzzzzzzzzzzzzzzzzzz"),
        UNKNOWN_FEATURE,
        "schemaId",
    ),
    ("unknown question", radio("weather", answer=answer("a")), UNKNOWN_FEATURE, "name"),
    ("bbox on a polygon tool", factories.bbox(name="pg"), WRONG_TOOL_TYPE, "bbox"),
    (
        "mask on a rectangle tool",
        {"type": "mask", "name": "box", "mask": {"url": "https://x.invalid/m.png", "color": [1, 2, 3]}},
        WRONG_TOOL_TYPE,
        "mask",
    ),
    (
        "polyline on a point tool",
        {"type": "polyline", "name": "pt", "line": [factories.point(), factories.point(3, 4)]},
        WRONG_TOOL_TYPE,
        "line",
    ),
    ("bbox on a classification", factories.bbox(name="q"), WRONG_TOOL_TYPE, "bbox"),
    ("checklist on a radio", checklist("q", answers=[answer("a")]), WRONG_CLASSIFICATION_TYPE, "answer"),
    ("radio on a checklist", radio("cl", answer=answer("a")), WRONG_CLASSIFICATION_TYPE, "answer"),
    ("text on a radio", {"type": "text", "name": "q", "answer": "a"}, WRONG_CLASSIFICATION_TYPE, "answer"),
    ("radio on a tool", radio("box", answer=answer("a")), WRONG_CLASSIFICATION_TYPE, "answer"),
    ("unknown radio answer", radio("q", answer=answer("zz")), UNKNOWN_ANSWER, "answer.name"),
    (
        "unknown checklist answer",
        checklist("cl", answers=[answer("a"), answer("zz")]),
        UNKNOWN_ANSWER,
        "answer.1.name",
    ),
    (
        "answer of another question",
        radio("q", answer={"schema_id": sid("cl", "a")}),
        UNKNOWN_ANSWER,
        "answer.schemaId",
    ),
    (
        "unknown answer, nested in a tool",
        box(radio("box", "sub", answer=answer("s9"))),
        UNKNOWN_ANSWER,
        "classifications.0.answer.name",
    ),
    (
        "unknown answer at depth 2",
        in_q_a_s1(checklist(*QS1, "sub_detail", answers=[answer("d1"), answer("d9")])),
        UNKNOWN_ANSWER,
        "answer.classifications.0.answer.classifications.0.answer.1.name",
    ),
    (
        "nested wrong kind",
        box(checklist("box", "sub", answers=[answer("s1")])),
        WRONG_CLASSIFICATION_TYPE,
        "classifications.0.answer",
    ),
    (
        "unknown nested classification",
        box(radio("box", "nope", answer=answer("x"))),
        UNKNOWN_FEATURE,
        "classifications.0.name",
    ),
    (
        "depth 1: another feature's, under a tool",
        box(radio("cl", "b", "cl_reason", answer=answer("r1"))),
        MISPLACED_CLASSIFICATION,
        "classifications.0.name",
    ),
    (
        "depth 1: a top-level one, under a tool",
        box(radio("q", answer=answer("a"))),
        MISPLACED_CLASSIFICATION,
        "classifications.0.name",
    ),
    (
        "depth 1: under a tool without any",
        {**GEOMETRY["polygon"], "name": "pg", "classifications": [radio("box", "sub", answer=answer("s1"))]},
        MISPLACED_CLASSIFICATION,
        "classifications.0.name",
    ),
    (
        "depth 1: under an answer",
        radio("q", answer=answer("a", nested=[checklist("box", "box_flags", answers=[answer("occluded")])])),
        MISPLACED_CLASSIFICATION,
        "answer.classifications.0.name",
    ),
    (
        "depth 1: under the other answer",
        radio("q", answer=answer("b", nested=[radio("q", "a", "sub", answer=answer("s1"))])),
        MISPLACED_CLASSIFICATION,
        "answer.classifications.0.name",
    ),
    (
        "depth 2: a depth-1 one, under a tool's answer",
        in_box_s1(checklist("box", "box_flags", answers=[answer("occluded")])),
        MISPLACED_CLASSIFICATION,
        "classifications.0.answer.classifications.0.name",
    ),
    (
        "depth 2: another scope's, under an answer",
        in_q_a_s1(radio(*S1, "sub_grade", answer=answer("g1"))),
        MISPLACED_CLASSIFICATION,
        "answer.classifications.0.answer.classifications.0.name",
    ),
    (
        "depth 2: under an option without any",
        box(
            radio(
                "box",
                "sub",
                answer=answer("s2", nested=[checklist(*S1, "sub_detail", answers=[answer("d1")])]),
            )
        ),
        MISPLACED_CLASSIFICATION,
        "classifications.0.answer.classifications.0.name",
    ),
    (
        "depth 2: same name, another schema id",
        box(
            radio(
                "box",
                "sub",
                answer=answer(
                    "s1",
                    nested=[
                        {"type": "checklist", "schema_id": sid(*QS1, "sub_detail"), "answers": [answer("d1")]}
                    ],
                ),
            )
        ),
        MISPLACED_CLASSIFICATION,
        "classifications.0.answer.classifications.0.schemaId",
    ),
    (
        "a nested one at the top level",
        radio("box", "sub", answer=answer("s1")),
        MISPLACED_CLASSIFICATION,
        "name",
    ),
    (
        "metric on an unknown feature",
        {"type": "scalar_metric", "value": 0.5, "feature_name": "car"},
        UNKNOWN_FEATURE,
        "featureName",
    ),
    (
        "metric on a nested classification",
        {
            "type": "confusion_matrix_metric",
            "metric_name": "cm",
            "value": [1, 2, 3, 4],
            "feature_name": "sub",
        },
        UNKNOWN_FEATURE,
        "featureName",
    ),
]


@pytest.mark.parametrize(
    ("prediction", "code", "path"), [case[1:] for case in MISMATCHES], ids=[case[0] for case in MISMATCHES]
)
def test_mismatch_code_and_path(prediction: Json, code: str, path: str) -> None:
    mismatch = check_one(prediction)
    assert mismatch is not None
    assert (mismatch.code, mismatch.path) == (code, path), mismatch.message
    assert mismatch.code in CODES, "only a documented code"


def test_messages_name_the_feature_and_what_is_allowed() -> None:
    unknown = check_one(box(radio("box", "sub", answer=answer("s9"))))
    assert unknown is not None
    assert "'s9'" in unknown.message
    assert "'sub'" in unknown.message
    assert "'s1', 's2'" in unknown.message
    misplaced = check_one(in_box_s1(checklist("box", "box_flags", answers=[answer("occluded")])))
    assert misplaced is not None
    assert misplaced.message == (
        "classification 'box_flags' does not belong under box > sub > s1; the ontology has it under box "
        "(classifications under box > sub > s1: 'sub_detail', 'sub_grade')"
    )
    wrong = check_one(factories.bbox(name="pg"))
    assert wrong is not None
    assert "'pg' is a polygon tool" in wrong.message
    assert "rectangle tools: 'box'" in wrong.message
    by_id = check_one(factories.bbox(name=None, schema_id="clq8zzzzzzzzzzzzzzzzzzzzz"))
    assert by_id is not None
    assert "schemaId 'clq8zzzzzzzzzzzzzzzzzzzzz'" in by_id.message
    metric = check_one({"type": "scalar_metric", "value": 0.5, "feature_name": "car"})
    assert metric is not None
    assert "'car'" in metric.message
    assert "'box'" in metric.message
    assert "'tx'" in metric.message


def test_mismatch_is_frozen() -> None:
    mismatch = Mismatch("name", UNKNOWN_FEATURE, "m")
    with pytest.raises(AttributeError):
        mismatch.code = "x"  # type: ignore[misc]


def test_first_mismatch_in_document_order_depth_first() -> None:
    deep_then_sibling = box(
        radio(
            "box", "sub", answer=answer("s1", nested=[checklist(*S1, "sub_detail", answers=[answer("d9")])])
        ),
        checklist("box", "box_flags", answers=[answer("zz")]),
    )
    first = check_one(deep_then_sibling)
    assert first is not None
    assert first.path == "classifications.0.answer.classifications.0.answer.0.name"
    sibling_first = box(
        checklist("box", "box_flags", answers=[answer("occluded"), answer("zz")]),
        radio("box", "nope", answer=answer("x")),
    )
    assert check_one(sibling_first) == Mismatch(
        "classifications.0.answer.1.name",
        UNKNOWN_ANSWER,
        "answer 'zz' is not an option of checklist 'box_flags' (options: 'occluded', 'truncated')",
    )


def test_feature_before_kind_before_nested() -> None:
    # the tool's type is wrong and its nested classification misplaced: the type is reported
    line = {
        "type": "polygon",
        "name": "box",
        "polygon": [factories.point(), factories.point(3, 4), factories.point(5, 1)],
    }
    mismatch = found(check_one({**line, "classifications": [radio("q", answer=answer("a"))]}))
    assert (mismatch.code, mismatch.path) == (WRONG_TOOL_TYPE, "polygon")


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"name": "box"}, ""),
        ({"name": "box", "bbox": {}, "answer": "x"}, ""),
        ({"bbox": {}}, ""),
        ({"name": "q", "answer": 3}, "answer"),
        ({"name": "q", "answer": {"confidence": 0.5}}, "answer"),
        ({"name": "cl", "answer": ["a"]}, "answer.0"),
        ({"name": "box", "bbox": {}, "classifications": {}}, "classifications"),
        ({"name": "box", "bbox": {}, "classifications": ["sub"]}, "classifications.0"),
        ({"name": "box", "bbox": {}, "classifications": [{"answer": {"name": "s1"}}]}, "classifications.0"),
        ({"metricValue": 1, "featureName": ["box"]}, "featureName"),
    ],
)
def test_lines_it_cannot_read_are_malformed_not_exceptions(body: Json, path: str) -> None:
    mismatch = ONTOLOGY.check(body)
    assert mismatch is not None
    assert (mismatch.code, mismatch.path) == (MALFORMED_LINE, path)


def test_a_name_that_disagrees_with_its_schema_id_is_a_conflict() -> None:
    mismatch = found(ONTOLOGY.check({"name": "pg", "schemaId": sid("box"), "bbox": {}}))
    assert (mismatch.code, mismatch.path) == (CONFLICTING_REFERENCE, "name")
    assert mismatch.message == (
        f"schemaId '{sid('box')}' is the rectangle tool 'box', but the name given with it is 'pg'; "
        "give the feature's own name, or only one of the two"
    )


def test_with_both_the_schema_id_decides_the_feature() -> None:
    # The schema id names the feature; its kind is checked as with the schema id alone.
    wrong_tool = found(ONTOLOGY.check({"name": "pg", "schemaId": sid("pg"), "bbox": {}}))
    assert (wrong_tool.code, wrong_tool.path) == (WRONG_TOOL_TYPE, "bbox")
    unknown = found(ONTOLOGY.check({"name": "box", "schemaId": "clq8zzzzzzzzzzzzzzzzzzzzz", "bbox": {}}))
    assert (unknown.code, unknown.path) == (UNKNOWN_FEATURE, "schemaId")


def both_refs(by_name: Any, by_id: Any) -> Any:
    """Two versions of one line, by name and by schema id, merged: both references everywhere."""
    if isinstance(by_name, dict):
        merged = {**by_name, **by_id}
        shared = by_name.keys() & by_id.keys()
        return {k: both_refs(by_name[k], by_id[k]) if k in shared else v for k, v in merged.items()}
    if isinstance(by_name, list):
        return [both_refs(a, b) for a, b in zip(by_name, by_id, strict=True)]
    return by_name


def with_both() -> list[Json]:
    return [
        both_refs(a, b)
        for a, b in zip(bodies(*deep_predictions("name")), bodies(*deep_predictions("id")), strict=True)
    ]


def both_ref_places(value: Any, path: str = "") -> list[tuple[str, Json]]:
    """Every object carrying both a name and a schemaId in a line, with its dotted path."""
    found_here = [(path, value)] if isinstance(value, dict) and {"name", "schemaId"} <= value.keys() else []
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        found_here += both_ref_places(child, f"{path}.{key}" if path else str(key))
    return found_here


def test_every_nesting_fits_with_both_name_and_schema_id() -> None:
    lines = with_both()
    by_id_everywhere = sum(len(both_ref_places(body)) for body in lines)
    by_name = [str(body).count("'name': ") for body in bodies(*deep_predictions("name"))]
    still_by_name = [str(body).count("'name': ") for body in bodies(*deep_predictions("id"))]
    assert by_id_everywhere == sum(by_name) - sum(still_by_name) == 24  # tools, questions, answers; depth 2
    message = MESSAGE_ADAPTER.validate_python({"model_run_id": "mr-1", "ndjson": lines})
    passed = [line.body for line in convert(message)]  # the NDJSON format takes both, as given
    assert passed == lines
    assert [ONTOLOGY.check(body) for body in passed] == [None] * len(lines)


def test_every_disagreeing_name_is_a_conflict_at_its_place() -> None:
    checked = 0
    for index, body in enumerate(with_both()):
        for path, obj in both_ref_places(body):
            changed = copy.deepcopy(with_both()[index])
            target = changed
            for key in filter(None, path.split(".")):
                target = target[int(key)] if isinstance(target, list) else target[key]
            target["name"] = "zz"
            mismatch = found(ONTOLOGY.check(changed))
            assert (mismatch.code, mismatch.path) == (CONFLICTING_REFERENCE, f"{path}.name".lstrip("."))
            assert f"schemaId {obj['schemaId']!r} is the " in mismatch.message
            assert f"{obj['name']!r}, but the name given with it is 'zz'" in mismatch.message
            checked += 1
    assert checked == 24


# --- ontology variants -----------------------------------------------------------------------------


def small(*, tools: list[Json] | None = None, classifications: list[Json] | None = None) -> Ontology:
    return Ontology.from_normalized({"tools": tools or [], "classifications": classifications or []})


def test_dropdown_takes_a_radio_answer() -> None:
    dropdown = {
        "type": "dropdown",
        "name": "dd",
        "featureSchemaId": "f1",
        "options": [{"value": "x", "featureSchemaId": "f2"}],
    }
    ontology = small(classifications=[dropdown])
    assert ontology.check({"name": "dd", "answer": {"name": "x"}}) is None
    wrong = ontology.check({"name": "dd", "answer": [{"name": "x"}]})
    assert wrong is not None
    assert wrong.code == WRONG_CLASSIFICATION_TYPE


def test_older_exports_instructions_and_option_labels() -> None:
    legacy = {
        "type": "radio",
        "instructions": "weather",
        "featureSchemaId": "f1",
        "options": [{"label": "sunny", "featureSchemaId": "f2", "options": []}],
    }
    ontology = small(classifications=[legacy])
    assert ontology.check({"name": "weather", "answer": {"name": "sunny"}}) is None
    assert ontology.check({"schemaId": "f1", "answer": {"schemaId": "f2"}}) is None


def test_name_wins_over_instructions_and_value_over_label() -> None:
    question = {
        "type": "radio",
        "name": "weather",
        "instructions": "What is the weather?",
        "featureSchemaId": "f1",
        "options": [{"value": "sunny", "label": "Sunny", "featureSchemaId": "f2"}],
    }
    ontology = small(classifications=[question])
    assert ontology.check({"name": "weather", "answer": {"name": "sunny"}}) is None
    by_instructions = found(ontology.check({"name": "What is the weather?", "answer": {"name": "sunny"}}))
    assert by_instructions.code == UNKNOWN_FEATURE
    by_label = found(ontology.check({"name": "weather", "answer": {"name": "Sunny"}}))
    assert by_label.code == UNKNOWN_ANSWER


def test_tools_we_do_not_convert_to_fit_no_line() -> None:
    ontology = small(tools=[{"tool": "named-entity", "name": "ner", "featureSchemaId": "f1"}])
    mismatch = ontology.check({"name": "ner", "bbox": {}})
    assert mismatch is not None
    assert (mismatch.code, mismatch.path) == (WRONG_TOOL_TYPE, "bbox")
    assert "rectangle tools: none" in mismatch.message


def test_a_tool_and_a_classification_may_share_a_name() -> None:
    ontology = small(
        tools=[{"tool": "rectangle", "name": "car", "featureSchemaId": "f1"}],
        classifications=[{"type": "text", "name": "car", "featureSchemaId": "f2"}],
    )
    assert ontology.check({"name": "car", "bbox": {}}) is None
    assert ontology.check({"name": "car", "answer": "a red one"}) is None


def test_empty_ontology() -> None:
    empty = small()
    assert empty.is_empty
    assert not ONTOLOGY.is_empty
    mismatch = empty.check({"name": "box", "bbox": {}})
    assert mismatch is not None
    assert mismatch.code == UNKNOWN_FEATURE
    assert empty.check({"metricValue": 0.5}) is None


def _broken(edit: str) -> Any:
    data = copy.deepcopy(NORMALIZED)
    box_tool = data["tools"][0]
    sub = box_tool["classifications"][0]
    edits: dict[str, Any] = {
        "tools missing": lambda: data.pop("tools"),
        "classifications not a list": lambda: data.update(classifications={}),
        "tool not an object": lambda: data["tools"].append("box"),
        "tool without a type": lambda: box_tool.pop("tool"),
        "tool without a featureSchemaId": lambda: box_tool.update(featureSchemaId=""),
        "tool name not a string": lambda: box_tool.update(name=7),
        "nested classifications not a list": lambda: box_tool.update(classifications={"a": 1}),
        "classification without a type": lambda: sub.pop("type"),
        "classification without a name": lambda: [sub.pop("name"), sub.pop("instructions")],
        "option without a value": lambda: [sub["options"][0].pop(key) for key in ("value", "label")],
        "options not a list": lambda: sub["options"][0].update(options="none"),
        "duplicate tool name": lambda: data["tools"].append(
            {**box_tool, "featureSchemaId": "clq8other000000000000000"}
        ),
        "duplicate featureSchemaId": lambda: data["classifications"].append(
            {**data["classifications"][2], "name": "tx2"}
        ),
        "duplicate option": lambda: sub["options"].append({**sub["options"][1], "featureSchemaId": "x"}),
    }
    edits[edit]()
    return data


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("tools missing", r"^ontology\.tools: expected a list"),
        ("classifications not a list", r"^ontology\.classifications: expected a list, got dict"),
        ("tool not an object", r"^ontology\.tools\.5: expected a JSON object"),
        ("tool without a type", r"^ontology\.tools\.0: 'tool' must be a non-empty string"),
        ("tool without a featureSchemaId", r"^ontology\.tools\.0: 'featureSchemaId' must be"),
        ("tool name not a string", r"^ontology\.tools\.0: 'name' must be"),
        ("nested classifications not a list", r"^ontology\.tools\.0\.classifications: expected a list"),
        ("classification without a type", r"^ontology\.tools\.0\.classifications\.0: 'type' must be"),
        ("classification without a name", r"'name' or 'instructions' must be a non-empty string"),
        (
            "option without a value",
            r"^ontology\.tools\.0\.classifications\.0\.options\.0: 'value' or 'label'",
        ),
        (
            "options not a list",
            r"^ontology\.tools\.0\.classifications\.0\.options\.0\.options: expected a list",
        ),
        ("duplicate tool name", r"^ontology\.tools\.5: another tool at this level has the same name 'box'"),
        ("duplicate featureSchemaId", r"^ontology\.classifications\.3: .* same featureSchemaId"),
        ("duplicate option", r"options\.2: another option at this level has the same name 's2'"),
    ],
)
def test_malformed_ontology_raises(edit: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Ontology.from_normalized(_broken(edit))


@pytest.mark.parametrize("data", [[], "tools", None, {"normalized": NORMALIZED}, {"tools": []}])
def test_not_an_ontology_raises(data: Any) -> None:
    with pytest.raises(ValueError, match=r"^ontology"):
        Ontology.from_normalized(data)


def test_fixture_is_realistic() -> None:
    ids: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            ids.extend(v for k, v in value.items() if k == "featureSchemaId")
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(NORMALIZED)
    assert len(ids) == len(set(ids)) > 30
    assert all(len(i) == 25 and i.startswith("c") and i.isalnum() and i.islower() for i in ids)
    assert {tool["tool"] for tool in NORMALIZED["tools"]} == {
        "rectangle",
        "polygon",
        "point",
        "line",
        "raster-segmentation",
    }
    assert {c["type"] for c in NORMALIZED["classifications"]} == {"radio", "checklist", "text"}


# --- property: lines generated to fit the ontology always pass -----------------------------------

confidences = st.none() | st.floats(0, 1)


def references(feature: Json, name_key: str = "name") -> st.SearchStrategy[Json]:
    return st.sampled_from([{"name": feature[name_key]}, {"schema_id": feature["featureSchemaId"]}])


def nested_classifications(questions: list[Json]) -> st.SearchStrategy[list[Json]]:
    if not questions:
        return st.just([])
    chosen = st.lists(st.sampled_from(questions), max_size=3, unique_by=lambda q: q["name"])
    return chosen.flatmap(lambda qs: st.tuples(*[classifications(q) for q in qs]).map(list))


def answers(option: Json) -> st.SearchStrategy[Json]:
    def build(reference: Json, nested: list[Json], confidence: float | None) -> Json:
        return {**reference, "classifications": nested, "confidence": confidence}

    return st.builds(
        build, references(option, "value"), nested_classifications(option["options"]), confidences
    )


def classifications(question: Json) -> st.SearchStrategy[Json]:
    def build(reference: Json, body: Json, confidence: float | None) -> Json:
        return {"type": question["type"], **reference, **body, "confidence": confidence}

    options = question["options"]
    body: st.SearchStrategy[Json]
    if question["type"] == "text":
        body = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=5).map(
            lambda text: {"answer": text}
        )
    elif question["type"] == "radio":
        body = st.sampled_from(options).flatmap(answers).map(lambda one: {"answer": one})
    else:
        chosen = st.lists(st.sampled_from(options), min_size=1, max_size=3, unique_by=lambda o: o["value"])
        body = chosen.flatmap(lambda os: st.tuples(*[answers(o) for o in os])).map(
            lambda a: {"answers": list(a)}
        )
    return st.builds(build, references(question), body, confidences)


def objects(tool: Json) -> st.SearchStrategy[Json]:
    def build(reference: Json, nested: list[Json]) -> Json:
        return {**GEOMETRY[tool["tool"]], **reference, "classifications": nested}

    return st.builds(build, references(tool), nested_classifications(tool["classifications"]))


metrics = st.sampled_from([f["name"] for f in [*NORMALIZED["tools"], *NORMALIZED["classifications"]]]).map(
    lambda name: {"type": "scalar_metric", "value": 0.5, "feature_name": name}
)
predictions = st.one_of(
    *[objects(tool) for tool in NORMALIZED["tools"]],
    *[classifications(question) for question in NORMALIZED["classifications"]],
    metrics,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(predictions, min_size=1, max_size=4))
def test_generated_fitting_lines_always_pass(generated: list[Json]) -> None:
    for body in bodies(*generated):
        assert ONTOLOGY.check(body) is None, body


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(predictions.filter(lambda p: p["type"] != "scalar_metric"), st.sampled_from(["name", "schema_id"]))
def test_generated_lines_with_an_unknown_feature_never_pass(prediction: Json, by: str) -> None:
    renamed = {k: v for k, v in prediction.items() if k not in ("name", "schema_id")}
    renamed[by] = "clq8nowhere00000000000000"
    mismatch = check_one(renamed)
    assert mismatch is not None
    assert (mismatch.code, mismatch.path) == (UNKNOWN_FEATURE, "name" if by == "name" else "schemaId")
