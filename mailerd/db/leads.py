"""Lead queries by segment: counts, previews, and the WHERE fragment other queries embed."""

from __future__ import annotations

from typing import Any

import asyncpg

from mailerd import segments


def matching_sql(segment: segments.Segment, *, first_param: int, alias: str = "l") -> tuple[str, list[Any]]:
    """The segment's condition AND "not suppressed", over ``leads`` aliased ``alias``.

    Placeholders start at ``$first_param``. Suppressions are stored lower-cased and compared
    with ``lower(email)``, as the unique index on leads does.
    """
    condition, params = segments.compile(segment, first_param=first_param, alias=alias)
    sql = (
        f"{condition} AND NOT EXISTS (SELECT 1 FROM suppressions s"
        f" WHERE s.account_id = {alias}.account_id AND s.email = lower({alias}.email))"
    )
    return sql, params


async def count_matching(conn: asyncpg.Connection, account_id: int, segment: segments.Segment) -> int:
    """How many leads of the account the segment matches, suppressed addresses excluded."""
    condition, params = matching_sql(segment, first_param=2)
    count = await conn.fetchval(
        f"SELECT count(*) FROM leads l WHERE l.account_id = $1 AND {condition}",
        account_id,
        *params,
    )
    return int(count)


async def sample_matching(
    conn: asyncpg.Connection, account_id: int, segment: segments.Segment, limit: int = 10
) -> list[dict[str, Any]]:
    """The first ``limit`` matching leads by id (``id``, ``email``, ``attributes``): a preview."""
    condition, params = matching_sql(segment, first_param=3)
    rows = await conn.fetch(
        "SELECT l.id, l.email, l.attributes FROM leads l"
        f" WHERE l.account_id = $1 AND {condition} ORDER BY l.id LIMIT $2",
        account_id,
        limit,
        *params,
    )
    return [dict(row) for row in rows]


async def email_of(conn: asyncpg.Connection, account_id: int, lead_id: int) -> str | None:
    """The address of one lead of the account (None when there is no such lead)."""
    email: str | None = await conn.fetchval(
        "SELECT email FROM leads WHERE account_id = $1 AND id = $2", account_id, lead_id
    )
    return email
