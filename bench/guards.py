"""How fast the campaign guard pauses after the webhook that crosses its threshold.

    python bench/guards.py [--leads 100000] [--min-sample 5000] [--dsn DSN] [--json]

Creates a fresh database ``mailerd_bench_<random>``, seeds ``--leads`` leads, and runs the daemon
in this process against the sink (unlimited rate: full send speed) whose webhook poster sends an
SES complaint for 0.5 % of the accepted recipients (``[guards] max_complaint_rate`` 0.08 %,
``min_sample`` ``--min-sample``). It waits for the guard's pause and reports:

- **pause lag**: the pause's commit (``campaign_changes.at``) minus the crossing: the arrival of
  the last event before the pause (``email_events.received_at``), or the sending of the
  ``min_sample``-th email when that came later (then the rate was already above the threshold);
- **stop lag**: the last ``email_log`` row after the pause (batches already sent are logged);
- the send rate before the pause.

Baseline, same run: the same campaign with the provider at ``--baseline-rate`` emails/s (a
quiet daemon), so the ratio shows what full send speed costs the guard. The database is dropped
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import orjson

from mailerd import app, campaigns
from mailerd import config as config_mod
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks


async def one_run(admin_dsn: str, leads: int, min_sample: int, rate: float) -> dict[str, Any]:
    async with common.fresh_database(admin_dsn) as dsn, common.migrated(dsn) as conn:
        await common.copy_leads(conn, ((f"user{n}@example.com", {"n": n}) for n in range(leads)))
        await common.vacuum_analyze(conn, "leads")
        poster = emulator_webhooks.WebhookPoster(
            "http://127.0.0.1:1", "ses", bounce_rate=0.0, complaint_rate=0.005, seed=15
        )
        emulator = sink.Sink(seed=15, webhooks=poster)
        port = await emulator.start()
        with tempfile.TemporaryDirectory() as tmp:
            config = config_mod.from_mapping(
                {
                    "http": {"listen": "127.0.0.1:0"},
                    "providers": {
                        "sink": {
                            "kind": "sink",
                            "endpoint": f"http://127.0.0.1:{port}",
                            "rate_per_s": rate,
                            "concurrency": 8,
                        }
                    },
                    # The campaign guard is measured: the provider guard (whose default sample,
                    # 1,000, is smaller) would hold the account first.
                    "guards": {
                        "min_sample": min_sample,
                        "max_complaint_rate": 0.0008,
                        "provider_min_sample": 100_000_000,
                    },
                    "webhooks": {"ses": poster.signer.daemon_settings(Path(tmp))},
                },
                env={},
            )
            stop = asyncio.Event()
            bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            daemon = asyncio.create_task(app.run_with_dsn(config, dsn, stop, on_ready=bound.set_result))
            try:
                poster.url = f"http://127.0.0.1:{await asyncio.wait_for(bound, 30)}/webhooks/ses"
                new = campaigns.NewCampaign(
                    account_id=common.ACCOUNT_ID,
                    name="guard bench",
                    segment={"field": "attributes.n", "op": "gte", "value": 0},
                    subject="Hi",
                    html_body="<p>Hello</p>",
                    text_body="Hello",
                    from_address="news@example.com",
                    provider="sink",
                    start=True,
                )
                campaign_id = await campaigns.create(conn, new, config)
                info = await _wait_stopped(conn, campaign_id)
                await asyncio.sleep(1.0)  # let the batches in flight be logged
            finally:
                stop.set()
                await asyncio.wait_for(daemon, 60)
                await emulator.close()
        if info is None or info["status"] != "paused":
            raise common.BenchError(f"the campaign was not paused: {info}")
        pause = await conn.fetchrow(
            "SELECT at, reason FROM campaign_changes WHERE campaign_id = $1 AND status = 'paused'",
            campaign_id,
        )
        crossing = await conn.fetchval(
            "SELECT max(received_at) FROM email_events WHERE campaign_id = $1 AND received_at <= $2",
            campaign_id,
            pause["at"],
        )
        # The sample is reached when its min_sample-th email is sent (its row commits one
        # flush later): when that comes after the last event, it is the crossing.
        sample_reached = await conn.fetchval(
            "SELECT sent_at FROM email_log WHERE campaign_id = $1 ORDER BY sent_at OFFSET $2 LIMIT 1",
            campaign_id,
            min_sample - 1,
        )
        crossing = max(crossing, sample_reached)
        log = await conn.fetchrow(
            """SELECT min(sent_at) AS first, max(sent_at) AS last,
                      count(*) FILTER (WHERE sent_at <= $2) AS before_pause
               FROM email_log WHERE campaign_id = $1""",
            campaign_id,
            pause["at"],
        )
        seconds = (pause["at"] - log["first"]).total_seconds()
        return {
            "rate_per_s": rate,
            "sent_before_pause": log["before_pause"],
            "send_rate_per_s": round(log["before_pause"] / seconds) if seconds > 0 else None,
            "pause_lag_ms": round((pause["at"] - crossing) / dt.timedelta(milliseconds=1), 1),
            "stop_lag_ms": round(max(0.0, (log["last"] - pause["at"]) / dt.timedelta(milliseconds=1)), 1),
            "reason": pause["reason"],
        }


async def _wait_stopped(conn: Any, campaign_id: int) -> dict[str, Any] | None:
    """Poll the campaign every 10 ms until it is paused or finished."""
    async with asyncio.timeout(600):
        while True:
            info = await campaigns.show(conn, campaign_id)
            if info is None or info["status"] in ("paused", "finished"):
                return info
            await asyncio.sleep(0.01)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--min-sample", type=int, default=5_000)
    parser.add_argument("--baseline-rate", type=float, default=500.0)
    parser.add_argument("--dsn")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    admin = common.server_dsn(args.dsn)
    print(f"load before: {common.loadavg()}", file=sys.stderr)
    full = await one_run(admin, args.leads, args.min_sample, 0.0)
    baseline = await one_run(admin, args.leads, args.min_sample, args.baseline_rate)
    print(f"load after: {common.loadavg()}", file=sys.stderr)
    result = {
        "full_speed": full,
        "baseline": baseline,
        "pause_lag_ratio": round(full["pause_lag_ms"] / baseline["pause_lag_ms"], 2)
        if baseline["pause_lag_ms"]
        else None,
    }
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    for name, run in (("full speed", full), (f"baseline ({args.baseline_rate:g}/s)", baseline)):
        print(
            f"{name:>20}: {run['send_rate_per_s']} emails/s, pause {run['pause_lag_ms']} ms after the "
            f"crossing event, last email {run['stop_lag_ms']} ms after the pause, "
            f"{run['sent_before_pause']} sent before it"
        )
    print(f"pause lag full speed / baseline: {result['pause_lag_ratio']}x")
    print(f"reason: {full['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
