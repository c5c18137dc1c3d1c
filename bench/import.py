"""Benchmark `mailerd leads import` against a bare COPY of the same CSV, and the bulk API.

    python bench/import.py --rows 1000000 [--dsn DSN] [--bad-pct 1.5] [--json] [--keep FILE]
                           [--parts all|csv|api]

Creates a fresh database on the server (``--dsn``, else ``$MAILERD_TEST_DSN``, else the local
default), migrates it, then times, in the same run:

(a) ``COPY ... FROM STDIN (FORMAT csv, HEADER)`` of the file into an unindexed table of text
    columns (the baseline the import goal is stated against);
(b) the floor: the rows exactly as the importer hands them to Postgres (prepared beforehand,
    untimed) copied straight into the empty ``leads`` table, then truncated. No importer on one
    connection can beat this: it is what Postgres itself spends on the jsonb values, the two
    indexes of ``leads`` and their WAL. Then the same split over two connections at once (both
    cores, and no parsing at all): the bound for any importer on this machine;
(c) the mailerd import of the file into the empty ``leads`` table;
(d) the same rows as JSONL: `mailerd leads import` of a .jsonl file (the command, as a child
    process; timed by its own summary line), then (emptied again) ``POST /api/leads/bulk`` of
    the same file to a ``mailerd run`` child process, streamed by an HTTP client in 1 MiB
    pieces; the goal is bulk >= 0.5 of the CLI. The daemon's peak RSS
    (VmHWM) is read after the bulk import, with its RSS before it: the body is never held whole.

Bad rows (``--bad-pct``) are invalid addresses only, so that the bare COPY still accepts the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import random
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from common import (
    BenchError,
    arguments,
    checkpoint,
    child_env,
    daemon_toml,
    free_port,
    fresh_database,
    migrated,
    print_json,
    proc_status_kb,
    server_dsn,
    start_daemon,
    stop_daemons,
)

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


def to_jsonl(csv_path: Path, jsonl_path: Path) -> None:
    """The rows of the CSV as JSONL lines, typed as the CSV import infers them (numbers, booleans)."""
    with csv_path.open(encoding="utf-8", newline="") as f, jsonl_path.open("wb") as out:
        reader = csv.DictReader(f)
        for row in reader:
            email = row.pop("email")
            attributes: dict[str, Any] = {key: value for key, value in row.items() if value}
            if "age" in attributes:
                attributes["age"] = int(attributes["age"])
            attributes["score"] = float(attributes["score"])
            attributes["vip"] = attributes["vip"] == "true"
            out.write(orjson.dumps({"email": email, "attributes": attributes}) + b"\n")


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


TOKEN = secrets.token_hex(16)  # the child daemon's admin token, for this run only


async def _body(path: Path) -> AsyncIterator[bytes]:
    """The file in 1 MiB pieces, read as they are sent (never whole)."""
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            yield piece


def write_config(dsn: str, workdir: Path) -> tuple[Path, int]:
    """A ``mailerd`` config for the CLI and the daemon (HTTP on a free port, an admin token
    file); the config's path and the port."""
    token_file = workdir / "admin_token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port = free_port()
    config = workdir / "mailerd.toml"
    config.write_text(
        daemon_toml(dsn, port, "bench-import", {"http": {"admin_tokens_file": str(token_file)}})
    )
    return config, port


async def cli_import(config: Path, path: Path) -> tuple[float, float, str]:
    """``mailerd leads import --account 1 FILE`` as a child process: the seconds it reports for
    the import, the wall-clock seconds of the whole command, and its summary line."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailerd", "leads", "import",
        "--config", str(config), "--account", "1", str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )  # fmt: skip
    out, err = await process.communicate()
    wall_s = time.perf_counter() - started
    summary = out.decode().strip()
    found = re.fullmatch(r"imported [\d,]+, rejected [\d,]+, in ([\d.]+) s", summary)
    if process.returncode != 0 or found is None:
        raise BenchError(
            f"mailerd leads import exited with {process.returncode}: {summary} {err.decode()[-2000:]}"
        )
    return float(found[1]), wall_s, summary


async def bulk_over_http(config: Path, port: int, path: Path) -> dict[str, Any]:
    """``POST /api/leads/bulk`` of ``path`` to a ``mailerd run`` child: seconds, answer, RSS."""
    daemon = await start_daemon(config, config.with_name("daemon.log"), port)
    try:
        rss_before_kb = proc_status_kb(daemon.pid, "VmRSS")
        url = f"http://127.0.0.1:{port}/api/leads/bulk?account_id=1"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
        timeout = aiohttp.ClientTimeout(total=3600)
        started = time.perf_counter()
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=_body(path), headers=headers) as response,
        ):
            answer = await response.json()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise BenchError(f"bulk import answered {response.status}: {answer}")
        peak_kb = proc_status_kb(daemon.pid, "VmHWM")
    finally:
        codes = await stop_daemons([daemon])
    if codes != [0]:
        raise BenchError(f"the daemon exited with {codes[0]}")
    return {"seconds": seconds, "answer": answer, "rss_before_kb": rss_before_kb, "peak_rss_kb": peak_kb}


async def bench_jsonl(conn: asyncpg.Connection, dsn: str, path: Path, rows: int) -> dict[str, Any]:
    """(d): `mailerd leads import` of the JSONL file, then the bulk API of the same file, both
    into an empty ``leads`` table, both in a child process of their own (the command as users
    run it, and a daemon)."""
    jsonl = path.with_suffix(".jsonl")
    await asyncio.to_thread(to_jsonl, path, jsonl)
    config, port = write_config(dsn, path.parent)
    try:
        await conn.execute("TRUNCATE leads")
        await checkpoint(conn)
        cli_s, cli_wall_s, summary = await cli_import(config, jsonl)
        cli_stored = await conn.fetchval("SELECT count(*) FROM leads WHERE account_id = 1")
        await conn.execute("TRUNCATE leads")
        await checkpoint(conn)
        bulk = await bulk_over_http(config, port, jsonl)
        stored = await conn.fetchval("SELECT count(*) FROM leads WHERE account_id = 1")
        body_mb = jsonl.stat().st_size / 1e6
    finally:
        jsonl.unlink(missing_ok=True)
    if (bulk["answer"]["imported"], stored) != (cli_stored, cli_stored):
        raise BenchError(f"bulk imported {bulk['answer']['imported']:,} ({stored:,} stored), CLI {summary}")
    return {
        "jsonl_mb": round(body_mb, 1),
        "jsonl_import_s": round(cli_s, 3),
        "jsonl_import_wall_s": round(cli_wall_s, 3),
        "jsonl_import_rows_per_s": round(rows / cli_s),
        "bulk_api_s": round(bulk["seconds"], 3),
        "bulk_api_rows_per_s": round(rows / bulk["seconds"]),
        "bulk_api_ratio": round(cli_s / bulk["seconds"], 3),
        "bulk_api_imported": bulk["answer"]["imported"],
        "bulk_api_rejected": bulk["answer"]["rejected"],
        "daemon_rss_before_mb": round(bulk["rss_before_kb"] / 1024, 1),
        "daemon_peak_rss_mb": round(bulk["peak_rss_kb"] / 1024, 1),
    }


async def bench(admin_dsn: str, path: Path, rows: int, *, parts: str = "all") -> dict[str, Any]:
    """(a) to (c) unless ``parts`` is ``"api"``, (d) unless it is ``"csv"``."""
    async with fresh_database(admin_dsn) as dsn, migrated(dsn) as conn:
        result = await bench_csv(conn, dsn, path, rows) if parts != "api" else {"rows": rows}
        if parts != "csv":
            result.update(await bench_jsonl(conn, dsn, path, rows))
    return result


async def bench_csv(conn: asyncpg.Connection, dsn: str, path: Path, rows: int) -> dict[str, Any]:
    """(a) the bare COPY, (b) the floor, (c) the import of the CSV."""
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


def print_csv(result: dict[str, Any]) -> None:
    print(f"bare COPY:   {result['copy_rows_per_s']:>10,} rows/s  ({result['copy_s']:.2f} s)")
    print(f"mailerd:     {result['import_rows_per_s']:>10,} rows/s  ({result['import_s']:.2f} s)")
    print(f"ratio:       {result['ratio']:.2f} (mailerd / bare COPY)")
    print(
        f"floor:       {result['floor_rows_per_s']:>10,} rows/s  ({result['floor_s']:.2f} s): "
        f"the prepared rows copied straight into leads, ratio {result['floor_ratio']:.2f}"
    )
    print(
        f"             {round(result['rows'] / result['floor_two_connections_s']):>10,} rows/s  "
        f"({result['floor_two_connections_s']:.2f} s): the same on two connections at once, "
        f"ratio {result['floor_two_connections_ratio']:.2f}"
    )
    print(
        f"imported {result['imported']:,}, rejected {result['rejected']:,}, stored {result['leads_stored']:,}"
    )


def print_jsonl(result: dict[str, Any]) -> None:
    print(f"JSONL:       {result['jsonl_mb']} MB, the same rows")
    print(
        f"  CLI:       {result['jsonl_import_rows_per_s']:>10,} rows/s"
        f"  ({result['jsonl_import_s']:.2f} s; {result['jsonl_import_wall_s']:.2f} s with the"
        " command's start): mailerd leads import of the .jsonl file"
    )
    print(
        f"  bulk API:  {result['bulk_api_rows_per_s']:>10,} rows/s  ({result['bulk_api_s']:.2f} s):"
        f" POST /api/leads/bulk, ratio {result['bulk_api_ratio']:.2f} (bulk / CLI; goal >= 0.5)"
    )
    print(
        f"  daemon:    RSS {result['daemon_rss_before_mb']} MB before, peak"
        f" {result['daemon_peak_rss_mb']} MB (VmHWM)"
    )


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--bad-pct", type=float, default=0.0, help="share of rows with bad addresses")
    parser.add_argument("--keep", default=None, metavar="FILE", help="write the CSV here and keep it")
    parser.add_argument(
        "--parts",
        choices=["all", "csv", "api"],
        default="all",
        help="csv: (a) to (c) only; api: (d) only, the JSONL import and the bulk API (default all)",
    )
    args = parser.parse_args()
    dsn = server_dsn(args.dsn)

    with tempfile.TemporaryDirectory(prefix="mailerd-bench-") as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "leads.csv"
        started = time.perf_counter()
        generate(path, args.rows, args.bad_pct)
        generate_s = time.perf_counter() - started
        result = asyncio.run(bench(dsn, path, args.rows, parts=args.parts))
        result["file_mb"] = round(path.stat().st_size / 1e6, 1)
    result["generate_s"] = round(generate_s, 2)
    if args.json:
        print_json(result)
    else:
        print(f"rows:        {result['rows']:,} ({result['file_mb']} MB of CSV)")
        if "copy_s" in result:
            print_csv(result)
        if "bulk_api_s" in result:
            print_jsonl(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
