"""The segment language's nouns: operators, node types, errors, and the date and case rules
shared by validation, SQL compilation and evaluation. Pure."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
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


# --- numbers -------------------------------------------------------------------------------------

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


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- case ----------------------------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """The case folding of the case-insensitive operators: ASCII letters only."""
    return text.translate(_ASCII_LOWER)
