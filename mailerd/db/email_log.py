"""``email_log`` reads: the rows of one campaign, by lead id (its one index)."""

from __future__ import annotations

from typing import Any

import asyncpg


async def campaign_page(
    conn: asyncpg.Connection, campaign_id: int, *, after: int, limit: int, status: int | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` rows of the campaign with ``lead_id > after`` (and ``status``), by lead id,
    read through the ``(campaign_id, lead_id)`` index."""
    rows = await conn.fetch(
        """SELECT lead_id, status, sent_at, provider_message_id, error FROM email_log
           WHERE campaign_id = $1 AND lead_id > $2 AND ($3::smallint IS NULL OR status = $3)
           ORDER BY lead_id LIMIT $4""",
        campaign_id,
        after,
        status,
        limit,
    )
    return [dict(r) for r in rows]
