"""Issue 9, "Accounts stay apart": a provider event suppresses only where it may.

A hard bounce says the mailbox does not exist: every account that has the address suppresses it.
A complaint or an unsubscribe is consent withdrawn from one sender: by address alone it is
attributed only when one account has the address, and metadata naming a lead of another
account than the campaign's is not trusted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg
import pytest

from mailerd import campaigns, events
from mailerd.models import Event, EventKind
from tests.integration.helpers import daemon_config, new_campaign

ADDRESS = "shared@example.com"


async def _lead(conn: asyncpg.Connection, account_id: int, email: str) -> int:
    lead_id: int = await conn.fetchval(
        "INSERT INTO leads (account_id, email) VALUES ($1, $2) RETURNING id", account_id, email
    )
    return lead_id


def _event(kind: EventKind, *, campaign_id: int | None = None, lead_id: int | None = None) -> Event:
    return Event(
        provider="sendgrid",
        kind=kind,
        occurred_at=dt.datetime.now(dt.UTC),
        email=ADDRESS,
        receipt=f"evt-{kind}",
        provider_type="bounce" if kind is EventKind.HARD_BOUNCE else None,  # SendGrid's hard bounce
        campaign_id=campaign_id,
        lead_id=lead_id,
    )


async def _record(conn: asyncpg.Connection, event: Event) -> list[Event]:
    resolved = await events.resolve(conn, [event], provider_kinds={})
    async with conn.transaction():
        await events.record(conn, resolved, soft_bounce_limit=3, soft_bounce_window_s=86400)
    return resolved


async def _suppressed_in(conn: asyncpg.Connection) -> set[int]:
    rows = await conn.fetch("SELECT account_id FROM suppressions WHERE email = $1", ADDRESS)
    return {r["account_id"] for r in rows}


@pytest.mark.parametrize("kind", [EventKind.COMPLAINT, EventKind.UNSUBSCRIBE])
async def test_consent_by_address_alone_crosses_no_account(conn: asyncpg.Connection, kind: EventKind) -> None:
    await _lead(conn, 1, ADDRESS)
    await _lead(conn, 2, ADDRESS)
    resolved = await _record(conn, _event(kind))
    assert [e.account_id for e in resolved] == [None]
    assert await _suppressed_in(conn) == set()
    stored = await conn.fetch("SELECT account_id, kind FROM email_events")
    assert [(r["account_id"], r["kind"]) for r in stored] == [(None, str(kind))]


async def test_consent_by_address_in_the_only_account_that_has_it(conn: asyncpg.Connection) -> None:
    await _lead(conn, 1, ADDRESS)
    await _lead(conn, 2, "other@example.com")
    await _record(conn, _event(EventKind.COMPLAINT))
    assert await _suppressed_in(conn) == {1}


async def test_a_hard_bounce_by_address_suppresses_in_every_account(conn: asyncpg.Connection) -> None:
    await _lead(conn, 1, ADDRESS)
    await _lead(conn, 2, ADDRESS)
    resolved = await _record(conn, _event(EventKind.HARD_BOUNCE))
    assert sorted(e.account_id or 0 for e in resolved) == [1, 2]
    assert await _suppressed_in(conn) == {1, 2}


@pytest.mark.parametrize("order", ["an account gains the address", "an account loses it"])
async def test_an_event_delivered_again_after_the_accounts_changed_is_recorded_once_per_account(
    conn: asyncpg.Connection, order: str
) -> None:
    # The receipt named the account only when several had the address: delivered again after a
    # second account imported it, the event was recorded twice in the first (two soft bounces
    # toward its limit from one).
    event = dataclasses.replace(_event(EventKind.SOFT_BOUNCE), provider_type="blocked")
    await _lead(conn, 1, ADDRESS)
    if order == "an account loses it":
        second = await _lead(conn, 2, ADDRESS)
        await _record(conn, event)
        await conn.execute("DELETE FROM leads WHERE id = $1", second)
    else:
        await _record(conn, event)
        await _lead(conn, 2, ADDRESS)
    await _record(conn, event)
    stored = await conn.fetch("SELECT account_id FROM email_events ORDER BY account_id")
    assert [r["account_id"] for r in stored] == [1, 2]  # once each
    per_account = await conn.fetch("SELECT account_id, count(*) AS n FROM email_events GROUP BY 1")
    assert all(r["n"] == 1 for r in per_account), per_account


async def test_metadata_naming_a_lead_of_another_account_is_not_trusted(conn: asyncpg.Connection) -> None:
    await _lead(conn, 1, ADDRESS)
    foreign = await _lead(conn, 2, ADDRESS)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    resolved = await _record(conn, _event(EventKind.UNSUBSCRIBE, campaign_id=campaign_id, lead_id=foreign))
    assert [(e.campaign_id, e.lead_id, e.account_id) for e in resolved] == [(None, None, None)]
    assert await _suppressed_in(conn) == set()
    stats = await conn.fetchrow("SELECT unsubscribed FROM campaign_stats WHERE campaign_id = $1", campaign_id)
    assert stats["unsubscribed"] == 0


async def test_metadata_of_the_campaigns_own_lead_is_used(conn: asyncpg.Connection) -> None:
    own = await _lead(conn, 1, ADDRESS)
    await _lead(conn, 2, ADDRESS)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    resolved = await _record(conn, _event(EventKind.COMPLAINT, campaign_id=campaign_id, lead_id=own))
    assert [(e.campaign_id, e.lead_id, e.account_id) for e in resolved] == [(campaign_id, own, 1)]
    assert await _suppressed_in(conn) == {1}


async def test_metadata_of_a_lead_deleted_since_keeps_the_campaigns_account(conn: asyncpg.Connection) -> None:
    """docs/webhooks.md, "From event to lead": the campaign exists, so the account is the
    campaign's and the lead id is taken as given. A deleted lead dropped the metadata: the
    complaint suppressed nothing (or, by address, nothing either: account 2 also has it)."""
    gone = await _lead(conn, 1, ADDRESS)
    await _lead(conn, 2, ADDRESS)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await conn.execute("DELETE FROM leads WHERE id = $1", gone)
    resolved = await _record(conn, _event(EventKind.COMPLAINT, campaign_id=campaign_id, lead_id=gone))
    assert [(e.campaign_id, e.lead_id, e.account_id) for e in resolved] == [(campaign_id, gone, 1)]
    assert await _suppressed_in(conn) == {1}
    stats = await conn.fetchrow("SELECT complained FROM campaign_stats WHERE campaign_id = $1", campaign_id)
    assert stats["complained"] == 1


async def test_an_event_without_an_address_takes_its_leads_once_matched(conn: asyncpg.Connection) -> None:
    """Postmark's unsubscribe record names only the message id: matched through the log, it
    suppresses the lead's address."""
    own = await _lead(conn, 1, ADDRESS)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await conn.execute(
        """INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id)
           VALUES (now(), $1, $2, 1, 'pm-123')""",
        campaign_id,
        own,
    )
    event = dataclasses.replace(_event(EventKind.UNSUBSCRIBE), email=None, provider_message_id="pm-123")
    resolved = await _record(conn, event)
    assert [(e.lead_id, e.email) for e in resolved] == [(own, ADDRESS)]
    assert await _suppressed_in(conn) == {1}


async def test_a_message_id_of_a_batch_names_the_lead_with_the_events_address(
    conn: asyncpg.Connection,
) -> None:
    """SendGrid and Mailgun answer one message id for a whole batch: an event matched by it
    alone names the lead whose address it carries, never another lead of the batch."""
    leads = [await _lead(conn, 1, f"lead{n}@example.com") for n in range(3)]
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    for lead_id in leads:
        await conn.execute(
            """INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id)
               VALUES (now(), $1, $2, 1, 'sg-batch-1')""",
            campaign_id,
            lead_id,
        )
    bounce = dataclasses.replace(
        _event(EventKind.HARD_BOUNCE), email="Lead1@Example.com", provider_message_id="sg-batch-1"
    )
    resolved = await _record(conn, bounce)
    assert [(e.campaign_id, e.lead_id) for e in resolved] == [(campaign_id, leads[1])]
    rows = await conn.fetch("SELECT account_id, email FROM suppressions")
    assert [tuple(r) for r in rows] == [(1, "lead1@example.com")]
    # Without an address the batch's id names no one lead (its campaign all the same): nothing
    # is suppressed.
    unsubscribe = dataclasses.replace(
        _event(EventKind.UNSUBSCRIBE), email=None, provider_message_id="sg-batch-1", receipt="evt-unsub-batch"
    )
    resolved = await _record(conn, unsubscribe)
    assert [(e.campaign_id, e.account_id, e.lead_id) for e in resolved] == [(campaign_id, 1, None)]
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_an_event_of_a_batch_whose_lead_is_gone_counts_in_the_batchs_campaign(
    conn: asyncpg.Connection,
) -> None:
    """The lead the event names was deleted after its batch went: the batch's id still names the
    campaign and its account (it was stored with neither, its bounce counted in no campaign, and
    the address step suppressed it in an account that the batch never emailed)."""
    leads = [await _lead(conn, 1, f"lead{n}@example.com") for n in range(3)]
    elsewhere = await _lead(conn, 2, "lead1@example.com")
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    for lead_id in leads:
        await _log_sent(conn, campaign_id, lead_id, "sg-batch-2")
    await conn.execute("DELETE FROM leads WHERE id = $1", leads[1])
    bounce = dataclasses.replace(
        _event(EventKind.HARD_BOUNCE), email="lead1@example.com", provider_message_id="sg-batch-2"
    )
    resolved = await _record(conn, bounce)
    assert [(e.campaign_id, e.account_id, e.lead_id) for e in resolved] == [(campaign_id, 1, None)]
    stored = await conn.fetch("SELECT campaign_id, account_id, lead_id FROM email_events")
    assert [tuple(r) for r in stored] == [(campaign_id, 1, None)]
    stats = await conn.fetchrow("SELECT bounced FROM campaign_stats WHERE campaign_id = $1", campaign_id)
    assert stats["bounced"] == 1
    rows = await conn.fetch("SELECT account_id, email FROM suppressions")
    assert [tuple(r) for r in rows] == [(1, "lead1@example.com")]  # not account 2's lead
    assert elsewhere not in {e.lead_id for e in resolved}


async def _log_sent(conn: asyncpg.Connection, campaign_id: int, lead_id: int, message_id: str) -> None:
    await conn.execute(
        """INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id)
           VALUES (now(), $1, $2, 1, $3)""",
        campaign_id,
        lead_id,
        message_id,
    )


async def _campaign_of(conn: asyncpg.Connection, account_id: int, provider: str) -> int:
    campaign_id = await campaigns.create(
        conn, new_campaign(account_id=account_id, start=False), daemon_config(1)
    )
    await conn.execute("UPDATE campaigns SET provider = $2 WHERE id = $1", campaign_id, provider)
    return campaign_id


async def test_a_message_id_names_only_emails_of_the_events_provider(conn: asyncpg.Connection) -> None:
    """Two providers can hand out the same message id: a Postmark event is never given the email
    a SendGrid campaign logged under that id."""
    kinds = {"sg": "sendgrid", "pm": "postmark", "loopback": "sink"}
    sendgrid_lead = await _lead(conn, 1, "a@example.com")
    postmark_lead = await _lead(conn, 2, "b@example.com")
    sendgrid_campaign = await _campaign_of(conn, 1, "sg")
    postmark_campaign = await _campaign_of(conn, 2, "pm")
    await _log_sent(conn, sendgrid_campaign, sendgrid_lead, "shared-id")
    bounce = dataclasses.replace(
        _event(EventKind.HARD_BOUNCE),
        provider="postmark",
        provider_type="HardBounce",
        email="b@example.com",
        provider_message_id="shared-id",
    )
    [resolved] = await events.resolve(conn, [bounce], provider_kinds=kinds)
    # Not SendGrid's email (its lead in account 1 did not bounce): the address step's lead.
    assert (resolved.campaign_id, resolved.lead_id, resolved.account_id) == (None, postmark_lead, 2)
    # With Postmark's own email under the id too, the id names it, and only it.
    await _log_sent(conn, postmark_campaign, postmark_lead, "shared-id")
    unsubscribe = dataclasses.replace(
        _event(EventKind.UNSUBSCRIBE), provider="postmark", email=None, provider_message_id="shared-id"
    )
    [resolved] = await events.resolve(conn, [unsubscribe], provider_kinds=kinds)
    assert (resolved.campaign_id, resolved.lead_id, resolved.email) == (
        postmark_campaign,
        postmark_lead,
        "b@example.com",
    )
    # The sink posts events in any provider's format: its emails stay candidates.
    await conn.execute("UPDATE campaigns SET provider = 'loopback' WHERE id = $1", sendgrid_campaign)
    [resolved] = await events.resolve(conn, [unsubscribe], provider_kinds=kinds)
    assert resolved.account_id is None  # two candidates, no address: no one of them
