"""Benchmark: the reports destination's load rate as its database grows (issue 13's lag at 1M).

    python bench/reports_load.py [--emails 1000000] [--batch 5000] [--steps 10]
                                 [--load-connections 1 2] [--busy N] [--dsn DSN] [--json]

The relay keeps the reports database ``lag`` seconds behind the hot log only while it loads
records faster than the campaign sends them. This loads ``--emails`` email records of one
campaign, built as the relay's read builds them (random provider message ids and addresses, as
a real campaign's are), through :class:`mailerd.relay.reports.ReportsDestination` itself, one
``deliver`` per ``--batch`` records, into a fresh, migrated reports database. It prints the
records/s of each of ``--steps`` equal steps, and each step's rate as a ratio of the first step's
(the baseline of the same run): a ratio that falls as the table grows is the load falling behind.

``--load-connections`` loads the same records once per value (``[reports] load_connections``,
each into a fresh database) and prints each one's records/s against the first value's. ``--busy
N`` runs N CPU-bound processes beside it, each in a session (a CPU group) of its own, as the
sending daemon, the sink and their Postgres backends are beside the relay in bench/reports.py.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from typing import Any

import asyncpg
from common import arguments, busy_cores, fresh_database, loadavg, of_first, print_json, run_bench, server_dsn

from mailerd.config import PrivacyConfig, ReportsConfig, Secret
from mailerd.db import migrate
from mailerd.relay import records
from mailerd.relay.reports import ReportsDestination

DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "example.org")


def _batch(first: int, count: int, start: dt.datetime) -> list[records.Record]:
    """Records as the relay's read returns them: JSON bytes the destination parses."""
    built = [
        records.email(
            tx=first + n,
            campaign_id=1,
            lead_id=first + n,
            status=1,
            provider_message_id=f"0100018c{uuid.uuid4().hex}-000000",
            error=None,
            sent_at=start + dt.timedelta(microseconds=25 * (first + n)),
            account_id=1,
            provider="ses",
            address=f"{uuid.uuid4().hex[:12]}@{DOMAINS[(first + n) % len(DOMAINS)]}",
        )
        for n in range(count)
    ]
    return [records.from_database("email", r.tx, r.at, r.key, r.value) for r in built]


async def load(admin: str, args: Any, connections: int) -> dict[str, Any]:
    """``--emails`` records into a fresh reports database, ``connections`` at a time."""
    async with fresh_database(admin) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate.migrate(conn, migrate.REPORTS)
        finally:
            await conn.close()
        config = ReportsConfig(dsn=Secret(dsn), load_connections=connections)
        destination = ReportsDestination(config, dsn, PrivacyConfig())
        start = dt.datetime.now(dt.UTC)
        per_step = args.emails // args.steps
        steps = []
        loaded = 0
        total = 0.0
        try:
            for _ in range(args.steps):
                seconds = 0.0
                for first in range(loaded, loaded + per_step, args.batch):
                    batch = _batch(first + 1, min(args.batch, loaded + per_step - first), start)
                    began = time.perf_counter()
                    await destination.deliver(batch)
                    seconds += time.perf_counter() - began
                loaded += per_step
                total += seconds
                steps.append({"emails": loaded, "records_per_s": round(per_step / seconds)})
                print(
                    f"  {connections}: {loaded:>10,} emails: {per_step / seconds:>9,.0f} records/s",
                    file=sys.stderr,
                )
            conn = await asyncpg.connect(dsn)
            try:
                size = await conn.fetchval(
                    "SELECT pg_total_relation_size('report_emails_p' || $1)", f"{start:%Y%m}"
                )
            finally:
                await conn.close()
        finally:
            await destination.close()
    first_rate = steps[0]["records_per_s"]
    for step in steps:
        step["of_first"] = round(step["records_per_s"] / first_rate, 2)
    return {
        "load_connections": connections,
        "records_per_s": round(loaded / total),
        "steps": steps,
        "table_mb": round(size / 2**20),
    }


async def bench(args: Any) -> dict[str, Any]:
    admin = server_dsn(args.dsn)
    result: dict[str, Any] = {
        "emails": args.emails,
        "batch": args.batch,
        "busy": args.busy,
        "load_before": loadavg(),
    }
    async with busy_cores(args.busy):
        runs = [await load(admin, args, connections) for connections in args.load_connections]
    of_first(runs, "records_per_s")
    result.update(runs=runs, load_after=loadavg())
    return result


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--emails", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--load-connections", type=int, nargs="+", default=[ReportsConfig().load_connections], metavar="N"
    )
    parser.add_argument(
        "--busy", type=int, default=0, metavar="N", help="CPU-bound processes beside the load"
    )
    args = parser.parse_args()
    result = run_bench(bench(args))
    if result is None:
        sys.exit(1)
    if args.json:
        print_json(result)
        return
    print(
        f"reports load, {result['emails']:,} emails in batches of {result['batch']:,}, {result['busy']} busy"
    )
    for run in result["runs"]:
        print(
            f"load_connections = {run['load_connections']}: {run['records_per_s']:,} records/s"
            f" ({run['of_first_value']:.2f} of the first value), report_emails {run['table_mb']} MB"
        )
        for step in run["steps"]:
            rate, ratio = step["records_per_s"], step["of_first"]
            print(f"  {step['emails']:>10,}: {rate:>9,} records/s ({ratio:.2f} of the first step)")
    print(f"  load average {result['load_before']} -> {result['load_after']}")


if __name__ == "__main__":
    main()
