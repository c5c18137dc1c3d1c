"""Every metric the dashboard and the alert rules read is exported by a running daemon, and the
node and campaign gauges they rely on say what they mean."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import aiohttp
import asyncpg

from mailerd import campaigns, metrics
from mailerd.db import campaigns as campaigns_db
from mailerd.db import shards as shards_db
from mailerd.db import stats as stats_db
from mailerd.emulator import webhooks as emulator_webhooks
from tests import ops_queries
from tests.integration.helpers import daemon_config, new_campaign, running_daemon


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def _value(exposition: str, series: str) -> float | None:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_every_metric_of_the_dashboard_and_the_alerts_is_exported(
    conn: asyncpg.Connection, dsn: str
) -> None:
    config = daemon_config(1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    await campaigns.create(conn, new_campaign(send_at=later, start=True), config)
    async with running_daemon(config, dsn) as daemon:
        async with asyncio.timeout(60):  # a sample each 10 s, each may time out on a busy box
            while _value(page := await _scrape(daemon.port), 'mailerd_campaigns{status="scheduled"}') != 1:
                await asyncio.sleep(0.1)
    exported = ops_queries.exported_names(page)
    for source, exprs in (
        ("dashboard", ops_queries.grafana_expressions()),
        ("alerts", ops_queries.alert_expressions()),
    ):
        for expr in exprs:
            missing = ops_queries.metric_names(expr) - exported - ops_queries.SYNTHETIC
            assert not missing, f"{source}: {expr!r} reads {sorted(missing)}, which no daemon exports"
    assert _value(page, "mailerd_ready") == 1
    assert _value(page, "mailerd_database_up") == 1
    assert _value(page, 'mailerd_campaigns{status="running"}') == 0
    assert _value(page, 'mailerd_campaign_leads_remaining{status="running"}') == 0


async def test_totals_by_status_sum_matched_and_logged_per_live_status(conn: asyncpg.Connection) -> None:
    config = daemon_config(1)
    running = [await campaigns.create(conn, new_campaign(), config) for _ in range(2)]
    paused = await campaigns.create(conn, new_campaign(), config)
    finished = await campaigns.create(conn, new_campaign(), config)
    await conn.execute(
        "UPDATE campaigns SET status = 'running' WHERE id = ANY($1::bigint[])", [*running, paused, finished]
    )
    await campaigns_db.change_status(conn, paused, "pause", "checking the list")
    await conn.execute("UPDATE campaigns SET status = 'finished' WHERE id = $1", finished)
    for campaign_id, matched in ((running[0], 100), (running[1], 50), (paused, 30), (finished, 7)):
        await stats_db.set_matched(conn, campaign_id, matched)
    await stats_db.add_outcomes(
        conn, {running[0]: (60, 5, 2, 3, 9), paused: (10, 0, 0, 0, 0), finished: (7, 0, 0, 0, 0)}
    )
    totals = {t.status: t for t in await stats_db.totals_by_status(conn)}
    assert totals == {
        "running": stats_db.StatusTotals("running", 2, 150, 70, 80),
        "paused": stats_db.StatusTotals("paused", 1, 30, 10, 20),
    }
    # A campaign that logged more than it matched (leads that began to match after its split)
    # takes nothing off another's leads left.
    await stats_db.add_outcomes(conn, {running[0]: (60, 0, 0, 0, 0)})
    totals = {t.status: t for t in await stats_db.totals_by_status(conn)}
    assert totals["running"] == stats_db.StatusTotals("running", 2, 150, 130, 50)


async def test_leads_waiting_for_window_count_only_campaigns_whose_every_pending_shard_waits(
    conn: asyncpg.Connection,
) -> None:
    """What MailerdCampaignNoProgress leaves out: a campaign that cannot send before a window opens."""
    config = daemon_config(1)
    waiting, partly, sending = [await campaigns.create(conn, new_campaign(), config) for _ in range(3)]
    await conn.execute(
        "UPDATE campaigns SET status = 'running' WHERE id = ANY($1::bigint[])", [waiting, partly, sending]
    )
    for campaign_id in (waiting, partly, sending):
        await stats_db.set_matched(conn, campaign_id, 100)
        await shards_db.create(conn, campaign_id, [100, 200])  # two shards
    await stats_db.add_outcomes(conn, {waiting: (30, 0, 0, 0, 0)})
    opens = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    await conn.execute(
        "UPDATE campaign_shards SET not_before = $2 WHERE campaign_id = $1 AND state = 'pending'",
        waiting,
        opens,
    )
    await conn.execute(  # one shard of `partly` waits, its other one does not
        "UPDATE campaign_shards SET not_before = $2 WHERE campaign_id = $1 AND shard_no = 0", partly, opens
    )
    assert await conn.fetchval("SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", partly) == 2
    assert await stats_db.leads_waiting_for_window(conn) == 70
    await conn.execute(
        "UPDATE campaign_shards SET not_before = now() - interval '1 minute' WHERE campaign_id = $1", waiting
    )
    assert await stats_db.leads_waiting_for_window(conn) == 0  # its window opened


async def test_the_counters_the_alerts_read_start_at_zero(dsn: str, tmp_path: Path) -> None:
    """A counter series that first appears with a value hides that first increase from
    ``increase()`` and ``rate()`` (Prometheus has no sample before it): MailerdDeadLetters never
    fired for a node's first dead letters, nor the documented alerts for a node's first crash
    recovery (``unknown``) or guard pause since its start."""
    for counter in (metrics.DEAD_LETTERS, metrics.GUARD_PAUSES, metrics.WEBHOOK_REJECTED):
        counter.clear()
    poster = emulator_webhooks.WebhookPoster("http://127.0.0.1:1", "mailgun", bounce_rate=0, complaint_rate=0)
    config = daemon_config(
        1,
        providers={"fresh": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}},  # named by no other test
        webhooks={"mailgun": poster.signer.daemon_settings(tmp_path)},
    )
    async with running_daemon(config, dsn) as daemon:
        page = await _scrape(daemon.port)
    for status in ("sent", "failed", "unknown", "suppressed"):
        assert _value(page, f'mailerd_emails_total{{provider="fresh",status="{status}"}}') == 0, status
    for kind in ("emails", "events", "emails_unrecorded", "events_unrecorded"):
        assert _value(page, f'mailerd_writer_dead_letters_total{{kind="{kind}"}}') == 0, kind
    for scope in ("campaign", "provider"):
        for signal in ("bounce", "complaint", "blocked"):
            series = f'mailerd_guard_pauses_total{{scope="{scope}",signal="{signal}"}}'
            assert _value(page, series) == 0, series
    for code in ("400", "401", "403", "503"):
        assert _value(page, f'mailerd_webhook_rejected_total{{provider="mailgun",status="{code}"}}') == 0
