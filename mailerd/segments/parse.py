"""Validation: a JSON condition into a :class:`~mailerd.segments.nodes.Segment`, or a
:class:`~mailerd.segments.nodes.SegmentError` naming the JSON path. Pure."""

from __future__ import annotations

import decimal
import json
from typing import Any

import orjson

from mailerd.decoding import json_type
from mailerd.segments.nodes import (
    _EPOCH,
    _FIELD_OPS,
    _IDENTIFIER,
    _MAX_DIGITS,
    _MAX_EXPONENT,
    _MEMBERSHIP,
    _MICROS,
    _ORDER,
    _TEXT,
    MAX_DEPTH,
    MAX_LIST_VALUES,
    MAX_NODES,
    MAX_PATH_KEYS,
    OPERATORS,
    All,
    AnyOf,
    Condition,
    Kind,
    Node,
    Not,
    Scalar,
    Segment,
    SegmentError,
    Target,
    _number,
    _parse_iso,
)

# --- parsing -----------------------------------------------------------------------------------


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.fullmatch(key) else f"{path}[{json.dumps(key)}]"


class _DuplicateKeys(dict[str, Any]):
    """A decoded JSON object that repeated a key: reported by the validator, with its path."""

    duplicate: str = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            duplicates = _DuplicateKeys(result)
            duplicates.duplicate = key
            return duplicates
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse(source: str | bytes | Any) -> Segment:
    """Validate a segment given as JSON text or an already-decoded object.

    Raises :class:`SegmentError` naming the JSON path of the first problem found.
    """
    if isinstance(source, str | bytes | bytearray):
        try:
            source = json.loads(
                source,
                parse_float=decimal.Decimal,
                parse_constant=_reject_constant,
                object_pairs_hook=_pairs,
            )
        except RecursionError:
            raise SegmentError("$", f"nesting deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge integers
            raise SegmentError("$", f"invalid JSON: {exc}") from None
    validator = _Validator()
    root = validator.node(source, "$", 1)
    return Segment(root=root, nodes=validator.nodes, depth=validator.depth)


def as_json(source: str | bytes | Any) -> bytes:
    """A segment :func:`parse` accepted, as the JSON text to store: the text as it was sent, or
    the decoded object with each ``Decimal`` written as its digits (``orjson`` would refuse it,
    and a float would change it). Reading the stored text back with :func:`parse` gives the
    same numbers."""
    if isinstance(source, str):
        return source.encode("utf-8", "surrogatepass")  # parse() refused lone surrogates already
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    return orjson.dumps(source, default=_decimal_text)


def _decimal_text(value: Any) -> orjson.Fragment:
    if isinstance(value, decimal.Decimal) and value.is_finite():
        return orjson.Fragment(str(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _check_object(raw: Any, path: str) -> None:
    """A node is a JSON object with unique string keys."""
    if not isinstance(raw, dict):
        raise SegmentError(path, f"expected an object, got {json_type(raw)}")
    if isinstance(raw, _DuplicateKeys):
        raise SegmentError(_member(path, raw.duplicate), "duplicate key")
    for key in raw:
        if not isinstance(key, str):
            raise SegmentError(path, f"keys must be strings, got {json_type(key)}")


class _Validator:
    def __init__(self) -> None:
        self.nodes = 0
        self.depth = 0

    def node(self, raw: Any, path: str, depth: int) -> Node:
        self._count(path, depth)
        _check_object(raw, path)
        combinators = [key for key in ("all", "any", "not") if key in raw]
        if len(combinators) > 1:
            raise SegmentError(path, f'"{combinators[0]}" and "{combinators[1]}" in one object')
        if combinators:
            return self._combinator(raw, path, depth, combinators[0])
        if not raw:
            raise SegmentError(path, 'empty object: expected "all", "any", "not" or "field"')
        if "field" not in raw:
            unknown = next(iter(raw))
            raise SegmentError(
                _member(path, unknown),
                f'unknown key {json.dumps(unknown)} (expected "all", "any", "not" or "field")',
            )
        return self._condition(raw, path)

    def _count(self, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SegmentError(path, f"nesting deeper than {MAX_DEPTH} levels")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SegmentError(path, f"more than {MAX_NODES} conditions")
        self.depth = max(self.depth, depth)

    def _combinator(self, raw: dict[str, Any], path: str, depth: int, name: str) -> Node:
        self._no_other_keys(raw, path, (name,))
        inner = _member(path, name)
        if name == "not":
            return Not(self.node(raw["not"], inner, depth + 1))
        children = raw[name]
        if not isinstance(children, list | tuple):
            raise SegmentError(inner, f"expected an array, got {json_type(children)}")
        nodes = tuple(self.node(child, f"{inner}[{i}]", depth + 1) for i, child in enumerate(children))
        return All(nodes) if name == "all" else AnyOf(nodes)

    @staticmethod
    def _no_other_keys(raw: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in raw:
            if key not in allowed:
                expected = ", ".join(f'"{a}"' for a in allowed)
                # quoted as JSON, as the path does: a lone surrogate cannot go into a JSON answer
                raise SegmentError(_member(path, key), f"unknown key {json.dumps(key)} (expected {expected})")

    def _condition(self, raw: dict[str, Any], path: str) -> Condition:
        self._no_other_keys(raw, path, ("field", "op", "value"))
        for key in ("op", "value"):
            if key not in raw:
                raise SegmentError(path, f'missing "{key}"')
        field_path = f"{path}.field"
        field = raw["field"]
        if not isinstance(field, str):
            raise SegmentError(field_path, f"expected a string, got {json_type(field)}")
        _check_text(field, field_path)
        target, keys = _field(field, field_path)
        op_path = f"{path}.op"
        op = raw["op"]
        if not isinstance(op, str):
            raise SegmentError(op_path, f"expected a string, got {json_type(op)}")
        if op not in OPERATORS:
            raise SegmentError(op_path, f"unknown operator {json.dumps(op)}")
        if op not in _FIELD_OPS[target]:
            raise SegmentError(op_path, f'operator "{op}" does not apply to field "{target}"')
        kind, value = _value(target, op, raw["value"], f"{path}.value")
        return Condition(field=field, target=target, path=keys, op=op, kind=kind, value=value)


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise SegmentError(path, "strings cannot contain NUL (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SegmentError(path, "strings cannot contain lone surrogates") from None


def _field(field: str, path: str) -> tuple[Target, tuple[str, ...]]:
    if field in ("email", "created_at"):
        return field, ()  # type: ignore[return-value]  # narrowed by the membership test
    head, dot, rest = field.partition(".")
    if head != "attributes":
        raise SegmentError(
            path,
            f'unknown field {json.dumps(field)} (expected "email", "created_at" or "attributes.KEY")',
        )
    keys = tuple(rest.split(".")) if dot else ()
    if not keys or "" in keys:
        raise SegmentError(path, f"empty key in attribute path {json.dumps(field)}")
    if len(keys) > MAX_PATH_KEYS:
        raise SegmentError(path, f"attribute path deeper than {MAX_PATH_KEYS} keys")
    return "attributes", keys


# Postgres numeric holds 131,072 digits before the point and 16,383 after; stay well inside.


def _scalar(value: Any, path: str, allowed: tuple[Kind, ...]) -> tuple[Kind, Scalar]:
    """Validate one value against the kinds an operator takes."""
    if value is None:
        raise SegmentError(path, "null is not a valid value")
    number = _number(value)
    if number is not None and "number" in allowed:
        sign_digits_exponent = number.as_tuple()
        if not number.is_finite():
            raise SegmentError(path, "numbers must be finite")
        # Digits as Postgres writes the number out in full (1e999: 1000), the text a campaign's
        # stored segment is parsed from again: counted as written, 1e1000 passed, then failed.
        digits = len(sign_digits_exponent.digits)
        if number and isinstance(sign_digits_exponent.exponent, int):
            digits += max(0, sign_digits_exponent.exponent)
        if abs(number.adjusted()) > _MAX_EXPONENT or digits > _MAX_DIGITS:
            raise SegmentError(path, "number out of range")
        return "number", number
    if isinstance(value, bool) and "boolean" in allowed:
        return "boolean", value
    if isinstance(value, str):
        _check_text(value, path)
        if "date" in allowed:
            instant = _parse_iso(value)
            if instant is None:
                raise SegmentError(
                    path,
                    f"expected a number or an ISO-8601 date or date-time, got {json.dumps(value)}",
                )
            try:
                return "date", _EPOCH + instant * _MICROS
            except OverflowError:
                raise SegmentError(path, "date out of range") from None
        if "string" in allowed:
            return "string", value
    expected = " or ".join("a date" if k == "date" else f"a {k}" for k in allowed)
    raise SegmentError(path, f"expected {expected}, got {json_type(value)}")


def _value(target: Target, op: str, raw: Any, path: str) -> tuple[Kind, Scalar | tuple[Scalar, ...]]:
    kinds: tuple[Kind, ...]
    if op == "exists":
        if not isinstance(raw, bool):
            raise SegmentError(path, f'operator "exists" expects true or false, got {json_type(raw)}')
        return "boolean", raw
    if op in _TEXT or target == "email":
        kinds = ("string",)
    elif op in _ORDER:
        kinds = ("date",) if target == "created_at" else ("number", "date")
    else:
        kinds = ("string", "number", "boolean")
    if op not in _MEMBERSHIP:
        return _scalar(raw, path, kinds)
    if not isinstance(raw, list | tuple):
        raise SegmentError(path, f'operator "{op}" expects an array, got {json_type(raw)}')
    if not raw:
        raise SegmentError(path, f'operator "{op}" expects a non-empty array')
    if len(raw) > MAX_LIST_VALUES:
        raise SegmentError(path, f"more than {MAX_LIST_VALUES} values")
    first_kind, first = _scalar(raw[0], f"{path}[0]", kinds)
    values = [first]
    for i, item in enumerate(raw[1:], start=1):
        kind, value = _scalar(item, f"{path}[{i}]", kinds)
        if kind != first_kind:
            raise SegmentError(f"{path}[{i}]", f"expected a {first_kind} like the first value, got {kind}")
        values.append(value)
    return first_kind, tuple(values)
