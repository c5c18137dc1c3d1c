"""Outbox rows for the relay tests, written the way the writer writes them (COPY, one
transaction per call)."""

from __future__ import annotations

import datetime as dt

import asyncpg

from mailerd.relay import records

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


async def make_campaign(conn: asyncpg.Connection, leads: int = 200) -> tuple[int, list[int]]:
    """A campaign of account 1 and ``leads`` leads (ids returned)."""
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"User{n}@Example.com", {}) for n in range(leads)],
        columns=("account_id", "email", "attributes"),
    )
    campaign_id = await conn.fetchval(
        """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject, provider)
           VALUES (1, 'relay', 'running', '{}'::jsonb, 'news@example.com', 's', 'sink') RETURNING id"""
    )
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM leads ORDER BY id")]
    return campaign_id, ids


async def log_rows(conn: asyncpg.Connection, campaign_id: int, lead_ids: list[int]) -> None:
    """One writer flush: COPY rows into email_log (one transaction)."""
    await conn.copy_records_to_table(
        "email_log",
        records=[(NOW, campaign_id, lead, 1, f"msg-{lead}", None) for lead in lead_ids],
        columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
    )


def email_record(lead: int, address: str | None = None) -> records.Record:
    """A sent email's record of campaign 1 (account 1), as the relay publishes it."""
    return records.email(
        tx=0,
        campaign_id=1,
        lead_id=lead,
        status=1,
        provider_message_id="m",
        error=None,
        sent_at=NOW,
        account_id=1,
        provider="sink",
        address=address or f"user{lead}@example.com",
    )
