"""``campaigns``: rows, and every change of a campaign's status.

Status: draft -> scheduled -> running <-> paused -> finished | cancelled | failed. Every change
is also a NOTIFY on :data:`NOTIFY_CHANNEL`, so every node hears it within a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

NOTIFY_CHANNEL = "mailerd_campaigns"


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
