"""`mailerd leads import`: one .csv or .jsonl file into ``leads``, upserted by address.

Everything runs in one transaction: a run imports all its good rows or none of them. Values are
written with the column types known when their chunk was parsed; if a later row turns a column
already written as number or boolean into a string column, the run rolls back, reads the file
to its end for the final types, and runs again with them (rejects are reported once, by the
second run). Most files pay nothing for this.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TextIO

import asyncpg

from mailerd.db import leads as leads_db
from mailerd.importer.csv_source import CsvSource
from mailerd.importer.files import check_files
from mailerd.importer.jsonl_source import JsonlSource
from mailerd.importer.loading import LeadWriter, Pipeline
from mailerd.importer.parsing import ColumnType, parse_header, parse_types
from mailerd.importer.progress import Progress
from mailerd.importer.rejects import (
    ImportFailed,
    ImportResult,
    RejectSink,
    exit_status,
    print_rejects,
    reject_sink,
)
from mailerd.importer.source import Lines, Source


class _Retype(Exception):
    """A column written as number or boolean turned out to be a string column: start over."""

    def __init__(self, types: dict[int, ColumnType]) -> None:
        super().__init__("column types changed")
        self.types = types


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
    check_files(path, rejects)
    progress = progress or Progress(size)
    try:
        with reject_sink(rejects) as sink:
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
    lower_ascii = await leads_db.lowers_ascii_like_python(conn)
    while True:
        reader = csv.reader(f, strict=False)
        try:
            row = next(reader)
        except StopIteration:
            raise ImportFailed(f"{path}: empty file (a header row is required)") from None
        except csv.Error as exc:
            raise ImportFailed(f"{path}:1: unreadable header: {exc}") from None
        if reader.line_num > 1:
            raise ImportFailed(
                f"{path}:1: unbalanced quote: a quoted column name runs over lines 2-{reader.line_num}"
            )
        header = parse_header(row, types, f"{path}:1")
        source = CsvSource(f, header, reader.line_num, sink, account_id, preset, lower_ascii=lower_ascii)
        try:
            async with conn.transaction():
                return await _write_all(conn, source, progress, sink)
        except _Retype as retype:
            preset = retype.types
            f.seek(0)
            sink.reset()


async def _import_jsonl(
    conn: asyncpg.Connection,
    account_id: int,
    f: IO[bytes],
    sink: RejectSink,
    progress: Progress,
) -> int:
    return await import_lines(conn, account_id=account_id, lines=f, sink=sink, progress=progress)


async def import_lines(
    conn: asyncpg.Connection,
    *,
    account_id: int,
    lines: Lines,
    sink: RejectSink,
    progress: Progress | None = None,
    interrupt: Callable[[], None] | None = None,
    max_line_bytes: int | None = None,
) -> int:
    """JSONL ``lines`` into ``leads`` in one transaction (a file, or the bulk API's body): the
    number of rows imported; rejects go to ``sink``. Raise :class:`ImportFailed`."""
    lower_ascii = await leads_db.lowers_ascii_like_python(conn)
    source = JsonlSource(lines, sink, account_id, lower_ascii=lower_ascii, max_line_bytes=max_line_bytes)
    async with conn.transaction():
        return await _write_all(conn, source, progress, sink, interrupt)


async def _write_all(
    conn: asyncpg.Connection,
    source: Source,
    progress: Progress | None,
    sink: RejectSink,
    interrupt: Callable[[], None] | None = None,
) -> int:
    """Inside the import's transaction: write every batch; the number of rows imported (rows
    the database refused are rejects). Raise :class:`_Retype`."""
    writer = LeadWriter(conn)
    await writer.start()
    await Pipeline(source, progress, interrupt).run(writer)
    if source.retype and isinstance(source, CsvSource):
        raise _Retype(source.column_types())
    for reject in writer.refused:
        sink.add(reject.line, reject.reason, reject.raw)
    return source.rows - len(writer.refused)


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
    """`mailerd leads import`: 0 all rows imported, 2 some rejected (or a bad ``--types``: a usage
    error), 1 nothing imported."""
    try:
        column_types = parse_types(types)
    except ImportFailed as exc:
        print(f"mailerd leads import: {exc}", file=sys.stderr)
        return 2
    try:
        result = await import_file(
            conn, account_id=account_id, path=path, types=column_types, rejects=rejects
        )
    except ImportFailed as exc:
        print(f"mailerd leads import: {exc}", file=sys.stderr)
        return 1
    if result.imported + result.rejected == 0:
        print(f"mailerd leads import: {path}: no rows to import", file=sys.stderr)
        return 1
    print_rejects(path, result, rejects)
    print(_summary(result))
    return exit_status(result)
