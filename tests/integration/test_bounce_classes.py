"""Bounce classes where they act: only an invalid recipient is suppressed at once; a block by
the receiver suppresses nobody and counts as ``blocked``; the class is stored with the event."""

from __future__ import annotations

import datetime as dt

import asyncpg

from mailerd import campaigns, events
from mailerd.models import Event, EventKind
from tests.integration.helpers import daemon_config, new_campaign

GMAIL_UNAUTHENTICATED = (
    "smtp; 550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and "
    "Gmail users, and has been blocked. The sender must authenticate with at least one of SPF or DKIM."
)


async def _lead(conn: asyncpg.Connection, email: str) -> int:
    lead_id: int = await conn.fetchval(
        "INSERT INTO leads (account_id, email) VALUES (1, $1) RETURNING id", email
    )
    return lead_id


def _bounce(campaign_id: int, lead_id: int, email: str, status: str, reason: str) -> Event:
    return Event(
        provider="ses",
        kind=EventKind.HARD_BOUNCE,  # SES reports both as Permanent/General
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


async def test_a_reputation_block_does_not_suppress_and_counts_as_blocked(conn: asyncpg.Connection) -> None:
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    blocked = await _lead(conn, "good@example.com")
    invalid = await _lead(conn, "gone@example.com")
    batch = [
        _bounce(campaign_id, blocked, "good@example.com", "5.7.26", GMAIL_UNAUTHENTICATED),
        _bounce(campaign_id, invalid, "gone@example.com", "5.1.1", "smtp; 550 5.1.1 user unknown"),
    ]
    async with conn.transaction():
        await events.record(conn, batch, soft_bounce_limit=1, soft_bounce_window_s=86400)
    suppressed = await conn.fetch("SELECT email FROM suppressions WHERE account_id = 1")
    assert [r["email"] for r in suppressed] == ["gone@example.com"]
    stored = await conn.fetch("SELECT email, bounce_class FROM email_events ORDER BY email")
    assert [tuple(r) for r in stored] == [
        ("gone@example.com", "invalid_recipient"),
        ("good@example.com", "auth_failure"),
    ]
    stats = await conn.fetchrow(
        "SELECT bounced, hard_bounced, blocked FROM campaign_stats WHERE campaign_id = $1", campaign_id
    )
    assert tuple(stats) == (2, 1, 1)


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
