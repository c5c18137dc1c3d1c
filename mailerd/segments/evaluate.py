"""The reference semantics: what a segment selects, evaluated in Python (the tests hold the SQL
to it). Pure."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from mailerd.segments.nodes import (
    _TEXT,
    All,
    AnyOf,
    Kind,
    Node,
    Not,
    Segment,
    _instant,
    _number,
    _parse_iso,
    fold,
)

# --- reference semantics ---------------------------------------------------------------------

_MISSING = object()


def evaluate(segment: Segment, *, email: str, created_at: dt.datetime, attributes: Any) -> bool:
    """Whether one lead matches: the reference semantics that :func:`compile` implements in SQL.

    ``attributes`` is the decoded JSON (floats are read by their shortest repr, as Postgres reads
    the JSON text). Suppressions are not part of a segment and are not considered here.
    """
    return _evaluate(segment.root, email, created_at, attributes)


def _evaluate(node: Node, email: str, created_at: dt.datetime, attributes: Any) -> bool:
    if isinstance(node, All):
        return all(_evaluate(c, email, created_at, attributes) for c in node.conditions)
    if isinstance(node, AnyOf):
        return any(_evaluate(c, email, created_at, attributes) for c in node.conditions)
    if isinstance(node, Not):
        return not _evaluate(node.condition, email, created_at, attributes)
    if node.op == "exists" and node.target != "attributes":
        return bool(node.value)
    if node.target == "email":
        return _test(node.op, fold(email), _fold_value(node.value))
    if node.target == "created_at":
        assert isinstance(node.value, dt.datetime)
        return _test(node.op, _instant(created_at), _instant(node.value))
    actual: Any = attributes
    for key in node.path:
        actual = actual.get(key, _MISSING) if isinstance(actual, dict) else _MISSING
    if node.op == "exists":
        return (actual is not _MISSING and actual is not None) == node.value
    typed = _typed(actual, node.kind)
    if typed is None:
        return False
    if node.op in _TEXT:
        assert isinstance(typed, str)
        return _test(node.op, fold(typed), _fold_value(node.value))
    if node.kind == "date":
        assert isinstance(node.value, dt.datetime)
        return _test(node.op, typed, _instant(node.value))
    return _test(node.op, typed, node.value)


def _typed(value: Any, kind: Kind) -> str | decimal.Decimal | bool | int | None:
    """The attribute as a value of ``kind`` (a date as epoch microseconds), or None."""
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "number":
        number = _number(value)
        return number if number is not None and number.is_finite() else None
    return _parse_iso(value) if isinstance(value, str) else None


def _fold_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(fold(v) for v in value)
    return fold(value)


def _test(op: str, actual: Any, value: Any) -> bool:
    if op == "eq":
        return bool(actual == value)
    if op == "ne":
        return bool(actual != value)
    if op == "in":
        return actual in value
    if op == "not_in":
        return actual not in value
    if op == "gt":
        return bool(actual > value)
    if op == "gte":
        return bool(actual >= value)
    if op == "lt":
        return bool(actual < value)
    if op == "lte":
        return bool(actual <= value)
    if op == "contains":
        return bool(value in actual)
    if op == "starts_with":
        return bool(actual.startswith(value))
    if op == "ends_with":
        return bool(actual.endswith(value))
    raise AssertionError(op)
