"""Parsing and type inference for imports: pure, no I/O.

Addresses, numbers and booleans as the importer reads them, the per-column inference state, the
CSV header, and one lead (a JSONL line, or the body of ``POST /api/leads``). The suppression
import validates addresses here too.
"""

from __future__ import annotations

import decimal
import enum
import json
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from mailerd.importer.rejects import ImportFailed

# Pragmatic, cheap: one @, a dot-atom local part (no leading, trailing or doubled dot) without
# spaces, control or invisible format characters (a zero-width space, a right-to-left override:
# an address that shows as another; the joiners ZWJ and ZWNJ that scripts need are allowed),
# a dotted domain of labels that neither start nor end with a hyphen (no underscore), ending in
# a letters-only (or punycode) TLD. Undecodable bytes (read as surrogate escapes) fail.
_NOT_LOCAL = (
    r"@\s\"(),:;<>\[\\\]\x00-\x1f\x7f\ud800-\udfff"
    r"\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb."
)
_LABEL = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"
EMAIL = re.compile(
    r"(?=.{6,254}\Z)(?=[^@]{1,64}@)"
    rf"[^{_NOT_LOCAL}]+(?:\.[^{_NOT_LOCAL}]+)*"
    rf"@(?:{_LABEL}\.)+"
    r"(?:[^\W\d_]{2,63}|xn--(?:[^\W_]|-){1,59})\Z"
)
# JSON number syntax without leading zeros (``007`` is a code, not a number) and an exponent of
# at most 400 (see _MAX_EXPONENT).
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?0*(?:[0-9]{1,2}|[1-3][0-9]{2}|400))?"
_NUMBER_RE = re.compile(_NUMBER)
_NUMBERS_RE = re.compile(rf"{_NUMBER}(?:\n{_NUMBER})*")
BOOLEANS = frozenset({"true", "false"})


class ColumnType(enum.StrEnum):
    """The JSON type a CSV column's values are stored as."""

    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"


# Any address at all, for finding or removing one already stored (earlier versions took some the
# check above refuses, such as "a..b@x.com"): something, one "@", something; no space or control.
_ANY_ADDRESS = re.compile(r"(?=.{3,254}\Z)[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")


def is_any_address(address: str) -> bool:
    """True for anything that may be a stored address (see :data:`_ANY_ADDRESS`): lookups and
    removals take it; what is stored anew must pass :func:`is_valid_email`."""
    return _ANY_ADDRESS.fullmatch(address) is not None


def canonical(address: str) -> str:
    """The address in Unicode's composed form (NFC, as RFC 6532 asks): ``josé`` typed on one
    system and on another is one lead, one suppression, one erasure."""
    return address if address.isascii() else unicodedata.normalize("NFC", address)


def is_valid_email(address: str) -> bool:
    """True for a plausible ``local@domain.tld`` (already trimmed) of at most 254 characters,
    without control characters (NUL included) or undecodable bytes."""
    return EMAIL.match(address) is not None


def is_number(value: str) -> bool:
    """True for a number as JSON writes it, without leading zeros."""
    return _NUMBER_RE.fullmatch(value) is not None


def all_numbers(values: Iterable[str]) -> bool:
    """True when every value is a number (one regex scan over the joined values)."""
    values = tuple(values)
    joined = "\n".join(values)
    if joined.count("\n") >= len(values):  # a value spans lines: not a number
        return False
    return not joined or _NUMBERS_RE.fullmatch(joined) is not None


def all_booleans(values: Iterable[str]) -> bool:
    """True when every value is ``true`` or ``false``, in any case."""
    return all(v.lower() in BOOLEANS for v in values)


def parse_types(spec: str | None) -> dict[str, ColumnType]:
    """Parse ``--types age=number,zip=string``; raise :class:`ImportFailed` on a bad spec."""
    result: dict[str, ColumnType] = {}
    if not spec:
        return result
    for item in spec.split(","):
        name, sep, kind = item.partition("=")
        name, kind = name.strip(), kind.strip().lower()
        if not sep or not name:
            raise ImportFailed(f"--types: expected column=type, got {item.strip()!r}")
        try:
            result[name] = ColumnType(kind)
        except ValueError:
            choices = ", ".join(t.value for t in ColumnType)
            raise ImportFailed(f"--types: unknown type {kind!r} for {name!r} ({choices})") from None
    return result


@dataclass(slots=True)
class ColumnFlags:
    """Per-column type inference state: all a first pass needs to remember about a column."""

    maybe_number: bool = True
    maybe_boolean: bool = True
    seen_value: bool = False

    def update(self, values: set[str]) -> None:
        """Fold in a chunk's distinct values (``""`` = absent, ignored)."""
        values.discard("")
        if not values:
            return
        self.seen_value = True
        if self.maybe_boolean:
            self.maybe_boolean = all_booleans(values)
        if self.maybe_number:
            self.maybe_number = all_numbers(values)

    @property
    def undecided(self) -> bool:
        """Still worth looking at (not yet known to be a string column)."""
        return self.maybe_number or self.maybe_boolean

    def result(self) -> ColumnType:
        """The inferred type (a column with no value at all is a string column)."""
        if not self.seen_value:
            return ColumnType.STRING
        if self.maybe_boolean:
            return ColumnType.BOOLEAN
        if self.maybe_number:
            return ColumnType.NUMBER
        return ColumnType.STRING


def value_fits(kind: ColumnType, value: str) -> bool:
    """Whether a non-empty CSV value can be stored as ``kind``."""
    if kind is ColumnType.NUMBER:
        return is_number(value)
    if kind is ColumnType.BOOLEAN:
        return value.lower() in BOOLEANS
    return True


@dataclass(frozen=True, slots=True)
class Header:
    """A validated CSV header: the column names, where the address is, forced types."""

    names: list[str]
    email_index: int
    forced: dict[int, ColumnType]

    @property
    def attribute_indexes(self) -> list[int]:
        return [i for i in range(len(self.names)) if i != self.email_index]


def parse_header(row: list[str], types: dict[str, ColumnType], where: str) -> Header:
    """Validate a header row; ``where`` names file and line in error messages."""
    if has_bad_text("".join(row)):
        raise ImportFailed(f"{where}: unreadable header: invalid UTF-8 or NUL character")
    names = [name.strip() for name in row]
    if "" in names:
        raise ImportFailed(f"{where}: header has an empty column name (column {names.index('') + 1})")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImportFailed(f"{where}: header repeats column(s) {', '.join(duplicates)}")
    lowered = [n.lower() for n in names]
    if "email" not in lowered:
        raise ImportFailed(f"{where}: header has no email column (columns: {', '.join(names)})")
    if lowered.count("email") > 1:
        both = ", ".join(n for n in names if n.lower() == "email")
        raise ImportFailed(f"{where}: header has more than one email column ({both})")
    email_index = lowered.index("email")
    forced: dict[int, ColumnType] = {}
    for name, kind in types.items():
        if name not in names:
            raise ImportFailed(f"--types names column {name!r}, which is not in the header of {where}")
        if names.index(name) == email_index:
            raise ImportFailed("--types cannot set the type of the email column")
        forced[names.index(name)] = kind
    return Header(names, email_index, forced)


@dataclass(frozen=True, slots=True)
class LeadProblem:
    """Why a lead is refused, and the key to blame."""

    field: str
    reason: str


# A NUL character in JSON text as orjson writes it: ``\u0000`` after an even number of
# backslashes (``\\u0000`` is an escaped backslash followed by the text ``u0000``).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
LEAD_KEYS = frozenset({"email", "attributes"})
_SHOWN_CHARS = 300  # of a value in a reason (the rest only makes the message long)


def shown(text: str) -> str:
    """``text`` quoted for a reject's reason, cut to :data:`_SHOWN_CHARS`: a reason goes to
    stderr and into the bulk API's answer, where a value of any length would go whole (the
    rejects file has the whole line)."""
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


# orjson reads every number that is no 64-bit integer as a double: an integer beyond 64 bits, more
# significant digits than a double holds, an exponent beyond its range come back changed (and
# Postgres' jsonb would have stored them exactly). Text that may hold one: 16 digits and dots in a
# row, or a digit, an ``e`` and a 3-digit exponent (in strings too: a false alarm costs a look at
# the parsed values). Found by substring search once digits are zeros: a regex took 2x orjson.
_DIGITS_AS_ZEROS = bytes.maketrans(b"0123456789.E+", b"00000000000e-")
# Past a double's range, but not far: Postgres writes a numeric out in full (1e9999 is 10,000
# digits), so a 140 KB body of 1e9999s came back as a 200 MB lead and broke the account's listing.
_MAX_EXPONENT = 400


class NestedTooDeeply(ValueError):
    """JSON nested deeper than :func:`loads_exact` can read or hold (valid JSON all the same)."""


# orjson's JSONDecodeError for a document nested past its 1,024 levels (its message is the only
# sign; tests/integration/test_admin_api.py pins it)
ORJSON_DEPTH_LIMIT = "depth limit exceeded"


def nested_too_deeply(exc: ValueError) -> bool:
    """Whether ``exc``, raised by :func:`loads_exact` or ``orjson.loads``, says only that the
    JSON is nested too deeply (not that it is not JSON)."""
    return isinstance(exc, NestedTooDeeply) or ORJSON_DEPTH_LIMIT in str(exc)


class ExactNumber:
    """A JSON number kept as written (:func:`loads_exact`): orjson writes it back as its text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"ExactNumber({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExactNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _exact_int(text: str) -> int | ExactNumber:
    """orjson's own reading within 64 bits (signed or not: 21 characters at most), else the text."""
    if len(text) <= 21:
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return ExactNumber(text)


def _exact_float(text: str) -> float | ExactNumber:
    out_of_range = ValueError(f"number {text[:40]} is out of range (at most 1e{_MAX_EXPONENT})")
    _, _, exponent = text.lower().partition("e")
    if len(exponent.lstrip("+-").lstrip("0")) > 6:  # Decimal itself refuses 1e10**18
        raise out_of_range
    value = float(text)
    exact = decimal.Decimal(text)
    if math.isfinite(value) and decimal.Decimal(repr(value)) == exact:
        return value
    if abs(exact.adjusted()) > _MAX_EXPONENT:
        raise out_of_range
    return ExactNumber(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def may_hold_inexact_numbers(raw: bytes) -> bool:
    """Whether ``raw`` may hold a number orjson would change (False: it holds none). One call
    over a chunk of lines costs less than one per line."""
    zeros = raw.translate(_DIGITS_AS_ZEROS)
    return b"0000000000000000" in zeros or b"0e000" in zeros or b"0e-000" in zeros


def _has_float(value: Any) -> bool:
    """Whether a parsed document holds a float anywhere (a loop: orjson reads 1024 levels)."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
    return False


def loads_exact(raw: bytes, maybe_inexact: bool | None = None) -> Any:
    """``orjson.loads``, except that a number orjson would change comes back as an
    :class:`ExactNumber` (its text as written): a lead's attributes are stored as they were sent.
    ``maybe_inexact`` is :func:`may_hold_inexact_numbers` when the caller knows it. Raises
    ``ValueError`` (``orjson.JSONDecodeError`` for what orjson refuses) on bad JSON, and on JSON
    nested too deeply (:func:`nested_too_deeply` tells it)."""
    if maybe_inexact is None:
        maybe_inexact = may_hold_inexact_numbers(raw)
    if not maybe_inexact:
        return orjson.loads(raw)
    try:
        value = orjson.loads(raw)  # the syntax, with orjson's messages
    except orjson.JSONDecodeError as exc:
        if "infinity" not in str(exc):  # the one number it refuses that JSON allows
            raise
    else:
        if not _has_float(value):  # only a double can have changed a number
            return value
    try:
        value = json.loads(
            raw.decode("utf-8"),
            parse_int=_exact_int,
            parse_float=_exact_float,
            parse_constant=_refuse_constant,
        )
        dumps_exact(value)  # what orjson refuses to hold: a lone surrogate (read past 1e400), depth
    except RecursionError:
        raise NestedTooDeeply("nested too deeply") from None
    except orjson.JSONEncodeError as exc:
        if "Recursion limit" in str(exc):  # orjson holds 255 levels at most
            raise NestedTooDeeply(str(exc)) from None
        raise ValueError(str(exc)) from None
    return value


def _fragment(value: Any) -> orjson.Fragment:
    if isinstance(value, ExactNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps_exact(value: Any) -> bytes:
    """``orjson.dumps`` that writes an :class:`ExactNumber` as its text."""
    return orjson.dumps(value, default=_fragment)


def check_lead(doc: dict[str, Any]) -> tuple[str, str] | LeadProblem:
    """One lead as the import (a JSONL line) and the API (``POST /api/leads``) take it:
    ``(trimmed address, attributes as JSON text)``, or why it is refused."""
    extra = sorted(set(doc) - LEAD_KEYS)
    if extra:
        listed = ", ".join(extra)
        if len(listed) > _SHOWN_CHARS:
            listed = f"{listed[:_SHOWN_CHARS]}... ({len(extra):,} keys)"
        reason = f'unexpected key(s) {listed} (attributes go under "attributes")'
        return LeadProblem(extra[0], reason)
    email = doc.get("email")
    if not isinstance(email, str):
        return LeadProblem("email", "missing email" if email is None else "email is not a string")
    email = canonical(email.strip())
    if not is_valid_email(email):
        return LeadProblem("email", f"invalid email address {shown(email)}")
    attributes = doc.get("attributes", {})
    if not isinstance(attributes, dict):
        return LeadProblem("attributes", "attributes is not an object")
    try:
        document = dumps_exact(attributes).decode()
    except orjson.JSONEncodeError as exc:  # a lone surrogate escape (read by the exact reader)
        return LeadProblem("attributes", str(exc))
    if "\\u0000" in document and _NUL_ESCAPE.search(document):
        return LeadProblem("attributes", "NUL character (\\u0000) is not supported")
    return email, document


def check_jsonl_line(raw: bytes, maybe_inexact: bool | None = None) -> tuple[str, str] | str:
    """Parse one JSONL line: ``(address, attributes as JSON text)``, or the reason it is rejected
    (``maybe_inexact``: see :func:`loads_exact`)."""
    try:
        doc = loads_exact(raw, maybe_inexact)
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start + 1}"
    except ValueError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"invalid UTF-8 at byte {bad.start + 1}"
        if isinstance(exc, orjson.JSONDecodeError):
            return f"invalid JSON: {_json_error(raw, exc)}"
        return f"invalid JSON: {exc}"
    if not isinstance(doc, dict):
        return "not a JSON object"
    checked = check_lead(doc)
    return checked.reason if isinstance(checked, LeadProblem) else checked


def _json_error(raw: bytes, error: orjson.JSONDecodeError) -> str:
    """orjson's message about the line without its line end (a file's lines keep theirs, the
    bulk API's do not): "line 1 column 52", not "line 2 column 1"."""
    line = raw.rstrip(b"\r\n")
    if len(line) != len(raw):
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return str(exc)
    return str(error)


def has_bad_text(text: str) -> bool:
    """Undecodable bytes (surrogate escapes) or NUL, which Postgres text cannot hold."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def bad_text_reason(text: str) -> str:
    """Why :func:`has_bad_text` refused ``text``, naming the first bad byte's column."""
    if "\x00" in text:
        return "NUL character"
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return f"invalid UTF-8 (byte 0x{ord(ch) - 0xDC00:02x} at column {i + 1})"
    return "invalid UTF-8"
