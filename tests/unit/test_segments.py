"""Segments without a database: validation errors, limits, SQL shape, reference semantics."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailerd import segments

CREATED = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def leaf(field: str = "attributes.plan", op: str = "eq", value: Any = "pro") -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


def error(source: Any) -> segments.SegmentError:
    with pytest.raises(segments.SegmentError) as info:
        segments.parse(source)
    return info.value


# --- validation ---------------------------------------------------------------------------------


def test_error_message_names_path_and_reason() -> None:
    exc = error({"all": [leaf(), leaf(), leaf(op="gtt")]})
    assert str(exc) == '$.all[2].op: unknown operator "gtt"'
    assert exc.path == "$.all[2].op"
    assert exc.reason == 'unknown operator "gtt"'
    assert isinstance(exc, ValueError)


@pytest.mark.parametrize(
    ("source", "path", "reason"),
    [
        ("{", "$", "invalid JSON"),
        ('{"field": "email", "op": "eq", "value": NaN}', "$", "invalid JSON"),
        (b"\xff", "$", "invalid JSON"),
        ("[]", "$", "expected an object, got array"),
        ("{}", "$", "empty object"),
        ({"any": {}}, "$.any", "expected an array, got object"),
        ({"all": [], "any": []}, "$", '"all" and "any" in one object'),
        ({"not": leaf(), "x": 1}, "$.x", 'unknown key "x"'),
        ({"all": [{"fild": "email"}]}, "$.all[0].fild", 'unknown key "fild"'),
        ({"any": [{**leaf(), "extra key": 1}]}, '$.any[0]["extra key"]', "unknown key"),
        ({**leaf(), "\udc00": 1}, '$["\\udc00"]', 'unknown key "\\udc00"'),
        ({"\ud800": 1}, '$["\\ud800"]', 'unknown key "\\ud800"'),
        ({"not": {"field": "email", "value": "x"}}, "$.not", 'missing "op"'),
        ({"field": "email", "op": "eq"}, "$", 'missing "value"'),
        ('{"field": "email", "field": "email", "op": "eq", "value": "a"}', "$.field", "duplicate"),
        (leaf(field=3), "$.field", "expected a string, got number"),
        (leaf(field="name"), "$.field", 'unknown field "name"'),
        (leaf(field="attributes"), "$.field", "empty key in attribute path"),
        (leaf(field="attributes.a..b"), "$.field", "empty key in attribute path"),
        (leaf(field="attributes." + ".".join("k" * 33)), "$.field", "deeper than 32 keys"),
        (leaf(field="attributes.a\x00"), "$.field", "NUL"),
        (leaf(op=None), "$.op", "expected a string, got null"),
        (leaf(field="email", op="gt"), "$.op", 'operator "gt" does not apply to field "email"'),
        (leaf(field="created_at", op="eq"), "$.op", "does not apply"),
        (leaf(value=None), "$.value", "null is not a valid value"),
        (leaf(value=[1]), "$.value", "got array"),
        (leaf(value={"a": 1}), "$.value", "got object"),
        (leaf(value="a\x00b"), "$.value", "NUL"),
        (leaf(value="\ud800"), "$.value", "lone surrogates"),
        (leaf(value=float("nan")), "$.value", "finite"),
        (leaf(value=decimal.Decimal("1e5000")), "$.value", "out of range"),
        (leaf(op="in", value="a"), "$.value", 'operator "in" expects an array, got string'),
        (leaf(op="not_in", value=[]), "$.value", "non-empty array"),
        (leaf(op="in", value=["a", None]), "$.value[1]", "null"),
        (leaf(op="in", value=["a", 1]), "$.value[1]", "expected a string like the first value"),
        (leaf(op="in", value=[True, 1]), "$.value[1]", "expected a boolean like the first"),
        (leaf(op="gt", value="yesterday"), "$.value", "ISO-8601"),
        (leaf(op="gt", value="2024-02-30"), "$.value", "ISO-8601"),
        (leaf(op="gt", value=True), "$.value", "expected a number or a date, got boolean"),
        (leaf(op="lt", value="9999-12-31T23:00-05:00"), "$.value", "date out of range"),
        (leaf(field="created_at", op="gt", value=5), "$.value", "expected a date"),
        (leaf(op="contains", value=5), "$.value", "expected a string, got number"),
        (leaf(field="email", op="eq", value=1), "$.value", "expected a string"),
        (leaf(op="exists", value="yes"), "$.value", "true or false"),
    ],
)
def test_validation_errors(source: Any, path: str, reason: str) -> None:
    exc = error(source)
    assert exc.path == path
    assert reason in exc.reason
    str(exc).encode("utf-8")  # an API answer and a terminal can carry it


def test_json_text_and_decoded_objects_give_the_same_segment() -> None:
    condition = {"any": [leaf(), {"not": leaf(op="gte", value=1.5)}, {"all": []}]}
    assert segments.parse(json.dumps(condition)) == segments.parse(condition)
    assert segments.parse(json.dumps(condition).encode()) == segments.parse(condition)


def test_empty_all_and_any_are_allowed() -> None:
    assert segments.parse({"all": []}).root == segments.All(())
    assert segments.parse({"any": []}).root == segments.AnyOf(())


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = leaf()
    for _ in range(depth - 1):
        node = {"not": node}
    return node


def test_depth_limit() -> None:
    assert segments.parse(nested(32)).depth == 32
    exc = error(nested(33))
    assert exc.path == "$" + ".not" * 32
    assert "nesting deeper than 32" in exc.reason
    # Far deeper JSON text fails cleanly too, not with a RecursionError.
    exc = error('{"not": ' * 100_000 + json.dumps(leaf()) + "}" * 100_000)
    assert "nesting deeper than 32" in exc.reason


def test_node_limit() -> None:
    assert segments.parse({"any": [leaf()] * 999}).nodes == 1000
    exc = error({"any": [leaf()] * 1000})
    assert exc.path == "$.any[999]"
    assert "more than 1000 conditions" in exc.reason


def test_list_limit() -> None:
    values = list(range(10_000))
    assert len(segments.parse(leaf(op="in", value=values)).root.value) == 10_000  # type: ignore[union-attr, arg-type]
    exc = error(leaf(op="not_in", value=[*values, 10_000]))
    assert (exc.path, exc.reason) == ("$.value", "more than 10000 values")


def test_numbers_are_exact_decimals_and_booleans_are_not_numbers() -> None:
    root = segments.parse('{"field": "attributes.x", "op": "eq", "value": 0.1}').root
    assert root == segments.Condition(
        "attributes.x", "attributes", ("x",), "eq", "number", decimal.Decimal("0.1")
    )
    root = segments.parse(leaf(value=True)).root
    assert isinstance(root, segments.Condition)
    assert (root.kind, root.value) == ("boolean", True)


@settings(max_examples=300)
@given(
    digits=st.lists(st.integers(0, 9), min_size=1, max_size=1_010),
    adjusted=st.integers(-1_005, 1_005) | st.sampled_from([-1_000, 999, 1_000]),  # the bounds
    negative=st.booleans(),
)
def test_a_number_accepted_is_accepted_as_postgres_writes_it_back(
    digits: list[int], adjusted: int, negative: bool
) -> None:
    """A campaign's stored segment is parsed from Postgres's text of it, which writes a number
    out in full (``1e999`` as 1000 digits, ``1.50e-3`` as ``0.00150``): what is accepted once
    must be accepted again, or the campaign fails when it starts."""
    value = decimal.Decimal((int(negative), (1, *digits[1:]), adjusted - len(digits) + 1))
    try:
        number = segments.parse(leaf(op="lt", value=value)).root
    except segments.SegmentError as exc:
        assert exc.reason == "number out of range"
        return
    assert isinstance(number, segments.Condition)
    stored = format(value, "f")  # as numeric_out writes it: no exponent, the scale kept
    again = segments.parse(f'{{"field": "attributes.n", "op": "lt", "value": {stored}}}').root
    assert isinstance(again, segments.Condition) and again.value == value


# --- SQL ------------------------------------------------------------------------------------------

EVIL = "x'); DROP TABLE leads;--"


def test_values_and_paths_are_only_parameters() -> None:
    segment = segments.parse(
        {
            "any": [
                leaf(field=f"attributes.{EVIL}.b", value=EVIL),
                leaf(field="email", op="contains", value=EVIL),
                leaf(field="attributes.$1", op="in", value=[EVIL, "'"]),
                leaf(field="attributes.x", op="gt", value=3),
            ]
        }
    )
    sql, params = segments.compile(segment, first_param=4, alias="lead")
    assert "DROP" not in sql
    assert "x'" not in sql
    assert [EVIL, "b"] in params
    assert EVIL in params
    assert EVIL.lower() in params  # folded for the case-insensitive operator
    assert [EVIL, "'"] in params
    assert ["$1"] in params
    placeholders = {int(n) for n in re.findall(r"\$(\d+)::", sql)}
    assert placeholders == set(range(4, 4 + len(params)))
    # Nothing but our own literals between quotes.
    assert set(re.findall(r"'[^']*'", sql)) <= {"'string'", "'number'", "'null'", "'{}'"}
    assert "lead.attributes" in sql
    assert " l." not in sql


def test_equal_values_share_one_parameter() -> None:
    segment = segments.parse({"all": [leaf(), leaf(op="ne"), leaf(field="attributes.plan.x")]})
    _, params = segments.compile(segment)
    assert params == [["plan"], "pro", ["plan", "x"]]


def test_alias_must_be_an_identifier() -> None:
    with pytest.raises(ValueError, match="alias"):
        segments.compile(segments.parse(leaf()), alias="l; DROP")


def test_empty_combinators_compile_to_constants() -> None:
    assert segments.compile(segments.parse({"all": []})) == ("true", [])
    assert segments.compile(segments.parse({"any": []})) == ("false", [])


# --- reference semantics -------------------------------------------------------------------------


def matches(condition: Any, attributes: Any = None, email: str = "Ann@Example.com") -> bool:
    return segments.evaluate(
        segments.parse(condition),
        email=email,
        created_at=CREATED,
        attributes={} if attributes is None else attributes,
    )


@pytest.mark.parametrize(
    ("condition", "attributes", "expected"),
    [
        (leaf(value="pro"), {"plan": "pro"}, True),
        (leaf(value="pro"), {"plan": "Pro"}, False),  # eq is exact
        (leaf(value="pro"), {}, False),
        (leaf(value="pro"), {"plan": None}, False),
        (leaf(op="ne", value="pro"), {"plan": "free"}, True),
        (leaf(op="ne", value="pro"), {"plan": 3}, False),  # other type: neither eq nor ne
        (leaf(op="ne", value="pro"), {}, False),
        ({"not": leaf(value="pro")}, {}, True),  # not is the full complement
        (leaf(value=1), {"plan": 1.0}, True),
        (leaf(value=1), {"plan": "1"}, False),
        (leaf(value=1), {"plan": True}, False),  # booleans are not numbers
        (leaf(value=True), {"plan": 1}, False),
        (leaf(value=True), {"plan": True}, True),
        (leaf(value=0.1), {"plan": 0.1}, True),
        (leaf(op="in", value=[1, 2]), {"plan": 2.0}, True),
        (leaf(op="in", value=[True]), {"plan": 1}, False),
        (leaf(op="not_in", value=["a", "b"]), {"plan": "c"}, True),
        (leaf(op="not_in", value=["a", "b"]), {"plan": ["c"]}, False),
        (leaf(op="gt", value=10), {"plan": 10.5}, True),
        (leaf(op="gte", value=10), {"plan": 10}, True),
        (leaf(op="lt", value=10), {"plan": "9"}, False),
        (leaf(op="lte", value="2024-01-01"), {"plan": "2023-12-31T23:59:59.999999"}, True),
        (leaf(op="gt", value="2024-01-01"), {"plan": "2024-01-01T00:00:00.000001Z"}, True),
        (leaf(op="gt", value="2024-01-01T00:00"), {"plan": "2024-01-01T01:00+02:00"}, False),
        (leaf(op="lt", value="2024-03-01"), {"plan": "2024-02-30"}, False),  # invalid date
        ({"not": leaf(op="lt", value="2024-03-01")}, {"plan": "2024-02-30"}, True),
        (leaf(op="gt", value="2024-01-01"), {"plan": 20250101}, False),
        (leaf(op="gt", value=1), {"plan": "2024-01-01"}, False),
        (leaf(op="contains", value="RO"), {"plan": "Pro plan"}, True),
        (leaf(op="contains", value="É"), {"plan": "école"}, False),  # ASCII folding only
        (leaf(op="starts_with", value="pR"), {"plan": "Pro"}, True),
        (leaf(op="ends_with", value="AN"), {"plan": "Pro plan"}, True),
        (leaf(op="ends_with", value=""), {"plan": ""}, True),
        (leaf(op="contains", value="1"), {"plan": 1}, False),
        (leaf(op="exists", value=True), {"plan": 0}, True),
        (leaf(op="exists", value=True), {"plan": None}, False),
        (leaf(op="exists", value=False), {"plan": None}, True),
        (leaf(op="exists", value=False), {}, True),
        (leaf(field="attributes.a.b", value=1), {"a": {"b": 1}}, True),
        (leaf(field="attributes.a.b", value=1), {"a": 1}, False),
        (leaf(field="attributes.a.0", value=1), {"a": [1]}, False),  # arrays are not traversed
        (leaf(field="attributes.a.0", value=1), {"a": {"0": 1}}, True),
        (leaf(field="attributes.a", value="x"), ["x"], False),
    ],
)
def test_attribute_semantics(condition: Any, attributes: Any, expected: bool) -> None:
    assert matches(condition, attributes) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (leaf(field="email", value="ann@example.COM"), True),
        (leaf(field="email", op="ne", value="ann@example.com"), False),
        (leaf(field="email", op="in", value=["x@y", "ANN@EXAMPLE.COM"]), True),
        (leaf(field="email", op="ends_with", value="@EXAMPLE.com"), True),
        (leaf(field="email", op="exists", value=False), False),
        (leaf(field="created_at", op="gte", value="2024-05-01T12:00"), True),
        (leaf(field="created_at", op="gt", value="2024-05-01T12:00"), False),
        (leaf(field="created_at", op="lt", value="2024-05-01T14:00+02:00"), False),
        (leaf(field="created_at", op="lt", value="2024-05-02"), True),
        ({"all": []}, True),
        ({"any": []}, False),
        ({"any": [leaf(field="email", value="x"), {"not": {"any": []}}]}, True),
    ],
)
def test_builtin_field_semantics(condition: Any, expected: bool) -> None:
    assert matches(condition) is expected


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("2024-02-29", True),
        ("2023-02-29", False),
        ("2024-02-30", False),
        ("0000-01-01", False),
        ("2024-01-01T10:00", True),
        ("2024-01-01T10:00:05.123456+05:30", True),
        ("2024-01-01T10:00:05.1234567", False),
        ("2024-01-01T24:00", False),
        ("2024-01-01T10:60", False),
        ("2024-01-01T10:00:60", False),
        ("2024-01-01T10:00+16:00", False),
        ("2024-01-01T10:00-15:59", True),
        ("2024-01-01Z", False),
        ("2024-01-01t10:00", False),
        ("2024-01-01 10:00", False),
        ("2024-01-01\n", False),
        ("２０２４-01-01", False),  # non-ASCII digits
        ("0001-01-01T00:00+01:00", True),  # before year 1 in UTC: fine for lead data
    ],
)
def test_iso_acceptance(text: str, valid: bool) -> None:
    assert (segments._parse_iso(text) is not None) is valid


def test_fold_is_ascii_only() -> None:
    assert segments.fold("ÀBC-İσΣ") == "Àbc-İσΣ"
