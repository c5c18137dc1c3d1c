"""A campaign's own ``rate`` through the daemon: it holds back that campaign's batches only (they
wait for their tokens before they join the provider lane's queue, not in the lane's shared
sender workers), a pause or a drain cuts that wait short, and the provider never gets more than
its burst because a batch waited for its campaign."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from prometheus_client import REGISTRY

from mailerd import app, campaigns, shard
from mailerd import config as config_mod
from mailerd.db import campaigns as campaigns_db
from mailerd.emulator import sink
from tests.integration.helpers import (
    VirtualTime,
    add_leads,
    daemon_config,
    new_campaign,
    recording_emulator,
    running_daemon,
    wait_for_logged,
    wait_for_status,
)

RATE, BURST = 10.0, 10  # the provider's, in virtual time


async def _wait_claimed(conn: asyncpg.Connection, campaign_id: int, timeout: float = 30) -> None:
    """Until every shard of the campaign has an owner (its batches are being dispatched)."""
    async with asyncio.timeout(timeout):
        while await conn.fetchval(
            "SELECT count(*) = 0 OR bool_or(owner IS NULL) FROM campaign_shards WHERE campaign_id = $1",
            campaign_id,
        ):
            await asyncio.sleep(0.05)


async def test_a_capped_campaign_holds_back_only_its_own_batches(conn: asyncpg.Connection, dsn: str) -> None:
    await add_leads(conn, 1, 3000)  # 1000 match the default segment, in three shards
    emulator = sink.Sink(seed=3)
    port = await emulator.start()
    try:
        config = daemon_config(port, provider={"concurrency": 4, "batch_size": 50})
        async with running_daemon(config, dsn):
            # 1 recipient/s: each of its shards' first batch of 50 waits 49 s, 99 s, ... for tokens
            slow = await campaigns.create(conn, new_campaign(name="slow", rate_per_s=1.0), config)
            await _wait_claimed(conn, slow)
            fast = await campaigns.create(conn, new_campaign(name="fast"), config)
            # the four workers were asleep on slow's growing debt: fast sent nothing in 8 s
            done = await wait_for_status(conn, fast, timeout=30)
            assert done["sent"] == 1000
            waiting = await campaigns.show(conn, slow)
            assert waiting is not None and waiting["status"] == "running" and waiting["sent"] == 0

            # a pause stops slow's shards while they wait for its tokens: released cleanly, at once
            await campaigns_db.change_status(conn, slow, "pause", "checking the copy")
            async with asyncio.timeout(10):
                while await conn.fetchval(
                    "SELECT bool_or(owner IS NOT NULL) FROM campaign_shards WHERE campaign_id = $1", slow
                ):
                    await asyncio.sleep(0.05)
            await campaigns_db.change_status(conn, slow, "resume")
            await _wait_claimed(conn, slow)
            draining = time.monotonic()
        # ... and so does the drain
        assert time.monotonic() - draining < 5
    finally:
        await emulator.close()
    shards = await conn.fetch("SELECT * FROM campaign_shards WHERE campaign_id = $1", slow)
    assert all(s["released_clean"] and s["owner"] is None for s in shards), shards
    assert await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", slow) == 0


def _over_burst(arrivals: list[float]) -> list[tuple[float, float, int]]:
    """Spans ``(from, to, recipients)`` in which the provider got more than ``BURST`` plus what
    ``RATE`` refills over the span."""
    times = sorted(arrivals)
    return [
        (times[i], times[j], j - i + 1)
        for i in range(len(times))
        for j in range(i, len(times))
        if j - i + 1 > BURST + RATE * (times[j] - times[i]) + 1e-6
    ]


@pytest.mark.parametrize("wait", ["campaign rate", "pace group"])
async def test_the_provider_gets_no_more_than_its_burst_after_a_batch_waited(
    conn: asyncpg.Connection, dsn: str, wait: str
) -> None:
    """The provider's tokens are taken just before the call, after the batch's other waits: a
    batch of "x" (20 Gmail leads, capped at 5/s or paced at 1/s) used to take them at once with
    its campaign's or group's, sleep, and go together with a batch of "y" that found the
    provider's bucket refilled meanwhile (20 at once against a burst of 10). One worker; the
    provider's and the groups' buckets in virtual time, the campaign's cap in real time."""
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@{'gmail.com' if n < 20 else 'example.com'}", {"n": n}) for n in range(220)],
        columns=("account_id", "email", "attributes"),
    )
    time = VirtualTime()
    arrivals: list[tuple[float, str]] = []
    emulator = recording_emulator("ses", time, arrivals, seed=1)
    port = await emulator.start()
    try:
        provider = {"concurrency": 1, "batch_size": 10, "rate_per_s": RATE, "burst": BURST}
        paced = {"google": {"domains": ["gmail.com"], "rate_per_s": 1, "burst": 1}}
        config = daemon_config(port, provider=provider, pace=paced if wait == "pace group" else {})
        timing = app.SenderTiming(clock=time.clock, sleep=time.sleep)
        async with running_daemon(config, dsn, sender_timing=timing):
            gmail = {"field": "attributes.n", "op": "lt", "value": 20}
            # at 5/s its two batches of 10 wait 1 s and 3 s for their tokens (at 1/s, 9 s and 19 s)
            cap = 5 if wait == "campaign rate" else None
            x = await campaigns.create(conn, new_campaign(name="x", segment=gmail, rate_per_s=cap), config)
            y = await campaigns.create(conn, new_campaign(name="y", segment={"not": gmail}), config)
            sent = [await wait_for_status(conn, campaign_id) for campaign_id in (x, y)]
    finally:
        await emulator.close()
    assert [info["sent"] for info in sent] == [20, 200] and len(arrivals) == 220
    assert _over_burst([at for at, _ in arrivals]) == []


def _one_window(port: int) -> config_mod.Config:
    """600 leads (200 match) in one shard, read in one window."""
    return daemon_config(port, scheduler={"shard_size": 1000, "window_size": 1000, "poll_interval_s": 0.2})


async def test_a_drain_in_the_last_windows_cap_wait_leaves_the_rest_for_the_next_owner(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # the stop ended the wait, and the shard, with its window read to the end, was made done:
    # the window's later leads got no row and were never sent (the campaign finished at 50 of 200)
    await add_leads(conn, 1, 600)  # 200 match; one shard, one window
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = _one_window(port)
        campaign_id = await campaigns.create(conn, new_campaign(rate_per_s=10.0), config)
        async with running_daemon(config, dsn):  # 10/s: the first batch goes, the next waits 4 s
            await wait_for_logged(conn, campaign_id, 50)
        shard = await conn.fetchrow(
            "SELECT checkpoint, state FROM campaign_shards WHERE campaign_id = $1", campaign_id
        )
        assert shard["state"] != "done" and shard["checkpoint"] < 600, dict(shard)
        await conn.execute("UPDATE campaigns SET rate_per_s = NULL WHERE id = $1", campaign_id)
        async with running_daemon(config, dsn):
            info = await wait_for_status(conn, campaign_id, timeout=30)
    finally:
        await emulator.close()
    assert info["sent"] == 200
    assert await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id) == 200


async def test_a_lead_deleted_while_its_read_window_waits_for_the_rate_is_not_sent(
    conn: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its window was read at the start: at a low rate its batch left the shard hours later, and
    # a lead deleted (or erased) meanwhile was sent (the node forgot an erasure after a day)
    monkeypatch.setattr(shard, "STALE_WINDOW_S", 0.5)
    await add_leads(conn, 1, 600)  # 200 match; one shard, one window
    last = await conn.fetchval("SELECT max(id) FROM leads WHERE attributes->>'plan' = 'pro'")
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = _one_window(port)
        campaign_id = await campaigns.create(conn, new_campaign(rate_per_s=25.0), config)
        async with running_daemon(config, dsn):  # 25/s: a batch of 50 every 2 s
            await wait_for_logged(conn, campaign_id, 50)
            await conn.execute("DELETE FROM leads WHERE id = $1", last)
            info = await wait_for_status(conn, campaign_id, timeout=30)
    finally:
        await emulator.close()
    assert info["sent"] == 199
    assert not await conn.fetchval("SELECT count(*) FROM email_log WHERE lead_id = $1", last)


async def test_a_paused_campaign_takes_its_queued_batches_back_at_once(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # its batches waited in the lane behind another campaign's until the workers reached each:
    # the paused shard held its claim 25 s, sending nothing
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@example.com", {"n": n}) for n in range(4000)],
        columns=("account_id", "email", "attributes"),
    )
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = daemon_config(
            port,
            provider={"concurrency": 2, "rate_per_s": 100},
            scheduler={"shard_size": 3000, "window_size": 500, "poll_interval_s": 0.2, "queue_batches": 64},
        )
        async with running_daemon(config, dsn):
            first, second = ({"field": "attributes.n", "op": op, "value": 2000} for op in ("lt", "gte"))
            await campaigns.create(conn, new_campaign(name="a", segment=first), config)
            b = await campaigns.create(conn, new_campaign(name="b", segment=second), config)
            async with asyncio.timeout(30):  # a's 40 batches queued, and b's behind them
                while (
                    REGISTRY.get_sample_value("mailerd_queue_depth_batches", {"provider": "sink"}) or 0
                ) < 50:
                    await asyncio.sleep(0.02)
            await campaigns_db.change_status(conn, b, "pause", "test")
            paused = time.monotonic()
            async with asyncio.timeout(60):
                while await conn.fetchval(
                    "SELECT bool_or(owner IS NOT NULL) FROM campaign_shards WHERE campaign_id = $1", b
                ):
                    await asyncio.sleep(0.02)
            released = time.monotonic() - paused
    finally:
        await emulator.close()
    assert released < 10, released  # the calls under way end; nothing queued is waited for
