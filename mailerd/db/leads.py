"""Lead queries: by segment (counts, previews, the WHERE fragment other queries embed), the lead
import's loading (COPY, staging, upsert), and one lead at a time (the leads API)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg

from mailerd import segments
from mailerd.db import erasure as erasure_db


def matching_sql(
    segment: segments.Segment,
    *,
    first_param: int,
    alias: str = "l",
    erased_pads: tuple[bytes, bytes] | None = None,
) -> tuple[str, list[Any]]:
    """The segment's condition AND "not suppressed", over ``leads`` aliased ``alias``.

    Placeholders start at ``$first_param``. Suppressions are stored lower-cased and compared
    with ``lower(email)``, as the unique index on leads does. With ``erased_pads`` (the erasure
    key's HMAC pads) an address whose keyed hash is in ``erased_suppressions`` is suppressed too,
    as in the lead windows that send (:func:`read_window`).
    """
    condition, params = segments.compile(segment, first_param=first_param, alias=alias)
    sql = (
        f"({condition}) AND NOT EXISTS (SELECT 1 FROM suppressions s"
        f" WHERE s.account_id = {alias}.account_id AND s.email = lower({alias}.email))"
    )
    if erased_pads is not None:
        pads = first_param + len(params)
        keyed = erasure_db.hmac_sql(f"{alias}.email", f"${pads}::bytea", f"${pads + 1}::bytea")
        sql += (
            " AND NOT EXISTS (SELECT 1 FROM erased_suppressions h"
            f" WHERE h.account_id = {alias}.account_id AND h.email_hash = {keyed})"
        )
        params = [*params, *erased_pads]
    return sql, params


async def count_matching(
    conn: asyncpg.Connection,
    account_id: int,
    segment: segments.Segment,
    erased_pads: tuple[bytes, bytes] | None = None,
) -> int:
    """How many leads of the account the segment matches, suppressed addresses excluded (erased
    ones too, by their keyed hash, with ``erased_pads``: see :func:`matching_sql`)."""
    condition, params = matching_sql(segment, first_param=2, erased_pads=erased_pads)
    count = await conn.fetchval(
        f"SELECT count(*) FROM leads l WHERE l.account_id = $1 AND {condition}",
        account_id,
        *params,
    )
    return int(count)


async def sample_matching(
    conn: asyncpg.Connection,
    account_id: int,
    segment: segments.Segment,
    limit: int = 10,
    erased_pads: tuple[bytes, bytes] | None = None,
) -> list[dict[str, Any]]:
    """The first ``limit`` matching leads by id (``id``, ``email``, ``attributes``): a preview."""
    condition, params = matching_sql(segment, first_param=3, erased_pads=erased_pads)
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


async def still_present(
    pool: asyncpg.Pool,
    account_id: int,
    lead_ids: list[int],
    erased_pads: tuple[bytes, bytes] | None = None,
) -> dict[int, bool]:
    """Which of ``lead_ids`` are still leads of the account (not deleted or erased since), each
    with whether its address is suppressed now (a complaint, an unsubscribe or an operator's
    entry since the window was read; with ``erased_pads``, a keyed hash too, as in
    :func:`read_window`)."""
    hashed = ""
    if erased_pads is not None:
        keyed = erasure_db.hmac_sql("l.email", "$3::bytea", "$4::bytea")
        hashed = f"""OR EXISTS (SELECT 1 FROM erased_suppressions h
                               WHERE h.account_id = l.account_id AND h.email_hash = {keyed})"""
    rows = await pool.fetch(
        f"""SELECT l.id,
                   EXISTS (SELECT 1 FROM suppressions s
                           WHERE s.account_id = l.account_id AND s.email = lower(l.email)) {hashed}
                   AS suppressed
            FROM leads l WHERE l.account_id = $1 AND l.id = ANY($2::bigint[])""",
        account_id,
        lead_ids,
        *(erased_pads or ()),
    )
    return {r["id"]: r["suppressed"] for r in rows}


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

# The import's rule for an address already stored (the API's single upsert shares it): merge,
# the new values win; a row the merge leaves as it was is not written (re-imports: no dead rows).
_ON_CONFLICT = """
ON CONFLICT (account_id, lower(email)) DO UPDATE
SET attributes = {merged}, updated_at = now()
WHERE {merged} IS DISTINCT FROM l.attributes
"""
_MERGED = "l.attributes || EXCLUDED.attributes"
_UPSERT = """
INSERT INTO leads AS l (account_id, email, attributes)
{select}""" + _ON_CONFLICT.replace("{merged}", _MERGED)
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


# --- one lead (the leads API) -------------------------------------------------------------------

# attributes as the JSON text Postgres writes (numbers keep their exact text); answered verbatim.
LEAD_COLUMNS = "l.id, l.account_id, l.email, l.attributes::text AS attributes, l.created_at, l.updated_at"
# The spelling a new lead is stored with, as the import's: $3 (lower-cased by Python when ASCII)
# where the database lower-cases A-Z as Python does, else $2 as written (see lead_address).
_SPELLING = f"CASE WHEN lower('{_UPPER_ASCII}') = '{_UPPER_ASCII.lower()}' THEN $3 ELSE $2 END"
_UPSERT_ONE = f"""
WITH upserted AS (
    INSERT INTO leads AS l (account_id, email, attributes)
    VALUES ($1, {_SPELLING}, $4::text::jsonb)
    {{on_conflict}}
    RETURNING {LEAD_COLUMNS}, l.xmax = 0 AS created
)
SELECT * FROM upserted
UNION ALL
SELECT {LEAD_COLUMNS}, false FROM leads l
WHERE l.account_id = $1 AND lower(l.email) = lower($2) AND NOT EXISTS (SELECT 1 FROM upserted)
"""
_UPSERT_MERGE = _UPSERT_ONE.replace("{on_conflict}", _ON_CONFLICT.replace("{merged}", _MERGED))
_UPSERT_REPLACE = _UPSERT_ONE.replace(
    "{on_conflict}", _ON_CONFLICT.replace("{merged}", "EXCLUDED.attributes")
)


async def upsert_one(
    conn: asyncpg.Connection, account_id: int, email: str, document: str, *, replace: bool
) -> tuple[asyncpg.Record, bool]:
    """Insert or update one lead (``document``: its attributes as JSON text), merged as the
    import merges or replaced; the stored lead (:data:`LEAD_COLUMNS`) and whether it is new."""
    lowered = email.lower() if email.isascii() else email
    sql = _UPSERT_REPLACE if replace else _UPSERT_MERGE
    for _ in range(2):
        row = await conn.fetchrow(sql, account_id, email, lowered, document)
        # None only when the row that made the insert conflict was committed after this
        # statement's snapshot (a concurrent upsert of the address): the next one sees it.
        if row is not None:
            return row, bool(row["created"])
    raise RuntimeError(f"lead {email!r} of account {account_id} neither inserted nor found")


async def lead_by_id(conn: asyncpg.Connection, account_id: int, lead_id: int) -> asyncpg.Record | None:
    """One lead of the account (:data:`LEAD_COLUMNS`), or None."""
    return await conn.fetchrow(
        f"SELECT {LEAD_COLUMNS} FROM leads l WHERE l.account_id = $1 AND l.id = $2", account_id, lead_id
    )


async def lead_by_email(conn: asyncpg.Connection, account_id: int, email: str) -> asyncpg.Record | None:
    """The account's lead with this address (any case; :data:`LEAD_COLUMNS`), or None."""
    return await conn.fetchrow(
        f"SELECT {LEAD_COLUMNS} FROM leads l WHERE l.account_id = $1 AND lower(l.email) = lower($2)",
        account_id,
        email,
    )


async def leads_page(
    conn: asyncpg.Connection,
    account_id: int,
    *,
    after: int,
    limit: int,
    email: str | None = None,
    segment: segments.Segment | None = None,
) -> list[asyncpg.Record]:
    """The account's leads with ``id > after`` by id (:data:`LEAD_COLUMNS`), those with the
    address ``email`` (any case) and matching ``segment`` (suppressed ones included) when given."""
    conditions = ["l.account_id = $1", "l.id > $2"]
    params: list[Any] = [account_id, after, limit]
    if email is not None:
        params.append(email)
        conditions.append(f"lower(l.email) = lower(${len(params)})")
    if segment is not None:
        condition, segment_params = segments.compile(segment, first_param=len(params) + 1, alias="l")
        conditions.append(f"({condition})")
        params += segment_params
    sql = f"SELECT {LEAD_COLUMNS} FROM leads l WHERE {' AND '.join(conditions)} ORDER BY l.id LIMIT $3"
    return list(await conn.fetch(sql, *params))


async def delete_by_id(conn: asyncpg.Connection, account_id: int, lead_id: int) -> asyncpg.Record | None:
    """Delete one lead; the row as it was (:data:`LEAD_COLUMNS`), or None when there was none."""
    return await conn.fetchrow(
        f"DELETE FROM leads l WHERE l.account_id = $1 AND l.id = $2 RETURNING {LEAD_COLUMNS}",
        account_id,
        lead_id,
    )


async def delete_by_email(conn: asyncpg.Connection, account_id: int, email: str) -> asyncpg.Record | None:
    """Delete the account's lead with this address (any case); the row as it was, or None."""
    return await conn.fetchrow(
        f"DELETE FROM leads l WHERE l.account_id = $1 AND lower(l.email) = lower($2)"
        f" RETURNING {LEAD_COLUMNS}",
        account_id,
        email,
    )
