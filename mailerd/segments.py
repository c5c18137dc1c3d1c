"""Segments: a JSON condition over leads, validated, compiled to parameterised SQL; pure.

Grammar::

    {"all": [C, ...]}   every C holds (an empty list matches every lead)
    {"any": [C, ...]}   some C holds (an empty list matches no lead)
    {"not": C}          the full complement of C
    {"field": F, "op": OP, "value": V}

``F`` is ``email``, ``created_at`` or ``attributes.KEY[.KEY...]`` (a dotted path through nested
objects; keys cannot contain dots; arrays are never traversed, so ``attributes.tags.0`` reads the
key ``"0"`` of an object, never an array element). Operators and the values they take:

- ``eq``, ``ne``: a string, number or boolean. ``in``, ``not_in``: a non-empty array of such
  values, all of one JSON type (at most 10,000).
- ``gt``, ``gte``, ``lt``, ``lte``: a number, or an ISO-8601 date or date-time string
  (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|±HH:MM]``; date-only and naive mean UTC),
  compared as a timestamp.
- ``contains``, ``starts_with``, ``ends_with``: a string, compared case-insensitively.
- ``exists``: true or false.

Typed comparison: the JSON type of V decides. A lead whose attribute is missing, null, of another
type, or (for a date comparison) a string that is not a valid date by the rules above, does not
match; nothing ever raises on lead data. ``ne``/``not_in`` are the negation of ``eq``/``in`` among
the leads that have the attribute with V's type; ``not`` is the full complement. ``exists: true``
means present and not null. Numbers compare exactly as decimals (``1 = 1.0``); booleans are not
numbers.

Case-insensitive means ASCII case folding (``A-Z`` = ``a-z``; ``É`` and ``é`` differ): Unicode
case mapping differs between Postgres collations, ICU and Python versions, and a segment must
select the same leads wherever it runs and in :func:`evaluate`.

The built-in fields: ``email`` takes the string operators (``eq``, ``ne``, ``in``, ``not_in``,
``contains``, ``starts_with``, ``ends_with``), all case-insensitive, since addresses are unique
per account whatever their case. ``created_at`` takes ``gt``, ``gte``, ``lt``, ``lte`` with a
date or date-time (equality to the microsecond is never what is meant). Both take ``exists``,
which is always true for them.

Validation rejects unknown keys, nulls, strings containing NUL or lone surrogates (Postgres text
cannot hold them), numbers out of Postgres ``numeric`` range, nesting deeper than 32, more than
1,000 condition nodes and value lists longer than 10,000. Errors name the JSON path:
``$.all[2].op: unknown operator "gtt"``.

SQL: :func:`compile` returns a boolean expression over ``leads`` in which every value and every
attribute path is a bind parameter; every leaf is a non-NULL boolean (casts guarded by ``CASE``,
since Postgres does not promise the order of ``AND``), so ``NOT`` is the exact complement. Date
strings in lead attributes are parsed by ``mailerd_iso_timestamptz()`` (migration 0002), which
accepts exactly what :func:`_parse_iso` accepts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import re
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

MAX_DEPTH = 32
MAX_NODES = 1_000
MAX_LIST_VALUES = 10_000
MAX_PATH_KEYS = 32

Kind: TypeAlias = Literal["string", "number", "boolean", "date"]
Scalar: TypeAlias = str | decimal.Decimal | bool | dt.datetime
Target: TypeAlias = Literal["email", "created_at", "attributes"]

OPERATORS = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "starts_with",
    "ends_with",
    "exists",
)
_EQUALITY = frozenset({"eq", "ne"})
_MEMBERSHIP = frozenset({"in", "not_in"})
_ORDER = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_TEXT = frozenset({"contains", "starts_with", "ends_with"})
_FIELD_OPS: dict[Target, frozenset[str]] = {
    "email": _EQUALITY | _MEMBERSHIP | _TEXT | {"exists"},
    "created_at": frozenset(_ORDER) | {"exists"},
    "attributes": frozenset(OPERATORS),
}


class SegmentError(ValueError):
    """An invalid segment: ``path`` is a JSON path such as ``$.all[2].op``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """A leaf: ``field`` as written, ``path`` its attribute keys (empty for built-in fields).

    ``value`` is a ``kind`` scalar (``Decimal`` for numbers, an aware UTC ``datetime`` for
    dates), a tuple of them for ``in``/``not_in``, or a bool for ``exists``.
    """

    field: str
    target: Target
    path: tuple[str, ...]
    op: str
    kind: Kind
    value: Scalar | tuple[Scalar, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class All:
    """Every condition holds."""

    conditions: tuple[Node, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one condition holds."""

    conditions: tuple[Node, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Not:
    """The condition does not hold."""

    condition: Node


Node: TypeAlias = Condition | All | AnyOf | Not


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """A validated segment: the root node and its size."""

    root: Node
    nodes: int
    depth: int


# --- dates -------------------------------------------------------------------------------------

_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"(Z|([+-])([0-9]{2}):([0-9]{2}))?)?"
)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROS = dt.timedelta(microseconds=1)


def _parse_iso(text: str) -> int | None:
    """Microseconds since the Unix epoch of a strict ISO-8601 string, or None.

    The same acceptance rules as ``mailerd_iso_timestamptz()`` in SQL; change both together.
    """
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day = int(match[1]), int(match[2]), int(match[3])
    hour, minute, second = (int(g) if g else 0 for g in (match[4], match[5], match[6]))
    micros = int((match[7] or "").ljust(6, "0"))
    sign = -1 if match[9] == "-" else 1
    offset_hours, offset_minutes = (int(g) if g else 0 for g in (match[10], match[11]))
    if hour > 23 or minute > 59 or second > 59 or offset_hours > 15 or offset_minutes > 59:
        return None
    try:
        days = dt.date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # year 0, month 13, February 30th ...
        return None
    seconds = ((days * 24 + hour) * 60 + minute) * 60 + second
    seconds -= sign * (offset_hours * 60 + offset_minutes) * 60
    return seconds * 1_000_000 + micros


def _instant(value: dt.datetime) -> int:
    """Microseconds since the epoch; a naive datetime is UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // _MICROS


# --- parsing -----------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _member(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | decimal.Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


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


class _Validator:
    def __init__(self) -> None:
        self.nodes = 0
        self.depth = 0

    def node(self, raw: Any, path: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise SegmentError(path, f"nesting deeper than {MAX_DEPTH} levels")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SegmentError(path, f"more than {MAX_NODES} conditions")
        self.depth = max(self.depth, depth)
        if not isinstance(raw, dict):
            raise SegmentError(path, f"expected an object, got {_json_type(raw)}")
        if isinstance(raw, _DuplicateKeys):
            raise SegmentError(_member(path, raw.duplicate), "duplicate key")
        for key in raw:
            if not isinstance(key, str):
                raise SegmentError(path, f"keys must be strings, got {_json_type(key)}")
        combinators = [key for key in ("all", "any", "not") if key in raw]
        if len(combinators) > 1:
            raise SegmentError(path, f'"{combinators[0]}" and "{combinators[1]}" in one object')
        if combinators:
            name = combinators[0]
            self._no_other_keys(raw, path, (name,))
            inner = _member(path, name)
            if name == "not":
                return Not(self.node(raw["not"], inner, depth + 1))
            children = raw[name]
            if not isinstance(children, list | tuple):
                raise SegmentError(inner, f"expected an array, got {_json_type(children)}")
            nodes = tuple(self.node(child, f"{inner}[{i}]", depth + 1) for i, child in enumerate(children))
            return All(nodes) if name == "all" else AnyOf(nodes)
        if not raw:
            raise SegmentError(path, 'empty object: expected "all", "any", "not" or "field"')
        if "field" not in raw:
            unknown = next(iter(raw))
            raise SegmentError(
                _member(path, unknown),
                f'unknown key "{unknown}" (expected "all", "any", "not" or "field")',
            )
        return self._condition(raw, path)

    @staticmethod
    def _no_other_keys(raw: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in raw:
            if key not in allowed:
                expected = ", ".join(f'"{a}"' for a in allowed)
                raise SegmentError(_member(path, key), f'unknown key "{key}" (expected {expected})')

    def _condition(self, raw: dict[str, Any], path: str) -> Condition:
        self._no_other_keys(raw, path, ("field", "op", "value"))
        for key in ("op", "value"):
            if key not in raw:
                raise SegmentError(path, f'missing "{key}"')
        field_path = f"{path}.field"
        field = raw["field"]
        if not isinstance(field, str):
            raise SegmentError(field_path, f"expected a string, got {_json_type(field)}")
        _check_text(field, field_path)
        target, keys = _field(field, field_path)
        op_path = f"{path}.op"
        op = raw["op"]
        if not isinstance(op, str):
            raise SegmentError(op_path, f"expected a string, got {_json_type(op)}")
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
_MAX_EXPONENT = 1_000
_MAX_DIGITS = 1_000


def _number(value: Any) -> decimal.Decimal | None:
    """A JSON number as an exact Decimal (a float by its shortest repr), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return decimal.Decimal(value)
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, decimal.Decimal):
        return value
    return None


def _scalar(value: Any, path: str, allowed: tuple[Kind, ...]) -> tuple[Kind, Scalar]:
    """Validate one value against the kinds an operator takes."""
    if value is None:
        raise SegmentError(path, "null is not a valid value")
    number = _number(value)
    if number is not None and "number" in allowed:
        sign_digits_exponent = number.as_tuple()
        if not number.is_finite():
            raise SegmentError(path, "numbers must be finite")
        if abs(number.adjusted()) > _MAX_EXPONENT or len(sign_digits_exponent.digits) > _MAX_DIGITS:
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
    raise SegmentError(path, f"expected {expected}, got {_json_type(value)}")


def _value(target: Target, op: str, raw: Any, path: str) -> tuple[Kind, Scalar | tuple[Scalar, ...]]:
    kinds: tuple[Kind, ...]
    if op == "exists":
        if not isinstance(raw, bool):
            raise SegmentError(path, f'operator "exists" expects true or false, got {_json_type(raw)}')
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
        raise SegmentError(path, f'operator "{op}" expects an array, got {_json_type(raw)}')
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


# --- SQL -----------------------------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_SQL_TYPES: dict[Kind, str] = {
    "string": "text",
    "number": "numeric",
    "boolean": "boolean",
    "date": "timestamptz",
}


def fold(text: str) -> str:
    """The case folding of the case-insensitive operators: ASCII letters only."""
    return text.translate(_ASCII_LOWER)


def compile(  # the verb of this module; shadows the builtin inside this module only
    segment: Segment, *, first_param: int = 1, alias: str = "l"
) -> tuple[str, list[Any]]:
    """A non-NULL boolean SQL expression over ``leads`` aliased ``alias``, and its parameters.

    Placeholders start at ``$first_param``; every value and attribute path is a parameter.
    ``alias`` is trusted code, never user input.
    """
    if not _IDENTIFIER.fullmatch(alias):
        raise ValueError(f"alias must be an SQL identifier, got {alias!r}")
    compiler = _Compiler(first_param, alias)
    return compiler.node(segment.root), compiler.params


class _Compiler:
    def __init__(self, first_param: int, alias: str) -> None:
        self.first = first_param
        self.alias = alias
        self.params: list[Any] = []
        self.seen: dict[tuple[str, Any], str] = {}

    def param(self, sql_type: str, value: Any) -> str:
        """A placeholder with its cast; equal values share one parameter."""
        key = (sql_type, tuple(value) if isinstance(value, list) else value)
        if key not in self.seen:
            self.params.append(value)
            self.seen[key] = f"${self.first + len(self.params) - 1}::{sql_type}"
        return self.seen[key]

    def node(self, node: Node) -> str:
        if isinstance(node, All):
            return "(" + " AND ".join(map(self.node, node.conditions)) + ")" if node.conditions else "true"
        if isinstance(node, AnyOf):
            return "(" + " OR ".join(map(self.node, node.conditions)) + ")" if node.conditions else "false"
        if isinstance(node, Not):
            return f"(NOT {self.node(node.condition)})"
        if node.target == "attributes":
            return self.attribute(node)
        return self.builtin(node)

    def value(self, node: Condition, transform: Callable[[Scalar], Scalar] = lambda v: v) -> str:
        sql_type = _SQL_TYPES[node.kind]
        if isinstance(node.value, tuple):
            return self.param(sql_type + "[]", [transform(v) for v in node.value])
        return self.param(sql_type, transform(node.value))

    def builtin(self, node: Condition) -> str:
        if node.op == "exists":
            return "true" if node.value else "false"
        if node.target == "created_at":
            return f"({self.alias}.created_at {_ORDER[node.op]} {self.value(node)})"
        return _string_test(node.op, f'lower({self.alias}.email COLLATE "C")', self.folded(node))

    def folded(self, node: Condition) -> str:
        return self.value(node, lambda v: fold(v) if isinstance(v, str) else v)

    def attribute(self, node: Condition) -> str:
        path = self.param("text[]", list(node.path))
        attr = f"{self.alias}.attributes" + "".join(
            f" -> ({path})[{i}]" for i in range(1, len(node.path) + 1)
        )
        if node.op == "exists":
            present = f"coalesce(jsonb_typeof({attr}) <> 'null', false)"
            return present if node.value else f"(NOT {present})"
        json_type = "string" if node.kind == "date" else node.kind
        text = f"({attr} #>> '{{}}')"
        if node.op in _TEXT:
            test = _string_test(node.op, f'lower({text} COLLATE "C")', self.folded(node))
        elif node.kind == "date":
            test = f"coalesce(mailerd_iso_timestamptz({text}) {_ORDER[node.op]} {self.value(node)}, false)"
        elif node.kind == "string":
            test = _string_test(node.op, text, self.value(node))
        else:
            typed = f"({attr})::{_SQL_TYPES[node.kind]}"
            test = _ordered_test(node.op, typed, self.value(node))
        return f"(CASE WHEN jsonb_typeof({attr}) = '{json_type}' THEN {test} ELSE false END)"


def _ordered_test(op: str, column: str, value: str) -> str:
    if op == "eq":
        return f"{column} = {value}"
    if op == "ne":
        return f"{column} <> {value}"
    if op == "in":
        return f"{column} = ANY({value})"
    if op == "not_in":
        return f"NOT ({column} = ANY({value}))"
    return f"{column} {_ORDER[op]} {value}"


def _string_test(op: str, column: str, value: str) -> str:
    if op == "contains":
        return f"(strpos({column}, {value}) > 0)"
    if op == "starts_with":
        return f"starts_with({column}, {value})"
    if op == "ends_with":
        return f"(right({column}, length({value})) = {value})"
    return _ordered_test(op, column, value)


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
