"""Benchmark: report latency as the reports database grows to 10,000,000 emails over ten days.

    python bench/reports_growth.py [--emails 10000000] [--stages 4] [--samples 200] [--dsn DSN] [--json]

Issue 13 asks that report latency stay flat as the data grows. This fills a fresh, migrated
reports database in ``--stages`` equal steps up to ``--emails`` emails: campaigns of 100,000
emails each (10 accounts, each lead of an account in every campaign of its account, so a lead's
history grows too), spread over the ten days before now (the monthly partitions the loader
creates), with 30 % delivered events, 2 % hard and 1 % soft bounces, 0.1 % complaints, and the
rollups computed from the rows as the loader keeps them. The rows are made by SQL
(``generate_series``), not by the relay: this measures reads, and 10,000,000 records through the
loader would take most of an hour on this machine.

After each step (and ``ANALYZE``), it runs each read of the report API ``--samples`` times, one
after the other, against the newest and the oldest campaign and random leads, accounts and
message ids: the queries of :mod:`mailerd.db.reports_read`, exactly as the HTTP handlers run
them (the HTTP layer and the main database's campaign look-up do not depend on this volume). It
prints p50/p99 per read per step, and each step's p99 as a ratio of the first step's (the
baseline of the same run): flat means the ratios stay near 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from common import BenchError, arguments, fresh_database, loadavg, print_json, run_bench, server_dsn

from mailerd.db import connect as db_connect
from mailerd.db import migrate, reports_load, reports_read

PER_CAMPAIGN = 100_000
ACCOUNTS = 10
DAYS = 10
DOMAINS = (
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "example.org",
    "gmx.de",
    "web.de",
)

# One step's rows: emails of campaigns [$1, $2), campaign c at $3 + c * $4 seconds.
_EMAILS = f"""
INSERT INTO report_emails (campaign_id, lead_id, sent_at, account_id, address, domain, provider,
                           provider_message_id, status, reason)
SELECT c, n, $3::timestamptz + make_interval(secs => (c * $4::float8 + n * 0.006)::float8),
       c % {ACCOUNTS} + 1,
       'user' || n || '-' || (c % {ACCOUNTS} + 1) || '@' || d, d, 'ses', 'm-' || c || '-' || n,
       CASE WHEN n % 100 = 99 THEN 'failed' ELSE 'sent' END,
       CASE WHEN n % 100 = 99 THEN 'MessageRejected: throttled' END
FROM generate_series($1::bigint, $2::bigint - 1) c, generate_series(1, {PER_CAMPAIGN}) n,
     LATERAL (SELECT (ARRAY{list(DOMAINS)!r})[n % {len(DOMAINS)} + 1] AS d) dom
"""
_EVENTS = """
INSERT INTO report_events (provider, provider_event_id, received_at, type, account_id, campaign_id,
                           lead_id, address, domain, provider_message_id, provider_type, reason,
                           smtp_status, occurred_at)
SELECT 'ses', 'e-' || e.campaign_id || '-' || e.lead_id, e.sent_at + interval '5 seconds', t.type,
       e.account_id, e.campaign_id, e.lead_id, e.address, e.domain, e.provider_message_id,
       t.provider_type, t.reason, t.smtp_status, e.sent_at + interval '4 seconds'
FROM report_emails e,
     LATERAL (SELECT CASE WHEN e.lead_id % 1000 = 500 THEN 'complaint'
                          WHEN e.lead_id % 100 IN (30, 31) THEN 'hard_bounce'
                          WHEN e.lead_id % 100 = 32 THEN 'soft_bounce'
                          WHEN e.lead_id % 100 < 30 THEN 'delivered' END AS type) k,
     LATERAL (SELECT k.type,
                     CASE k.type WHEN 'hard_bounce' THEN 'Permanent' WHEN 'soft_bounce' THEN 'Transient' END
                         AS provider_type,
                     CASE k.type WHEN 'hard_bounce' THEN '550 5.1.1 <address> user unknown'
                                 WHEN 'soft_bounce' THEN '452 4.2.2 mailbox full' END AS reason,
                     CASE k.type WHEN 'hard_bounce' THEN '5.1.1' WHEN 'soft_bounce' THEN '4.2.2' END
                         AS smtp_status) t
WHERE e.campaign_id >= $1 AND e.campaign_id < $2 AND k.type IS NOT NULL
"""
_COUNTS = ", ".join(f"sum({c})" for c in reports_load.COUNTERS)
_COLUMNS = ", ".join(reports_load.COUNTERS)
# Each row of the step as (campaign_id, account_id, at, domain, counters...), as the loader adds it.
_ROWS = """
SELECT campaign_id, account_id, sent_at AS at, domain,
       (status = 'sent')::int AS sent, (status = 'failed')::int AS failed, 0 AS unknown,
       0 AS suppressed, 0 AS delivered, 0 AS bounced_hard, 0 AS bounced_soft, 0 AS complained,
       0 AS unsubscribed
FROM report_emails WHERE campaign_id >= $1 AND campaign_id < $2
UNION ALL
SELECT campaign_id, account_id, occurred_at, domain, 0, 0, 0, 0, (type = 'delivered')::int,
       (type = 'hard_bounce')::int, (type = 'soft_bounce')::int, (type = 'complaint')::int, 0
FROM report_events WHERE campaign_id >= $1 AND campaign_id < $2
"""
_ROLLUPS = (
    f"""INSERT INTO report_campaign_minutes (campaign_id, minute, {_COLUMNS})
        SELECT campaign_id, date_trunc('minute', at), {_COUNTS} FROM ({_ROWS}) r GROUP BY 1, 2""",
    f"""INSERT INTO report_campaign_domains (campaign_id, domain, {_COLUMNS})
        SELECT campaign_id, domain, {_COUNTS} FROM ({_ROWS}) r GROUP BY 1, 2""",
    f"""INSERT INTO report_account_days AS t (account_id, day, {_COLUMNS})
        SELECT account_id, (at AT TIME ZONE 'UTC')::date, {_COUNTS} FROM ({_ROWS}) r GROUP BY 1, 2
        ON CONFLICT (account_id, day) DO UPDATE SET
        {", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in reports_load.COUNTERS)}""",
    """INSERT INTO report_bounce_reasons (campaign_id, bounce, smtp_status, reason, count, last_at)
       SELECT campaign_id, CASE type WHEN 'hard_bounce' THEN 'hard' ELSE 'soft' END, smtp_status, reason,
              count(*), max(received_at)
       FROM report_events WHERE campaign_id >= $1 AND campaign_id < $2
            AND type IN ('hard_bounce', 'soft_bounce')
       GROUP BY 1, 2, 3, 4""",
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def grow(conn: asyncpg.Connection, first: int, last: int, start: dt.datetime, spacing_s: float) -> None:
    """Campaigns ``[first, last)``: their emails, events and rollups, in one transaction."""
    async with conn.transaction():
        await conn.execute(_EMAILS, first, last, start, spacing_s)
        await conn.execute(_EVENTS, first, last)
        for statement in _ROLLUPS:
            await conn.execute(statement, first, last)


Read = Callable[[asyncpg.Connection, random.Random], Awaitable[Any]]


def reads(newest: int, oldest: int) -> dict[str, Read]:
    """The report API's reads (mailerd.db.reports_read), one entry per request kind."""
    today = dt.datetime.now(dt.UTC).date()

    async def report(conn: asyncpg.Connection, campaign_id: int) -> None:
        await reports_read.campaign_report(conn, campaign_id, points=48, top=10)

    async def history(conn: asyncpg.Connection, rng: random.Random) -> None:
        lead = rng.randint(1, PER_CAMPAIGN)
        account = rng.randint(1, ACCOUNTS)
        await reports_read.history(
            conn, account_id=account, lead_id=lead, address=None, before=None, limit=50
        )

    async def history_by_address(conn: asyncpg.Connection, rng: random.Random) -> None:
        lead, account = rng.randint(1, PER_CAMPAIGN), rng.randint(1, ACCOUNTS)
        address = f"user{lead}-{account}@{DOMAINS[lead % len(DOMAINS)]}"
        await reports_read.history(
            conn, account_id=account, lead_id=None, address=address, before=None, limit=50
        )

    async def bounced(conn: asyncpg.Connection, rng: random.Random) -> None:
        after = rng.randint(0, PER_CAMPAIGN // 2)
        await reports_read.campaign_emails_with_event(conn, newest, "hard_bounce", after=after, limit=100)

    async def message(conn: asyncpg.Connection, rng: random.Random) -> None:
        campaign = rng.randint(oldest, newest)
        await reports_read.message(conn, f"m-{campaign}-{rng.randint(1, PER_CAMPAIGN)}")

    async def usage(conn: asyncpg.Connection, rng: random.Random) -> None:
        await reports_read.usage(conn, rng.randint(1, ACCOUNTS), today - dt.timedelta(days=29), today)

    async def report_newest(conn: asyncpg.Connection, _rng: random.Random) -> None:
        await report(conn, newest)

    async def report_oldest(conn: asyncpg.Connection, _rng: random.Random) -> None:
        await report(conn, oldest)

    return {
        "campaign_report_newest": report_newest,
        "campaign_report_oldest": report_oldest,
        "lead_history": history,
        "lead_history_by_address": history_by_address,
        "bounced_list": bounced,
        "one_message": message,
        "account_usage": usage,
    }


async def measure(conn: asyncpg.Connection, newest: int, oldest: int, samples: int) -> dict[str, Any]:
    """``samples`` runs of each read, one after the other: p50/p99 in ms."""
    rng = random.Random(11)
    out: dict[str, Any] = {}
    for name, read in reads(newest, oldest).items():
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            await read(conn, rng)
            timings.append((time.perf_counter() - started) * 1000)
        out[name] = {
            "p50_ms": round(percentile(timings, 0.5), 2),
            "p99_ms": round(percentile(timings, 0.99), 2),
        }
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    campaigns = args.emails // PER_CAMPAIGN
    if campaigns < args.stages or campaigns % args.stages:
        raise BenchError(f"--emails must be a multiple of {PER_CAMPAIGN:,} x --stages")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS)
    spacing_s = DAYS * 86400 / campaigns
    result: dict[str, Any] = {
        "emails": args.emails, "stages": args.stages, "samples": args.samples, "nproc": os.cpu_count(),
        "loadavg_before": loadavg(), "steps": [],
    }  # fmt: skip
    async with fresh_database(server_dsn(args.dsn)) as dsn:
        conn = await db_connect.connect(dsn)
        try:
            await migrate.migrate(conn, migrate.REPORTS)
            months = {reports_load.month_of(start + dt.timedelta(days=d)) for d in range(DAYS + 1)}
            await reports_load.ensure_partitions(conn, months)
            per_stage = campaigns // args.stages
            for stage in range(args.stages):
                first, last = 1 + stage * per_stage, 1 + (stage + 1) * per_stage
                started = time.perf_counter()
                await grow(conn, first, last, start, spacing_s)
                await conn.execute("ANALYZE")
                loaded_s = time.perf_counter() - started
                step: dict[str, Any] = {
                    "emails": (last - 1) * PER_CAMPAIGN,
                    "events": await conn.fetchval("SELECT count(*) FROM report_events"),
                    "load_s": round(loaded_s, 1),
                    "reports_db_bytes": await conn.fetchval("SELECT pg_database_size(current_database())"),
                    "reads": await measure(conn, last - 1, 1, args.samples),
                }
                result["steps"].append(step)
                print(
                    f"step {stage + 1}: {step['emails']:,} emails loaded in {loaded_s:.0f} s", file=sys.stderr
                )
        finally:
            await conn.close()
    result["loadavg_after"] = loadavg()
    base = result["steps"][0]["reads"]
    result["p99_vs_first_step"] = {
        name: [
            round(s["reads"][name]["p99_ms"] / max(base[name]["p99_ms"], 1e-6), 2) for s in result["steps"]
        ]
        for name in base
    }
    return result


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--emails", type=int, default=10_000_000)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    result = run_bench(bench(args))
    if result is None:
        return 1
    print_json(result, indent=not args.json)
    if args.json:
        return 0
    print("\nreport read p99 (ms) per step, and as a ratio of the first step's:")
    for name in result["p99_vs_first_step"]:
        values = [s["reads"][name]["p99_ms"] for s in result["steps"]]
        print(f"  {name:<26} {values}  {result['p99_vs_first_step'][name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
