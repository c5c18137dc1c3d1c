"""Lead import (`mailerd leads import`): .csv or .jsonl into ``leads``, upserted by address.

How it runs: a worker thread parses and validates the file and writes each good row as COPY
text input, ``account_id, email, attributes`` with the attributes already as JSON text (see
:class:`RowEncoder`), cut into batches of about :data:`BATCH_ROWS` rows. While it parses, the
event loop writes the batches parsed before, so Python (one core) and Postgres (the other)
work at the same time, and Postgres has nothing to compute per row beyond reading the jsonb
and maintaining the two indexes of ``leads`` (``bench/import.py`` measures that floor).
Everything runs in one transaction: a run imports all its good rows or none of them.

- A batch of new addresses is copied straight into ``leads`` in a savepoint. A unique
  violation (an address exists, or repeats) rolls it back; the batch is then copied into a
  staging table and upserted (``INSERT ... ON CONFLICT DO UPDATE``), and a batch that repeats
  an address folds its lines in file order first. After a few violations the run stops trying
  the direct copy. Batches are written in file order, so later lines still win.
- Values are written with the column types known when their chunk was parsed (inferred from
  the rows so far; only per-column flags are kept). Inference only ever widens a column to
  string, so if a later row turns a column already written as number or boolean into a string
  column, the run rolls back, reads the file to its end for the final types, and runs again
  with them (rejects are reported once, by the second run). Most files pay nothing for this.

Semantics (for users in docs/runbook.md, "Importing leads"):
- addresses are trimmed; one lead per (account, lower(email)); a new lead's address is stored
  lower-cased when ASCII, as first written otherwise (see :func:`_lead_address`);
- existing attributes are merged with the new ones, the file's values win; within one file a
  later line for the same address wins (as if the lines were applied one after another);
- CSV: empty value = attribute absent; values are taken verbatim (not trimmed); a column whose
  non-empty values are all JSON-style numbers (no leading zeros, so zip codes stay strings)
  is numeric and stored exactly as written (Postgres numeric: ``1.50`` stays ``1.50``); a column
  of ``true``/``false`` (any case) is boolean; else string. ``--types col=string|number|boolean``
  overrides, and rows whose value does not fit a forced type are rejected;
- CSV quoted fields may span lines; line numbers are physical lines (first line of the record);
- JSONL: ``{"email": ..., "attributes": {...}}`` per line (``attributes`` optional, other keys
  rejected); values are stored as given (including ``null``).
"""

from __future__ import annotations

import asyncio
import csv
import enum
import itertools
import operator
import re
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

import asyncpg
import orjson

STAGING = "mailerd_import_rows"
CHUNK_CHARS = 1 << 20  # about 1 MB of input per chunk handed to COPY
BATCH_ROWS = 50_000  # rows written at a time (pipeline fill vs. statement overhead)
QUEUE_CHUNKS = 16  # parsed chunks the worker thread may run ahead of the database
DIRECT_COPY_FAILURES = 3  # stop copying straight into leads after this many unique violations
STDERR_REJECTS = 20

# Pragmatic, cheap: one @, no spaces, a dotted domain ending in a letters-only (or punycode) TLD.
_EMAIL = re.compile(
    r"(?=.{6,254}\Z)"
    r"[^@\s\"(),:;<>\[\\\]]{1,64}"
    r"@(?:[\w-]{1,63}\.)+"
    r"(?:[^\W\d_]{2,63}|xn--[\w-]{1,59})\Z"
)
# JSON number syntax without leading zeros (``007`` is a code, not a number) and a bounded
# exponent (Postgres numeric must hold it).
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,4})?"
_NUMBER_RE = re.compile(_NUMBER)
_NUMBERS_RE = re.compile(rf"{_NUMBER}(?:\n{_NUMBER})*")
_BOOLEANS = frozenset({"true", "false"})


class ImportFailed(Exception):
    """An error that stops the whole import; nothing is imported."""


class ColumnType(enum.StrEnum):
    """The JSON type a CSV column's values are stored as."""

    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"


@dataclass(frozen=True, slots=True)
class Reject:
    """One skipped row: its first physical line, why, and its raw text."""

    line: int
    reason: str
    raw: str


@dataclass(slots=True)
class ImportResult:
    """What a run did: rows imported, rows rejected (the first few kept), seconds taken."""

    imported: int
    rejected: int
    first_rejects: list[Reject]
    seconds: float


# ---------------------------------------------------------------------------------------------
# Pure helpers


def is_valid_email(address: str) -> bool:
    """True for a plausible ``local@domain.tld`` (already trimmed) of at most 254 characters."""
    return _EMAIL.match(address) is not None


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
    return all(v.lower() in _BOOLEANS for v in values)


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
        return value.lower() in _BOOLEANS
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
    if _has_bad_text("".join(row)):
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


def _has_bad_text(text: str) -> bool:
    """Undecodable bytes (surrogate escapes) or NUL, which Postgres text cannot hold."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _bad_text_reason(text: str) -> str:
    if "\x00" in text:
        return "NUL character"
    for i, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return f"invalid UTF-8 (byte 0x{ord(ch) - 0xDC00:02x} at column {i + 1})"
    return "invalid UTF-8"


def _printable(raw: str) -> str:
    """Raw text with undecodable bytes shown as ``\\xNN`` (for the rejects file and stderr)."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------
# Sources: run in a worker thread; each call returns the next chunk of COPY input (CSV bytes).


class RejectSink:
    """Rejected rows: all to the rejects file (if any), the first few kept, all counted."""

    def __init__(self, stream: IO[bytes] | None, keep: int = STDERR_REJECTS) -> None:
        self.stream = stream
        self.keep = keep
        self.first: list[Reject] = []
        self.count = 0

    def add(self, line: int, reason: str, raw: str) -> None:
        reject = Reject(line, reason, _printable(raw.rstrip("\r\n")))
        self.count += 1
        if len(self.first) < self.keep:
            self.first.append(reject)
        if self.stream is not None:
            record = {"line": reject.line, "reason": reject.reason, "raw": reject.raw}
            self.stream.write(orjson.dumps(record) + b"\n")

    def reset(self) -> None:
        """Forget every reject (the import starts over)."""
        self.first.clear()
        self.count = 0
        if self.stream is not None and self.stream.seekable():  # (a pipe keeps them twice)
            self.stream.seek(0)
            self.stream.truncate()


class Addresses:
    """Lower-cased addresses of the current batch, to notice one that repeats.

    A hint only (Python's ``lower`` is not Postgres's for every script): the merge stays correct
    either way, this just sends a batch with a repeat straight to the folding merge.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.repeated = False

    def note(self, addresses: list[str]) -> None:
        before = len(self.seen)
        self.seen.update(map(str.lower, addresses))
        if len(self.seen) - before != len(addresses):
            self.repeated = True

    def clear(self) -> None:
        self.seen.clear()
        self.repeated = False


class Source(Protocol):
    """A parser feeding COPY: each chunk is ``account_id, email, attributes`` rows in COPY text."""

    rows: int
    bytes_read: int
    addresses: Addresses
    retype: bool

    def next_chunk(self) -> bytes | None: ...


def _copy_text(document: str) -> str:
    """JSON text as a COPY text-format field (the one character to escape is the backslash:
    JSON text has no raw tab, newline or other control character)."""
    return document.replace("\\", "\\\\") if "\\" in document else document


def _lead_address(address: str, lower_ascii: bool) -> str:
    """The address as stored. Every lookup (the unique index included) matches
    ``lower(email)``, so the stored spelling is cosmetic; Python lower-cases only what it
    lower-cases exactly as the database does: ASCII addresses, when ``lower_ascii`` (see
    :func:`lowers_ascii_like_python`). Other addresses are stored as written."""
    return address.lower() if lower_ascii and address.isascii() else address


_UPPER_ASCII = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


async def lowers_ascii_like_python(conn: asyncpg.Connection) -> bool:
    """Whether the database's ``lower()`` maps A-Z to a-z (not so under a Turkish locale)."""
    lowered: str = await conn.fetchval("SELECT lower($1::text)", _UPPER_ASCII)
    return lowered == _UPPER_ASCII.lower()


class RowEncoder:
    """CSV fields to a COPY text row ``account_id, email, attributes`` (attributes as JSON text).

    The attributes are written as text here, on the worker thread's core, so that Postgres has
    no per-row work beyond reading the jsonb. Values are numbers written verbatim, ``true`` /
    ``false``, or strings. :meth:`verbatim` is the fast path for rows whose values need no
    escaping (checked per chunk); :meth:`escaped` takes any row.
    """

    def __init__(self, header: Header, account_id: int, *, lower_ascii: bool) -> None:
        self.header = header
        self.prefix = f"{int(account_id)}\t"
        self.lower_ascii = lower_ascii
        # In jsonb's own key order (shorter first, then by bytes): Postgres then finds them sorted.
        order = sorted(header.attribute_indexes, key=lambda i: _jsonb_key_order(header.names[i]))
        self.keys = {i: orjson.dumps(header.names[i]).decode() for i in order}
        self.templates: dict[tuple[tuple[tuple[int, ColumnType], ...], tuple[int, ...]], str] = {}

    def template(self, types: dict[int, ColumnType], empty: tuple[int, ...]) -> str:
        """A ``str.format`` template for rows with these types and these empty fields."""
        key = (tuple(sorted(types.items())), empty)
        found = self.templates.get(key)
        if found is not None:
            return found
        members: list[str] = []
        for index, name in self.keys.items():
            kind = types.get(index)
            if kind is None or index in empty:  # no value: the attribute is absent
                continue
            slot = "{" + str(index) + "}"
            value = f'"{slot}"' if kind is ColumnType.STRING else slot
            members.append(_format_literal(_copy_text(name)) + ":" + value)
        email = "{" + str(self.header.email_index) + "}"
        template = f"{_format_literal(self.prefix)}{email}\t{{{{{','.join(members)}}}}}\n"
        if len(self.templates) > 1024:  # a file with very many combinations of empty fields
            self.templates.clear()
        self.templates[key] = template
        return template

    def verbatim(self, rows: list[list[str]], types: dict[int, ColumnType]) -> list[str]:
        """Rows whose values hold no ``"``, backslash or control character, emails trimmed and
        valid, boolean values lower-case."""
        email_index, lower_ascii = self.header.email_index, self.lower_ascii
        full = self.template(types, ())
        lines: list[str] = []
        append = lines.append
        for fields in rows:
            email = fields[email_index]
            if lower_ascii and email.isascii():
                fields[email_index] = email.lower()
            if "" in fields:
                empty = tuple(i for i, value in enumerate(fields) if not value)
                append(self.template(types, empty).format(*fields))
            else:
                append(full.format(*fields))
        return lines

    def escaped(self, rows: list[list[str]], types: dict[int, ColumnType]) -> list[str]:
        """Any rows (quoted fields with quotes, backslashes, new lines...), emails trimmed and
        valid: each string value goes through the JSON encoder."""
        email_index = self.header.email_index
        lines: list[str] = []
        for fields in rows:
            members: list[str] = []
            for index, name in self.keys.items():
                value = fields[index]
                if not value:
                    continue
                kind = types.get(index, ColumnType.STRING)
                if kind is ColumnType.STRING:
                    value = orjson.dumps(value).decode()
                elif kind is ColumnType.BOOLEAN:
                    value = value.lower()
                members.append(f"{name}:{value}")
            document = _copy_text("{" + ",".join(members) + "}")
            address = _lead_address(fields[email_index], self.lower_ascii)
            lines.append(f"{self.prefix}{address}\t{document}\n")
        return lines


def _jsonb_key_order(name: str) -> tuple[int, bytes]:
    encoded = name.encode("utf-8", "surrogateescape")
    return len(encoded), encoded


def _format_literal(text: str) -> str:
    """``text`` as literal text inside a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")


# What keeps a chunk off the fast path: CSV quoting, and what a JSON string or a COPY text field
# would have to escape (backslash, control characters; "\r\n" is normalised to "\n" first).
_NOT_VERBATIM = re.compile(r'["\\\x00-\x09\x0b-\x1f]')


class CsvSource:
    """CSV rows to COPY input, inferring column types on the way.

    Fast path (a chunk with no quote, backslash, control character or invalid UTF-8): split
    lines on commas and fill each row into a template. Otherwise the chunk goes through
    :mod:`csv`, which also handles quoted fields spanning lines (even across chunk ends), and
    values are escaped one by one.

    Values are written with the column types known after the chunk (only per-column flags are
    kept). Inference only ever widens a column to string: when a column already written as
    number or boolean turns out to be a string column, :attr:`retype` is set and the source only
    reads on (writing nothing) so that the run can start over with the final types.
    """

    def __init__(
        self,
        stream: TextIO,
        header: Header,
        header_lines: int,
        sink: RejectSink,
        account_id: int,
        preset: dict[int, ColumnType] | None = None,
        *,
        lower_ascii: bool,
    ) -> None:
        self.stream = stream
        self.header = header
        self.sink = sink
        self.preset = preset  # the final types, known from an earlier run over the same file
        self.encoder = RowEncoder(header, account_id, lower_ascii=lower_ascii)
        self.width = len(header.names)
        self.line = header_lines  # physical lines consumed so far
        self.rows = 0
        self.bytes_read = 0
        self.addresses = Addresses()
        self.flags = {i: ColumnFlags() for i in header.attribute_indexes if i not in header.forced}
        self.written: dict[int, ColumnType] = {}  # the type each column's values were written as
        self.retype = False

    def column_types(self) -> dict[int, ColumnType]:
        """Final type of every attribute column (forced or inferred)."""
        types = {i: flags.result() for i, flags in self.flags.items()}
        types.update(self.header.forced)
        return types

    def batch_types(self) -> dict[int, ColumnType]:
        """Types to write the rows read so far with: of the columns that had a value (columns
        without one have nothing to write yet), or the preset types."""
        if self.preset is not None:
            return dict(self.preset)
        types = {i: flags.result() for i, flags in self.flags.items() if flags.seen_value}
        types.update(self.header.forced)
        return types

    def next_chunk(self) -> bytes | None:
        lines = self.stream.readlines(CHUNK_CHARS)
        if not lines:
            return None
        text = "".join(lines)
        if "\r" in text and text.count("\r") == text.count("\r\n"):
            text = text.replace("\r\n", "\n")
        if _NOT_VERBATIM.search(text) is None and not _has_bad_text(text):
            self.bytes_read += len(text)
            rows, out = self._fast(text), self.encoder.verbatim
        else:
            rows, out = self._slow(lines), self.encoder.escaped
        self.addresses.note([row[self.header.email_index] for row in rows])
        self.rows += len(rows)
        types = self._types_to_write()
        if self.retype or not rows:
            return b""
        return "".join(out(rows, types)).encode("utf-8")

    def _types_to_write(self) -> dict[int, ColumnType]:
        types = self.batch_types()
        for index, kind in types.items():
            if self.written.setdefault(index, kind) is not kind:
                self.retype = True
        return types

    def _fast(self, text: str) -> list[list[str]]:
        email_index, width, match = self.header.email_index, self.width, _EMAIL.match
        parts = text.split("\n")
        if parts[-1] == "":
            parts.pop()
        good: list[str] = []
        rows: list[list[str]] = []
        starts: list[int] = []
        line = self.line
        for part in parts:
            line += 1
            if not part:
                continue
            fields = part.split(",")
            if len(fields) != width:
                self.sink.add(line, f"expected {width} columns, found {len(fields)}", part)
                continue
            email = fields[email_index]
            if match(email) is None:
                stripped = email.strip()
                if stripped == email or match(stripped) is None:
                    self.sink.add(line, f"invalid email address {stripped!r}", part)
                    continue
                fields[email_index] = stripped
            good.append(part)
            rows.append(fields)
            starts.append(line)
        self.line = line
        return self._check_values(rows, starts, good, lower_booleans=True)

    def _slow(self, lines: list[str]) -> list[list[str]]:
        record: list[str] = []

        def tap() -> Iterator[str]:
            for item in itertools.chain(lines, self.stream):
                self.bytes_read += len(item)
                record.append(item)
                yield item

        reader = csv.reader(tap(), strict=False)
        rows: list[list[str]] = []
        starts: list[int] = []
        raws: list[str] = []
        while reader.line_num < len(lines):
            start = self.line + reader.line_num + 1
            record.clear()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                self.sink.add(start, f"malformed CSV: {exc}", "".join(record))
                continue
            if not row:
                continue
            raw = "".join(record)
            if _has_bad_text(raw):
                self.sink.add(start, _bad_text_reason(raw), raw)
                continue
            if len(row) != self.width:
                end = self.line + reader.line_num
                span = f" (record spans lines {start}-{end})" if end > start else ""
                self.sink.add(start, f"expected {self.width} columns, found {len(row)}{span}", raw)
                continue
            email = row[self.header.email_index].strip()
            if not is_valid_email(email):
                self.sink.add(start, f"invalid email address {email!r}", raw)
                continue
            row[self.header.email_index] = email
            rows.append(row)
            starts.append(start)
            raws.append(raw)
        self.line += reader.line_num
        return self._check_values(rows, starts, raws, lower_booleans=False)

    def _check_values(
        self, rows: list[list[str]], lines: list[int], raws: list[str], *, lower_booleans: bool
    ) -> list[list[str]]:
        """Fold the chunk into type inference; drop (and reject) rows that break a forced type.

        With ``lower_booleans``, boolean values not yet in lower case are lowered in place (the
        fast path writes values as they are).
        """
        if not rows:
            return rows
        for index, flags in self.flags.items():
            if flags.undecided:
                flags.update(set(map(operator.itemgetter(index), rows)))
        keep: list[bool] | None = None
        for index, kind in self.header.forced.items():
            if kind is ColumnType.STRING:
                continue
            values = set(map(operator.itemgetter(index), rows))
            values.discard("")
            bad = {v for v in values if not value_fits(kind, v)}
            if not bad:
                continue
            keep = keep or [True] * len(rows)
            for n, row in enumerate(rows):
                if keep[n] and row[index] in bad:
                    keep[n] = False
                    name = self.header.names[index]
                    reason = f"column {name!r}: {row[index]!r} is not a {kind.value}"
                    self.sink.add(lines[n], reason, raws[n])
        if keep is not None:
            rows = [r for r, k in zip(rows, keep, strict=True) if k]
        if lower_booleans:
            self._lower_booleans(rows)
        return rows

    def _lower_booleans(self, rows: list[list[str]]) -> None:
        for index, kind in self.batch_types().items():
            if kind is not ColumnType.BOOLEAN:
                continue
            values = set(map(operator.itemgetter(index), rows))
            if values <= _WRITTEN_BOOLEANS:
                continue
            for row in rows:
                row[index] = row[index].lower()


_WRITTEN_BOOLEANS = frozenset({"true", "false", ""})


class JsonlSource:
    """JSONL lines to COPY input (address, attributes as JSON text)."""

    retype = False  # JSONL values carry their own types

    def __init__(self, stream: IO[bytes], sink: RejectSink, account_id: int, *, lower_ascii: bool) -> None:
        self.stream = stream
        self.sink = sink
        self.prefix = f"{int(account_id)}\t"
        self.lower_ascii = lower_ascii
        self.line = 0
        self.rows = 0
        self.bytes_read = 0
        self.addresses = Addresses()

    def next_chunk(self) -> bytes | None:
        lines = self.stream.readlines(CHUNK_CHARS)
        if not lines:
            return None
        out: list[str] = []
        addresses: list[str] = []
        for raw in lines:
            self.line += 1
            self.bytes_read += len(raw)
            if not raw.strip():
                continue
            parsed = check_jsonl_line(raw)
            if isinstance(parsed, str):
                self.sink.add(self.line, parsed, raw.decode("utf-8", "surrogateescape"))
                continue
            address = _lead_address(parsed[0], self.lower_ascii)
            addresses.append(address)
            document = _copy_text(orjson.dumps(parsed[1]).decode())
            out.append(f"{self.prefix}{address}\t{document}\n")
        self.addresses.note(addresses)
        self.rows += len(out)
        return "".join(out).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Progress on a terminal


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total_bytes: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total = max(total_bytes, 1)
        self.last = 0.0

    def update(self, done_bytes: int, rows: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and not force):
            return
        self.last = now
        share = min(done_bytes / self.total, 1.0)
        bar = "#" * int(share * 30)
        self.stream.write(f"\r[{bar:<30}] {share:4.0%}  {rows:,} rows")
        self.stream.flush()

    def phase(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Database side


@dataclass(frozen=True, slots=True)
class _Piece:
    """One parsed chunk on its way to COPY, with what the merge needs to know about it."""

    data: bytes
    rows: int
    batch_end: bool  # merge after this chunk
    repeats: bool  # (at a batch end) the batch repeats an address
    eof: bool = False


class _Retype(Exception):
    """A column written as number or boolean turned out to be a string column: start over."""

    def __init__(self, types: dict[int, ColumnType]) -> None:
        super().__init__("column types changed")
        self.types = types


@dataclass(slots=True)
class _Batch:
    """The COPY input of one batch, kept whole: a batch refused by ``leads`` is staged instead."""

    chunks: list[bytes]
    rows: int
    repeats: bool
    last: bool


class _Pipeline:
    """Parse in a worker thread (running ahead through a bounded queue) while the event loop
    writes the batches parsed before."""

    def __init__(self, source: Source, progress: Progress) -> None:
        self.source = source
        self.progress = progress
        self.queue: asyncio.Queue[_Piece] = asyncio.Queue(QUEUE_CHUNKS)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mailerd-import")
        self.pending: Future[_Piece] | None = None  # the chunk the thread is parsing
        self.counted = 0
        self.batch_rows = 0

    def _next_piece(self) -> _Piece:
        """Runs in the worker thread: the next chunk, cut into batches by rows."""
        source = self.source
        data = source.next_chunk()
        if data is None:
            return _Piece(b"", 0, True, source.addresses.repeated, eof=True)
        rows, self.counted = source.rows - self.counted, source.rows
        self.batch_rows += rows
        # The first chunk is a batch of its own, so that Postgres starts while this thread parses on.
        end = self.batch_rows >= BATCH_ROWS or self.counted == rows
        piece = _Piece(data, rows, end, source.addresses.repeated)
        if end:
            self.batch_rows = 0
            source.addresses.clear()
        return piece

    async def _produce(self) -> None:
        while True:
            self.pending = self.executor.submit(self._next_piece)
            piece = await asyncio.wrap_future(self.pending)
            self.pending = None
            await self.queue.put(piece)
            if piece.eof:
                return

    async def _batch(self) -> _Batch:
        """The next batch, whole (the worker thread is meanwhile parsing the ones after)."""
        chunks: list[bytes] = []
        rows = 0
        while True:
            piece = await self.queue.get()
            self.progress.update(self.source.bytes_read, self.source.rows)
            rows += piece.rows
            if piece.data:
                chunks.append(piece.data)
            if piece.batch_end:
                return _Batch(chunks, rows, piece.repeats, piece.eof)

    async def run(self, writer: _LeadWriter) -> None:
        """Write batch after batch until the file ends (only read on once a retype is due)."""
        producer = asyncio.create_task(self._produce())
        try:
            while True:
                batch = await self._batch()
                if batch.rows and not self.source.retype:
                    await writer.write(batch)
                if batch.last:
                    break
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            if self.pending is not None:  # a running chunk cannot be cancelled: wait, the file closes next
                await asyncio.gather(asyncio.wrap_future(self.pending), return_exceptions=True)
            self.executor.shutdown(wait=False)


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class _LeadWriter:
    """Writes each batch into ``leads``, in file order.

    A batch of new addresses is copied straight into ``leads`` (in a savepoint): COPY is the
    cheapest way in. A unique violation (an address exists already, or repeats) rolls the
    savepoint back, and the batch is staged and upserted instead; a batch known to repeat an
    address goes straight to folding its lines in file order. After a few unique violations the
    run stops trying the direct COPY (the file is mostly updates).
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.direct_failures = 0
        self.staging = False

    async def write(self, batch: _Batch) -> None:
        if not batch.repeats and self.direct_failures < DIRECT_COPY_FAILURES:
            try:
                async with self.conn.transaction():
                    await self.conn.copy_to_table(
                        "leads", source=_stream(batch.chunks), columns=COPY_COLUMNS, format="text"
                    )
                return
            except asyncpg.UniqueViolationError:
                self.direct_failures += 1
        await self._stage(batch)
        await self._upsert(folded=batch.repeats)
        await self.conn.execute(f"TRUNCATE {STAGING}")

    async def _upsert(self, *, folded: bool) -> None:
        if not folded:
            try:
                async with self.conn.transaction():
                    await self.conn.execute(_UPSERT.format(select=_SELECT_STAGED))
                return
            except asyncpg.CardinalityViolationError:
                # "ON CONFLICT DO UPDATE command cannot affect row a second time": the batch
                # repeats an address after all (Postgres lower-cased two spellings alike).
                pass
        await self.conn.execute(_UPSERT.format(select=_SELECT_FOLDED))

    async def _stage(self, batch: _Batch) -> None:
        if not self.staging:
            await self.conn.execute(
                f"CREATE TEMP TABLE {STAGING} (account_id bigint, email text, attributes jsonb)"
                " ON COMMIT DROP"
            )
            self.staging = True
        await self.conn.copy_to_table(
            STAGING, source=_stream(batch.chunks), columns=COPY_COLUMNS, format="text"
        )


COPY_COLUMNS = ["account_id", "email", "attributes"]
_UPSERT = """
INSERT INTO leads AS l (account_id, email, attributes)
{select}
ON CONFLICT (account_id, lower(email)) DO UPDATE
SET attributes = l.attributes || EXCLUDED.attributes, updated_at = now()
WHERE l.attributes || EXCLUDED.attributes IS DISTINCT FROM l.attributes  -- re-imports: no dead rows
"""
_SELECT_STAGED = f"SELECT s.account_id, s.email, s.attributes FROM {STAGING} s"
# Several lines for one address: fold them in file order (a later key wins), then upsert once.
# File order is ctid order: each batch is one COPY into the freshly truncated staging table.
_SELECT_FOLDED = f"""
SELECT min(r.account_id), (array_agg(r.email ORDER BY r.ord))[1],
       coalesce(jsonb_object_agg(e.key, e.value ORDER BY r.ord) FILTER (WHERE e.key IS NOT NULL),
                '{{}}'::jsonb)
FROM (SELECT s.account_id, s.email, lower(s.email) AS address, s.ctid AS ord, s.attributes
      FROM {STAGING} s) r
LEFT JOIN LATERAL jsonb_each(r.attributes) e ON true
GROUP BY r.address
"""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ImportFailed(f"{path}: {exc.strerror or exc}") from None


async def import_file(
    conn: asyncpg.Connection,
    *,
    account_id: int,
    path: Path,
    types: dict[str, ColumnType] | None = None,
    rejects: Path | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Import ``path`` (.csv or .jsonl) for ``account_id``; raise :class:`ImportFailed`."""
    started = time.perf_counter()
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".jsonl", ".ndjson"}:
        raise ImportFailed(f"{path}: expected a .csv or .jsonl file")
    size = _file_size(path)
    if suffix != ".csv" and types:
        raise ImportFailed("--types applies to CSV files only")
    progress = progress or Progress(size)
    reject_stream: IO[bytes] | None = None
    try:
        if rejects is not None:
            try:
                reject_stream = rejects.open("wb")
            except OSError as exc:
                raise ImportFailed(f"{rejects}: {exc.strerror or exc}") from None
        sink = RejectSink(reject_stream)
        try:
            if suffix == ".csv":
                with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
                    imported = await _import_csv(conn, account_id, path, f, types or {}, sink, progress)
            else:
                with path.open("rb") as fb:
                    imported = await _import_jsonl(conn, account_id, fb, sink, progress)
        except OSError as exc:
            raise ImportFailed(f"{path}: {exc.strerror or exc}") from None
    finally:
        progress.close()
        if reject_stream is not None:
            reject_stream.close()
    seconds = time.perf_counter() - started
    return ImportResult(imported, sink.count, sink.first, seconds)


async def _import_csv(
    conn: asyncpg.Connection,
    account_id: int,
    path: Path,
    f: TextIO,
    types: dict[str, ColumnType],
    sink: RejectSink,
    progress: Progress,
) -> int:
    preset: dict[int, ColumnType] | None = None
    lower_ascii = await lowers_ascii_like_python(conn)
    while True:
        reader = csv.reader(f, strict=False)
        try:
            row = next(reader)
        except StopIteration:
            raise ImportFailed(f"{path}: empty file (a header row is required)") from None
        except csv.Error as exc:
            raise ImportFailed(f"{path}:1: unreadable header: {exc}") from None
        header = parse_header(row, types, f"{path}:1")
        source = CsvSource(f, header, reader.line_num, sink, account_id, preset, lower_ascii=lower_ascii)
        try:
            async with conn.transaction():
                await _write_all(conn, source, progress)
        except _Retype as retype:
            preset = retype.types
            f.seek(0)
            sink.reset()
            continue
        return source.rows


async def _import_jsonl(
    conn: asyncpg.Connection,
    account_id: int,
    f: IO[bytes],
    sink: RejectSink,
    progress: Progress,
) -> int:
    source = JsonlSource(f, sink, account_id, lower_ascii=await lowers_ascii_like_python(conn))
    async with conn.transaction():
        await _write_all(conn, source, progress)
    return source.rows


async def _write_all(conn: asyncpg.Connection, source: Source, progress: Progress) -> None:
    """Inside the import's transaction: write every batch; raise :class:`_Retype`."""
    await _Pipeline(source, progress).run(_LeadWriter(conn))
    if source.retype and isinstance(source, CsvSource):
        raise _Retype(source.column_types())


def _summary(result: ImportResult) -> str:
    return f"imported {result.imported:,}, rejected {result.rejected:,}, in {result.seconds:.1f} s"


async def run_cli(
    conn: asyncpg.Connection,
    *,
    account_id: int,
    path: Path,
    types: str | None,
    rejects: Path | None,
) -> int:
    """`mailerd leads import`: 0 all rows imported, 2 some rejected, 1 nothing imported."""
    try:
        result = await import_file(
            conn, account_id=account_id, path=path, types=parse_types(types), rejects=rejects
        )
    except ImportFailed as exc:
        print(f"mailerd leads import: {exc}", file=sys.stderr)
        return 1
    for reject in result.first_rejects:
        print(f"{path}:{reject.line}: {reject.reason}", file=sys.stderr)
    if result.rejected > len(result.first_rejects):
        more = result.rejected - len(result.first_rejects)
        where = f" (all in {rejects})" if rejects else " (use --rejects FILE to see all)"
        print(f"... and {more:,} more rejected rows{where}", file=sys.stderr)
    print(_summary(result))
    return 2 if result.rejected else 0


__all__ = [
    "ColumnFlags",
    "ColumnType",
    "CsvSource",
    "Header",
    "ImportFailed",
    "ImportResult",
    "JsonlSource",
    "Reject",
    "RejectSink",
    "all_booleans",
    "all_numbers",
    "check_jsonl_line",
    "import_file",
    "is_number",
    "is_valid_email",
    "lowers_ascii_like_python",
    "parse_header",
    "parse_types",
    "run_cli",
]
