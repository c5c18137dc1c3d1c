"""``email_events`` and ``webhook_receipts``: provider events, appended once each.

``webhook_receipts`` is the de-duplication memory (a unique key cannot live on the partitioned
``email_events``: it would have to include the partition key). Also the look-ups that map an
event to its campaign, lead and account.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence

import asyncpg

from mailerd.db import provider_usage
from mailerd.models import Event

COLUMNS = (
    "received_at",
    "occurred_at",
    "account_id",
    "campaign_id",
    "lead_id",
    "email",
    "kind",
    "provider",
    "provider_event_id",
    "provider_message_id",
    "provider_type",
    "reason",
    "smtp_status",
    "bounce_class",
)


async def claim_receipts(conn: asyncpg.Connection, keys: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
    """Insert the ``(provider, receipt)`` keys; return those that were new."""
    rows = await conn.fetch(
        """INSERT INTO webhook_receipts (provider, receipt)
           SELECT * FROM unnest($1::text[], $2::text[])
           ON CONFLICT DO NOTHING RETURNING provider, receipt""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["provider"], r["receipt"]) for r in rows}


async def append(conn: asyncpg.Connection, events: Sequence[Event], received_at: dt.datetime) -> None:
    """COPY the events into ``email_events`` (addresses as :func:`lowered` gave them)."""
    await conn.copy_records_to_table(
        "email_events",
        records=[
            (
                received_at,
                e.occurred_at,
                e.account_id,
                e.campaign_id,
                e.lead_id,
                e.email,
                str(e.kind),
                e.provider,
                e.receipt,
                e.provider_message_id,
                e.provider_type,
                e.reason,
                e.smtp_status,
                e.bounce_class,
            )
            for e in events
        ],
        columns=COLUMNS,
    )


# How far before its campaign's start an email's log row is looked for: a node's clock stamps
# sent_at (the start is the database's), so the partitions of a day before it are read too.
BASELINE_CLOCK_MARGIN = dt.timedelta(days=1)


async def before_baselines(
    conn: asyncpg.Connection, emails: Sequence[tuple[int, int | None]]
) -> dict[int, tuple[bool, bool]]:
    """For each ``(campaign_id, lead_id)`` of ``emails`` (an event's) whose campaign has a guard
    baseline (an operator resumed it) or whose provider was released within the rolling window,
    by position: whether the email was sent before the campaign's baseline, and before the
    provider's release. Before is: its log row's transaction is visible in the baseline's txid
    snapshot (no clock is compared). An event naming no lead is before. A lead of a running or
    paused campaign with no committed row is after: the flush logging it has not committed yet
    (a webhook can be faster than the sender's flush), so it commits after the snapshot. In a
    campaign that ended, such a lead's row is gone (or never was): before.

    Index probes of ``(campaign_id, lead_id)`` in the log partitions from a day before the
    campaign's start, and only for campaigns with a baseline: nothing is read of the log
    otherwise. (From the start, not from the baseline: an email not found must be one not
    committed yet, never one sent long before the baseline.)
    """
    rows = await conn.fetch(
        f"""SELECT e.position,
                   s.guard_snapshot IS NOT NULL AND NOT coalesce(m.after_campaign, m.unlogged) AS campaign,
                   r.base_snapshot IS NOT NULL AND NOT coalesce(m.after_provider, m.unlogged) AS provider
            FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS e(campaign_id, lead_id, position)
            JOIN campaigns c ON c.id = e.campaign_id
            LEFT JOIN campaign_stats s ON s.campaign_id = e.campaign_id
            LEFT JOIN LATERAL (
                SELECT h.released_at, h.base_snapshot FROM provider_holds h
                WHERE h.provider = c.provider AND h.released_at IS NOT NULL
                  AND h.base_hour >= {provider_usage.WINDOW_START}
                ORDER BY h.released_at DESC LIMIT 1) r ON true
            LEFT JOIN LATERAL (
                SELECT bool_or(NOT txid_visible_in_snapshot(l.tx, s.guard_snapshot)) AS after_campaign,
                       bool_or(NOT txid_visible_in_snapshot(l.tx, r.base_snapshot)) AS after_provider,
                       count(*) = 0 AND e.lead_id IS NOT NULL
                           AND c.status IN ('running', 'paused') AS unlogged
                FROM email_log l
                WHERE l.campaign_id = e.campaign_id AND l.lead_id = e.lead_id
                  AND l.sent_at >= coalesce(c.started_at, c.created_at) - $3::interval) m ON true
            WHERE s.guard_snapshot IS NOT NULL OR r.base_snapshot IS NOT NULL""",
        [campaign_id for campaign_id, _ in emails],
        [lead_id for _, lead_id in emails],
        BASELINE_CLOCK_MARGIN,
    )
    return {r["position"] - 1: (r["campaign"], r["provider"]) for r in rows}


async def counted_before(
    conn: asyncpg.Connection, emails: Sequence[tuple[int, int, int]], blocking: Collection[str]
) -> set[int]:
    """Positions of the ``(campaign_id, lead_id, signal)`` of ``emails`` whose email has an event
    of that guard signal (0 hard bounce that is no block, 1 complaint, 2 block: a bounce of a
    ``blocking`` class) stored by an earlier transaction. Index probes of ``(campaign_id,
    lead_id)`` in the partitions from a day before the campaign's start (received_at is a node's
    clock)."""
    rows = await conn.fetch(
        """SELECT e.position
           FROM unnest($1::bigint[], $2::bigint[], $3::int[]) WITH ORDINALITY
                AS e(campaign_id, lead_id, signal, position)
           JOIN campaigns c ON c.id = e.campaign_id
           WHERE EXISTS (
               SELECT 1 FROM email_events x
               WHERE x.campaign_id = e.campaign_id AND x.lead_id = e.lead_id
                 AND x.received_at >= coalesce(c.started_at, c.created_at) - $5::interval
                 AND x.tx <> txid_current()
                 AND CASE WHEN coalesce(x.bounce_class = ANY($4::text[]), false) THEN 2
                          WHEN x.kind = 'hard_bounce' THEN 0
                          WHEN x.kind = 'complaint' THEN 1 END = e.signal)""",
        [campaign_id for campaign_id, _, _ in emails],
        [lead_id for _, lead_id, _ in emails],
        [signal for _, _, signal in emails],
        sorted(blocking),
        BASELINE_CLOCK_MARGIN,
    )
    return {r["position"] - 1 for r in rows}


async def repeated_soft_bounces(
    conn: asyncpg.Connection,
    keys: Collection[tuple[int, str]],
    window_s: float,
    limit: int,
    blocking: Collection[str] = (),
) -> list[tuple[int, str]]:
    """The ``(account_id, email)`` of ``keys`` with at least ``limit`` bounces in the window that
    did not suppress at once (soft ones, and hard ones that were no invalid recipient); bounces
    of a ``blocking`` class are the sender's problem and do not count.

    Nor do those received before the address was last taken off the account's list (its latest
    ``removed`` row in ``suppression_audit``: an operator's API or CLI removal): the bounces that
    suppressed it would otherwise suppress it again at the next one. The removal is stamped by
    the database's clock and a bounce by its node's: a bounce within their skew of a removal may
    fall on the wrong side of it (NTP keeps that to milliseconds)."""
    rows = await conn.fetch(
        """SELECT e.account_id, e.email FROM email_events e
           JOIN unnest($1::bigint[], $2::text[]) AS v(account_id, email)
             ON e.account_id = v.account_id AND e.email = v.email
           WHERE e.kind IN ('soft_bounce', 'hard_bounce')
             AND e.received_at > now() - make_interval(secs => $3)
             AND e.received_at > coalesce(
                 (SELECT max(a.at) FROM suppression_audit a
                  WHERE a.account_id = v.account_id AND a.email = v.email AND a.action = 'removed'),
                 '-infinity')
             AND NOT coalesce(e.bounce_class = ANY($5::text[]), false)
           GROUP BY e.account_id, e.email HAVING count(*) >= $4""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        window_s,
        limit,
        sorted(blocking),
    )
    return [(r["account_id"], r["email"]) for r in rows]


async def reported_addresses(
    conn: asyncpg.Connection, account_id: int, campaign_id: int, lead_id: int
) -> list[str]:
    """The addresses the account's stored events about one email (its campaign and lead) name,
    the first received first: where the provider delivered or bounced it. What is known of the
    address an email went to when nothing else kept it (``email_log`` has no address); empty
    once its events passed the retention, or for an erased person's (stored without one)."""
    rows = await conn.fetch(
        """SELECT email FROM email_events
           WHERE campaign_id = $1 AND lead_id = $2 AND account_id = $3 AND email IS NOT NULL
           GROUP BY email ORDER BY min(received_at), email""",
        campaign_id,
        lead_id,
        account_id,
    )
    return [r["email"] for r in rows]


async def campaign_accounts(conn: asyncpg.Connection, campaign_ids: Collection[int]) -> dict[int, int]:
    """campaign id -> account id, for the campaigns that exist."""
    rows = await conn.fetch(
        "SELECT id, account_id FROM campaigns WHERE id = ANY($1::bigint[])", list(campaign_ids)
    )
    return {r["id"]: r["account_id"] for r in rows}


async def lead_emails(
    conn: asyncpg.Connection, pairs: Collection[tuple[int, int]]
) -> dict[tuple[int, int], str]:
    """(account_id, lead_id) -> the lead's address (as :func:`lowered` gives it), for the leads
    that exist."""
    rows = await conn.fetch(
        """SELECT l.account_id, l.id, lower(l.email) AS email FROM leads l
           JOIN unnest($1::bigint[], $2::bigint[]) AS v(account_id, id)
             ON l.account_id = v.account_id AND l.id = v.id""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {(r["account_id"], r["id"]): r["email"] for r in rows}


async def lead_accounts(conn: asyncpg.Connection, lead_ids: Collection[int]) -> dict[int, tuple[int, str]]:
    """lead id -> (account id, the lead's address as :func:`lowered` gives it), for the leads
    that exist (lead ids are unique across accounts)."""
    rows = await conn.fetch(
        "SELECT id, account_id, lower(email) AS email FROM leads WHERE id = ANY($1::bigint[])", list(lead_ids)
    )
    return {r["id"]: (r["account_id"], r["email"]) for r in rows}


@dataclasses.dataclass(frozen=True, slots=True)
class Sent:
    """One email a provider message id names: its campaign, lead, account, the lead's address
    now (as :func:`lowered` gives it; None once the lead is gone), and the campaign's provider
    (its ``[providers.NAME]``)."""

    campaign_id: int
    lead_id: int
    account_id: int
    address: str | None
    provider: str


async def by_message_id(
    conn: asyncpg.Connection, message_ids: Collection[str], lookback: dt.timedelta
) -> dict[str, list[Sent]]:
    """provider message id -> every email it names, from the recent log partitions (the log has
    no index on the message id: this is the fallback path). One id names a whole batch where
    one request sends it (SendGrid's ``X-Message-Id``, Mailgun's ``id``: up to a batch of
    leads)."""
    rows = await conn.fetch(
        """SELECT e.provider_message_id, e.campaign_id, e.lead_id, c.account_id, lower(l.email) AS address,
                  c.provider
           FROM email_log e JOIN campaigns c ON c.id = e.campaign_id
           LEFT JOIN leads l ON l.account_id = c.account_id AND l.id = e.lead_id
           WHERE e.provider_message_id = ANY($1::text[]) AND e.sent_at > now() - $2::interval""",
        list(message_ids),
        lookback,
    )
    found: dict[str, list[Sent]] = {}
    for r in rows:
        sent = Sent(r["campaign_id"], r["lead_id"], r["account_id"], r["address"], r["provider"])
        found.setdefault(r["provider_message_id"], []).append(sent)
    return found


async def lowered(conn: asyncpg.Connection, addresses: Collection[str]) -> dict[str, str]:
    """Each address as the database's ``lower()`` writes it. Every match with a lead is on
    ``lower(leads.email)`` (the unique index, the send-time suppression check), and Python's
    ``str.lower`` differs from it: for some letters always (``İ``), and for every non-ASCII
    letter where the database's ctype is ``C``. An address stored or looked up in any other form
    would miss its lead: a bounce or an unsubscribe that suppresses nobody."""
    rows = await conn.fetch(
        "SELECT a, lower(a) AS folded FROM unnest($1::text[]) AS a", sorted(set(addresses))
    )
    return {r["a"]: r["folded"] for r in rows}


async def leads_by_address(
    conn: asyncpg.Connection, emails: Collection[str]
) -> dict[str, list[tuple[int, int]]]:
    """Address (as :func:`lowered` gives it) -> [(account_id, lead_id)] in every account that has it."""
    rows = await conn.fetch(
        "SELECT account_id, id, lower(email) AS email FROM leads WHERE lower(email) = ANY($1::text[])",
        list(emails),
    )
    owners: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        owners.setdefault(row["email"], []).append((row["account_id"], row["id"]))
    return owners
