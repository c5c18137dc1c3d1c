"""Lead queries: by segment (counts, previews, the WHERE fragment other queries embed), and the
lead import's loading (COPY, staging, upsert)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg

from mailerd import segments
from mailerd.db import erasure as erasure_db


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


def _window_sql(segment: segments.Segment, *, skip_logged: bool, erased: bool) -> tuple[str, list[Any], int]:
    """Leads of one id window: ``$1`` account, ``$2`` exclusive start, ``$3`` inclusive end,
    ``$4`` campaign (for ``skip_logged``), then the segment's parameters; with ``erased``, the
    two HMAC pads follow (returned: the number of the first)."""
    condition, params = segments.compile(segment, first_param=5, alias="l")
    skip = (
        "AND NOT EXISTS (SELECT 1 FROM email_log e WHERE e.campaign_id = $4 AND e.lead_id = l.id)"
        if skip_logged
        else "AND $4::bigint IS NOT NULL"
    )
    pads = 5 + len(params)
    hashed = ""
    if erased:
        keyed = erasure_db.hmac_sql("l.email", f"${pads}::bytea", f"${pads + 1}::bytea")
        hashed = f"""OR EXISTS (SELECT 1 FROM erased_suppressions h
                               WHERE h.account_id = l.account_id AND h.email_hash = {keyed})"""
    sql = f"""SELECT l.id, l.email, l.attributes,
                     EXISTS (SELECT 1 FROM suppressions s
                             WHERE s.account_id = l.account_id AND s.email = lower(l.email)) {hashed}
                     AS suppressed
              FROM leads l
              WHERE l.account_id = $1 AND l.id > $2 AND l.id <= $3 AND ({condition}) {skip}
              ORDER BY l.id"""
    return sql, params, pads


async def read_window(
    pool: asyncpg.Pool,
    *,
    account_id: int,
    campaign_id: int,
    segment: segments.Segment,
    start: int,
    end: int,
    skip_logged: bool,
    erased_pads: tuple[bytes, bytes] | None = None,
) -> list[asyncpg.Record]:
    """The matching leads with ids in ``(start, end]`` as ``(id, email, attributes, suppressed)``,
    in id order, read through a server-side cursor in one short read-only transaction (all rows
    are read before it ends, so no transaction waits on a queue). ``skip_logged`` leaves out
    leads that already have an ``email_log`` row for the campaign. ``erased_pads`` (the erasure
    key's HMAC pads, when the account keeps erased addresses suppressed as hashes) makes an
    address whose keyed hash is suppressed count as suppressed."""
    sql, params, _ = _window_sql(segment, skip_logged=skip_logged, erased=erased_pads is not None)
    if erased_pads is not None:
        params = [*params, *erased_pads]
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


# --- import (mailerd.importer) ----------------------------------------------------------------

STAGING = "mailerd_import_rows"
COPY_COLUMNS = ["account_id", "email", "attributes"]
_UPPER_ASCII = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_UPSERT = """
INSERT INTO leads AS l (account_id, email, attributes)
{select}
ON CONFLICT (account_id, lower(email)) DO UPDATE
SET attributes = l.attributes || EXCLUDED.attributes, updated_at = now()
WHERE l.attributes || EXCLUDED.attributes IS DISTINCT FROM l.attributes  -- re-imports: no dead rows
"""
_SELECT_STAGED = f"SELECT s.account_id, s.email, s.attributes FROM {STAGING} s"
# Several lines for one address: fold them in file order (a later key wins), then upsert once.
# File order is ctid order: each batch is one COPY into the freshly truncated staging table.
_SELECT_FOLDED = f"""
SELECT min(r.account_id), (array_agg(r.email ORDER BY r.ord))[1],
       coalesce(jsonb_object_agg(e.key, e.value ORDER BY r.ord) FILTER (WHERE e.key IS NOT NULL),
                '{{}}'::jsonb)
FROM (SELECT s.account_id, s.email, lower(s.email) AS address, s.ctid AS ord, s.attributes
      FROM {STAGING} s) r
LEFT JOIN LATERAL jsonb_each(r.attributes) e ON true
GROUP BY r.address
"""


async def lowers_ascii_like_python(conn: asyncpg.Connection) -> bool:
    """Whether the database's ``lower()`` maps A-Z to a-z (not so under a Turkish locale)."""
    lowered: str = await conn.fetchval("SELECT lower($1::text)", _UPPER_ASCII)
    return lowered == _UPPER_ASCII.lower()


async def _stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def copy_into_leads(conn: asyncpg.Connection, chunks: Iterable[bytes]) -> None:
    """COPY rows (``COPY_COLUMNS`` in text format) straight into ``leads``; a repeated or
    existing address raises ``UniqueViolationError``."""
    await conn.copy_to_table("leads", source=_stream(chunks), columns=COPY_COLUMNS, format="text")


async def create_staging(conn: asyncpg.Connection) -> None:
    """The import's staging table, dropped when the import's transaction ends."""
    await conn.execute(
        f"CREATE TEMP TABLE {STAGING} (account_id bigint, email text, attributes jsonb) ON COMMIT DROP"
    )


async def copy_into_staging(conn: asyncpg.Connection, chunks: Iterable[bytes]) -> None:
    """COPY rows (``COPY_COLUMNS`` in text format) into the (empty) staging table."""
    await conn.copy_to_table(STAGING, source=_stream(chunks), columns=COPY_COLUMNS, format="text")


async def upsert_staged(conn: asyncpg.Connection) -> None:
    """Upsert the staged rows into ``leads`` (attributes merged, the staged values win).

    Raises ``CardinalityViolationError`` when two staged rows are one lead: then
    :func:`upsert_staged_folded`.
    """
    await conn.execute(_UPSERT.format(select=_SELECT_STAGED))


async def upsert_staged_folded(conn: asyncpg.Connection) -> None:
    """Upsert the staged rows, those of one address folded first in staging order."""
    await conn.execute(_UPSERT.format(select=_SELECT_FOLDED))


async def truncate_staging(conn: asyncpg.Connection) -> None:
    """Empty the staging table for the next batch."""
    await conn.execute(f"TRUNCATE {STAGING}")


async def email_of(conn: asyncpg.Connection, account_id: int, lead_id: int) -> str | None:
    """The address of one lead of the account (None when there is no such lead)."""
    email: str | None = await conn.fetchval(
        "SELECT email FROM leads WHERE account_id = $1 AND id = $2", account_id, lead_id
    )
    return email
