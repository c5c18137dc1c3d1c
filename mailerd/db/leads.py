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


WINDOW_FETCH_ROWS = 2_000  # rows per round trip on a window's server-side cursor


def _window_sql(segment: segments.Segment, *, skip_logged: bool) -> tuple[str, list[Any]]:
    """Leads of one id window: ``$1`` account, ``$2`` exclusive start, ``$3`` inclusive end,
    ``$4`` campaign (for ``skip_logged``), then the segment's parameters."""
    condition, params = segments.compile(segment, first_param=5, alias="l")
    skip = (
        "AND NOT EXISTS (SELECT 1 FROM email_log e WHERE e.campaign_id = $4 AND e.lead_id = l.id)"
        if skip_logged
        else "AND $4::bigint IS NOT NULL"
    )
    sql = f"""SELECT l.id, l.email, l.attributes,
                     EXISTS (SELECT 1 FROM suppressions s
                             WHERE s.account_id = l.account_id AND s.email = lower(l.email)) AS suppressed
              FROM leads l
              WHERE l.account_id = $1 AND l.id > $2 AND l.id <= $3 AND ({condition}) {skip}
              ORDER BY l.id"""
    return sql, params


async def read_window(
    pool: asyncpg.Pool,
    *,
    account_id: int,
    campaign_id: int,
    segment: segments.Segment,
    start: int,
    end: int,
    skip_logged: bool,
) -> list[asyncpg.Record]:
    """The matching leads with ids in ``(start, end]`` as ``(id, email, attributes, suppressed)``,
    in id order, read through a server-side cursor in one short read-only transaction (all rows
    are read before it ends, so no transaction waits on a queue). ``skip_logged`` leaves out
    leads that already have an ``email_log`` row for the campaign."""
    sql, params = _window_sql(segment, skip_logged=skip_logged)
    rows: list[asyncpg.Record] = []
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(sql, account_id, start, end, campaign_id, *params)
        while True:
            chunk = await cursor.fetch(WINDOW_FETCH_ROWS)
            rows.extend(chunk)
            if len(chunk) < WINDOW_FETCH_ROWS:
                return rows


async def count_segment(conn: asyncpg.Connection, account_id: int, segment: segments.Segment) -> int:
    """How many leads of the account the segment matches, suppressed ones included."""
    condition, params = segments.compile(segment, first_param=2, alias="l")
    count = await conn.fetchval(
        f"SELECT count(*) FROM leads l WHERE l.account_id = $1 AND ({condition})", account_id, *params
    )
    return int(count)
