"""Daily quotas and warm-up schedules (issue 15 section 3), on the real Postgres and the sink:
the nodes together reserve no more than the limits, campaigns wait (running, with the reason and
the time they continue) instead of failing recipients, and go on once the window frees.

Time is moved the way the database sees it: the reservations' hour buckets are aged (a day
"passes"); the limits themselves always read the database's clock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import REGISTRY

from mailerd import campaigns, quota, quota_gate
from mailerd import config as config_mod
from mailerd.db import provider_quota
from mailerd.emulator import sink
from tests.integration.helpers import (
    add_leads,
    daemon_config,
    new_campaign,
    read_record,
    run_cli,
    running_daemon,
)

TOKEN = "quota-token"
LEADS = 3000  # every third is on plan "pro": 1000 recipients


async def _wait(conn: asyncpg.Connection, campaign_id: int, done: Any, timeout: float = 60) -> dict[str, Any]:
    """Poll the campaign until ``done(info)``."""
    async with asyncio.timeout(timeout):
        while True:
            info = await campaigns.show(conn, campaign_id)
            assert info is not None
            if done(info):
                return info
            await asyncio.sleep(0.05)


async def _waiting_for_quota(
    conn: asyncpg.Connection, campaign_id: int, emulator: sink.Sink, *, at_least: int, elsewhere: int = 0
) -> dict[str, Any]:
    """The campaign waits for the quota, ``at_least`` emails are logged (what the limit must have
    let through before a node can be short of a batch), everything the provider accepted is
    logged and no claim holds leads reserved past its checkpoint. The quota row says "reached"
    from the reservation that used it up, before that reservation's batches are sent, so the
    first condition alone would read the counters mid-flight."""
    while True:
        info = await _wait(
            conn,
            campaign_id,
            lambda i: (
                i["status"] == "finished"
                or (
                    i["quota_until"] is not None
                    and i["sent"] >= at_least
                    and i["sent"] == emulator.counters.accepted - elsewhere
                )
            ),
        )
        in_flight = await conn.fetchval(
            "SELECT count(*) FROM campaign_shards WHERE campaign_id = $1 AND reserved_upto > checkpoint",
            campaign_id,
        )
        if info["status"] == "finished" or in_flight == 0:
            return info
        await asyncio.sleep(0.05)


async def _sending_again(conn: asyncpg.Connection, campaign_id: int, sent: int) -> None:
    """The nodes asked again (every quota_recheck_s) and sent more."""
    await _wait(conn, campaign_id, lambda i: i["sent"] > sent or i["status"] == "finished")


async def _a_day_passes(conn: asyncpg.Connection, hours: int = 25) -> None:
    await conn.execute("UPDATE provider_quota_hours SET hour = hour - make_interval(hours => $1)", hours)


def _with_token(config: config_mod.Config) -> config_mod.Config:
    tokens = (config_mod.Secret(TOKEN),)
    return dataclasses.replace(config, http=dataclasses.replace(config.http, admin_tokens=tokens))


async def test_concurrent_reservations_never_pass_the_quota(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    schedule = quota.Schedule(daily_quota=1000)

    async def reserve() -> int:
        async with pool.acquire() as own:
            return (await provider_quota.reserve(own, "ses", schedule, 70)).decision.granted

    granted = await asyncio.gather(*(reserve() for _ in range(20)))
    assert sum(granted) == 1000 and sorted(granted)[:5] == [0, 0, 0, 0, 0]
    (state,) = (await provider_quota.states(conn, ["ses"])).values()
    assert state.reserved_24h == 1000 and state.daily_limit == 1000
    assert state.exhausted_until is not None and "daily quota of 1,000 reached" in (
        state.exhausted_reason or ""
    )
    # What a node gives back can be reserved again; a day later the whole quota is free.
    hour = await conn.fetchval("SELECT max(hour) FROM provider_quota_hours")
    await provider_quota.give_back(conn, "ses", hour, 30)
    assert (await provider_quota.reserve(conn, "ses", schedule, 70)).decision.granted == 30
    await _a_day_passes(conn)
    again = await provider_quota.reserve(conn, "ses", schedule, 70)
    assert again.decision.granted == 70 and again.decision.exhausted_until is None
    assert await provider_quota.prune(conn, keep_days=1) == 1


async def test_the_quota_stops_and_resumes_a_campaign_across_two_nodes(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, LEADS)
    record = tmp_path / "record.jsonl"
    # The account's own quota is the same: the provider must never have to refuse a call.
    emulator = sink.Sink(record=record, max_24_hour_send=300)
    port = await emulator.start()

    def node(name: str) -> config_mod.Config:
        return daemon_config(
            port,
            provider={"daily_quota": 300},
            scheduler={"max_shards_per_node": 2, "shard_size": 600},
            guards={"quota_recheck_s": 0.2},
            node={"name": name},
        )

    try:
        campaign_id = await campaigns.create(conn, new_campaign(), node("a"))
        async with running_daemon(node("a"), dsn), running_daemon(node("b"), dsn):
            rounds = []
            while True:
                # Each node is short of at most one batch (under 50) when the day's 300 are
                # used up. Every batch dispatched took its share first and is sent before the
                # shard waits: no claim holds a reservation past what is logged (the wait's
                # last condition), so a node killed now leaves nothing unknown.
                info = await _waiting_for_quota(
                    conn, campaign_id, emulator, at_least=(rounds[-1] if rounds else 0) + 200
                )
                if info["status"] == "finished":
                    break
                assert info["status"] == "running" and info["failed"] == 0
                assert "daily quota of 300 reached" in info["quota_reason"]
                assert info["quota_until"] > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
                rounds.append(info["sent"])
                await _a_day_passes(conn)
                emulator.max_24_hour_send += 300  # the account's day passed too
                await _sending_again(conn, campaign_id, info["sent"])
        await emulator.flush()
    finally:
        await emulator.close()
    # The first day's sends stay within the quota. The test moves the window, not the clock: what
    # a node reserved and did not send yet (under one batch, at a shard's end) stays its own until
    # the hour it was reserved in ends, so it may be sent on the "next day" of this test (a real
    # day later that hour has ended and it went back). Never more than the days' quotas together.
    days = [b - a for a, b in zip([0, *rounds], rounds, strict=False)]
    assert len(days) == 3 and 200 <= days[0] <= 300 and all(d >= 200 for d in days), days
    assert all(total <= 300 * n for n, total in enumerate(rounds, 1)), rounds
    assert emulator.quota_refused_calls == 0
    sent = collections.Counter(int(line["lead_id"]) for line in read_record(record))
    assert len(sent) == 1000 and max(sent.values()) == 1
    assert info["sent"] == 1000 and info["failed"] == 0 and info["unknown"] == 0


async def test_a_warmup_day_caps_the_volume_and_the_status_says_until_when(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await add_leads(conn, 1, LEADS)
    emulator = sink.Sink()
    port = await emulator.start()
    today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    config = _with_token(
        daemon_config(
            port,
            provider={
                "warmup": [[1, 100], [2, 150], [9, 5000]],
                "warmup_start": (today - dt.timedelta(days=1)).isoformat(),  # today is day 2
            },
            guards={"quota_recheck_s": 0.2},
            node={"shutdown_grace_s": 120},
        )
    )
    try:
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn) as daemon, aiohttp.ClientSession() as http:
            info = await _waiting_for_quota(conn, campaign_id, emulator, at_least=150)
            assert info["sent"] == 150 and info["status"] == "running"
            assert info["quota_reason"] == "warm-up day 2: 150 a day reached"
            midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
            assert info["quota_until"] == midnight
            headers = {"Authorization": f"Bearer {TOKEN}"}
            url = f"http://127.0.0.1:{daemon.port}/api/providers/sink"
            async with http.get(url, headers=headers) as response:
                shown = (await response.json())["quota"]
            assert shown["warmup_day"] == 2 and shown["warmup_limit"] == 150 and shown["daily_limit"] is None
            assert shown["reserved_today"] == 150 and shown["exhausted_reason"] == info["quota_reason"]
            api = ["--url", f"http://127.0.0.1:{daemon.port}", "--token", TOKEN]
            code, out, _ = await run_cli("providers", "show", "sink", *api)
            assert code == 0 and "warm-up day 2: 150/150 today" in out
            assert f"WAITING until {midnight.isoformat()}: warm-up day 2: 150 a day reached" in out
            code, out, _ = await run_cli("campaign", "show", str(campaign_id), *api)
            assert code == 0
            waits = "waits for provider sink: warm-up day 2: 150 a day reached; it sends again from"
            assert f"{waits} {midnight.isoformat()}" in out
            await _a_day_passes(conn, hours=24)  # yesterday's volume no longer counts today
            await _sending_again(conn, campaign_id, 150)
            info = await _waiting_for_quota(conn, campaign_id, emulator, at_least=250)
            assert info["sent"] <= 300  # whole batches (of 50, or less at a window end)
        # The drain (leaving the block: exit code 0 within 30 s, well inside shutdown_grace_s)
        # is not held up by the shards waiting for the quota.
    finally:
        await emulator.close()
    final = await campaigns.show(conn, campaign_id) or {}
    assert final["status"] == "running" and emulator.counters.accepted == final["sent"] <= 300
    reserved = await conn.fetchval(
        """SELECT sum(reserved) FROM provider_quota_hours
           WHERE hour >= date_trunc('hour', now()) - interval '1 hour'"""
    )
    assert reserved == final["sent"] - 150  # what this day sent: nothing reserved is left unsent


async def test_the_account_quota_and_what_it_sent_elsewhere_are_read_from_the_provider(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await add_leads(conn, 1, LEADS)
    emulator = sink.Sink(max_24_hour_send=150)
    emulator.counters.accepted = 40  # another sender used the account today (SentLast24Hours)
    port = await emulator.start()
    config = daemon_config(
        port, provider={"seed_rate_from_account": True, "daily_quota": 500}, guards={"quota_recheck_s": 0.2}
    )
    try:
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            # 150 less the 40 sent elsewhere leaves 110: two batches of 50 at least, then the
            # node is short of a batch and waits.
            info = await _waiting_for_quota(conn, campaign_id, emulator, at_least=60, elsewhere=40)
    finally:
        await emulator.close()
    assert info["status"] == "running" and "daily quota of 150 reached" in info["quota_reason"]
    # Counted after the drain: nothing more went out while the quota was used up.
    assert emulator.counters.accepted - 40 <= 110 and emulator.quota_refused_calls == 0


async def test_what_was_sent_elsewhere_counts_against_the_account_not_against_mailerds_share(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # daily_quota is mailerd's share of the account (docs/guards.md); the other senders' volume
    # (SentLast24Hours) is theirs. It counted against the share as well: with 400 of the 1000
    # sent elsewhere, a share of 150 let nothing through.
    await add_leads(conn, 1, LEADS)
    emulator = sink.Sink(max_24_hour_send=1000)
    emulator.counters.accepted = 400
    port = await emulator.start()
    config = daemon_config(
        port, provider={"seed_rate_from_account": True, "daily_quota": 150}, guards={"quota_recheck_s": 0.2}
    )
    try:
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            info = await _waiting_for_quota(conn, campaign_id, emulator, at_least=150, elsewhere=400)
    finally:
        await emulator.close()
    assert info["status"] == "running" and "daily quota of 150 reached" in info["quota_reason"]
    assert emulator.counters.accepted - 400 == 150
    elsewhere = await conn.fetchval("SELECT sum(elsewhere) FROM provider_quota_hours")
    assert elsewhere == 400


async def test_a_quota_the_provider_raised_applies_without_a_restart(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await add_leads(conn, 1, LEADS)
    emulator = sink.Sink(max_24_hour_send=150)
    port = await emulator.start()
    config = daemon_config(
        port,
        provider={"seed_rate_from_account": True, "account_refresh_s": 1, "daily_quota": 500},
        guards={"quota_recheck_s": 0.2},
    )
    try:
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            await _waiting_for_quota(conn, campaign_id, emulator, at_least=100)
            emulator.max_24_hour_send = 400  # the account's quota was raised
            info = await _wait(conn, campaign_id, lambda i: i["sent"] > 150)
            # The configured daily_quota (500) was never the limit: the account's 400 now is.
            info = await _waiting_for_quota(conn, campaign_id, emulator, at_least=350)
    finally:
        await emulator.close()
    assert info["status"] == "running" and "daily quota of 400 reached" in info["quota_reason"]
    assert emulator.counters.accepted <= 400 and emulator.quota_refused_calls == 0


async def test_a_drain_gives_back_what_the_node_reserved_and_did_not_send(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await add_leads(conn, 1, LEADS)
    emulator = sink.Sink()
    port = await emulator.start()
    # A rate far below the quota: each block (a step of 200) lasts about a second, so the node
    # holds an unused part of one when it stops.
    config = daemon_config(port, provider={"daily_quota": 100_000, "rate_per_s": 150})
    try:
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            await _wait(conn, campaign_id, lambda i: i["sent"] >= 250)
    finally:
        await emulator.close()
    reserved = await conn.fetchval("SELECT sum(reserved) FROM provider_quota_hours")
    assert 0 < emulator.counters.accepted < 1000
    assert reserved == emulator.counters.accepted  # the unsent rest of the block went back


async def test_a_batch_taken_without_limits_gives_nothing_back(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """The account's quota read as none after a reservation: the next batch takes nothing, and
    its refund (its shard stopped) must not swell what the node gives back at its drain."""
    gate = quota_gate.QuotaGate("sink", pool, quota.Schedule(), step=100)
    gate.set_account_quota(10_000)
    assert await gate.take(50) == 0.0  # reserves a block, keeps its rest
    held = gate.allowance
    gate.set_account_quota(None)  # the provider's account no longer has a quota
    assert await gate.take(50) == 0.0  # takes nothing
    gate.refund(50)
    assert gate.allowance == held
    await gate.close()
    reserved = await conn.fetchval("SELECT sum(reserved) FROM provider_quota_hours WHERE provider = 'sink'")
    assert reserved == 50  # the batch that went under the quota, nothing less


def _remaining(provider: str) -> float | None:
    return REGISTRY.get_sample_value("mailerd_provider_quota_remaining", {"provider": provider})


async def test_quota_remaining_is_exported_only_while_a_limit_is_known(pool: asyncpg.Pool) -> None:
    """``mailerd_provider_quota_remaining`` read 0 from the node's start until its first
    reservation (an idle node said the quota was used up), and forever for an account found to
    have no quota (``seed_rate_from_account``)."""
    gate = quota_gate.QuotaGate("quota-gauge", pool, quota.Schedule(), step=100)
    assert _remaining("quota-gauge") is None  # nothing reserved yet: nothing known
    assert await gate.take(50) == 0.0  # no limit: nothing reserved
    assert _remaining("quota-gauge") is None
    gate.set_account_quota(10_000)
    assert await gate.take(50) == 0.0
    assert _remaining("quota-gauge") == 10_000 - 100  # one block reserved
    gate.set_account_quota(None)  # the account no longer has a quota
    assert _remaining("quota-gauge") is None
