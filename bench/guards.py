"""How fast the campaign guard and the provider guard stop sending after the crossing event.

    python bench/guards.py [--leads 100000] [--min-sample 5000] [--guard campaign|provider|both]
                           [--baseline-rate 500] [--dsn DSN] [--json]

Each run gets a fresh database ``mailerd_bench_<random>`` with ``--leads`` leads and runs the
daemon in this process against the sink (unlimited rate: full send speed), whose webhook poster
sends an SES complaint for 0.5 % of the accepted recipients; the maximum complaint rate is
0.08 %. It waits for the guard to act and reports:

- **campaign guard** (``[guards] min_sample`` ``--min-sample``; the provider guard out of the way):
  one campaign. The **pause lag** is the pause's commit (``campaign_changes.at``) minus the
  crossing: the arrival of the last event before the pause (``email_events.received_at``), or
  the sending of the ``min_sample``-th email when that came later (then the rate was already
  above the threshold).
- **provider guard** (``[guards] provider_min_sample`` ``--min-sample``; the campaign guard out of
  the way with a huge ``min_sample``): two campaigns of the provider sending at once. The
  **hold lag** is the hold's commit (``provider_holds.since``) minus the crossing, the same rule
  over both campaigns' events and emails; the **pause lag** of each campaign is its pause
  (``campaign_changes.at``, cause ``guard``) minus the crossing: the hold pauses every running
  campaign of the provider in its transaction.
- for both, the **stop lag** (the last ``email_log`` row after the pause or hold: batches already
  in flight are logged) and the send rate before it.

Baseline, same run: the same campaigns with the provider at ``--baseline-rate`` emails/s (a
quiet daemon), so the ratio shows what full send speed costs each guard. The databases are
dropped at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
import common

from mailerd import campaigns, logs
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks

COMPLAINT_RATE = 0.005
MAX_COMPLAINT_RATE = 0.0008
OUT_OF_THE_WAY = 100_000_000  # the other guard's sample: never reached
GUARDS = ("campaign", "provider")


@dataclasses.dataclass(frozen=True, slots=True)
class Stop:
    """What the guard committed: its moment (pause or hold), its reason, the campaigns it paused."""

    at: dt.datetime
    reason: str
    paused: dict[int, dt.datetime]  # campaign id -> campaign_changes.at of its guard pause


async def one_run(admin_dsn: str, guard: str, leads: int, min_sample: int, rate: float) -> dict[str, Any]:
    """One guard (``campaign`` or ``provider``) at ``rate`` emails/s (0: unlimited), its figures."""
    limits: dict[str, Any] = (
        {
            "min_sample": min_sample,
            "max_complaint_rate": MAX_COMPLAINT_RATE,
            "provider_min_sample": OUT_OF_THE_WAY,
        }
        if guard == "campaign"
        else {
            "min_sample": OUT_OF_THE_WAY,
            "provider_min_sample": min_sample,
            "provider_max_complaint_rate": MAX_COMPLAINT_RATE,
        }
    )
    async with common.fresh_database(admin_dsn) as dsn, common.migrated(dsn) as conn:
        await common.copy_leads(conn, ((f"user{n}@example.com", {"n": n}) for n in range(leads)))
        await common.vacuum_analyze(conn, "leads")
        poster = emulator_webhooks.WebhookPoster(
            "http://127.0.0.1:1", "ses", bounce_rate=0.0, complaint_rate=COMPLAINT_RATE, seed=15
        )
        with tempfile.TemporaryDirectory() as tmp:
            sections = {"guards": limits, "webhooks": {"ses": poster.signer.daemon_settings(Path(tmp))}}
            async with common.in_process_daemon(
                dsn,
                sink.Sink(seed=15, webhooks=poster),
                sections,
                provider={"rate_per_s": rate, "concurrency": 8},
            ) as daemon:
                poster.url = f"http://127.0.0.1:{daemon.port}/webhooks/ses"
                ids = [
                    await common.start_campaign(conn, daemon.config, name=f"{guard} guard bench {n}")
                    for n in range(1 if guard == "campaign" else 2)
                ]
                await _wait_stopped(conn, ids)
                await asyncio.sleep(1.0)  # let the batches in flight be logged
        stop = await (_campaign_stop(conn, ids[0]) if guard == "campaign" else _provider_stop(conn, ids))
        return {"rate_per_s": rate, **await _figures(conn, ids, stop, min_sample)}


async def _wait_stopped(conn: asyncpg.Connection, campaign_ids: list[int]) -> None:
    """Poll the campaigns every 10 ms until none is running."""
    async with asyncio.timeout(600):
        while True:
            infos = [await campaigns.show(conn, campaign_id) for campaign_id in campaign_ids]
            if all(info is None or info["status"] in ("paused", "finished") for info in infos):
                return
            await asyncio.sleep(0.01)


async def _guard_pauses(conn: asyncpg.Connection, campaign_ids: list[int]) -> dict[int, asyncpg.Record]:
    """Each campaign's guard pause; a campaign the guard did not pause fails the run."""
    rows = await conn.fetch(
        """SELECT campaign_id, at, reason FROM campaign_changes
           WHERE campaign_id = ANY($1) AND status = 'paused' AND cause = 'guard'""",
        campaign_ids,
    )
    pauses = {row["campaign_id"]: row for row in rows}
    missing = [campaign_id for campaign_id in campaign_ids if campaign_id not in pauses]
    if missing:
        statuses = [(await campaigns.show(conn, campaign_id) or {}).get("status") for campaign_id in missing]
        raise common.BenchError(f"campaigns {missing} were not paused by the guard: {statuses}")
    return pauses


async def _campaign_stop(conn: asyncpg.Connection, campaign_id: int) -> Stop:
    pause = (await _guard_pauses(conn, [campaign_id]))[campaign_id]
    return Stop(pause["at"], pause["reason"], {campaign_id: pause["at"]})


async def _provider_stop(conn: asyncpg.Connection, campaign_ids: list[int]) -> Stop:
    hold = await conn.fetchrow("SELECT since, reason FROM provider_holds WHERE provider = 'sink'")
    if hold is None:
        raise common.BenchError("the provider was not held")
    pauses = await _guard_pauses(conn, campaign_ids)
    if any(row["reason"] != hold["reason"] for row in pauses.values()):
        raise common.BenchError(f"a pause is not the hold's: {[row['reason'] for row in pauses.values()]}")
    return Stop(hold["since"], hold["reason"], {cid: row["at"] for cid, row in pauses.items()})


async def _figures(
    conn: asyncpg.Connection, campaign_ids: list[int], stop: Stop, min_sample: int
) -> dict[str, Any]:
    """The lags from the crossing to ``stop``, the stop lag and the send rate before it."""
    last_event = await conn.fetchval(
        "SELECT max(received_at) FROM email_events WHERE campaign_id = ANY($1) AND received_at <= $2",
        campaign_ids,
        stop.at,
    )
    # The sample is reached when its min_sample-th email is sent (its row commits one
    # flush later): when that comes after the last event, it is the crossing.
    sample_reached = await conn.fetchval(
        """SELECT sent_at FROM email_log WHERE campaign_id = ANY($1) AND status = 1
           ORDER BY sent_at OFFSET $2 LIMIT 1""",
        campaign_ids,
        min_sample - 1,
    )
    by_sample = last_event is None or sample_reached > last_event
    crossing = sample_reached if by_sample else last_event
    log = {
        row["campaign_id"]: row
        for row in await conn.fetch(
            """SELECT campaign_id, min(sent_at) AS first, max(sent_at) AS last,
                      count(*) FILTER (WHERE sent_at <= $2) AS before_stop
               FROM email_log WHERE campaign_id = ANY($1) GROUP BY campaign_id""",
            campaign_ids,
            stop.at,
        )
    }
    sent = [log[campaign_id]["before_stop"] if campaign_id in log else 0 for campaign_id in campaign_ids]
    seconds = (stop.at - min(row["first"] for row in log.values())).total_seconds()
    last = max(row["last"] for row in log.values())
    return {
        "sent_before_stop": sum(sent),
        "sent_before_stop_per_campaign": sent,
        "send_rate_per_s": round(sum(sent) / seconds) if seconds > 0 else None,
        "crossing": "sample reached" if by_sample else "event",
        "lag_ms": _ms(stop.at - crossing),
        "pause_lags_ms": [_ms(stop.paused[campaign_id] - crossing) for campaign_id in campaign_ids],
        "stop_lag_ms": _ms(max(dt.timedelta(0), last - stop.at)),
        "reason": stop.reason,
    }


def _ms(delta: dt.timedelta) -> float:
    return round(delta / dt.timedelta(milliseconds=1), 1)


def _ratio(full: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    return round(full["lag_ms"] / baseline["lag_ms"], 2) if baseline["lag_ms"] else None


async def main() -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--min-sample", type=int, default=5_000, help="min_sample and provider_min_sample")
    parser.add_argument("--guard", choices=[*GUARDS, "both"], default="both")
    parser.add_argument("--baseline-rate", type=float, default=500.0)
    args = parser.parse_args()
    logs.configure("warning", "console", sys.stderr)
    admin = common.server_dsn(args.dsn)
    result: dict[str, Any] = {
        "leads": args.leads,
        "min_sample": args.min_sample,
        "loadavg_before": common.loadavg(),
    }
    for guard in GUARDS if args.guard == "both" else (args.guard,):
        full = await one_run(admin, guard, args.leads, args.min_sample, 0.0)
        baseline = await one_run(admin, guard, args.leads, args.min_sample, args.baseline_rate)
        result[guard] = {"full_speed": full, "baseline": baseline, "lag_ratio": _ratio(full, baseline)}
    result["loadavg_after"] = common.loadavg()
    if args.json:
        common.print_json(result, indent=True)
        return 0
    print(f"load average {result['loadavg_before']} before, {result['loadavg_after']} after")
    for guard in GUARDS:
        if guard in result:
            _print_guard(guard, result[guard], args.baseline_rate)
    return 0


def _print_guard(guard: str, figures: dict[str, Any], baseline_rate: float) -> None:
    what = "pause" if guard == "campaign" else "hold"
    print(f"{guard} guard, {len(figures['full_speed']['pause_lags_ms'])} campaign(s):")
    for name, run in (
        ("full speed", figures["full_speed"]),
        (f"baseline ({baseline_rate:g}/s)", figures["baseline"]),
    ):
        pauses = ", ".join(f"{lag} ms" for lag in run["pause_lags_ms"])
        sent = " + ".join(f"{n:,}" for n in run["sent_before_stop_per_campaign"])
        print(
            f"{name:>20}: {run['send_rate_per_s']:,} emails/s; {what} {run['lag_ms']} ms after the crossing "
            f"({run['crossing']}); campaigns paused {pauses} after it; last email {run['stop_lag_ms']} ms "
            f"after the {what}; {sent} sent before it"
        )
    print(f"{what} lag full speed / baseline: {figures['lag_ratio']}x")
    print(f"reason: {figures['full_speed']['reason']}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
