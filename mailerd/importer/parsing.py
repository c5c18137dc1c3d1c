"""Parsing and type inference for imports: pure, no I/O.

Addresses, numbers and booleans as the importer reads them, the per-column inference state, the
CSV header, and one JSONL line. The suppression import validates addresses here too.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from mailerd.importer.rejects import ImportFailed

# Pragmatic, cheap: one @, no spaces or control characters (NUL included), a dotted domain
# ending in a letters-only (or punycode) TLD. Undecodable bytes (read as surrogate escapes) fail.
EMAIL = re.compile(
    r"(?=.{6,254}\Z)"
    r"[^@\s\"(),:;<>\[\\\]\x00-\x1f\x7f\ud800-\udfff]{1,64}"
    r"@(?:[\w-]{1,63}\.)+"
    r"(?:[^\W\d_]{2,63}|xn--[\w-]{1,59})\Z"
)
# JSON number syntax without leading zeros (``007`` is a code, not a number) and a bounded
# exponent (Postgres numeric must hold it).
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,4})?"
_NUMBER_RE = re.compile(_NUMBER)
_NUMBERS_RE = re.compile(rf"{_NUMBER}(?:\n{_NUMBER})*")
BOOLEANS = frozenset({"true", "false"})


class ColumnType(enum.StrEnum):
    """The JSON type a CSV column's values are stored as."""

    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"


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


def check_jsonl_line(raw: bytes) -> tuple[str, dict[str, Any]] | str:
    """Parse one JSONL line: ``(address, attributes)``, or the reason it is rejected."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"invalid UTF-8 at byte {bad.start + 1}"
        return f"invalid JSON: {exc}"
    if not isinstance(doc, dict):
        return "not a JSON object"
    extra = sorted(set(doc) - {"email", "attributes"})
    if extra:
        return f'unexpected key(s) {", ".join(extra)} (attributes go under "attributes")'
    email = doc.get("email")
    if not isinstance(email, str):
        return "missing email" if email is None else "email is not a string"
    email = email.strip()
    if not is_valid_email(email):
        return f"invalid email address {email!r}"
    attributes = doc.get("attributes", {})
    if not isinstance(attributes, dict):
        return "attributes is not an object"
    if b"\\u0000" in raw:
        return "NUL character (\\u0000) is not supported"
    return email, attributes


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
