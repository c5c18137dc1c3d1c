"""The provider guard (issue 15): a provider account's rolling 24 hours, across campaigns and
nodes, hold the provider when a rate passes its maximum; every campaign of the provider pauses,
no new one starts, until an operator releases it with a reason."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from pathlib import Path

import aiohttp
import asyncpg
from prometheus_client import REGISTRY

from mailerd import campaigns, guards, metrics, provider_guard
from mailerd import config as config_mod
from mailerd.db import campaigns as campaigns_db
from mailerd.db import provider_usage
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks
from mailerd.models import EventKind
from mailerd.writer import Writer
from tests.integration.helpers import add_leads, daemon_config, new_campaign, running_daemon, wait_for_status
from tests.integration.test_guards import (
    _events,
    _guarding_writer,
    _judged,
    _lock_waited,
    _log_rejected,
    _log_sent,
    _running_campaign,
)

TOKEN = "provider-guard-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The campaign guard would need far more complaints: only the provider guard acts here.
GUARDS = {
    "min_sample": 100_000,
    "provider_min_sample": 100,
    "provider_max_complaint_rate": 0.01,
}


async def test_the_writer_keeps_the_provider_hour_in_its_flush(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=20))
    task = asyncio.create_task(writer.run())
    try:
        now = dt.datetime.now(dt.UTC)
        rows = [(now, campaign_id, n, 1, f"m{n}", None) for n in range(7)]
        await (await writer.submit(None, 0, rows))  # type: ignore[arg-type]
        await (await writer.submit(None, 0, rows[:3]))  # type: ignore[arg-type]
    finally:
        writer.close()
        await asyncio.wait_for(task, 10)
    usage = await conn.fetch("SELECT provider, hour, sent FROM provider_usage")
    assert [(r["provider"], r["sent"]) for r in usage] == [("sink", 10)]
    (found,) = await provider_usage.usage(conn, ["sink"])
    assert found.sent == 10
    # Hour rows past the window are pruned by the partition maintenance.
    await conn.execute("UPDATE provider_usage SET hour = hour - interval '3 days'")
    assert (await provider_usage.usage(conn, ["sink"]))[0].sent == 0
    assert await provider_usage.prune(conn) == 1


async def test_complaints_hold_the_provider_pause_a_second_campaign_and_refuse_starts(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 3000)  # 1000 match each campaign's segment
    poster = emulator_webhooks.WebhookPoster(
        "http://127.0.0.1:1", "ses", bounce_rate=0.0, complaint_rate=0.05, seed=16
    )
    emulator = sink.Sink(seed=16, webhooks=poster)
    port = await emulator.start()
    config = daemon_config(
        port,
        provider={"rate_per_s": 300},  # both campaigns share it: the guard acts well before the end
        guards=GUARDS,
        webhooks={"ses": poster.signer.daemon_settings(tmp_path)},
    )
    tokens = (config_mod.Secret(TOKEN),)
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, admin_tokens=tokens))
    try:
        async with running_daemon(config, dsn) as daemon, aiohttp.ClientSession() as http:
            api = f"http://127.0.0.1:{daemon.port}/api"
            poster.url = f"http://127.0.0.1:{daemon.port}/webhooks/ses"
            first = await campaigns.create(conn, new_campaign(name="first"), config)
            second = await campaigns.create(conn, new_campaign(name="second"), config)
            infos = [await wait_for_status(conn, c, ("paused", "finished")) for c in (first, second)]
            for info in infos:
                assert info["status"] == "paused", info
                assert info["reason"].startswith("guard: provider sink complaint rate "), info["reason"]
                assert "sent in 24 h) exceeds provider_max_complaint_rate 1%" in info["reason"]
            assert infos[0]["reason"] == infos[1]["reason"]
            causes = await conn.fetch(
                """SELECT cause FROM campaign_changes
                   WHERE status = 'paused' AND campaign_id = ANY($1::bigint[])""",
                [first, second],
            )
            assert [r["cause"] for r in causes] == ["guard", "guard"]

            async with http.get(f"{api}/providers/sink", headers=AUTH) as response:
                assert response.status == 200
                shown = await response.json()
            assert shown["hold"]["reason"] == infos[0]["reason"] and shown["hold"]["signal"] == "complaint"
            assert shown["complaint_rate"] > 0.01 and shown["sent"] >= 100

            # No start and no resume while held: 409 naming the hold.
            body = {
                "account_id": 1, "name": "third", "provider": "sink", "start": True, "from": "n@example.com",
                "segment": {"field": "attributes.plan", "op": "eq", "value": "pro"},
                "subject": "s", "html": "<p>h</p>", "text": "t",
            }  # fmt: skip
            async with http.post(f"{api}/campaigns", json=body, headers=AUTH) as response:
                assert response.status == 409
                error = (await response.json())["error"]
            assert error["field"] == "provider" and "provider sink is held" in error["message"]
            async with http.post(f"{api}/campaigns/{first}/resume", json={}, headers=AUTH) as response:
                assert response.status == 409
                assert "provider sink is held" in (await response.json())["error"]["message"]
            assert await conn.fetchval("SELECT count(*) FROM campaigns") == 2  # the refused one is not stored
            assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", first) == "paused"

            # The complaints still on their way land before the release (after it they would
            # count for nothing: see the late-bounce test below); then bad input is refused by
            # field, and the release lets both go on.
            poster.complaint_rate = 0.0
            async with asyncio.timeout(30):
                while (
                    await conn.fetchval("SELECT sum(complained) FROM campaign_stats")
                    < poster.counters.complaints
                ):
                    await asyncio.sleep(0.05)
            async with http.post(
                f"{api}/providers/sink/resume", json={"reason": " "}, headers=AUTH
            ) as response:
                assert response.status == 422
                assert (await response.json())["error"]["field"] == "reason"
            async with http.post(
                f"{api}/providers/nosuch/resume", json={"reason": "x"}, headers=AUTH
            ) as response:
                assert response.status == 404
            held = await conn.fetch("SELECT provider FROM provider_holds WHERE released_at IS NULL")
            assert [r["provider"] for r in held] == ["sink"]  # the refused releases changed nothing
            release = {"reason": "list cleaned, ticket 7", "by": "ops@example.com"}
            async with http.post(f"{api}/providers/sink/resume", json=release, headers=AUTH) as response:
                assert response.status == 200, await response.text()
                released = await response.json()
            assert sorted(released["resumed"]) == [first, second]
            assert released["provider"]["hold"] is None
            assert released["provider"]["last_release"]["by"] == "ops@example.com"
            assert released["provider"]["sent"] == 0  # the guard starts over
            async with http.post(f"{api}/providers/sink/resume", json=release, headers=AUTH) as response:
                assert response.status == 409  # not held any more
            for campaign_id in (first, second):
                info = await wait_for_status(conn, campaign_id, ("finished",))
                assert info["processed"] == 1000 and info["unknown"] == 0, info
    finally:
        await emulator.close()
    hold = await conn.fetchrow("SELECT * FROM provider_holds")
    assert hold["released_by"] == "ops@example.com" and hold["release_reason"] == "list cleaned, ticket 7"
    assert hold["released_at"] > hold["since"]


async def _hold(conn: asyncpg.Connection, provider: str) -> provider_usage.Hold:
    async with asyncio.timeout(10):
        while (hold := await provider_usage.active_hold(conn, provider)) is None:
            await asyncio.sleep(0.02)
    return hold


async def test_late_bounces_of_emails_sent_before_a_release_do_not_count_after_it(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Bounces of the emails sent before a hold keep arriving after the operator's release. They
    were counted against the emails sent after it: the provider was held again, every campaign
    paused, on 1,000 clean sends ("600 of 1000 sent"); they now count for nothing."""
    campaign_id = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(
        min_sample=10**8, provider_min_sample=1000, provider_max_bounce_rate=0.04
    )
    async with _guarding_writer(pool, guards) as writer:
        await _log_sent(writer, campaign_id, range(10_000))
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 401, 0)))
        hold = await _hold(conn, "sink")
        assert hold.reason == (
            "guard: provider sink hard-bounce rate 4.01% (401 of 10000 sent in 24 h) "
            "exceeds provider_max_bounce_rate 4%"
        )
        released = await provider_guard.release(conn, "sink", "list cleaned, ticket 9", "ops")
        assert released is not None and released[1] == [campaign_id]

        # 600 more bounces of the emails sent before the hold, then 1,000 new emails.
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 600, 1000)))
        await _log_sent(writer, campaign_id, range(20_000, 21_000))
        # 40 of the new emails bounce (4 %, not above the maximum), among 50 more late bounces.
        mixed = _events(campaign_id, EventKind.HARD_BOUNCE, 50, 5000)
        mixed += _events(campaign_id, EventKind.HARD_BOUNCE, 40, 20_000)
        await (await writer.submit_events(mixed))
        await _judged(writer, campaign_id)
        assert await provider_usage.active_hold(conn, "sink") is None
        (usage,) = await provider_usage.usage(conn, ["sink"])
        assert (usage.sent, usage.hard_bounced) == (1000, 40)

        # The 41st bounce of a new email passes the maximum: the guard still acts after a release.
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 1, 20_040)))
        hold = await _hold(conn, "sink")
        assert hold.reason == (
            "guard: provider sink hard-bounce rate 4.1% (41 of 1000 sent in 24 h) "
            "exceeds provider_max_bounce_rate 4%"
        )


async def test_smtp_rejections_are_in_the_provider_sample(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Emails an SMTP server refused are logged failed, their rejections counted as bounces: the
    provider's rates were over its sent emails alone (1,100 bounces "of" 1,000 sent: 110 %)."""
    campaign_id = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(
        min_sample=10**8, provider_min_sample=1000, provider_max_bounce_rate=0.04
    )
    async with _guarding_writer(pool, guards) as writer:
        await _log_sent(writer, campaign_id, range(1000))
        await _log_rejected(writer, campaign_id, range(1000, 2100))
        hold = await _hold(conn, "sink")
        assert hold.reason == (
            "guard: provider sink hard-bounce rate 52.4% (1100 of 2100 emails in 24 h: 1000 sent, "
            "1100 rejected in SMTP) exceeds provider_max_bounce_rate 4%"
        )
        (usage,) = await provider_usage.usage(conn, ["sink"])
        assert (usage.sent, usage.rejected, usage.hard_bounced) == (1000, 1100, 1100)
        assert provider_guard.rates(usage) == (1100 / 2100, 0.0, 0.0)
        # The release's baseline takes the rejections too: the guard starts over from zero.
        await provider_guard.release(conn, "sink", "list cleaned", "ops")
        (usage,) = await provider_usage.usage(conn, ["sink"])
        assert (usage.sent, usage.rejected, usage.hard_bounced) == (0, 0, 0)


async def test_a_flush_that_straddles_a_release_leaves_its_late_bounces_out(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    """A flush read the last release before a release committed, and its bounces of emails sent
    before it were added to the hour the release's baseline had already read: counted against
    the emails sent after it. A flush that records bounces now shares the provider's lock (the
    release takes it alone), so the release's baseline and snapshot come before or after the
    whole flush."""
    campaign_id = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(min_sample=10**8, provider_min_sample=10**8)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=20), guard_config=guards)
    task = asyncio.create_task(writer.run())
    release = await asyncpg.connect(dsn)
    try:
        await _log_sent(writer, campaign_id, range(100))
        assert await provider_usage.put_hold(conn, "sink", "bounce", "guard: test")
        transaction = release.transaction()
        await transaction.start()
        assert await provider_guard.release(release, "sink", "list cleaned", "ops") is not None
        done = await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 1, 7))
        await _lock_waited(conn, done)
        await transaction.commit()
        await asyncio.wait_for(done, 10)
        (usage,) = await provider_usage.usage(conn, ["sink"])
        assert (usage.sent, usage.hard_bounced) == (0, 0)
    finally:
        await release.close()
        writer.close()
        await asyncio.wait_for(task, 10)


async def test_a_release_sends_campaigns_held_before_they_ran_back_to_their_schedule(
    conn: asyncpg.Connection,
) -> None:
    """The hold pauses a campaign scheduled for next week with the running ones; its release
    started it at once. It goes back to waiting for its own send_at; the running one runs."""
    next_week = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    later = await campaigns.create(conn, new_campaign(start=False, send_at=next_week), daemon_config(1))
    running = await _running_campaign(conn, sent=0)
    verdict = guards.Verdict("complaint", "guard: provider sink complaint rate too high")
    assert await provider_guard.hold(conn, "sink", verdict)
    statuses = await conn.fetch("SELECT status FROM campaigns ORDER BY id")
    assert [r["status"] for r in statuses] == ["paused", "paused"]

    released = await provider_guard.release(conn, "sink", "list cleaned", "ops")
    assert released is not None and released[1] == [later, running]
    rows = await conn.fetch("SELECT status, send_at, started_at FROM campaigns ORDER BY id")
    assert (rows[0]["status"], rows[0]["send_at"], rows[0]["started_at"]) == ("scheduled", next_week, None)
    assert rows[1]["status"] == "running"
    change = await conn.fetchrow(
        """SELECT previous_status, status, cause, reason FROM campaign_changes
           WHERE campaign_id = $1 ORDER BY generation DESC LIMIT 1""",
        later,
    )
    assert tuple(change) == ("paused", "scheduled", "api", "list cleaned")
    assert await campaigns_db.sweep(conn, "due", cause="scheduler") == []


async def test_a_node_without_the_provider_leaves_its_held_gauge_to_the_nodes_that_send_with_it(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A webhook's bounces reach any node, so a node that does not configure the provider can
    hold it. Its sampler only samples the providers it configures: the 1 it set at the hold
    stayed after a release (on another node, or any node's API), and ``max by (provider)``
    kept MailerdProviderHeld firing until the node restarted."""
    with contextlib.suppress(KeyError):
        metrics.PROVIDER_HELD.remove("sink")
    campaign_id = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(
        min_sample=10**8, provider_min_sample=1000, provider_max_bounce_rate=0.04
    )
    async with _guarding_writer(pool, guards) as writer:  # configures no provider
        await _log_sent(writer, campaign_id, range(1000))
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 41, 0)))
        await _hold(conn, "sink")
        await _judged(writer, campaign_id)
    assert await provider_usage.release(conn, "sink", "list cleaned", "another node") is not None
    await provider_guard.sample(conn, guards, {})  # this node's sampler
    assert REGISTRY.get_sample_value("mailerd_provider_held", {"provider": "sink"}) in (None, 0.0)

    # A node that sends with the provider shows the hold at once, without waiting for a sample.
    sink_config = daemon_config(1).providers["sink"]
    writer = Writer(
        pool,
        config_mod.WriterConfig(flush_interval_ms=20),
        guard_config=guards,
        providers={"sink": sink_config},
    )
    task = asyncio.create_task(writer.run())
    try:
        await _log_sent(writer, campaign_id, range(2000, 3000))
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 41, 2000)))
        await _hold(conn, "sink")
        await _judged(writer, campaign_id)
        assert REGISTRY.get_sample_value("mailerd_provider_held", {"provider": "sink"}) == 1.0
    finally:
        writer.close()
        await asyncio.wait_for(task, 10)
