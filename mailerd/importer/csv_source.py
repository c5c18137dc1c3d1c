"""CSV rows to COPY input, inferring column types on the way."""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Iterator
from typing import TextIO

from mailerd.importer import source
from mailerd.importer.csv_records import Record, Records
from mailerd.importer.encoding import RowEncoder
from mailerd.importer.parsing import (
    EMAIL,
    ColumnFlags,
    ColumnType,
    Header,
    bad_text_reason,
    canonical,
    has_bad_text,
    is_valid_email,
    shown,
    value_fits,
)
from mailerd.importer.rejects import RejectSink

# What keeps a chunk off the fast path: CSV quoting, and what a JSON string or a COPY text field
# would have to escape (backslash, control characters; "\r\n" is normalised to "\n" first).
_NOT_VERBATIM = re.compile(r'["\\\x00-\x09\x0b-\x1f]')
_WRITTEN_BOOLEANS = frozenset({"true", "false", ""})
# A chunk's good rows: their fields, first physical lines and raw text.
_Rows = tuple[list[list[str]], list[int], list[str]]


class CsvSource:
    """CSV rows to COPY input, inferring column types on the way.

    Fast path (a chunk with no quote, backslash, control character or invalid UTF-8): split
    lines on commas and fill each row into a template. Otherwise the chunk goes through
    :mod:`csv` (:class:`~mailerd.importer.csv_records.Records`: quoted fields spanning lines,
    even across chunk ends, and stray quotes caught), and values are escaped one by one.

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
        self.addresses = source.Addresses()
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

    def next_chunk(self) -> source.Chunk | None:
        lines = self.stream.readlines(source.CHUNK_CHARS)
        if not lines:
            return None
        text = "".join(lines)
        if "\r" in text and text.count("\r") == text.count("\r\n"):
            text = text.replace("\r\n", "\n")
        if _NOT_VERBATIM.search(text) is None and not has_bad_text(text):
            self.bytes_read += len(text)
            (rows, starts, raws), out = self._fast(text), self.encoder.verbatim
        else:
            (rows, starts, raws), out = self._slow(lines), self.encoder.escaped
        self.addresses.note([row[self.header.email_index] for row in rows])
        self.rows += len(rows)
        types = self._types_to_write()
        if self.retype or not rows:
            return source.EMPTY
        return source.Chunk("".join(out(rows, types)).encode("utf-8"), starts, raws)

    def _types_to_write(self) -> dict[int, ColumnType]:
        types = self.batch_types()
        for index, kind in types.items():
            if self.written.setdefault(index, kind) is not kind:
                self.retype = True
        return types

    def _fast(self, text: str) -> _Rows:
        email_index, width, match = self.header.email_index, self.width, EMAIL.match
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
            if not email.isascii():  # composed first, as the slow path and JSONL check it
                email = fields[email_index] = canonical(email)
            if match(email) is None:
                stripped = email.strip()
                if stripped == email or match(stripped) is None:
                    self.sink.add(line, f"invalid email address {shown(stripped)}", part)
                    continue
                fields[email_index] = stripped
            good.append(part)
            rows.append(fields)
            starts.append(line)
        self.line = line
        return self._check_values(rows, starts, good, lower_booleans=True)

    def _slow(self, lines: list[str]) -> _Rows:
        """Rows of a chunk that needs :mod:`csv`: its records (a record may run on past the
        chunk's last line, into the stream)."""

        def counted() -> Iterator[str]:
            for item in itertools.chain(lines, self.stream):
                self.bytes_read += len(item)
                yield item

        records = Records(
            counted(),
            self.sink,
            lines_before=self.line,
            width=self.width,
            email_index=self.header.email_index,
        )
        end = self.line + len(lines)
        rows: list[list[str]] = []
        starts: list[int] = []
        raws: list[str] = []
        while records.line < end or records.pending:
            record = records.next()
            if record is None:
                break
            row = self._checked(record)
            if row is not None:
                rows.append(row)
                starts.append(record.line)
                raws.append(record.raw)
        self.line = records.line
        return self._check_values(rows, starts, raws, lower_booleans=False)

    def _checked(self, record: Record) -> list[str] | None:
        """The record's fields with the address trimmed; None for a blank line or a reject."""
        row, raw = record.fields, record.raw
        if not row:
            return None
        if has_bad_text(raw):
            self.sink.add(record.line, bad_text_reason(raw), raw)
            return None
        if len(row) != self.width:
            self.sink.add(record.line, f"expected {self.width} columns, found {len(row)}", raw)
            return None
        email = canonical(row[self.header.email_index].strip())
        if not is_valid_email(email):
            self.sink.add(record.line, f"invalid email address {shown(email)}", raw)
            return None
        row[self.header.email_index] = email
        return row

    def _check_values(
        self, rows: list[list[str]], lines: list[int], raws: list[str], *, lower_booleans: bool
    ) -> _Rows:
        """Fold the chunk into type inference; drop (and reject) rows that break a forced type.

        With ``lower_booleans``, boolean values not yet in lower case are lowered in place (the
        fast path writes values as they are).
        """
        if not rows:
            return rows, lines, raws
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
                    reason = f"column {name!r}: {shown(row[index])} is not a {kind.value}"
                    self.sink.add(lines[n], reason, raws[n])
        if keep is not None:
            rows = list(itertools.compress(rows, keep))
            lines = list(itertools.compress(lines, keep))
            raws = list(itertools.compress(raws, keep))
        if lower_booleans:
            self._lower_booleans(rows)
        return rows, lines, raws

    def _lower_booleans(self, rows: list[list[str]]) -> None:
        for index, kind in self.batch_types().items():
            if kind is not ColumnType.BOOLEAN:
                continue
            values = set(map(operator.itemgetter(index), rows))
            if values <= _WRITTEN_BOOLEANS:
                continue
            for row in rows:
                row[index] = row[index].lower()
