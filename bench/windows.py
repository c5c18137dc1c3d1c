"""What a send window, per-domain pace and a daily quota cost at full send speed.

    python bench/windows.py [--leads 200000] [--zones 24] [--dsn DSN] [--json]

Each run gets a fresh database ``mailerd_bench_<random>`` with ``--leads`` leads: their
``timezone`` attribute is one of ``--zones`` IANA zones (a tenth have none: the default zone),
their addresses spread over ten domains. The daemon runs in this process against the sink
(unlimited rate) and sends one campaign matching every lead; the figure is its send rate
(``processed`` / (``finished_at`` - ``started_at``)). Runs, in order:

1. **baseline**: no window, no ``[pace]``;
2. **window**: the same campaign with a window open at all times in every zone (every day,
   00:00-24:00), so nothing waits: what the split per zone and the zone shards' reads cost;
3. **pace**: no window, a ``[pace.NAME]`` group of three of the ten domains at a rate it never
   reaches (100,000/s): what counting a batch's recipients per group costs;
4. **quota**: no window, a ``daily_quota`` it never reaches (1,000,000,000): what reserving the
   quota in the database once per reservation step, and taking it per batch, costs;
5. **baseline again**, to see the machine's drift over the runs.

Ratios are to the mean of the two baselines of the same invocation.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import common

from mailerd import campaigns, logs
from mailerd.emulator import sink

ZONES = [
    "UTC", "Europe/London", "Europe/Berlin", "Europe/Paris", "Europe/Madrid", "Europe/Warsaw",
    "Europe/Athens", "Europe/Moscow", "Asia/Dubai", "Asia/Kolkata", "Asia/Bangkok", "Asia/Shanghai",
    "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland", "America/Sao_Paulo", "America/New_York",
    "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Anchorage",
    "Pacific/Honolulu", "Africa/Lagos", "Africa/Johannesburg",
]  # fmt: skip
DOMAINS = [f"d{n}.example.com" for n in range(7)] + ["gmail.com", "googlemail.com", "outlook.com"]
ALWAYS_OPEN = campaigns.SendWindowBody(start="00:00", end="24:00", default_timezone="Europe/Berlin")


def _lead(n: int, zones: int) -> tuple[str, dict[str, Any]]:
    attributes: dict[str, Any] = {"n": n}
    if n % 10:
        attributes["timezone"] = ZONES[n % zones]
    return f"user{n}@{DOMAINS[n % len(DOMAINS)]}", attributes


async def one_run(
    admin_dsn: str, leads: int, zones: int, *, window: bool = False, pace: bool = False, quota: bool = False
) -> dict[str, Any]:
    async with common.fresh_database(admin_dsn) as dsn, common.migrated(dsn) as conn:
        await common.copy_leads(conn, (_lead(n, zones) for n in range(leads)))
        await common.vacuum_analyze(conn, "leads")
        sections: dict[str, Any] = {
            "scheduler": {"shard_size": 50_000, "poll_interval_s": 0.25},
            "logging": {"level": "warning"},
        }
        if pace:
            sections["pace"] = {"big": {"domains": DOMAINS[-3:], "rate_per_s": 100_000}}
        async with common.in_process_daemon(
            dsn,
            sink.Sink(seed=12),
            sections,
            provider={"concurrency": 16, **({"daily_quota": 1_000_000_000} if quota else {})},
        ) as daemon:
            campaign_id = await common.start_campaign(
                conn, daemon.config, name="windows bench", send_window=ALWAYS_OPEN if window else None
            )
            info = await _wait_finished(conn, campaign_id)
        shards = await conn.fetchval(
            "SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id
        )
        seconds = (info["finished_at"] - info["started_at"]).total_seconds()
        if info["processed"] != leads:
            raise common.BenchError(f"processed {info['processed']} of {leads}")
        return {
            "emails_per_s": round(info["processed"] / seconds),
            "seconds": round(seconds, 2),
            "shards": shards,
        }


async def _wait_finished(conn: Any, campaign_id: int) -> dict[str, Any]:
    async with asyncio.timeout(1800):
        while True:
            info = await campaigns.show(conn, campaign_id)
            if info is not None and info["status"] == "finished":
                return info
            await asyncio.sleep(0.1)


async def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--leads", type=int, default=200_000)
    parser.add_argument("--zones", type=int, default=24, choices=range(1, len(ZONES) + 1), metavar="1..24")
    args = parser.parse_args()
    logs.configure("warning", "console", sys.stderr)
    admin = common.server_dsn(args.dsn)
    load_before = common.loadavg()
    runs = {
        "baseline": await one_run(admin, args.leads, args.zones),
        "window": await one_run(admin, args.leads, args.zones, window=True),
        "pace": await one_run(admin, args.leads, args.zones, pace=True),
        "quota": await one_run(admin, args.leads, args.zones, quota=True),
        "baseline_again": await one_run(admin, args.leads, args.zones),
    }
    base = (runs["baseline"]["emails_per_s"] + runs["baseline_again"]["emails_per_s"]) / 2
    result = {
        "leads": args.leads,
        "zones": args.zones,
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
        "runs": runs,
        "window_ratio": round(runs["window"]["emails_per_s"] / base, 3),
        "pace_ratio": round(runs["pace"]["emails_per_s"] / base, 3),
        "quota_ratio": round(runs["quota"]["emails_per_s"] / base, 3),
    }
    if args.json:
        common.print_json(result, indent=True)
        return 0
    print(f"load average {result['loadavg_before']} before, {result['loadavg_after']} after")
    for name, run in runs.items():
        print(f"{name:>15}: {run['emails_per_s']:,} emails/s ({run['seconds']} s, {run['shards']} shards)")
    print(
        f"window / baseline: {result['window_ratio']}x; pace / baseline: {result['pace_ratio']}x; "
        f"quota / baseline: {result['quota_ratio']}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
