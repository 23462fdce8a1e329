"""The fast path (``worker.plain``) against pydantic: it never accepts what pydantic rejects.

For any record the fast path accepts, pydantic must accept it too and both decoded messages must give
the same NDJSON bytes; whatever the fast path leaves, ``worker.decode.decode`` gives pydantic's verdict
(reason codes and field paths come from pydantic alone). Checked on the 80-message bad-input corpus,
on hand-picked edge cases (duplicate keys, int-for-float, huge ints, -0.0, unicode escapes, UUID
spellings, nesting), and by hypothesis on generated valid messages and mutations of them.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import MESSAGE_ADAPTER, PredictionMessage
from tests.support.bad_corpus import CORPUS, Bad, nested_radio
from tests.support.factories import bbox, every_type, message, radio
from tests.unit.test_convert_properties import messages
from worker.convert import convert, encode
from worker.decode import Rejection, decode
from worker.plain import MAX_FAST_LEVELS, decode_fast
from worker.plain import PredictionMessage as PlainMessage

Json = dict[str, Any]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
U = "0b6f4d6a-2f7e-4e3b-9a6d-1c2b3d4e5f60"


def pydantic_verdict(value: bytes) -> Any:
    """The pydantic model of ``value``, or ``None`` when pydantic rejects it."""
    try:
        return MESSAGE_ADAPTER.validate_json(value)
    except ValidationError:
        return None


def agree(value: bytes) -> tuple[Any, Any]:
    """Assert the fast path and pydantic agree on ``value``; returns (fast, pydantic) decodings."""
    fast, model = decode_fast(value), pydantic_verdict(value)
    if fast is not None:
        assert model is not None, f"the fast path accepts what pydantic rejects: {value[:300]!r}"
        assert isinstance(model, PredictionMessage)
        assert encode(convert(fast)) == encode(convert(model)), value[:300]
    decoded = decode(value)
    assert isinstance(decoded, Rejection) == (model is None), (decoded, value[:300])
    if model is not None:
        assert encode(convert(decoded)) == encode(convert(model))
    return fast, model


def raw(value: Any, ascii_only: bool = False) -> bytes:
    """JSON text of ``value`` (the stdlib's: big ints, and ``\\u`` escapes when ``ascii_only``)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode()


# --- the bad-input corpus --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", CORPUS, ids=[bad.name for bad in CORPUS])
def test_the_fast_path_accepts_no_corpus_message(bad: Bad) -> None:
    value = bad.build()
    if value is None or len(value) > 16 * 1024 * 1024:  # decode() rejects these before any parser
        return
    assert decode_fast(value) is None
    agree(value)


# --- what the fast path takes, it takes whole ---------------------------------------------------


def test_valid_messages_take_the_fast_path() -> None:
    for value in (
        orjson.dumps(message(*every_type(), message_id="m-1")),
        raw(message(*every_type()), ascii_only=True),  # \u escapes: the regex-checked decoder
        orjson.dumps(message(bbox(uuid=U), radio(), data_row={"id": "dr-1"})),
    ):
        fast, _ = agree(value)
        assert isinstance(fast, PlainMessage)
        assert isinstance(decode(value), PlainMessage)


def test_nesting_past_the_structs_takes_the_pydantic_path() -> None:
    leaf = {"type": "text", "name": "t", "answer": "ok"}
    within = orjson.dumps(message(nested_radio(MAX_FAST_LEVELS - 1, leaf)))
    beyond = orjson.dumps(message(nested_radio(MAX_FAST_LEVELS + 2, leaf)))
    assert isinstance(agree(within)[0], PlainMessage)
    fast, model = agree(beyond)
    assert fast is None
    assert model is not None  # accepted all the same, and converted from the pydantic model
    assert not isinstance(decode(beyond), Rejection)


# --- edge cases, each compared with pydantic -------------------------------------------------------

BASE = '{"model_run_id":"mr-1","data_row":{"global_key":"img.jpg"},"predictions":[%s]}'
BOX = '{"type":"bbox","name":"car",%s"bbox":{"top":1.5,"left":2,"height":3,"width":4}}'
SCALAR = '{"type":"scalar_metric","metric_name":"m","value":%s}'
CONFUSION = '{"type":"confusion_matrix_metric","metric_name":"cm","value":%s}'


def box(extra: str = "") -> str:
    return BOX % extra


EDGE_CASES: dict[str, str] = {
    "duplicate-envelope-key": BASE.replace('"model_run_id":"mr-1"', '"model_run_id":"a","model_run_id":"b"')
    % box(),
    "duplicate-key-valid-then-invalid": BASE % box('"confidence":0.5,"confidence":5,'),
    "duplicate-key-invalid-then-valid": BASE % box('"confidence":5,"confidence":0.5,'),
    "duplicate-name-then-schema-id": BASE % box('"name":"a","schema_id":"s",'),
    "duplicate-type-tag": BASE
    % '{"type":"point","type":"bbox","name":"c","bbox":{"top":1,"left":2,"height":3,"width":4}}',
    "duplicate-threshold-key": BASE % (SCALAR % '{"0.5":1,"0.5":2,"0.7":3}'),
    "thresholds-equal-as-floats": BASE % (SCALAR % '{"0.5":1,"0.50":2}'),
    "threshold-minus-zero": BASE % (SCALAR % '{"-0":1,"0.5":2}'),
    "threshold-spaces": BASE % (SCALAR % '{" 0.5":1,"0.7":2}'),
    "threshold-exponent": BASE % (SCALAR % '{"5e-1":1,"7E-1":2}'),
    "threshold-leading-dot": BASE % (SCALAR % '{".5":1,"0.7":2}'),
    "threshold-underscore": BASE % (SCALAR % '{"0.1_1":1,"0.7":2}'),
    "threshold-infinity": BASE % (SCALAR % '{"-inf":1,"0.7":2}'),
    "threshold-above-one": BASE % (SCALAR % '{"1.5":1,"0.7":2}'),
    "one-threshold": BASE % (SCALAR % '{"0.5":1}'),
    "int-for-float": BASE % box('"confidence":1,'),
    "float-for-int-count": BASE % (CONFUSION % "[1.0,2,3,4]"),
    "string-for-float": BASE % box('"confidence":"0.5",'),
    "bool-for-float": BASE % box('"confidence":true,'),
    "huge-int-coordinate": BASE % box().replace('"top":1.5', '"top":1' + "0" * 400),
    "huge-exponent-coordinate": BASE % box().replace('"top":1.5', '"top":1e400'),
    "tiny-exponent-coordinate": BASE % box().replace('"top":1.5', '"top":1e-400'),
    "int-count-over-limit": BASE % (CONFUSION % "[10000000001,2,3,4]"),
    "int-count-over-64-bits": BASE % (CONFUSION % "[100000000000000000000000000000,2,3,4]"),
    "minus-zero-confidence": BASE % box('"confidence":-0.0,'),
    "minus-zero-int-confidence": BASE % box('"confidence":-0,'),
    "minus-zero-size": BASE % box().replace('"height":3', '"height":-0.0'),
    "escaped-ascii-name": BASE % box().replace('"name":"car"', '"name":"\\u0063ar"'),
    "escaped-null-in-name": BASE % box().replace('"name":"car"', '"name":"c\\u0000r"'),
    "escaped-newline-at-name-end": BASE % box().replace('"name":"car"', '"name":"car\\n"'),
    "escaped-del-in-name": BASE % box().replace('"name":"car"', '"name":"c\\u007fr"'),
    "raw-del-in-name": BASE % box().replace('"name":"car"', '"name":"c\x7fr"'),
    "line-separator-in-name": BASE % box().replace('"name":"car"', '"name":"c\\u2028r"'),
    "surrogate-pair-in-name": BASE % box().replace('"name":"car"', '"name":"\\ud83d\\ude97"'),
    "newline-at-run-id-end": BASE.replace('"mr-1"', '"mr-1\\n"') % box(),
    "newline-in-text-answer": BASE % '{"type":"text","name":"t","answer":"line\\nline\\t\\r"}',
    "form-feed-in-text-answer": BASE % '{"type":"text","name":"t","answer":"a\\fb"}',
    "name-1024-chars": BASE % box().replace('"name":"car"', '"name":"' + "é" * 1024 + '"'),
    "name-1025-chars": BASE % box().replace('"name":"car"', '"name":"' + "é" * 1025 + '"'),
    "run-id-129-chars": BASE.replace('"mr-1"', '"' + "r" * 129 + '"') % box(),
    "uuid-upper-case": BASE % box(f'"uuid":"{U.upper()}",'),
    "uuid-no-hyphens": BASE % box(f'"uuid":"{U.replace("-", "")}",'),
    "uuid-braces": BASE % box(f'"uuid":"{{{U}}}",'),
    "uuid-urn": BASE % box(f'"uuid":"urn:uuid:{U}",'),
    "uuid-spaces": BASE % box(f'"uuid":" {U}",'),
    "uuid-nil": BASE % box('"uuid":"00000000-0000-0000-0000-000000000000",'),
    "uuid-twice-by-case": BASE % (box(f'"uuid":"{U}",') + "," + box(f'"uuid":"{U.upper()}",')),
    "uuid-null": BASE % box('"uuid":null,'),
    "null-name-and-schema-id": BASE % box('"schema_id":null,'),
    "reserved-metric-name-spaced": BASE % (SCALAR % "0.5").replace('"m"', '" IoU "'),
    "unknown-aggregation": BASE % (SCALAR % "0.5").replace('"value"', '"aggregation":"MAX","value"'),
    "ndjson-and-predictions": BASE.replace('"predictions"', '"ndjson":[],"predictions"') % box(),
    "trailing-newline": BASE % box() + "\n",
    "leading-whitespace": " \t\r\n" + BASE % box(),
    "mask-duplicate-source-key": BASE
    % '{"type":"mask","name":"m","mask":{"url":"https://x/a.png","color":[1,2,3]},"mask":{"url":"https://x/b.png","color":[4,5,6]}}',
    "mask-url-newline": BASE
    % '{"type":"mask","name":"m","mask":{"url":"https://x/a.png\\n","color":[1,2,3]}}',
    "mask-rle-floats": BASE % '{"type":"mask","name":"m","mask":{"rle":{"size":[2,2],"counts":[1.0,3]}}}',
}


@pytest.mark.parametrize(("name", "text"), list(EDGE_CASES.items()), ids=list(EDGE_CASES))
def test_edge_cases_agree_with_pydantic(name: str, text: str) -> None:
    agree(text.encode())


def test_edge_cases_exercise_both_verdicts_and_both_paths() -> None:
    outcomes = [agree(text.encode()) for text in EDGE_CASES.values()]
    assert any(fast is not None for fast, _ in outcomes)
    assert any(fast is None and model is not None for fast, model in outcomes)  # lax input: pydantic's
    assert any(model is None for _, model in outcomes)


# --- generated messages, and mutations of them -----------------------------------------------------


@SETTINGS
@given(messages(), st.booleans())
def test_generated_valid_messages_take_the_fast_path(model: PredictionMessage, ascii_only: bool) -> None:
    value = raw(model.model_dump(mode="json", exclude_none=True), ascii_only)
    fast, accepted = agree(value)
    assert accepted is not None
    assert fast is not None, value[:300]


TRICKY: list[Any] = [
    None,
    True,
    0,
    -0.0,
    1,
    1.0,
    0.5,
    -1,
    1.5e308,
    10**30,
    "",
    "a",
    "a\n",
    "a\x00",
    "a\x7f",
    "\u2028",
    "x" * 1025,
    "0.5",
    [],
    {},
    [1, 2, 3, 4],
    {"0.5": 1, "0.7": 2},
    {"name": "n"},
    U.upper(),
    U.replace("-", ""),
    f"{{{U}}}",
    "bbox",
    "radio",
    "mask",
    "scalar_metric",
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a parsed JSON value (the root excluded)."""
    found: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found.append((*prefix, key))
        found.extend(paths(item, (*prefix, key)))
    return found


def mutate(value: Json, path: tuple[Any, ...], operation: str, replacement: Any) -> Json:
    parent: Any = value
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if operation == "replace":
        parent[last] = replacement
    elif operation == "delete":
        del parent[last]
    elif operation == "add-key" and isinstance(parent[last], dict):
        parent[last]["extra"] = replacement
    elif operation == "append" and isinstance(parent[last], list):
        parent[last].append(replacement if not isinstance(parent[last][:1], dict) else {**parent[last][0]})
    return value


@SETTINGS
@given(
    messages(),
    st.data(),
    st.sampled_from(["replace", "delete", "add-key", "append"]),
    st.sampled_from(TRICKY),
    st.booleans(),
)
def test_mutated_messages_agree_with_pydantic(
    model: PredictionMessage, data: st.DataObject, operation: str, replacement: Any, ascii_only: bool
) -> None:
    value = model.model_dump(mode="json", exclude_none=True)
    path = data.draw(st.sampled_from(paths(value)))
    agree(raw(mutate(value, path, operation, replacement), ascii_only))


@SETTINGS
@given(messages(), st.data())
def test_textual_mutations_agree_with_pydantic(model: PredictionMessage, data: st.DataObject) -> None:
    # duplicate keys and number spellings that a parsed value cannot hold
    text = raw(model.model_dump(mode="json", exclude_none=True)).decode()
    key = data.draw(
        st.sampled_from(
            sorted(
                {
                    k
                    for k in ('"name":', '"type":', '"top":', '"x":', '"confidence":', '"uuid":', '"0.5":')
                    if k in text
                }
                or {'"model_run_id":'}
            )
        )
    )
    insert = data.draw(
        st.sampled_from(['"bbox",', "1,", "-0,", "1e400,", "1.0,", '"a",', "null,", '"0.5",', "2,"])
    )
    at = data.draw(st.integers(0, text.count(key) - 1))
    start = -1
    for _ in range(at + 1):
        start = text.index(key, start + 1)
    agree((text[: start + len(key)] + insert + key + text[start + len(key) :]).encode())


NUMBER_SPELLINGS = ["1.", ".5", "+1", "1e", "01", "-01", "1E+0", "0.0e-0", "1e5", "1E-5", "0x10"]
NUMBER_SPELLINGS += ["Infinity", "-Infinity", "NaN", "1_0", "1.5e308", "1e309", "-0", "  1  ", "true", '"1"']


@pytest.mark.parametrize("number", NUMBER_SPELLINGS)
def test_number_spellings_agree_with_pydantic(number: str) -> None:
    point = '{"type":"point","name":"p","point":{"x":' + number + ',"y":2}}'
    agree((BASE % point).encode())


def test_an_unforeseen_error_in_the_fast_path_leaves_the_verdict_to_pydantic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Exploding:
        def validate_json(self, data: bytes) -> Any:
            raise RuntimeError("not a ValueError")

    value = orjson.dumps(message(*every_type()))
    monkeypatch.setattr("worker.plain.MASK_ADAPTER", Exploding())
    assert decode_fast(value) is None
    decoded = decode(value)
    assert isinstance(decoded, PredictionMessage)  # pydantic's model, converted as before
    assert encode(convert(decoded)) == encode(convert(MESSAGE_ADAPTER.validate_json(value)))


@pytest.mark.parametrize("named", [True, False])
def test_the_structs_have_the_fields_of_the_pydantic_models(named: bool) -> None:
    # a field added to a contract model and not here would send every message using it to pydantic;
    # the named family (records without the bytes schema_id) has every field but schema_id
    import schemas

    questions = [
        {"type": "checklist", "name": "c", "answers": [{"name": "a"}]},
        {"type": "text", "name": "t", "answer": "x"},
    ]
    by_schema_id = [] if named else [{"type": "point", "schema_id": "s", "point": {"x": 1, "y": 2}}]
    value = orjson.dumps(message(*every_type(), bbox(classifications=questions), *by_schema_id))
    assert (b"schema_id" not in value) is named
    decoded = decode_fast(value)
    assert decoded is not None
    absent = {"type", "schema_id"} if named else {"type"}
    pairs: list[tuple[Any, Any]] = [
        (decoded, schemas.PredictionMessage),
        (decoded.data_row, schemas.DataRowRef),
    ]
    models = {
        "bbox": schemas.BBoxPrediction,
        "point": schemas.PointPrediction,
        "polyline": schemas.PolylinePrediction,
        "polygon": schemas.PolygonPrediction,
        "mask": schemas.MaskPrediction,
        "radio": schemas.RadioPrediction,
        "checklist": schemas.ChecklistPrediction,
        "text": schemas.TextPrediction,
        "scalar_metric": schemas.ScalarMetric,
        "confusion_matrix_metric": schemas.ConfusionMatrixMetric,
    }
    nested = {"radio": schemas.Radio, "checklist": schemas.Checklist, "text": schemas.Text}
    for prediction in decoded.predictions:
        pairs.append((prediction, models[prediction.type]))
        for question in getattr(prediction, "classifications", []):
            pairs.append((question, nested[question.type]))
            for answer in [getattr(question, "answer", None), *getattr(question, "answers", [])]:
                if answer is not None and not isinstance(answer, str):
                    pairs.append((answer, schemas.Answer))
    assert {model for _, model in pairs} >= {*models.values(), *nested.values(), schemas.Answer}
    for struct, model in pairs:
        assert set(type(struct).__struct_fields__) == set(model.model_fields) - absent, model
        assert getattr(struct, "schema_id", None) is None or not named


NAMED_CASES = {
    # (message text, whether pydantic accepts it): the named family must never accept a rejection
    "no name, no schema_id": ('{"type":"point","point":{"x":1,"y":2}}', False),
    "null name": ('{"type":"point","name":null,"point":{"x":1,"y":2}}', False),
    "answer without name": ('{"type":"radio","name":"r","answer":{"confidence":0.5}}', False),
    "escaped schema_id key": ('{"type":"point","schema\\u005fid":"s","point":{"x":1,"y":2}}', True),
    "escaped key beside a name": (
        '{"type":"point","name":"n","schema\\u005fid":"s","point":{"x":1,"y":2}}',
        False,
    ),
    "name": ('{"type":"point","name":"n","point":{"x":1,"y":2}}', True),
}


@pytest.mark.parametrize("name", NAMED_CASES)
def test_records_without_schema_id_bytes_agree_with_pydantic(name: str) -> None:
    text, accepted = NAMED_CASES[name]
    value = (BASE % text).encode()
    assert b"schema_id" not in value
    fast, model = agree(value)
    assert (model is not None) is accepted
    if name == "name":
        assert fast is not None
        assert fast.predictions[0].schema_id is None
        assert "schema_id" not in type(fast.predictions[0]).__struct_fields__  # the named family's struct


@pytest.mark.parametrize(
    ("ref", "accepted"),
    [
        ({}, False),
        ({"name": "m", "schema_id": "x"}, False),
        ({"name": "m"}, True),
        ({"schema_id": "x"}, True),
    ],
)
@pytest.mark.parametrize("with_schema_id_elsewhere", [True, False])
def test_a_mask_keeps_exactly_one_reference_in_both_families(
    ref: Json, accepted: bool, with_schema_id_elsewhere: bool
) -> None:
    # the mask struct's own __post_init__ (validating the mask) must still check the reference
    mask = {"type": "mask", "mask": {"url": "https://example.invalid/m.png", "color": [1, 2, 3]}, **ref}
    other = (
        [{"type": "point", "schema_id": "s", "point": {"x": 1, "y": 2}}] if with_schema_id_elsewhere else []
    )
    fast, model = agree(orjson.dumps(message(*other, mask)))
    assert (model is not None) is accepted
    if not accepted:
        assert fast is None
