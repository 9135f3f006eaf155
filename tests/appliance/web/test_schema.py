"""The JSON Schema subset validator: each keyword, error paths, and fuzzing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.web.schema import InvalidSchema, SchemaError, validate

PERSON = {
    "type": "object",
    "required": ["address", "rank"],
    "additionalProperties": False,
    "properties": {
        "address": {"type": "string", "pattern": "^[^@]+@[^@]+$", "maxLength": 254},
        "name": {"type": ["string", "null"], "minLength": 1, "maxLength": 5},
        "rank": {"type": "integer", "minimum": 0, "maximum": 10},
        "role": {"enum": ["member", "admin"]},
        "kind": {"const": "person"},
        "when": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "score": {"type": "number"},
        "flag": {"type": "boolean"},
    },
}


def error(schema: dict[str, Any], value: Any) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        validate(schema, value)
    return caught.value


def test_a_valid_instance_passes() -> None:
    validate(PERSON, {"address": "a@b", "rank": 3, "name": None, "role": "admin",
                      "kind": "person", "when": "2026-01-31T09:30:00+07:00", "tags": ["x"],
                      "score": 1.5, "flag": False})  # fmt: skip


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ({"rank": 1}, "$.address", "is required"),
        ({"address": "a@b", "rank": 1, "extra": 1}, "$.extra", "not an allowed field"),
        ({"address": "ab", "rank": 1}, "$.address", "pattern"),
        ({"address": "a@b", "rank": 1.5}, "$.rank", "must be integer"),
        ({"address": "a@b", "rank": True}, "$.rank", "not boolean"),
        ({"address": "a@b", "rank": 11}, "$.rank", "at most 10"),
        ({"address": "a@b", "rank": -1}, "$.rank", "at least 0"),
        ({"address": "a@b", "rank": 1, "name": ""}, "$.name", "at least 1 characters"),
        ({"address": "a@b", "rank": 1, "name": "ภาษาไทยยาว"}, "$.name", "at most 5"),
        ({"address": "a@b", "rank": 1, "role": "boss"}, "$.role", "one of"),
        ({"address": "a@b", "rank": 1, "kind": "robot"}, "$.kind", "must be 'person'"),
        ({"address": "a@b", "rank": 1, "when": "2026-02-30T00:00:00Z"}, "$.when", "date"),
        ({"address": "a@b", "rank": 1, "when": "yesterday"}, "$.when", "date"),
        ({"address": "a@b", "rank": 1, "tags": []}, "$.tags", "at least 1 items"),
        ({"address": "a@b", "rank": 1, "tags": ["a"] * 4}, "$.tags", "at most 3 items"),
        ({"address": "a@b", "rank": 1, "tags": ["a", 2]}, "$.tags[1]", "must be string"),
        ({"address": "a@b", "rank": 1, "score": "1"}, "$.score", "must be number"),
        ("nope", "$", "must be object"),
    ],
)
def test_errors_name_the_field(value: Any, path: str, words: str) -> None:
    problem = error(PERSON, value)
    assert problem.path == path
    assert words in problem.message
    assert str(problem).startswith(path)


def test_integer_accepts_whole_floats_and_number_accepts_integers() -> None:
    validate({"type": "integer"}, 3.0)
    validate({"type": "number"}, 3)
    error({"type": "number"}, True)
    error({"type": "null"}, 0)


def test_length_counts_code_points_not_bytes() -> None:
    # "ที่" is three code points (consonant, vowel, tone mark) and nine UTF-8 bytes.
    validate({"type": "string", "maxLength": 3, "minLength": 3}, "ที่")


def test_enum_and_const_use_json_equality() -> None:
    error({"enum": [1, 2]}, True)
    validate({"enum": [1, 2]}, 1.0)
    validate({"const": {"a": [1, None]}}, {"a": [1, None]})
    error({"const": False}, 0)


def test_pattern_is_unanchored() -> None:
    validate({"type": "string", "pattern": "b"}, "abc")


def test_odd_keys_are_quoted_in_paths() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert error(schema, {"ชื่อ": "x"}).path == '$["ชื่อ"]'


def test_one_of_and_any_of() -> None:
    either = {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}
    validate(either, "x")
    validate(either, 1)
    assert "none of" in error(either, -1).message
    both = {"oneOf": [{"type": "integer"}, {"type": "number"}]}
    assert "more than one" in error(both, 1).message
    validate({"anyOf": [{"type": "integer"}, {"type": "number"}]}, 1)
    error({"anyOf": [{"type": "null"}, {"type": "boolean"}]}, 1)


def test_date_time_forms() -> None:
    schema = {"type": "string", "format": "date-time"}
    for good in ("2026-01-31T09:30:00Z", "2026-01-31t09:30:00.123z", "2016-12-31T23:59:60Z"):
        validate(schema, good)
    for bad in ("2026-01-31", "2026-01-31T09:30Z", "2026-13-01T00:00:00Z", "2026-01-31 09:30:00Z"):
        error(schema, bad)


def test_unknown_keywords_are_a_schema_error() -> None:
    with pytest.raises(InvalidSchema):
        validate({"type": "string", "maxlength": 3}, "abcd")
    with pytest.raises(InvalidSchema):
        validate({"type": "text"}, "x")


# --- fuzzing -----------------------------------------------------------------------


def _problem(schema: dict[str, Any], value: Any) -> SchemaError | None:
    """The SchemaError, if any; anything else (a crash) propagates and fails the test."""
    try:
        validate(schema, value)
    except SchemaError as exc:
        return exc
    return None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
@settings(max_examples=300)
def test_any_json_is_accepted_or_refused_with_a_path(value: Any) -> None:
    problem = _problem(PERSON, value)
    if problem is not None:
        assert problem.path.startswith("$")
        assert problem.message


valid_people = st.fixed_dictionaries(
    {
        "address": st.from_regex(r"\A[a-z]{1,10}@[a-z]{1,10}\Z"),
        "rank": st.integers(0, 10),
    },
    optional={
        "name": st.none() | st.text(min_size=1, max_size=5),
        "role": st.sampled_from(["member", "admin"]),
        "tags": st.lists(st.text(), min_size=1, max_size=3),
        "score": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
        "flag": st.booleans(),
        "when": st.datetimes().map(lambda d: d.isoformat(timespec="seconds") + "Z"),
    },
)


@given(valid_people)
@settings(max_examples=300)
def test_generated_valid_people_pass(person: dict[str, Any]) -> None:
    validate(PERSON, person)


leaf_schemas = st.sampled_from(
    [
        {"type": "string"},
        {"type": ["integer", "null"], "minimum": -5, "maximum": 5},
        {"type": "boolean"},
        {"enum": ["a", 1, None]},
        {"type": "number", "maximum": 1.5},
        {"type": "string", "minLength": 1, "maxLength": 3, "pattern": "^[ก-ฮ]"},
    ]
)
schemas = st.recursive(
    leaf_schemas,
    lambda children: st.builds(
        lambda items, n: {"type": "array", "items": items, "maxItems": n}, children,
        st.integers(0, 3),
    )
    | st.builds(
        lambda props, extra: {"type": "object", "properties": props,
                              "required": sorted(props)[:1], "additionalProperties": extra},
        st.dictionaries(st.sampled_from(["a", "b", "ชื่อ"]), children, max_size=3),
        st.booleans(),
    )
    | st.lists(children, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    | st.lists(children, min_size=1, max_size=3).map(lambda options: {"oneOf": options}),
    max_leaves=8,
)  # fmt: skip


@given(schemas, json_values)
@settings(max_examples=500)
def test_random_schemas_never_crash(schema: dict[str, Any], value: Any) -> None:
    problem = _problem(schema, value)
    assert problem is None or problem.path.startswith("$")
