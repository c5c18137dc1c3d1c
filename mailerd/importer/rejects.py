"""What an import reports, shared by the lead import and the suppression import.

A run skips the lines it cannot take (:class:`Reject`, collected by a :class:`RejectSink`: all
to the ``--rejects`` file, the first few kept for stderr), and ends with an
:class:`ImportResult`, which :func:`print_rejects` reports on stderr the same way for both
commands. An error that stops the whole run is an :class:`ImportFailed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

STDERR_REJECTS = 20


class ImportFailed(Exception):
    """An error that stops the whole import; nothing is imported."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """One skipped row: its first physical line (from 1), why, and its raw text."""

    line: int
    reason: str
    raw: str = ""


@dataclasses.dataclass(slots=True)
class ImportResult:
    """What a run did: rows imported, rows rejected (the first few kept), seconds taken.

    ``already`` (suppression import) counts valid rows that changed nothing: addresses on the
    list before, and repeats in the file.
    """

    imported: int = 0
    rejected: int = 0
    first_rejects: list[Reject] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    already: int = 0


def printable(raw: str) -> str:
    """Raw text with undecodable bytes shown as ``\\xNN`` (for the rejects file and stderr)."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class RejectSink:
    """Rejected rows: all to the rejects file (if any), the first few kept, all counted.

    ``raw_chars`` keeps only the start of each row's text (the bulk API lists no raw text, and
    its lines may be long).
    """

    def __init__(
        self, stream: IO[bytes] | None, keep: int = STDERR_REJECTS, raw_chars: int | None = None
    ) -> None:
        self.stream = stream
        self.keep = keep
        self.raw_chars = raw_chars
        self.first: list[Reject] = []
        self.count = 0

    def add(self, line: int, reason: str, raw: str) -> None:
        if self.raw_chars is not None:
            raw = raw[: self.raw_chars]
        reject = Reject(line, reason, printable(raw.rstrip("\r\n")))
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
        if self.stream is not None:  # seekable: see reject_sink
            self.stream.seek(0)
            self.stream.truncate()


@contextlib.contextmanager
def reject_sink(rejects: Path | None) -> Iterator[RejectSink]:
    """A sink writing to the ``--rejects`` file (when given), closed at the end of the run.

    Rejects bound for a pipe (``--rejects /dev/stdout``) are gathered in a temporary file and
    copied at the end: a run that starts over (:meth:`RejectSink.reset`) cannot take back what
    a pipe was given, and every reject came out twice."""
    if rejects is None:
        yield RejectSink(None)
        return
    try:
        stream = rejects.open("wb")
    except OSError as exc:
        raise ImportFailed(f"{rejects}: {exc.strerror or exc}") from None
    with stream:
        if stream.seekable():
            yield RejectSink(stream)
            return
        with tempfile.TemporaryFile() as spool:
            try:
                yield RejectSink(spool)
            finally:
                spool.seek(0)
                shutil.copyfileobj(spool, stream)


def exit_status(result: ImportResult) -> int:
    """The imports' exit status: 0 every row imported, 2 some rejected (the rest imported),
    1 nothing imported (every row rejected, or none in the file)."""
    if result.imported + result.already == 0:
        return 1
    return 2 if result.rejected else 0


def print_rejects(path: Path, result: ImportResult, rejects: Path | None) -> None:
    """The first rejects on stderr as ``FILE:LINE: reason``, then how many more and where."""
    for reject in result.first_rejects:
        print(f"{path}:{reject.line}: {reject.reason}", file=sys.stderr)
    more = result.rejected - len(result.first_rejects)
    if more > 0:
        where = f" (all in {rejects})" if rejects else " (use --rejects FILE to see all)"
        print(f"... and {more:,} more rejected rows{where}", file=sys.stderr)
