"""Every way onto the suppression list lower-cases as the database does.

The send-time check matches a suppression against ``lower(leads.email)``. Python's ``str.lower``
is not the database's ``lower()``: ``İ`` (U+0130) becomes ``i̇`` (two characters) in Python
and ``i`` in Postgres; under a ``C`` ctype Postgres leaves every non-ASCII letter as it is. An
address lower-cased in Python missed its lead: a bounce, an unsubscribe or an operator's entry
that suppressed nobody, and an erasure that left the address in the stored events.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from mailerd import campaigns, erasure, events, segments, suppressions
from mailerd.db import leads as leads_db
from mailerd.models import Event, EventKind
from mailerd.providers import sendgrid_webhook as sendgrid
from tests.integration.helpers import daemon_config, new_campaign

LEAD = "İVAN.MÜLLER@example.com"  # as the lead was imported
OTHER_SPELLING = "İvan.Müller@Example.COM"  # as a provider or an operator writes it
EVERYONE = segments.parse({"all": []})


async def _lead(conn: asyncpg.Connection, account_id: int = 1, email: str = LEAD) -> int:
    lead_id: int = await conn.fetchval(
        "INSERT INTO leads (account_id, email) VALUES ($1, $2) RETURNING id", account_id, email
    )
    return lead_id


async def _suppressed_at_send(pool: asyncpg.Pool, lead_id: int, account_id: int = 1) -> bool:
    """What the scheduler reads for the lead: the window query that sends."""
    rows = await leads_db.read_window(
        pool,
        account_id=account_id,
        campaign_id=1,
        segment=EVERYONE,
        start=lead_id - 1,
        end=lead_id,
        skip_logged=False,
    )
    assert [r["id"] for r in rows] == [lead_id]
    return bool(rows[0]["suppressed"])


def _bounce(email: str, **ids: Any) -> Event:
    return Event(
        provider="sendgrid",
        kind=EventKind.HARD_BOUNCE,
        occurred_at=dt.datetime.now(dt.UTC),
        email=email,
        receipt=f"evt-{len(email)}-{sorted(ids.items())}",
        provider_type="bounce",  # SendGrid's hard bounce
        **ids,
    )


async def _record(conn: asyncpg.Connection, event: Event, *, resolve: bool = True) -> list[Event]:
    resolved = await events.resolve(conn, [event], provider_kinds={}) if resolve else [event]
    async with conn.transaction():
        return (await events.record(conn, resolved, soft_bounce_limit=3, soft_bounce_window_s=86400)).events


async def test_the_database_and_python_lower_case_differently(conn: asyncpg.Connection) -> None:
    """The premise: without it these tests would prove nothing on this server."""
    assert await conn.fetchval("SELECT lower($1::text)", LEAD) != LEAD.lower()


async def test_a_bounce_matched_by_address_suppresses_the_lead(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    lead_id = await _lead(conn)
    recorded = await _record(conn, _bounce(OTHER_SPELLING))
    assert [(e.account_id, e.lead_id) for e in recorded] == [(1, lead_id)]
    assert await _suppressed_at_send(pool, lead_id)
    stored = await conn.fetchval("SELECT email FROM email_events")
    assert stored == await conn.fetchval("SELECT lower(email) FROM leads WHERE id = $1", lead_id)


async def test_a_providers_webhook_suppresses_the_lead(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    """Through a provider's parser: it left the address to the database (found in review: the
    parsers lower-cased in Python, so the fix above did not reach a real webhook)."""
    lead_id = await _lead(conn)
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    body = [
        {
            "email": OTHER_SPELLING,
            "timestamp": 1513299569,
            "event": "bounce",
            "type": "bounce",
            "sg_event_id": "sg-event-1",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "reason": "550 5.1.1 unknown recipient",
            "status": "5.1.1",
            "mailerd_campaign": str(campaign_id),
            "mailerd_lead": str(lead_id),
        }
    ]
    (event,) = sendgrid.parse_events(orjson.dumps(body))
    recorded = await _record(conn, event)
    assert [(e.lead_id, e.email) for e in recorded] == [
        (lead_id, await conn.fetchval("SELECT lower($1::text)", LEAD))
    ]
    assert await _suppressed_at_send(pool, lead_id)


async def test_a_bounce_with_metadata_suppresses_the_lead(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    lead_id = await _lead(conn)
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    await _record(conn, _bounce(OTHER_SPELLING, campaign_id=campaign_id, lead_id=lead_id))
    assert await _suppressed_at_send(pool, lead_id)


async def test_events_that_skip_resolve_suppress_the_lead_too(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """An SMTP rejection and a one-click unsubscribe carry the lead's address as it was written."""
    lead_id = await _lead(conn)
    await _record(conn, _bounce(LEAD, account_id=1, lead_id=lead_id), resolve=False)
    assert await _suppressed_at_send(pool, lead_id)


async def test_repeated_soft_bounces_in_several_spellings_count_together(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    lead_id = await _lead(conn)
    for number, spelling in enumerate((LEAD, OTHER_SPELLING, LEAD.upper())):
        soft = Event(
            provider="sendgrid",
            kind=EventKind.SOFT_BOUNCE,
            occurred_at=dt.datetime.now(dt.UTC),
            email=spelling,
            receipt=f"soft-{number}",
            provider_type="deferred",
            account_id=1,
            lead_id=lead_id,
        )
        assert not await _suppressed_at_send(pool, lead_id)
        await _record(conn, soft, resolve=False)
    assert await _suppressed_at_send(pool, lead_id)


async def test_an_operators_entry_suppresses_and_unsuppresses_the_lead(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    lead_id = await _lead(conn)
    row, created = await suppressions.add(conn, 1, OTHER_SPELLING, "asked by phone", "api")
    assert created and row.email == await conn.fetchval("SELECT lower($1::text)", LEAD)
    _, again = await suppressions.add(conn, 1, LEAD, "asked twice", "api")
    assert not again
    assert await _suppressed_at_send(pool, lead_id)
    page = await suppressions.page(conn, 1, after="")
    assert [r.email for r in page] == [row.email]
    assert await suppressions.remove(conn, 1, LEAD.upper(), "by mistake", "api") is not None
    assert not await _suppressed_at_send(pool, lead_id)
    audit = await conn.fetch("SELECT email, action FROM suppression_audit ORDER BY id")
    assert [tuple(r) for r in audit] == [(row.email, "added"), (row.email, "removed")]


async def test_an_imported_list_suppresses_the_lead(
    conn: asyncpg.Connection, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    lead_id = await _lead(conn)
    path = tmp_path / "list.txt"
    path.write_text(f"{OTHER_SPELLING}\n{LEAD}\n", encoding="utf-8")
    result = await suppressions.import_file(conn, 1, path, reason="legacy list")
    assert (result.imported, result.rejected) == (1, 0)
    assert await _suppressed_at_send(pool, lead_id)


async def test_an_erasure_removes_the_address_from_the_events(conn: asyncpg.Connection) -> None:
    lead_id = await _lead(conn)
    await _record(conn, _bounce(OTHER_SPELLING))
    await erasure.erase(conn, account_id=1, key=b"k" * 32, by="privacy-team", lead_id=lead_id)
    assert await conn.fetchval("SELECT count(*) FROM email_events WHERE email IS NOT NULL") == 0
