"""Per-domain pace through the daemon and a provider emulator (the SES API and SMTP): a group's
recipients arrive no faster than its rate, measured in virtual time (the buckets' clock and the
senders' rate-limit sleep are injected), while the other domains are not paced."""

from __future__ import annotations

import collections

import asyncpg
import pytest

from mailerd import app, campaigns
from tests.integration.helpers import (
    VirtualTime,
    daemon_config,
    new_campaign,
    recording_emulator,
    running_daemon,
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
