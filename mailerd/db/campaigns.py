"""Campaign rows: insert, the status and counters of one, a page of many, and status changes.

``change_status`` is the one place that knows which status an action may leave and where it
leads; every change is announced on ``NOTIFY_CHANNEL`` so every node reacts within a second.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

NOTIFY_CHANNEL = "mailerd_campaigns"

# action -> (statuses it may start from, status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"draft", "scheduled"}), "scheduled"),
    "pause": (frozenset({"scheduled", "running"}), "paused"),
    "resume": (frozenset({"paused"}), "running"),
    "cancel": (frozenset({"draft", "scheduled", "running", "paused"}), "cancelled"),
}


class TransitionError(Exception):
    """The action is not allowed from the campaign's current status (or it does not exist)."""

    def __init__(self, campaign_id: int, action: str, current: str | None) -> None:
        what = "no such campaign" if current is None else f"campaign is {current}"
        super().__init__(f"cannot {action} campaign {campaign_id}: {what}")
        self.current = current


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignRow:
    """The stored columns of a new campaign (validated before it gets here)."""

    account_id: int
    name: str
    status: str
    segment: Any
    from_address: str
    subject: str
    html_body: str
    text_body: str
    provider: str
    rate_per_s: float | None
    resend_uncertain: bool
    send_at: dt.datetime | None


async def insert(conn: asyncpg.Connection, row: CampaignRow) -> int:
    """Insert the campaign and its (zero) counters; NOTIFY when it is scheduled. Returns the id."""
    campaign_id: int = await conn.fetchval(
        """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject,
                                  html_body, text_body, provider, rate_per_s, resend_uncertain, send_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id""",
        row.account_id,
        row.name,
        row.status,
        row.segment,
        row.from_address,
        row.subject,
        row.html_body,
        row.text_body,
        row.provider,
        row.rate_per_s,
        row.resend_uncertain,
        row.send_at,
    )
    await conn.execute(
        "INSERT INTO campaign_stats (campaign_id) VALUES ($1) ON CONFLICT DO NOTHING", campaign_id
    )
    if row.status == "scheduled":
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{campaign_id} {row.status}")
    return campaign_id


async def change_status(
    conn: asyncpg.Connection, campaign_id: int, action: str, reason: str | None = None
) -> str:
    """Apply ``action`` (start, pause, resume, cancel) and tell every node at once (NOTIFY).

    Returns the new status; raises :class:`TransitionError` when not allowed.
    """
    allowed, target = TRANSITIONS[action]
    async with conn.transaction():
        status = await conn.fetchval(
            """UPDATE campaigns SET status = $2, updated_at = now(),
                   status_reason = $4,
                   send_at = CASE WHEN $2 = 'scheduled' THEN now() ELSE send_at END,
                   started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now())
                                     ELSE started_at END,
                   finished_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE finished_at END
               WHERE id = $1 AND status = ANY($3::text[]) RETURNING status""",
            campaign_id,
            target,
            sorted(allowed),
            reason,
        )
        if status is None:
            current = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
            raise TransitionError(campaign_id, action, current)
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{campaign_id} {status}")
    return str(status)


async def show(conn: asyncpg.Connection, campaign_id: int) -> dict[str, Any] | None:
    """Status and counters of one campaign (reads ``campaign_stats``, never the hot log)."""
    row = await conn.fetchrow(
        """SELECT c.id, c.account_id, c.name, c.status, c.status_reason, c.provider, c.created_at,
                  c.send_at, c.started_at, c.finished_at,
                  coalesce(s.matched, 0) AS matched, coalesce(s.sent, 0) AS sent,
                  coalesce(s.failed, 0) AS failed, coalesce(s.unknown, 0) AS unknown,
                  coalesce(s.suppressed, 0) AS suppressed, coalesce(s.retried, 0) AS retried,
                  coalesce(s.delivered, 0) AS delivered, coalesce(s.bounced, 0) AS bounced,
                  coalesce(s.complained, 0) AS complained,
                  coalesce(s.unsubscribed, 0) AS unsubscribed,
                  (SELECT count(*) FROM campaign_shards h WHERE h.campaign_id = c.id) AS shards,
                  (SELECT count(*) FROM campaign_shards h
                   WHERE h.campaign_id = c.id AND h.state = 'done') AS shards_done
           FROM campaigns c LEFT JOIN campaign_stats s ON s.campaign_id = c.id
           WHERE c.id = $1""",
        campaign_id,
    )
    if row is None:
        return None
    result = dict(row)
    result["processed"] = result["sent"] + result["failed"] + result["unknown"] + result["suppressed"]
    result["reason"] = result.pop("status_reason")
    return result


async def page(
    conn: asyncpg.Connection,
    *,
    after: int,
    limit: int,
    status: str | None = None,
    account_id: int | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` campaigns with ``id > after`` by id, with their main counters."""
    rows = await conn.fetch(
        """SELECT c.id, c.account_id, c.name, c.status, c.status_reason AS reason, c.provider,
                  c.created_at, c.started_at, c.finished_at,
                  coalesce(s.matched, 0) AS matched, coalesce(s.sent, 0) AS sent,
                  coalesce(s.failed, 0) AS failed
           FROM campaigns c LEFT JOIN campaign_stats s ON s.campaign_id = c.id
           WHERE c.id > $1 AND ($2::text IS NULL OR c.status = $2)
             AND ($3::bigint IS NULL OR c.account_id = $3)
           ORDER BY c.id LIMIT $4""",
        after,
        status,
        account_id,
        limit,
    )
    return [dict(r) for r in rows]


# --- the pipeline's reads and status changes ---------------------------------------------------


async def get(
    conn: asyncpg.Connection, campaign_id: int, *, for_update: bool = False
) -> asyncpg.Record | None:
    """The campaign row (locked for the rest of the transaction with ``for_update``)."""
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT * FROM campaigns WHERE id = $1{lock}", campaign_id
    )
    return row


async def statuses(conn: asyncpg.Connection, campaign_ids: Sequence[int]) -> dict[int, str]:
    """The current status of each campaign that still exists."""
    rows = await conn.fetch(
        "SELECT id, status FROM campaigns WHERE id = ANY($1::bigint[])", list(campaign_ids)
    )
    return {r["id"]: r["status"] for r in rows}


async def start_due(conn: asyncpg.Connection) -> list[int]:
    """Scheduled campaigns whose ``send_at`` has come become ``running``."""
    rows = await conn.fetch(
        """UPDATE campaigns SET status = 'running', started_at = coalesce(started_at, now()),
                                updated_at = now()
           WHERE status = 'scheduled' AND send_at <= now() RETURNING id"""
    )
    return [r["id"] for r in rows]


async def unsplit(conn: asyncpg.Connection) -> list[int]:
    """Running campaigns that have no shards yet."""
    rows = await conn.fetch(
        """SELECT id FROM campaigns c WHERE status = 'running'
           AND NOT EXISTS (SELECT 1 FROM campaign_shards s WHERE s.campaign_id = c.id)"""
    )
    return [r["id"] for r in rows]


async def without_provider(conn: asyncpg.Connection, providers: Sequence[str]) -> list[tuple[int, str]]:
    """Running campaigns whose provider is none of ``providers`` (for other nodes, or nobody)."""
    rows = await conn.fetch(
        "SELECT id, provider FROM campaigns WHERE status = 'running' AND NOT (provider = ANY($1::text[]))",
        list(providers),
    )
    return [(r["id"], r["provider"]) for r in rows]


async def finish_done(conn: asyncpg.Connection, campaign_ids: Sequence[int] | None = None) -> list[int]:
    """Running or paused campaigns whose shards are all done become ``finished`` (only those of
    ``campaign_ids`` when given). Returns the ids finished."""
    rows = await conn.fetch(
        """UPDATE campaigns c SET status = 'finished', finished_at = now(), updated_at = now()
           WHERE c.status IN ('running', 'paused')
             AND ($1::bigint[] IS NULL OR c.id = ANY($1::bigint[]))
             AND EXISTS (SELECT 1 FROM campaign_shards s WHERE s.campaign_id = c.id)
             AND NOT EXISTS (SELECT 1 FROM campaign_shards s
                             WHERE s.campaign_id = c.id AND s.state <> 'done')
           RETURNING c.id""",
        None if campaign_ids is None else list(campaign_ids),
    )
    return [r["id"] for r in rows]


async def finish_empty(conn: asyncpg.Connection, campaign_id: int) -> None:
    """A running campaign whose account has no leads at all: nothing to send."""
    await conn.execute(
        "UPDATE campaigns SET status = 'finished', finished_at = now(), updated_at = now() WHERE id = $1",
        campaign_id,
    )


async def fail(conn: asyncpg.Connection, campaign_id: int, reason: str) -> bool:
    """A campaign that can never be sent as stored: ``failed`` with the reason, on every node."""
    status = await conn.execute(
        """UPDATE campaigns SET status = 'failed', status_reason = $2, updated_at = now()
           WHERE id = $1 AND status IN ('running', 'scheduled', 'paused')""",
        campaign_id,
        reason,
    )
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{campaign_id} failed")
    return bool(status == "UPDATE 1")
