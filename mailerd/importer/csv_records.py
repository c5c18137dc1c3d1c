"""CSV records with their physical line numbers, and the rule that catches a stray quote.

A quoted CSV value may span lines. A stray quote (``"Bob`` in an unquoted file) opens such a
value too, and the value then swallows the lines after it: to the next quote in the file, or to
the end. So a record that spans lines must look like one a real file holds, else its quote is
taken as a stray one: its first line is rejected ("unbalanced quote") and reading goes on at the
next line, so the lines it swallowed are read as the rows they are. A record spanning lines must

- have the header's number of columns;
- be well-formed CSV (:mod:`csv` in strict mode: each quoted value is closed, before the end of
  the file, and followed by a comma or the end of the line);
- span at most :data:`MAX_RECORD_LINES` lines, and be read whole (the :mod:`csv` module stops at
  131,072 characters in one value);
- contain no line (after its first) that is a whole row by itself: the header's number of
  columns with a valid address in the address column.

A quoted value on the last line of the file that is never closed is a stray quote too (whether
or not that line ends in a line break).

Both imports read CSV through :class:`Records`: the lead import for chunks that are not plain
(quotes, escapes), the suppression import for every CSV file.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from mailerd.importer.parsing import canonical, is_valid_email
from mailerd.importer.rejects import RejectSink

MAX_RECORD_LINES = 100


@dataclass(frozen=True, slots=True)
class Record:
    """One CSV record: its first physical line (from 1), its fields and its raw text."""

    line: int
    fields: list[str]
    raw: str


class _Lines:
    """The physical lines csv reads, remembering those of the current record; lines put back
    (swallowed by a stray quote) are read again first."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.source = lines
        self.back: deque[str] = deque()
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.back.popleft() if self.back else next(self.source)
        self.taken.append(line)
        return line


class Records:
    """Reads CSV records from ``lines``; malformed records and stray quotes go to ``sink``.

    ``line`` is the number of physical lines read so far (the next record starts after it);
    ``pending`` says whether lines put back after a stray quote are still to be read.
    """

    def __init__(
        self,
        lines: Iterator[str],
        sink: RejectSink,
        *,
        lines_before: int,
        width: int,
        email_index: int,
        strict: bool = False,
    ) -> None:
        self.sink = sink
        self.line = lines_before
        self.width = width
        self.email_index = email_index
        self.strict = strict
        self._lines = _Lines(lines)
        self._reader = csv.reader(self._lines, strict=strict)

    @property
    def pending(self) -> bool:
        return bool(self._lines.back)

    def __iter__(self) -> Iterator[Record]:
        while (record := self.next()) is not None:
            yield record

    def next(self) -> Record | None:
        """The next record (blank lines give one with no fields), or None at the end."""
        while True:
            taken: list[str] = []
            self._lines.taken = taken
            start = self.line + 1
            try:
                fields = next(self._reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                if len(taken) > 1:
                    self._stray_quote(start, taken)
                elif not self.strict and '"' not in taken[0]:
                    # a value past csv's field limit, unquoted: the line is its fields, as the
                    # lead import's fast path reads it (rejected only when a quote in its chunk
                    # sent the chunk here)
                    self.line += 1
                    return Record(start, taken[0].rstrip("\r\n").split(","), taken[0])
                else:
                    self.line += len(taken)
                    self.sink.add(start, f"malformed CSV: {exc}", "".join(taken))
                continue
            if self._stray(fields, taken):
                self._stray_quote(start, taken)
                continue
            self.line += len(taken)
            return Record(start, fields, "".join(taken))

    def _stray(self, fields: list[str], taken: list[str]) -> bool:
        """Whether the record comes from a stray quote (see the module's rule)."""
        if len(taken) == 1:  # a value ending in a line break was never closed: the file ended
            if taken[0].endswith(("\n", "\r")) or not fields:
                return bool(fields) and fields[-1].endswith(("\n", "\r"))
            # the file's last line, without a line end: read again with one, to see the same
            try:
                return next(csv.reader([taken[0] + "\n"]))[-1].endswith("\n")
            except csv.Error:  # past the field limit by that line end: the value was open
                return True
        if len(fields) != self.width or len(taken) > MAX_RECORD_LINES:
            return True
        try:
            for _ in csv.reader(taken, strict=True):
                pass
        except csv.Error:
            return True
        return any(self._is_row(line) for line in taken[1:])

    def _is_row(self, line: str) -> bool:
        try:
            fields = next(csv.reader([line]))
        except (csv.Error, StopIteration):
            return False
        return len(fields) == self.width and is_valid_email(canonical(fields[self.email_index].strip()))

    def _stray_quote(self, start: int, taken: list[str]) -> None:
        """Reject the record's first line and read the lines after it again."""
        if len(taken) == 1:
            reason = "unbalanced quote: a quoted value opened on this line is not closed"
        else:
            reason = (
                f"unbalanced quote: a quoted value opened on this line runs over lines {start + 1}-"
                f"{start + len(taken) - 1} (they are read as rows of their own)"
            )
        self.sink.add(start, reason, taken[0])
        self._lines.back.extendleft(reversed(taken[1:]))
        self.line += 1
