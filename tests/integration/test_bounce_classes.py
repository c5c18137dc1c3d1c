"""Bounce classes where they act: only an invalid recipient is suppressed at once; a block by
the receiver (reputation or authentication) suppresses nobody and counts as ``blocked``; the class
is stored with the event. The block test runs end to end, for each HTTP provider: a daemon sends
through the provider's emulator, which posts bounce webhooks in that provider's real format
(``block_rate`` beside ``bounce_rate``). SMTP rejections: test_smtp_rejections.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mailerd import campaigns, events
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks
from mailerd.emulator.base import Emulator
from mailerd.models import Event, EventKind
from tests.integration.helpers import add_leads, daemon_config, new_campaign, running_daemon, wait_for_status

API_KEY = "test-key-0123456789"
# The class each provider's emulated block must get (the texts are in mailerd/emulator/*_webhooks.py).
BLOCK_CLASS = {
    "ses": "auth_failure",  # Gmail 5.7.26 inside a Permanent/General bounce
    "sendgrid": "reputation_block",  # Outlook's block list (S3140), type blocked
    "mailgun": "reputation_block",  # Spamhaus, permanent failure with reason bounce
    "postmark": "reputation_block",  # Yahoo's Spamhaus listing, Type Blocked
}


def _provider(kind: str, emulator: Emulator) -> dict[str, Any]:
    if kind == "ses":
        return {"kind": "sink", "endpoint": emulator.url}  # the SES API without AWS signing
    values: dict[str, Any] = {"kind": kind, "endpoint": emulator.url}
    if kind == "mailgun":
        values["domain"] = "mg.example.com"
    return values


@pytest.mark.parametrize("kind", sorted(BLOCK_CLASS))
async def test_an_emulated_block_does_not_suppress(
    kind: str, conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 300)  # 100 match
    poster = emulator_webhooks.WebhookPoster(
        "http://127.0.0.1:1", kind, bounce_rate=0.1, complaint_rate=0.0, block_rate=0.2, seed=15
    )
    emulator = sink.EMULATORS[kind](seed=15, webhooks=poster, api_key=API_KEY)
    port = await emulator.start()
    config = daemon_config(
        port,
        env={"MAILERD_PROVIDERS__SINK__API_KEY": API_KEY},
        provider=_provider(kind, emulator),
        webhooks={kind: poster.signer.daemon_settings(tmp_path)},
    )
    try:
        async with running_daemon(config, dsn) as daemon:
            poster.url = f"http://127.0.0.1:{daemon.port}/webhooks/{kind}"
            campaign_id = await campaigns.create(conn, new_campaign(), config)
            await wait_for_status(conn, campaign_id)
            counters = poster.counters
            async with asyncio.timeout(30):  # every webhook answered while the daemon runs
                while counters.posted + counters.failed < counters.bounces + counters.blocks:
                    await asyncio.sleep(0.02)
    finally:
        await emulator.close()
    assert counters.failed == 0 and counters.blocks > 0 and counters.bounces > 0, counters
    stored = await conn.fetch(
        "SELECT email, bounce_class FROM email_events WHERE campaign_id = $1 ORDER BY email", campaign_id
    )
    by_class: dict[str, set[str]] = {}
    for row in stored:
        by_class.setdefault(row["bounce_class"], set()).add(row["email"])
    assert {c: len(a) for c, a in by_class.items()} == {
        BLOCK_CLASS[kind]: counters.blocks,
        "invalid_recipient": counters.bounces,
    }
    suppressed = {r["email"] for r in await conn.fetch("SELECT email FROM suppressions")}
    assert suppressed == by_class["invalid_recipient"]  # the blocked addresses are not suppressed
    stats = await conn.fetchrow(
        "SELECT bounced, hard_bounced, blocked FROM campaign_stats WHERE campaign_id = $1", campaign_id
    )
    assert tuple(stats) == (counters.bounces + counters.blocks, counters.bounces, counters.blocks)


async def _lead(conn: asyncpg.Connection, email: str) -> int:
    lead_id: int = await conn.fetchval(
        "INSERT INTO leads (account_id, email) VALUES (1, $1) RETURNING id", email
    )
    return lead_id


def _bounce(campaign_id: int, lead_id: int, email: str, status: str, reason: str) -> Event:
    return Event(
        provider="ses",
        kind=EventKind.HARD_BOUNCE,
        occurred_at=dt.datetime.now(dt.UTC),
        email=email,
        receipt=f"sns-{lead_id}:{email}",
        campaign_id=campaign_id,
        lead_id=lead_id,
        account_id=1,
        provider_type="Permanent/General",
        reason=reason,
        smtp_status=status,
    )


async def test_an_unexplained_hard_bounce_waits_for_the_repeat_limit(conn: asyncpg.Connection) -> None:
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    lead_id = await _lead(conn, "maybe@example.com")
    for attempt in range(2):
        event = _bounce(campaign_id, lead_id, "maybe@example.com", "", "smtp; 550 Requested action not taken")
        event = Event(**{**{f: getattr(event, f) for f in event.__slots__}, "receipt": f"r{attempt}"})
        async with conn.transaction():
            await events.record(conn, [event], soft_bounce_limit=2, soft_bounce_window_s=86400)
        count = await conn.fetchval("SELECT count(*) FROM suppressions WHERE email = 'maybe@example.com'")
        assert count == attempt  # the first does not suppress, the second reaches the limit
    reason = await conn.fetchval("SELECT reason FROM suppressions WHERE email = 'maybe@example.com'")
    assert reason == "soft_bounce_limit"
