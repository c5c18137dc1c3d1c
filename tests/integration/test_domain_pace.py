"""Per-domain pace through the daemon and a provider emulator (the SES API and SMTP): a group's
recipients arrive no faster than its rate, measured in virtual time (the buckets' clock and the
rate-limit sleep are injected), while the other domains are not paced; a group's wait holds back
its own recipients only (the shard waits, not the lane's sender workers), and a pause or a drain
during it loses no lead and sends none after."""

from __future__ import annotations

import asyncio
import collections
import time

import asyncpg
import pytest

from mailerd import app, campaigns
from mailerd import config as config_mod
from mailerd.db import campaigns as campaigns_db
from tests.integration.helpers import (
    VirtualTime,
    daemon_config,
    new_campaign,
    recording_emulator,
    running_daemon,
    wait_for_logged,
    wait_for_status,
)

RATE, BURST = 10.0, 10
GROUP = ("gmail.com", "googlemail.com")


async def _leads(conn: asyncpg.Connection) -> None:
    domains = ["gmail.com", "example.com", "googlemail.com", "example.org"]
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@{domains[n % 4]}", {"n": n}) for n in range(240)],
        columns=("account_id", "email", "attributes"),
    )


@pytest.mark.parametrize("kind", ["ses", "smtp"])
async def test_a_domain_group_is_held_to_its_rate(conn: asyncpg.Connection, dsn: str, kind: str) -> None:
    await _leads(conn)
    time = VirtualTime()
    arrivals: list[tuple[float, str]] = []
    emulator = recording_emulator(kind, time, arrivals, seed=1)
    port = await emulator.start()
    try:
        if kind == "smtp":
            provider = {"kind": "smtp", "endpoint": f"127.0.0.1:{port}", "tls": "none", "batch_size": 10}
        else:
            provider = {"batch_size": 10}
        config = daemon_config(
            port,
            provider=provider,
            pace={"google": {"domains": list(GROUP), "rate_per_s": RATE, "burst": BURST}},
        )
        campaign_id = await campaigns.create(conn, new_campaign(segment={"all": []}), config)
        timing = app.SenderTiming(clock=time.clock, sleep=time.sleep)
        async with running_daemon(config, dsn, sender_timing=timing):
            info = await wait_for_status(conn, campaign_id, timeout=60)
    finally:
        await emulator.close()
    assert info["sent"] == 240

    paced = sorted(at for at, email in arrivals if email.rpartition("@")[2] in GROUP)
    assert len(paced) == 120
    # Never ahead of the bucket: by virtual time t, at most burst + rate * t of the group's
    # recipients (a batch's tokens are taken before its call).
    for count, at in enumerate(paced, start=1):
        assert count <= BURST + RATE * at + 1e-6, (count, at)
    # ... and held to the rate, not slower: the last one went when the bucket allowed it.
    assert paced[-1] == pytest.approx((len(paced) - BURST) / RATE, abs=1e-6)
    per_domain = collections.Counter(email.rpartition("@")[2] for _, email in arrivals)
    assert per_domain == {"gmail.com": 60, "googlemail.com": 60, "example.com": 60, "example.org": 60}


async def test_without_a_group_nothing_waits(conn: asyncpg.Connection, dsn: str) -> None:
    """The baseline of the same campaign: no [pace], no virtual time spent."""
    await _leads(conn)
    time = VirtualTime()
    arrivals: list[tuple[float, str]] = []
    emulator = recording_emulator("ses", time, arrivals, seed=1)
    port = await emulator.start()
    try:
        config = daemon_config(port, provider={"batch_size": 10})
        campaign_id = await campaigns.create(conn, new_campaign(segment={"all": []}), config)
        async with running_daemon(
            config, dsn, sender_timing=app.SenderTiming(clock=time.clock, sleep=time.sleep)
        ):
            info = await wait_for_status(conn, campaign_id, timeout=60)
    finally:
        await emulator.close()
    assert info["sent"] == 240 and len(arrivals) == 240
    assert time.now == 0.0


def _slow_gmail(port: int, rate: float = 1.0) -> config_mod.Config:
    """Four workers, batches of 50, Gmail paced at ``rate`` (burst 1): a first batch of 50
    Gmail recipients waits 49 s for its tokens, the next 99 s..."""
    return daemon_config(
        port,
        provider={"concurrency": 4, "batch_size": 50},
        pace={"google": {"domains": ["gmail.com"], "rate_per_s": rate, "burst": 1}},
    )


async def _claims_released(conn: asyncpg.Connection, campaign_id: int, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while await conn.fetchval(
            "SELECT bool_or(owner IS NOT NULL) FROM campaign_shards WHERE campaign_id = $1", campaign_id
        ):
            await asyncio.sleep(0.05)


async def _claimed(conn: asyncpg.Connection, campaign_id: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while await conn.fetchval(
            "SELECT count(*) = 0 OR bool_and(owner IS NULL) FROM campaign_shards WHERE campaign_id = $1",
            campaign_id,
        ):
            await asyncio.sleep(0.05)


async def _one_row_each(conn: asyncpg.Connection, campaign_id: int) -> int:
    rows, leads = await conn.fetchrow(
        "SELECT count(*), count(DISTINCT lead_id) FROM email_log WHERE campaign_id = $1", campaign_id
    )
    assert rows == leads, (rows, leads)
    return int(rows)


async def test_a_slow_group_holds_back_its_own_campaign_not_another_on_the_lane(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """Every worker of the lane slept on a batch of the Gmail campaign (49 s, 99 s, ...), and a
    campaign of other domains on the same provider sent nothing meanwhile. The shard waits for
    its group's tokens before the batch joins the lane; a pause, then a drain, end that wait at
    once, nothing of it sent, and its leads go later, once each."""
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@{'gmail.com' if n < 1000 else 'example.com'}", {"n": n}) for n in range(2000)],
        columns=("account_id", "email", "attributes"),
    )
    gmail = {"field": "attributes.n", "op": "lt", "value": 1000}
    arrivals: list[tuple[float, str]] = []
    emulator = recording_emulator("ses", VirtualTime(), arrivals)
    port = await emulator.start()
    try:
        config = _slow_gmail(port)
        async with running_daemon(config, dsn):
            slow = await campaigns.create(conn, new_campaign(name="slow", segment=gmail), config)
            await _claimed(conn, slow)
            fast = await campaigns.create(conn, new_campaign(name="fast", segment={"not": gmail}), config)
            done = await wait_for_status(conn, fast, timeout=20)
            assert done["sent"] == 1000
            waiting = await campaigns.show(conn, slow)
            assert waiting is not None and waiting["status"] == "running" and waiting["sent"] == 0

            await campaigns_db.change_status(conn, slow, "pause", "checking the copy")
            await _claims_released(conn, slow)
            await campaigns_db.change_status(conn, slow, "resume")
            await _claimed(conn, slow)
            draining = time.monotonic()
        assert time.monotonic() - draining < 5
        shards = await conn.fetch("SELECT * FROM campaign_shards WHERE campaign_id = $1", slow)
        assert all(s["released_clean"] and s["owner"] is None for s in shards), shards
        assert await _one_row_each(conn, slow) == 0
        assert not [email for _, email in arrivals if email.endswith("@gmail.com")]

        async with running_daemon(_slow_gmail(port, rate=10_000), dsn):
            finished = await wait_for_status(conn, slow, timeout=30)
    finally:
        await emulator.close()
    assert finished["sent"] == 1000 and await _one_row_each(conn, slow) == 1000
    per_address = collections.Counter(email for _, email in arrivals)
    assert len(per_address) == 2000 and set(per_address.values()) == {1}


@pytest.mark.parametrize("action", ["pause", "cancel"])
async def test_a_campaigns_unpaced_recipients_go_before_its_paced_ones(
    conn: asyncpg.Connection, dsn: str, action: str
) -> None:
    """One lead in ten at Gmail (1/s): each mixed batch of 50 waited for its 5 Gmail tokens, and
    the campaign's other recipients with it. They go first now, in batches of their own; a
    pause or a cancel while the Gmail batch waits sends none of it, and after a pause the next
    run sends each once (the checkpoint stayed below the Gmail leads held back)."""
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@{'gmail.com' if n % 10 == 3 else 'x.org'}", {"n": n}) for n in range(300)],
        columns=("account_id", "email", "attributes"),
    )
    arrivals: list[tuple[float, str]] = []
    emulator = recording_emulator("ses", VirtualTime(), arrivals)
    port = await emulator.start()
    try:
        config = _slow_gmail(port)
        async with running_daemon(config, dsn):
            mixed = await campaigns.create(conn, new_campaign(segment={"all": []}), config)
            await wait_for_logged(conn, mixed, 270, timeout=15)  # the 30 Gmail ones wait 29 s
            await campaigns_db.change_status(conn, mixed, action, "test")
            await _claims_released(conn, mixed)  # the shard is over: it sends nothing more
            assert await _one_row_each(conn, mixed) == 270
            assert not [email for _, email in arrivals if email.endswith("@gmail.com")]
        if action == "cancel":
            info = await campaigns.show(conn, mixed)
            assert info is not None and info["status"] == "cancelled" and info["sent"] == 270
            return
        checkpoint = await conn.fetchval(
            "SELECT checkpoint FROM campaign_shards WHERE campaign_id = $1", mixed
        )
        assert checkpoint < await conn.fetchval("SELECT min(id) FROM leads WHERE email LIKE '%@gmail.com'")

        async with running_daemon(_slow_gmail(port, rate=10_000), dsn):
            await campaigns_db.change_status(conn, mixed, "resume")
            finished = await wait_for_status(conn, mixed, timeout=30)
    finally:
        await emulator.close()
    assert finished["sent"] == 300 and await _one_row_each(conn, mixed) == 300
    per_address = collections.Counter(email for _, email in arrivals)
    assert len(per_address) == 300 and set(per_address.values()) == {1}
