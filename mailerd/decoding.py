"""JSON values into msgspec Structs, with every problem named by its field.

msgspec stops at the first error; an API should list them all. So each field is first checked on
its own against its annotated type (constraints included), then the whole Struct is built. The
messages say what was expected in words (``name: expected a string, got int``) rather than in
msgspec's type syntax. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)

# Patterns for text that Postgres or a mail header must not receive. ``(?![\s\S])`` is "the end
# of the text" in both Python and the ECMA dialect of JSON Schema (Python's ``$`` also matches
# before a final newline). A header line ends at every line break ``str.splitlines`` knows
# (U+0085, U+2028 and U+2029 too): the email package refuses them in a header value when it
# writes one as UTF-8 (a recipient whose address is not ASCII), and cuts the value there
# otherwise.
LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # besides CR and LF
NO_NUL = r"^[^\x00]*(?![\s\S])"
ONE_LINE = r"^[^\x00\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]*(?![\s\S])"
NO_CONTROL = r"^[^\x00-\x1f\x7f\x85\u2028\u2029]*(?![\s\S])"

# Human words for those patterns (msgspec would print the regular expression).
PATTERN_MESSAGES: dict[str, str] = {
    NO_NUL: "must not contain NUL characters",
    ONE_LINE: "must be one line: no CR, LF, NUL or other line break (U+000B, U+000C, U+001C-U+001E, "
    "U+0085, U+2028, U+2029)",
    NO_CONTROL: "must not contain control characters or line breaks (CR, LF, tab, NUL, U+2028, ...)",
}

_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "float": "a number",
    "int | float": "a number",
    "object": "an object",
    "array": "an array",
    "datetime": "an RFC 3339 time with a zone (e.g. 2026-12-01T09:00:00Z)",
    "date": "a day, YYYY-MM-DD (e.g. 2026-12-01)",
}
# ExactNumber: a number no double holds (mailerd.importer.parsing.loads_exact: POST /api/leads,
# /api/campaigns, /api/segments/preview)
_GOT_WORDS = {
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "ExactNumber": "a number beyond a double's range or precision",
}
_EXPECTED = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`")
_BOUND = re.compile(r"Expected `[^`]+` (?P<op>>=|<=|>|<) (?P<limit>\S+)")
_LENGTH = re.compile(r"Expected `[^`]+` of length (?P<op>>=|<=) (?P<limit>\d+)")
_PATTERN = re.compile(r"Expected `str` matching regex (?P<pattern>.+)$", re.DOTALL)
_AT = re.compile(r" - at `(?P<path>[^`]*)`$")


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One invalid field: its wire name and what is wrong with it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class Invalid(ValueError):
    """A value does not fit its Struct; ``problems`` lists every field that is wrong."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(str(problems[0]))
        self.problems = problems


def problems(cls: type[msgspec.Struct], data: Mapping[str, Any]) -> list[Problem]:
    """Every problem of ``data`` as a ``cls`` (empty when it fits). A null counts as absent."""
    fields = msgspec.structs.fields(cls)
    found: list[Problem] = []
    if cls.__struct_config__.forbid_unknown_fields:
        wire = {f.encode_name for f in fields}
        found += [Problem(key, "unknown field") for key in data if key not in wire]
    for field in fields:
        value = data.get(field.encode_name)
        if value is None:
            if field.required:
                found.append(Problem(field.encode_name, "is required"))
            continue
        nested = _nested_struct(field.type)
        if nested is not None and isinstance(value, Mapping):
            # A nested object: name its own fields (send_window.start), not just the object.
            found += [Problem(f"{field.encode_name}.{p.field}", p.message) for p in problems(nested, value)]
            continue
        try:
            msgspec.convert(value, field.type)
        except msgspec.ValidationError as exc:
            found.append(Problem(field.encode_name, describe(str(exc), field.type)))
    return found


def _nested_struct(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct an optional nested-object field holds (``Body | None`` -> Body), else None."""
    structs = [
        kind for kind in base_types(annotation) if isinstance(kind, type) and issubclass(kind, msgspec.Struct)
    ]
    return structs[0] if len(structs) == 1 else None


def decode(cls: type[T], data: Mapping[str, Any]) -> T:
    """``data`` as a ``cls``; :class:`Invalid` listing every problem. A null counts as absent."""
    found = problems(cls, data)
    if found:
        raise Invalid(found)
    present = {key: value for key, value in data.items() if value is not None}
    try:
        return msgspec.convert(present, cls)
    except msgspec.ValidationError as exc:  # a rule spanning fields; none today, but be exact
        raise Invalid([Problem("body", describe(str(exc), cls))]) from None


def describe(error: str, annotation: Any) -> str:
    """msgspec's message about a value of type ``annotation``, in words."""
    path = ""
    if located := _AT.search(error):
        error = error[: located.start()]
        if located["path"] not in ("$", ""):
            path = f" (at {located['path']})"
    return _words(error, annotation) + path


def _words(error: str, annotation: Any) -> str:
    if expected := _EXPECTED.fullmatch(error):
        want = expected["want"].replace(" | null", "")
        got = expected["got"]
        return f"expected {_TYPE_WORDS.get(want, want)}, got {_GOT_WORDS.get(got, got)}"
    metas = list(_metas(annotation))
    if bound := _BOUND.fullmatch(error):
        return _range_words(metas, bound["op"], bound["limit"])
    if length := _LENGTH.fullmatch(error):
        if length["op"] == ">=":
            return "must not be empty" if length["limit"] == "1" else f"at least {length['limit']} characters"
        return f"at most {length['limit']} characters"
    if pattern := _PATTERN.fullmatch(error):
        for meta in metas:
            if meta.pattern is not None and meta.pattern in PATTERN_MESSAGES:
                return PATTERN_MESSAGES[meta.pattern]
        return f"must match {pattern['pattern']}"
    if error.startswith("Invalid enum value"):
        choices = ", ".join(str(choice) for choice in _choices(annotation))
        value = error.removeprefix("Invalid enum value").strip()
        return f"unknown value {value} (one of: {choices})"
    if "timezone" in error:
        return "needs a time zone (e.g. 2026-12-01T09:00:00Z)"
    if error == "Invalid RFC3339 encoded date":
        return f"expected {_TYPE_WORDS['date']}"
    if error.startswith("Invalid RFC3339"):
        return f"expected {_TYPE_WORDS['datetime']}"
    return error[:1].lower() + error[1:]


def _range_words(metas: list[msgspec.Meta], op: str, limit: str) -> str:
    for meta in metas:
        low = meta.ge if meta.ge is not None else meta.gt
        if low is not None and meta.le is not None:
            return f"must be from {low} to {meta.le}"
        bound = {">=": meta.ge, "<=": meta.le, ">": meta.gt, "<": meta.lt}[op]
        if bound is not None:
            limit = str(bound)
    words = {">=": "at least", "<=": "at most", ">": "greater than", "<": "less than"}[op]
    return f"must be {words} {limit}"


def base_types(annotation: Any) -> set[Any]:
    """The plain types an annotation stands for (``Annotated[int, ...] | None`` -> int, None)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return base_types(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(base_types(arg) for arg in typing.get_args(annotation)))
    return {annotation}


def _choices(annotation: Any) -> list[Any]:
    """The values an enum or Literal annotation allows (of its items, for a list of them:
    a send window's ``days`` listed none, "(one of: )")."""
    found: list[Any] = []
    for kind in base_types(annotation):
        if typing.get_origin(kind) is typing.Literal:
            found += typing.get_args(kind)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            found += [member.value for member in kind]
        elif typing.get_origin(kind) in (list, tuple, set, frozenset):
            found += [value for item in typing.get_args(kind) for value in _choices(item)]
    return found


def _metas(annotation: Any) -> Iterator[msgspec.Meta]:
    """Every ``msgspec.Meta`` inside ``annotation`` (through ``Annotated`` and unions)."""
    for arg in typing.get_args(annotation):
        if isinstance(arg, msgspec.Meta):
            yield arg
        else:
            yield from _metas(arg)


MAX_ID = 2**63 - 1  # a bigint id
_MAX_ID_DIGITS = len(str(MAX_ID))


def whole_number(text: str) -> int | None:
    """``text`` as an int when it is ASCII digits only and at most :data:`MAX_ID`, else None.
    The length is checked first: ``int()`` refuses more than 4,300 digits with a ValueError
    (a 500), and ``int()`` alone would also take "١٢", " 12 ", "1_0" or "+5"."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_ID_DIGITS:
        return None
    value = int(digits)
    return value if value <= MAX_ID else None


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, for messages ("got array")."""
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
