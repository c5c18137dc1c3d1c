"""Recording provider events: append-only, de-duplicated, feeding suppressions and stats.

Called by the writer inside its flush transaction, so a webhook's events commit together with
whatever else that flush carries, and the webhook is answered only after that commit. Nothing
here UPDATEs ``email_log``: events are appended to ``email_events``; counters go to
``campaign_stats``; suppressions are inserted.
"""

from __future__ import annotations

import collections
import datetime as dt

import asyncpg

from mailerd.models import SUPPRESSING_KINDS, Event, EventKind

_EVENT_COLUMNS = (
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
)
_STAT_FOR_KIND = {
    EventKind.DELIVERED: 0,
    EventKind.HARD_BOUNCE: 1,
    EventKind.SOFT_BOUNCE: 1,
    EventKind.COMPLAINT: 2,
    EventKind.UNSUBSCRIBE: 3,
}


def unique(events: list[Event]) -> list[Event]:
    """Drop repeats of the same receipt within one batch (first one wins)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for event in events:
        key = (event.provider, event.receipt)
        if key not in seen:
            seen.add(key)
            kept.append(event)
    return kept


async def record(
    conn: asyncpg.Connection,
    events: list[Event],
    *,
    soft_bounce_limit: int,
    soft_bounce_window_s: float,
) -> list[Event]:
    """Append the events not seen before; suppress and count. Returns the new ones.

    Must run inside a transaction (the writer's flush).
    """
    events = unique(events)
    if not events:
        return []
    keys = {(e.provider, e.receipt) for e in events}
    keys.update((e.provider, e.guard) for e in events if e.guard)
    claimed = await conn.fetch(
        """INSERT INTO webhook_receipts (provider, receipt)
           SELECT * FROM unnest($1::text[], $2::text[])
           ON CONFLICT DO NOTHING RETURNING provider, receipt""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    new_keys = {(r["provider"], r["receipt"]) for r in claimed}
    fresh = [
        e
        for e in events
        if (e.provider, e.receipt) in new_keys and (e.guard is None or (e.provider, e.guard) in new_keys)
    ]
    if not fresh:
        return []
    now = dt.datetime.now(dt.UTC)
    await conn.copy_records_to_table(
        "email_events",
        records=[
            (
                now,
                e.occurred_at,
                e.account_id,
                e.campaign_id,
                e.lead_id,
                e.email.lower() if e.email else None,
                str(e.kind),
                e.provider,
                e.receipt,
                e.provider_message_id,
                e.provider_type,
                e.reason,
                e.smtp_status,
            )
            for e in fresh
        ],
        columns=_EVENT_COLUMNS,
    )
    await _suppress(conn, fresh, soft_bounce_limit, soft_bounce_window_s)
    await _count(conn, fresh)
    return fresh


async def _suppress(
    conn: asyncpg.Connection, events: list[Event], soft_bounce_limit: int, window_s: float
) -> None:
    direct: dict[tuple[int, str], tuple[str, str]] = {}
    soft: set[tuple[int, str]] = set()
    for event in events:
        if event.account_id is None or not event.email:
            continue
        key = (event.account_id, event.email.lower())
        if event.kind in SUPPRESSING_KINDS or event.suppress:
            direct.setdefault(key, (str(event.kind), event.provider))
        elif event.kind == EventKind.SOFT_BOUNCE:
            soft.add(key)
    if soft:
        rows = await conn.fetch(
            """SELECT e.account_id, e.email FROM email_events e
               JOIN unnest($1::bigint[], $2::text[]) AS v(account_id, email)
                 ON e.account_id = v.account_id AND e.email = v.email
               WHERE e.kind = 'soft_bounce' AND e.received_at > now() - make_interval(secs => $3)
               GROUP BY e.account_id, e.email HAVING count(*) >= $4""",
            [k[0] for k in soft],
            [k[1] for k in soft],
            window_s,
            soft_bounce_limit,
        )
        for row in rows:
            direct.setdefault((row["account_id"], row["email"]), ("soft_bounce_limit", "webhook"))
    if not direct:
        return
    keys = list(direct)
    added = await conn.fetch(
        """INSERT INTO suppressions (account_id, email, reason, source)
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
           ON CONFLICT DO NOTHING RETURNING account_id, email, reason, source""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [direct[k][0] for k in keys],
        [direct[k][1] for k in keys],
    )
    if added:
        await conn.copy_records_to_table(
            "suppression_audit",
            records=[(r["account_id"], r["email"], "added", r["reason"], r["source"]) for r in added],
            columns=("account_id", "email", "action", "reason", "source"),
        )


async def _count(conn: asyncpg.Connection, events: list[Event]) -> None:
    counts: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for event in events:
        if event.campaign_id is not None:
            counts[event.campaign_id][_STAT_FOR_KIND[event.kind]] += 1
    if not counts:
        return
    ids = list(counts)
    await conn.execute(
        """UPDATE campaign_stats cs SET delivered = cs.delivered + v.delivered,
                  bounced = cs.bounced + v.bounced, complained = cs.complained + v.complained,
                  unsubscribed = cs.unsubscribed + v.unsubscribed, updated_at = now()
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
                AS v(campaign_id, delivered, bounced, complained, unsubscribed)
           WHERE cs.campaign_id = v.campaign_id""",
        ids,
        *([counts[c][i] for c in ids] for i in range(4)),
    )
