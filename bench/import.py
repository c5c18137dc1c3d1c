"""Benchmark `mailerd leads import` against a bare COPY of the same CSV.

    python bench/import.py --rows 1000000 [--dsn DSN] [--bad-pct 1.5] [--json] [--keep FILE]

Creates a fresh database on the server (``--dsn``, else ``$MAILERD_TEST_DSN``, else the local
default), migrates it, then times, in the same run:

(a) ``COPY ... FROM STDIN (FORMAT csv, HEADER)`` of the file into an unindexed table of text
    columns (the baseline the import goal is stated against);
(b) the floor: the rows exactly as the importer hands them to Postgres (prepared beforehand,
    untimed) copied straight into the empty ``leads`` table, then truncated. No importer on one
    connection can beat this: it is what Postgres itself spends on the jsonb values, the two
    indexes of ``leads`` and their WAL. Then the same split over two connections at once (both
    cores, and no parsing at all): the bound for any importer on this machine;
(c) the mailerd import of the file into the empty ``leads`` table.

Bad rows (``--bad-pct``) are invalid addresses only, so that the bare COPY still accepts the file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from common import checkpoint, fresh_database, migrated, server_dsn

from mailerd import importer
from mailerd.db import leads as leads_db

COLUMNS = ["email", "first_name", "country", "plan", "age", "score", "vip", "signup_date"]
FIRST_NAMES = [
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger",
    "Zoë", "José", "Søren", "Chloé", "Łukasz", "O'Brien", "Anne-Marie", "Jean Luc", "Yuki", "Amir",
]  # fmt: skip
COUNTRIES = ["US", "GB", "FR", "DE", "ES", "IT", "NL", "SE", "PL", "JP", "BR", "IN", "CA", "AU"]
PLANS = ["free", "free", "free", "starter", "pro", "team", "enterprise"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk", "test.example"]
BAD_ADDRESSES = ["not-an-address", "two@@example.com", "space in@example.com", "x@nodot", ""]


def generate(path: Path, rows: int, bad_pct: float, seed: int = 42) -> int:
    """Write a realistic CSV of ``rows`` data rows; return how many have a bad address."""
    rng = random.Random(seed)
    bad = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(rows):
            name = rng.choice(FIRST_NAMES)
            if bad_pct and rng.random() * 100 < bad_pct:
                email = rng.choice(BAD_ADDRESSES)
                bad += 1
            else:
                local = f"{name.split()[0].lower()}.{i}"
                email = f"{local}@{rng.choice(DOMAINS)}"
                if i % 10 == 0:
                    email = email.title()
            age = "" if rng.random() < 0.1 else str(rng.randint(18, 90))
            score = f"{rng.random() * 100:.2f}"
            vip = "true" if rng.random() < 0.05 else "false"
            day = f"20{rng.randint(15, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            writer.writerow([email, name, rng.choice(COUNTRIES), rng.choice(PLANS), age, score, vip, day])
    return bad


def prepare_rows(path: Path, halves: list[Path]) -> None:
    """Write the importer's COPY input for ``path`` (what its parser hands to Postgres), chunks
    alternating between the two ``halves``."""
    with path.open("r", encoding="utf-8-sig", newline="") as f, contextlib.ExitStack() as stack:
        sinks = [stack.enter_context(half.open("wb")) for half in halves]
        reader = csv.reader(f)
        header = importer.parse_header(next(reader), {}, str(path))
        sink = importer.RejectSink(None)
        source = importer.CsvSource(f, header, reader.line_num, sink, account_id=1, lower_ascii=True)
        for n in itertools.count():
            chunk = source.next_chunk()
            if chunk is None:
                break
            sinks[n % len(sinks)].write(chunk.data)
        if source.retype:
            raise SystemExit("bench: the generated file changed a column's type midway")


async def copy_into_leads(conn: asyncpg.Connection, dsns: list[str], halves: list[Path]) -> float:
    """Seconds to COPY the prepared halves into the empty leads table, on one connection (both
    halves in turn, one transaction) or on two at once; leads is emptied again afterwards."""
    extra = [await asyncpg.connect(dsn) for dsn in dsns[1:]]
    connections = [conn, *extra]
    try:
        await checkpoint(conn)

        async def load(worker: asyncpg.Connection, files: list[Path]) -> None:
            async with worker.transaction():
                for file in files:
                    await worker.copy_to_table("leads", source=file, columns=leads_db.COPY_COLUMNS)

        shares = [halves[n :: len(connections)] for n in range(len(connections))]
        started = time.perf_counter()
        await asyncio.gather(*(load(c, share) for c, share in zip(connections, shares, strict=True)))
        seconds = time.perf_counter() - started
    finally:
        for worker in extra:
            await worker.close()
    await conn.execute("TRUNCATE leads")
    await checkpoint(conn)
    return seconds


async def bench(admin_dsn: str, path: Path, rows: int) -> dict[str, Any]:
    async with fresh_database(admin_dsn) as dsn, migrated(dsn) as conn:
        columns = ", ".join(f'"{c}" text' for c in COLUMNS)
        await conn.execute(f"CREATE TABLE bare_copy ({columns})")
        await checkpoint(conn)
        started = time.perf_counter()
        await conn.copy_to_table("bare_copy", source=path, format="csv", header=True)
        copy_s = time.perf_counter() - started
        await conn.execute("DROP TABLE bare_copy")

        halves = [path.with_name(f"{path.name}.{n}.copy") for n in (1, 2)]
        try:
            await asyncio.to_thread(prepare_rows, path, halves)
            floor_s = await copy_into_leads(conn, [dsn], halves)
            floor2_s = await copy_into_leads(conn, [dsn, dsn], halves)
        finally:
            for half in halves:
                half.unlink(missing_ok=True)

        started = time.perf_counter()
        result = await importer.import_file(conn, account_id=1, path=path)
        import_s = time.perf_counter() - started
        stored = await conn.fetchval("SELECT count(*) FROM leads WHERE account_id = 1")
    return {
        "rows": rows,
        "copy_s": round(copy_s, 3),
        "copy_rows_per_s": round(rows / copy_s),
        "import_s": round(import_s, 3),
        "import_rows_per_s": round(rows / import_s),
        "ratio": round(copy_s / import_s, 3),
        "floor_s": round(floor_s, 3),
        "floor_rows_per_s": round(rows / floor_s),
        "floor_ratio": round(copy_s / floor_s, 3),
        "floor_two_connections_s": round(floor2_s, 3),
        "floor_two_connections_ratio": round(copy_s / floor2_s, 3),
        "imported": result.imported,
        "rejected": result.rejected,
        "leads_stored": stored,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dsn", default=None, help="admin DSN of the Postgres server to use")
    parser.add_argument("--bad-pct", type=float, default=0.0, help="share of rows with bad addresses")
    parser.add_argument("--keep", default=None, metavar="FILE", help="write the CSV here and keep it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    dsn = server_dsn(args.dsn)

    with tempfile.TemporaryDirectory(prefix="mailerd-bench-") as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "leads.csv"
        started = time.perf_counter()
        generate(path, args.rows, args.bad_pct)
        generate_s = time.perf_counter() - started
        result = asyncio.run(bench(dsn, path, args.rows))
        result["file_mb"] = round(path.stat().st_size / 1e6, 1)
    result["generate_s"] = round(generate_s, 2)
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(f"rows:        {result['rows']:,} ({result['file_mb']} MB)")
        print(f"bare COPY:   {result['copy_rows_per_s']:>10,} rows/s  ({result['copy_s']:.2f} s)")
        print(f"mailerd:     {result['import_rows_per_s']:>10,} rows/s  ({result['import_s']:.2f} s)")
        print(f"ratio:       {result['ratio']:.2f} (mailerd / bare COPY)")
        print(
            f"floor:       {result['floor_rows_per_s']:>10,} rows/s  ({result['floor_s']:.2f} s): "
            f"the prepared rows copied straight into leads, ratio {result['floor_ratio']:.2f}"
        )
        print(
            f"             {round(args.rows / result['floor_two_connections_s']):>10,} rows/s  "
            f"({result['floor_two_connections_s']:.2f} s): the same on two connections at once, "
            f"ratio {result['floor_two_connections_ratio']:.2f}"
        )
        print(
            f"imported {result['imported']:,}, rejected {result['rejected']:,}, "
            f"stored {result['leads_stored']:,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
