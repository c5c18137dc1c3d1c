"""Benchmark: how fast the relay reads a backlog of the hot log, in one range or several at once.

    python bench/relay_read.py [--emails 1000000] [--flush 2000] [--batch 5000]
                               [--read-connections 1 3 1 3] [--busy N] [--dsn DSN] [--json]

A destination behind a full-speed campaign is held by the slower of two sides: its delivery, or
the read of the sending database (``mailerd_relay_stage_seconds_total``). This measures the read
alone: ``--emails`` rows of one campaign in ``email_log``, written as the writer writes them (one
transaction per ``--flush`` rows, with transaction ids without rows between flushes, as the rest
of a sending node takes), then read from the start through :class:`mailerd.relay.reader.Reader`
(records built by the database, as every destination gets them) once per value of
``--read-connections`` (``[relay] read_connections``), alternating in one run. It prints each
pass's records/s and its ratio to the first value's. ``--busy N`` runs N CPU-bound processes
beside it, each in a CPU group of its own, as the sending daemon, the sink and the report load
are beside the relay in bench/reports.py.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import asyncpg
from campaign import seed
from common import arguments, busy_cores, fresh_database, loadavg, of_first, print_json, run_bench, server_dsn

from mailerd.config import RelayConfig
from mailerd.db import connect as db_connect
from mailerd.relay import position
from mailerd.relay.reader import Reader

IDLE_IDS = 3  # transaction ids without outbox rows between two flushes (leases, counters, ...)


async def fill(dsn: str, emails: int, flush: int) -> int:
    """``emails`` email_log rows of one campaign over the seeded leads, one transaction per flush."""
    conn = await asyncpg.connect(dsn)
    try:
        campaign_id = await conn.fetchval(
            """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject, provider)
               SELECT account_id, 'bench-read', 'running', '{}'::jsonb, 'news@example.com', 's', 'ses'
               FROM leads LIMIT 1 RETURNING id"""
        )
        lead_ids = await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM leads")
        for start in range(0, emails, flush):
            await conn.execute(
                """INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id)
                   SELECT now(), $1, lead, 1, '0100018c' || md5(lead::text) || '-000000'
                   FROM unnest($2::bigint[]) lead""",
                campaign_id,
                lead_ids[start : start + flush],
            )
            for _ in range(IDLE_IDS):
                await conn.fetchval("SELECT txid_current()")
        await conn.execute("VACUUM ANALYZE email_log")
        return int(await conn.fetchval("SELECT count(*) FROM email_log"))
    finally:
        await conn.close()


async def read_all(dsn: str, batch: int, parts: int) -> dict[str, Any]:
    """The whole log from a new position, one read after the other (as a stream reads ahead)."""
    pool = await db_connect.create_pool(dsn, min_size=parts, max_size=parts)
    try:
        reader = Reader(pool, {"email", "event", "campaign", "erasure"}, batch, parts)
        at = position.earliest()
        records = reads = 0
        started = time.perf_counter()
        while True:
            got = await reader.read(at)
            records += len(got.records)
            reads += 1
            at = got.end
            if got.caught_up and not got.records:
                break
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return {
        "read_connections": parts,
        "records": records,
        "reads": reads,
        "split_reads": reader.split_reads,
        "whole_reads": reader.whole_reads,
        "dropped_ranges": reader.dropped_ranges,
        "records_per_s": round(records / elapsed),
    }


async def bench(args: Any) -> dict[str, Any]:
    admin = server_dsn(args.dsn)
    result: dict[str, Any] = {
        "emails": args.emails, "flush": args.flush, "batch": args.batch, "busy": args.busy,
        "load_before": loadavg(),
    }  # fmt: skip
    async with fresh_database(admin) as dsn:
        await seed(dsn, args.emails)
        result["rows"] = await fill(dsn, args.emails, args.flush)
        passes = []
        async with busy_cores(args.busy):
            for parts in args.read_connections:
                passes.append(await read_all(dsn, args.batch, parts))
                print(f"  {parts}: {passes[-1]['records_per_s']:>9,} records/s", file=sys.stderr)
    of_first(passes, "records_per_s")
    result.update(passes=passes, load_after=loadavg())
    return result


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--emails", type=int, default=1_000_000)
    parser.add_argument("--flush", type=int, default=2_000, help="rows per writer transaction")
    parser.add_argument("--batch", type=int, default=RelayConfig().batch_records)
    parser.add_argument("--read-connections", type=int, nargs="+", default=[1, 3, 1, 3], metavar="N")
    parser.add_argument(
        "--busy", type=int, default=0, metavar="N", help="CPU-bound processes beside the read"
    )
    args = parser.parse_args()
    result = run_bench(bench(args))
    if result is None:
        sys.exit(1)
    if args.json:
        print_json(result)
        return
    print(
        f"relay read, {result['rows']:,} emails in flushes of {result['flush']:,}, batches of"
        f" {result['batch']:,}, {result['busy']} busy"
    )
    for run in result["passes"]:
        print(
            f"read_connections = {run['read_connections']}: {run['records_per_s']:,} records/s"
            f" ({run['of_first_value']:.2f} of the first value), {run['reads']} reads,"
            f" {run['split_reads']} in ranges at once, {run['dropped_ranges']} ranges dropped after a capped"
            f" one, {run['whole_reads']} transactions read whole"
        )
    print(f"  load average {result['load_before']} -> {result['load_after']}")


if __name__ == "__main__":
    main()
