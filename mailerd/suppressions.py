"""The suppression list: addresses no campaign of an account may send to.

Events put addresses on it (see :mod:`mailerd.events`); this module is the operator's side: list,
add and remove (admin API), and import lists brought from elsewhere (``mailerd suppressions
import``). Addresses are trimmed here and lower-cased by the database; every change is recorded in
``suppression_audit`` with its reason and source, in the same transaction as the change.
"""

from __future__ import annotations

import csv
import itertools
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import asyncpg
import orjson

from mailerd import erasure
from mailerd.config import Config
from mailerd.db import suppressions as suppressions_db
from mailerd.db.suppressions import Suppression, add, page, remove
from mailerd.importer.csv_records import Record, Records
from mailerd.importer.files import check_files
from mailerd.importer.parsing import bad_text_reason, canonical, has_bad_text, is_any_address, is_valid_email
from mailerd.importer.rejects import (
    ImportFailed,
    ImportResult,
    Reject,
    RejectSink,
    exit_status,
    print_rejects,
    printable,
    reject_sink,
)

MAX_REASON_LENGTH = 500
IMPORT_CHUNK_ROWS = 50_000
DEFAULT_IMPORT_REASON = "imported"

__all__ = [
    "DEFAULT_IMPORT_REASON",
    "MAX_REASON_LENGTH",
    "ImportFailed",
    "ImportResult",
    "Reject",
    "Suppression",
    "add",
    "check_reason",
    "import_file",
    "normalise",
    "page",
    "remove",
    "run_change_cli",
    "run_import_cli",
    "run_list_cli",
]


def normalise(address: str, *, strict: bool = True) -> str | None:
    """The address trimmed, or None when it is not one (not ``strict``, for a removal: when it
    cannot be an address at all, since earlier versions stored some the check now refuses).

    The one address check of every way onto the list (API, CLI, import): it also refuses what a
    text column cannot hold (NUL, invalid UTF-8) and more than 254 characters. It is not
    lower-cased here: the database does that (:mod:`mailerd.db.suppressions`), as it does for the
    leads the list is matched against.
    """
    address = canonical(address.strip())
    valid = is_valid_email(address) if strict else is_any_address(address) and not has_bad_text(address)
    return address if valid else None


def check_reason(reason: str) -> str | None:
    """Why ``reason`` cannot be stored (empty, longer than :data:`MAX_REASON_LENGTH`, a NUL
    character, invalid UTF-8), or None when it can."""
    if not reason.strip():
        return "must not be empty"
    if len(reason) > MAX_REASON_LENGTH:
        return f"at most {MAX_REASON_LENGTH} characters"
    if has_bad_text(reason):
        return "contains a NUL character" if "\x00" in reason else bad_text_reason(reason)
    return None


# --- import ----------------------------------------------------------------------------------


class _Parser:
    """Reads an address list: one address per line, or a CSV whose header has ``email``.

    Which one is decided by the first non-blank line: a CSV header naming an ``email`` column
    (and optionally ``reason``) makes it a CSV; else every non-blank line that does not start
    with ``#`` is an address. Yields ``(line, email, reason)``; rejects go to ``sink``.
    """

    def __init__(self, stream: TextIO, default_reason: str, sink: RejectSink, path: Path) -> None:
        self._path = path
        self._stream = stream
        self._default_reason = default_reason
        self._sink = sink

    def _reject(self, line: int, reason: str, raw: str) -> None:
        self._sink.add(line, reason, raw)

    def rows(self) -> Iterator[tuple[int, str, str]]:
        lines = enumerate(self._stream, start=1)
        for number, text in lines:
            if text.strip():
                header = _csv_header(text, f"{self._path}:{number}")
                if header is None:
                    yield from self._plain(itertools.chain([(number, text)], lines))
                else:
                    yield from self._csv(number, header)
                return

    def _plain(self, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str, str]]:
        for number, text in lines:
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            if has_bad_text(text):
                self._reject(number, bad_text_reason(text), text)
                continue
            email = normalise(text)
            if email is None:
                self._reject(number, f"not an email address: {_shown(text)}", text)
            else:
                yield number, email, self._default_reason

    def _csv(self, header_line: int, header: tuple[int, int | None, int]) -> Iterator[tuple[int, str, str]]:
        email_index, _, width = header
        records = Records(
            self._stream,
            self._sink,
            lines_before=header_line,
            width=width,
            email_index=email_index,
            strict=True,
        )
        for record in records:
            row = self._csv_row(record, header)
            if row is not None:
                yield row

    def _csv_row(self, record: Record, header: tuple[int, int | None, int]) -> tuple[int, str, str] | None:
        """``(line, email, reason)`` of one CSV record; None for a blank line or a reject."""
        email_index, reason_index, width = header
        fields, line, raw = record.fields, record.line, record.raw
        if not any(cell.strip() for cell in fields):
            return None
        if len(fields) != width:
            self._reject(line, f"expected {width} fields, got {len(fields)}", raw)
            return None
        if has_bad_text(raw):
            self._reject(line, bad_text_reason(raw), raw)
            return None
        email = normalise(fields[email_index])
        if email is None:
            self._reject(line, f"not an email address: {_shown(fields[email_index])}", raw)
            return None
        reason = fields[reason_index].strip() if reason_index is not None else ""
        if len(reason) > MAX_REASON_LENGTH:
            self._reject(line, f"reason longer than {MAX_REASON_LENGTH} characters", raw)
            return None
        return line, email, reason or self._default_reason


def _csv_header(text: str, where: str) -> tuple[int, int | None, int] | None:
    """``(email column, reason column, width)`` when the line is a CSV header with ``email``;
    raise :class:`ImportFailed` when it names either column twice (which one is meant?)."""
    try:
        cells = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return None
    names = [cell.strip().lower() for cell in cells]
    if "email" not in names:
        return None
    repeated = [name for name in ("email", "reason") if names.count(name) > 1]
    if repeated:
        raise ImportFailed(f"{where}: header repeats column(s) {', '.join(repeated)}")
    return names.index("email"), names.index("reason") if "reason" in names else None, len(names)


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 80 else text[:77] + "...")


async def import_file(
    conn: asyncpg.Connection,
    account_id: int,
    path: Path,
    *,
    reason: str = DEFAULT_IMPORT_REASON,
    source: str = "import",
    rejects: Path | None = None,
) -> ImportResult:
    """Add every valid address of ``path`` to the account's list, in one transaction.

    Streams the file through ``COPY`` into a temporary table, then one ``INSERT ... ON CONFLICT
    DO NOTHING`` (first occurrence in the file wins) that also writes the audit rows. Rejected
    lines go to ``rejects`` (one JSON object a line), when given.
    """
    started = time.perf_counter()
    check_files(path, rejects)
    try:
        with (
            reject_sink(rejects) as sink,
            path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as stream,
        ):
            parser = _Parser(stream, reason, sink, path)
            async with conn.transaction():
                await suppressions_db.create_import_staging(conn)
                valid = 0
                for chunk in _chunks(parser.rows(), IMPORT_CHUNK_ROWS):
                    await suppressions_db.copy_import_rows(conn, chunk)
                    valid += len(chunk)
                imported = await suppressions_db.merge_import(conn, account_id, source)
    except OSError as exc:
        raise ImportFailed(f"{path}: {exc.strerror or exc}") from None
    seconds = time.perf_counter() - started
    return ImportResult(imported, sink.count, sink.first, seconds, already=valid - imported)


def _summary(result: ImportResult) -> str:
    return f"imported {result.imported}, already suppressed {result.already}, rejected {result.rejected}"


def _chunks(rows: Iterator[tuple[int, str, str]], size: int) -> Iterator[list[tuple[int, str, str]]]:
    chunk: list[tuple[int, str, str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def run_import_cli(
    conn: asyncpg.Connection, *, account_id: int, path: Path, reason: str | None, rejects: Path | None = None
) -> int:
    """``mailerd suppressions import``: 0 nothing rejected, 2 some rejected (or a bad ``--reason``:
    a usage error), 1 nothing valid."""
    problem = check_reason(reason) if reason is not None else None
    if problem is not None:
        print(f"mailerd suppressions import: --reason: {problem}", file=sys.stderr)
        return 2
    try:
        result = await import_file(
            conn, account_id, path, reason=(reason or DEFAULT_IMPORT_REASON).strip(), rejects=rejects
        )
    except ImportFailed as exc:
        print(f"mailerd suppressions import: {exc}", file=sys.stderr)
        return 1
    if result.imported + result.already + result.rejected == 0:
        print(f"mailerd suppressions import: {path}: no addresses in the file", file=sys.stderr)
        return 1
    print_rejects(path, result, rejects)
    print(_summary(result))
    return exit_status(result)


async def run_list_cli(
    conn: asyncpg.Connection, *, account_id: int, after: str, limit: int, as_json: bool
) -> int:
    """``mailerd suppressions list``: one page, by address; prints ``next: ADDRESS`` if more."""
    if has_bad_text(after):
        print(f"mailerd suppressions list: --after: {bad_text_reason(after)}", file=sys.stderr)
        return 2
    rows = await page(conn, account_id, after=after.strip(), limit=limit)
    if as_json:
        sys.stdout.write(orjson.dumps([r.as_dict() for r in rows]).decode() + "\n")
    else:
        for row in rows:
            print(f"{row.email}\t{row.reason}\t{row.source or ''}\t{row.at.isoformat()}")
    if len(rows) == limit:  # to stderr, so --json's output stays one array
        print(f"next: {_after_argument(rows[-1].email)}", file=sys.stderr)
    return 0


def _after_argument(address: str) -> str:
    """``--after ADDRESS`` as a shell takes it back: quoted where the address has characters a
    shell reads (``'``, ``&``, ``$``), and ``--after=ADDRESS`` for one starting with ``-``
    (argparse would take it for an option)."""
    quoted = shlex.quote(address)
    return f"--after={quoted}" if address.startswith("-") else f"--after {quoted}"


async def run_change_cli(
    conn: asyncpg.Connection,
    *,
    action: str,
    account_id: int,
    email: str,
    reason: str | None,
    config: Config | None = None,
) -> int:
    """``mailerd suppressions add|remove``: 0 done (or already so), 2 an invalid address or reason
    (a usage error), 1 an erased entry that cannot be checked without the erasure key, 3 not
    suppressed."""
    address = normalise(email, strict=action == "add")
    if address is None:
        shown = printable(email[:100])
        print(f"mailerd suppressions {action}: email: not an email address: {shown!r}", file=sys.stderr)
        return 2
    problem = check_reason(reason) if reason is not None else None
    if problem is not None:
        print(f"mailerd suppressions {action}: --reason: {problem}", file=sys.stderr)
        return 2
    if action == "add":
        row, created = await add(conn, account_id, address, (reason or "manual").strip(), "cli")
        print(f"{'added' if created else 'already suppressed'}: {row.email} ({row.reason})")
        return 0
    if reason is None:
        print("mailerd suppressions remove: --reason is required", file=sys.stderr)
        return 2
    try:
        pads = await erasure.suppression_pads(conn, config, account_id) if config is not None else None
    except erasure.ErasureUnavailable as exc:
        print(f"mailerd suppressions remove: {exc}", file=sys.stderr)
        return 1
    removed = await remove(conn, account_id, address, reason.strip(), "cli", pads)
    if removed is None:
        print(f"not suppressed: {address}", file=sys.stderr)
        return 3
    erased = (
        " (kept as a keyed hash by an erasure)" if removed.source == suppressions_db.ERASED_SOURCE else ""
    )
    print(f"removed: {removed.email}{erased}")
    return 0
