"""Lead import (`mailerd leads import`): .csv or .jsonl into ``leads``, upserted by address.

How it runs: a worker thread parses, validates and re-emits good rows as CSV, in batches of
about :data:`BATCH_ROWS` rows. Each batch is streamed through ``COPY`` into a temporary staging
table and merged into ``leads`` while the thread parses the next ones, so Python (one core) and
Postgres (the other) work at the same time. Everything runs in one transaction: a run imports
all its good rows or none of them.

- A batch is merged with the CSV column types known when it was parsed (inferred from the rows
  so far; only per-column flags are kept). Inference only ever widens a column to string, so
  if a later row turns a column that was already stored as number or boolean into a string
  column, the run rolls back, finishes reading the file for the final types, and runs again
  with them (rejects are reported once, by the second run). Most files pay nothing for this.
- A batch first tries a plain ``INSERT ... SELECT`` in a savepoint (new addresses only: about a
  quarter cheaper for Postgres than ``ON CONFLICT``); on a unique violation (the address exists
  or repeats) it falls back to ``INSERT ... ON CONFLICT DO UPDATE``, and a batch that repeats
  an address goes straight to folding its lines in file order. After a few fallbacks the run
  stops trying the plain insert. Batches merge in file order, so later lines still win.

Semantics (also in ``docs``):
- addresses are trimmed and lower-cased; one lead per (account, lower(email));
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
import io
import itertools
import operator
import re
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TextIO

import asyncpg
import orjson

STAGING = "mailerd_import_rows"
CHUNK_CHARS = 1 << 20  # about 1 MB of input per chunk handed to COPY
BATCH_ROWS = 50_000  # rows staged and merged at a time (pipeline fill vs. statement overhead)
QUEUE_CHUNKS = 16  # parsed chunks the worker thread may run ahead of the database
PLAIN_INSERT_FAILURES = 3  # stop trying the plain insert after this many unique violations
STDERR_REJECTS = 20
MAX_EMAIL_LENGTH = 254

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
    joined = "\n".join(values)
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
    """A parser feeding COPY."""

    rows: int
    bytes_read: int
    addresses: Addresses

    def next_chunk(self) -> bytes | None: ...

    def batch_types(self) -> dict[int, ColumnType]: ...


class CsvSource:
    """CSV rows to COPY input, inferring column types on the way.

    Fast path (a chunk with no quote, no stray CR, no NUL, valid UTF-8): split lines on commas
    and pass good lines through unchanged. Otherwise the chunk goes through :mod:`csv`, which
    also handles quoted fields spanning lines (even across chunk ends), and good rows are
    re-emitted with :func:`csv.writer`.
    """

    def __init__(
        self,
        stream: TextIO,
        header: Header,
        header_lines: int,
        sink: RejectSink,
        preset: dict[int, ColumnType] | None = None,
    ) -> None:
        self.stream = stream
        self.header = header
        self.sink = sink
        self.preset = preset  # the final types, known from an earlier run over the same file
        self.width = len(header.names)
        self.line = header_lines  # physical lines consumed so far
        self.rows = 0
        self.bytes_read = 0
        self.addresses = Addresses()
        self.flags = {i: ColumnFlags() for i in header.attribute_indexes if i not in header.forced}

    def column_types(self) -> dict[int, ColumnType]:
        """Final type of every attribute column (forced or inferred)."""
        types = {i: flags.result() for i, flags in self.flags.items()}
        types.update(self.header.forced)
        return types

    def batch_types(self) -> dict[int, ColumnType]:
        """Types to store the rows read so far with: of the columns that had a value (columns
        without one have nothing to store yet), or the preset types."""
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
        fast = '"' not in text and not _has_bad_text(text)
        if fast and "\r" in text:
            fast = text.count("\r") == text.count("\r\n")
            text = text.replace("\r\n", "\n")
        if fast:
            self.bytes_read += len(text)
            return self._fast(text)
        return self._slow(lines)

    def _fast(self, text: str) -> bytes:
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
                part = ",".join(fields)
            good.append(part)
            rows.append(fields)
            starts.append(line)
        self.line = line
        keep = self._check_values(rows, starts, good)
        if keep is not None:
            good = [g for g, k in zip(good, keep, strict=True) if k]
            rows = [r for r, k in zip(rows, keep, strict=True) if k]
        self.addresses.note([r[email_index] for r in rows])
        self.rows += len(good)
        return ("\n".join(good) + "\n").encode("utf-8") if good else b""

    def _slow(self, lines: list[str]) -> bytes:
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
        keep = self._check_values(rows, starts, raws)
        if keep is not None:
            rows = [r for r, k in zip(rows, keep, strict=True) if k]
        self.addresses.note([r[self.header.email_index] for r in rows])
        self.rows += len(rows)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        return out.getvalue().encode("utf-8")

    def _check_values(self, rows: list[list[str]], lines: list[int], raws: list[str]) -> list[bool] | None:
        """Fold the chunk into type inference; reject rows that break a forced type.

        Returns which rows to keep, or None when all are kept.
        """
        if not rows:
            return None
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
        return keep


class JsonlSource:
    """JSONL lines to COPY input (address, attributes as JSON text)."""

    def __init__(self, stream: IO[bytes], sink: RejectSink) -> None:
        self.stream = stream
        self.sink = sink
        self.line = 0
        self.rows = 0
        self.bytes_read = 0
        self.addresses = Addresses()

    def batch_types(self) -> dict[int, ColumnType]:
        """JSONL values carry their own types."""
        return {}

    def next_chunk(self) -> bytes | None:
        lines = self.stream.readlines(CHUNK_CHARS)
        if not lines:
            return None
        out: list[tuple[str, str]] = []
        for raw in lines:
            self.line += 1
            self.bytes_read += len(raw)
            if not raw.strip():
                continue
            parsed = check_jsonl_line(raw)
            if isinstance(parsed, str):
                self.sink.add(self.line, parsed, raw.decode("utf-8", "surrogateescape"))
                continue
            out.append((parsed[0], orjson.dumps(parsed[1]).decode()))
        self.addresses.note([address for address, _ in out])
        self.rows += len(out)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(out)
        return buffer.getvalue().encode("utf-8")


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
    types: dict[int, ColumnType]  # the source's batch types after this chunk
    batch_end: bool  # merge after this chunk
    repeats: bool  # (at a batch end) the batch repeats an address
    eof: bool = False


class _Retype(Exception):
    """A column stored as number or boolean turned out to be a string column: start over."""

    def __init__(self, types: dict[int, ColumnType]) -> None:
        super().__init__("column types changed")
        self.types = types


class _Pipeline:
    """Parse in a worker thread (running ahead through a bounded queue) while the event loop
    streams the parsed chunks into the staging table and merges each batch."""

    def __init__(self, source: Source, progress: Progress) -> None:
        self.source = source
        self.progress = progress
        self.queue: asyncio.Queue[_Piece] = asyncio.Queue(QUEUE_CHUNKS)
        self.pending: asyncio.Future[_Piece] | None = None
        self.counted = 0
        self.batch_rows = 0
        self.staged = 0
        self.last = _Piece(b"", 0, {}, True, False)

    def _next_piece(self) -> _Piece:
        """Runs in the worker thread: the next chunk, cut into batches by rows."""
        source = self.source
        data = source.next_chunk()
        if data is None:
            repeats = source.addresses.repeated
            return _Piece(b"", 0, source.batch_types(), True, repeats, eof=True)
        rows, self.counted = source.rows - self.counted, source.rows
        self.batch_rows += rows
        end = self.batch_rows >= BATCH_ROWS
        piece = _Piece(data, rows, source.batch_types(), end, source.addresses.repeated)
        if end:
            self.batch_rows = 0
            source.addresses.clear()
        return piece

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.pending = loop.run_in_executor(None, self._next_piece)
            piece = await self.pending
            self.pending = None
            await self.queue.put(piece)
            if piece.eof:
                return

    async def _batch(self) -> AsyncIterator[bytes]:
        """COPY input up to the end of the next batch (noted in ``last`` and ``staged``)."""
        self.staged = 0
        while True:
            piece = await self.queue.get()
            self.progress.update(self.source.bytes_read, self.source.rows)
            self.staged += piece.rows
            if piece.data:
                yield piece.data
            if piece.batch_end:
                self.last = piece
                return

    async def run(self, conn: asyncpg.Connection, columns: list[str], merger: _Merger) -> None:
        """Stage and merge batch after batch until the file ends."""
        producer = asyncio.create_task(self._produce())
        try:
            while True:
                if merger.retype is None:
                    await conn.copy_to_table(STAGING, source=self._batch(), columns=columns, format="csv")
                    if self.staged:
                        await merger.merge(self.last)
                else:  # the run will start over: only read on, for the final column types
                    async for _ in self._batch():
                        pass
                if self.last.eof:
                    break
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            if self.pending is not None:  # let the thread finish before the file closes
                await asyncio.gather(self.pending, return_exceptions=True)


class _Merger:
    """Merges the staged batch into ``leads``, then empties the staging table."""

    def __init__(self, conn: asyncpg.Connection, account_id: int, header: Header | None) -> None:
        self.conn = conn
        self.account_id = account_id
        self.header = header  # None: JSONL (attributes staged as jsonb)
        self.used: dict[int, ColumnType] = {}
        self.retype: dict[int, ColumnType] | None = None
        self.plain_failures = 0
        self.seconds = 0.0

    async def merge(self, piece: _Piece) -> None:
        started = time.perf_counter()
        if self.header is None:
            attributes, keys = "s.attributes", list[str]()
        else:
            if any(self.used.get(i, kind) is not kind for i, kind in piece.types.items()):
                self.retype = piece.types  # stop merging; the final types come at the end
                return
            self.used.update(piece.types)
            types = dict.fromkeys(self.header.attribute_indexes, ColumnType.STRING)
            types.update(piece.types)
            attributes, keys = _attributes_sql(self.header, types)
        await self._merge(attributes, keys, repeats=piece.repeats)
        await self.conn.execute(f"TRUNCATE {STAGING}")
        self.seconds += time.perf_counter() - started

    async def _merge(self, attributes: str, keys: list[str], *, repeats: bool) -> None:
        conn, args = self.conn, (self.account_id, *keys)
        if not repeats and self.plain_failures < PLAIN_INSERT_FAILURES:
            try:
                async with conn.transaction():
                    await conn.execute(_INSERT.format(attributes=attributes), *args)
                return
            except asyncpg.UniqueViolationError:
                # An address exists already (or repeats, or a concurrent import added it).
                self.plain_failures += 1
        if not repeats:
            try:
                async with conn.transaction():
                    await conn.execute(
                        _UPSERT.format(select=_SELECT_FAST.format(attributes=attributes)), *args
                    )
                return
            except asyncpg.CardinalityViolationError:
                # "ON CONFLICT DO UPDATE command cannot affect row a second time": the batch repeats
                # an address after all (Postgres lower-cased two spellings alike).
                pass
        await conn.execute(_UPSERT.format(select=_SELECT_FOLDED.format(attributes=attributes)), *args)


def _attributes_sql(header: Header, types: dict[int, ColumnType]) -> tuple[str, list[str]]:
    """SQL building the attributes object from staging columns, and its key parameters."""
    parts: list[str] = []
    keys: list[str] = []
    pairs: list[str] = []
    for index in header.attribute_indexes:
        keys.append(header.names[index])
        column = f"s.c{index}"
        kind = types[index]
        if kind is ColumnType.NUMBER:
            column += "::numeric"
        elif kind is ColumnType.BOOLEAN:
            column += "::boolean"
        pairs.append(f"${len(keys) + 1}::text, {column}")
        if len(pairs) == 50:  # a function takes at most 100 arguments
            parts.append(f"jsonb_build_object({', '.join(pairs)})")
            pairs = []
    if pairs:
        parts.append(f"jsonb_build_object({', '.join(pairs)})")
    if not parts:
        return "'{}'::jsonb", keys
    return f"jsonb_strip_nulls({' || '.join(parts)})", keys


# New addresses only: a unique violation sends the batch to the upsert below.
_INSERT = f"""
INSERT INTO leads (account_id, email, attributes)
SELECT $1::bigint, lower(s.email), {{attributes}} FROM {STAGING} s
"""
_UPSERT = """
INSERT INTO leads AS l (account_id, email, attributes)
{select}
ON CONFLICT (account_id, lower(email)) DO UPDATE
SET attributes = l.attributes || EXCLUDED.attributes, updated_at = now()
"""
_SELECT_FAST = f"SELECT $1::bigint, lower(s.email), {{attributes}} FROM {STAGING} s"
# Several lines for one address: fold them in file order (a later key wins), then upsert once.
# File order is ctid order: each batch is one COPY into the freshly truncated staging table.
_SELECT_FOLDED = f"""
SELECT $1::bigint, r.address,
       coalesce(jsonb_object_agg(e.key, e.value ORDER BY r.ord) FILTER (WHERE e.key IS NOT NULL),
                '{{{{}}}}'::jsonb)
FROM (SELECT lower(s.email) AS address, s.ctid AS ord, {{attributes}} AS attributes FROM {STAGING} s) r
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
    while True:
        reader = csv.reader(f, strict=False)
        try:
            row = next(reader)
        except StopIteration:
            raise ImportFailed(f"{path}: empty file (a header row is required)") from None
        except csv.Error as exc:
            raise ImportFailed(f"{path}:1: unreadable header: {exc}") from None
        header = parse_header(row, types, f"{path}:1")
        source = CsvSource(f, header, reader.line_num, sink, preset)
        columns = ["email" if i == header.email_index else f"c{i}" for i in range(len(header.names))]
        definition = ", ".join(f"{c} text" for c in columns)
        try:
            async with conn.transaction():
                await _stage_and_merge(conn, account_id, source, header, definition, columns, progress)
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
    source = JsonlSource(f, sink)
    async with conn.transaction():
        await _stage_and_merge(
            conn, account_id, source, None, "email text, attributes jsonb", ["email", "attributes"], progress
        )
    return source.rows


async def _stage_and_merge(
    conn: asyncpg.Connection,
    account_id: int,
    source: Source,
    header: Header | None,
    definition: str,
    columns: list[str],
    progress: Progress,
) -> None:
    """Inside the import's transaction: stage and merge every batch; raise :class:`_Retype`."""
    await conn.execute(f"CREATE TEMP TABLE {STAGING} ({definition}) ON COMMIT DROP")
    merger = _Merger(conn, account_id, header)
    await _Pipeline(source, progress).run(conn, columns, merger)
    if merger.retype is not None and isinstance(source, CsvSource):
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
    "parse_header",
    "parse_types",
    "run_cli",
]
