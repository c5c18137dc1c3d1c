"""Suppression list queries: one address at a time (with its audit row), many at once (the
webhook events' suppressions), pages, and the import's staging table and merge.

Every address is lower-cased here, by the database, on its way onto the list and in every
lookup: the send-time check matches ``lower(leads.email)``, and Python's ``str.lower`` differs
from the database's ``lower()`` (for ``İ`` always, for every non-ASCII letter under a ``C``
ctype), so an address lower-cased in Python could miss its lead and suppress nobody."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from mailerd import idn
from mailerd.db import erasure as erasure_db

IMPORT_STAGING = "mailerd_suppression_import"


@dataclasses.dataclass(frozen=True, slots=True)
class Suppression:
    """One row of the list."""

    account_id: int
    email: str
    reason: str
    source: str | None
    at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _row(record: asyncpg.Record) -> Suppression:
    return Suppression(
        record["account_id"], record["email"], record["reason"], record["source"], record["at"]
    )


async def add(
    conn: asyncpg.Connection, account_id: int, email: str, reason: str, source: str = "api"
) -> tuple[Suppression, bool]:
    """Suppress ``email`` (trimmed and valid); returns the row and whether it is new.

    Idempotent: an address already on the list keeps its first reason, and nothing is audited.
    A removal committed between the INSERT that found the address and the SELECT that reads it
    back leaves nothing to read: the INSERT is tried again, and adds it (this add came last).
    An address with an IDN domain is added in its other IDNA spelling too (audited, when new):
    the lead it is meant for may be stored in either (``bücher.de``, ``xn--bcher-kva.de``), and
    the send-time check compares one spelling only.
    """
    given, *others = idn.spellings(email)
    async with conn.transaction():
        while True:
            record = await conn.fetchrow(
                """INSERT INTO suppressions (account_id, email, reason, source)
                   VALUES ($1, lower($2), $3, $4) ON CONFLICT DO NOTHING RETURNING *""",
                account_id,
                given,
                reason,
                source,
            )
            created = record is not None
            if record is not None:
                await audit(conn, account_id, given, "added", reason, source)
            else:
                record = await conn.fetchrow(
                    "SELECT * FROM suppressions WHERE account_id = $1 AND email = lower($2)",
                    account_id,
                    given,
                )
            if record is not None:
                break
        for other in others:
            if await conn.fetchval(
                """INSERT INTO suppressions (account_id, email, reason, source)
                   VALUES ($1, lower($2), $3, $4) ON CONFLICT DO NOTHING RETURNING true""",
                account_id,
                other,
                reason,
                source,
            ):
                await audit(conn, account_id, other, "added", reason, source)
    return _row(record), created


ERASED_SOURCE = "erasure"  # the source shown for an entry an erasure kept as a keyed hash


async def remove(
    conn: asyncpg.Connection,
    account_id: int,
    email: str,
    reason: str,
    source: str = "api",
    erased_pads: tuple[bytes, bytes] | None = None,
) -> Suppression | None:
    """Take ``email`` off the list, auditing ``reason``; None when it was not on it. An address
    with an IDN domain leaves in both IDNA spellings (``bücher.de``, ``xn--bcher-kva.de``: an
    event may have stored the one the provider reported). With ``erased_pads`` (the erasure
    key's HMAC pads) its keyed hash leaves ``erased_suppressions`` too (an erasure kept it
    suppressed that way); a removal found only there comes back with source ``erasure``."""
    spellings = idn.spellings(email)
    async with conn.transaction():
        records = await conn.fetch(
            """DELETE FROM suppressions
               WHERE account_id = $1 AND email = ANY(SELECT lower(a) FROM unnest($2::text[]) a)
               RETURNING *, email = lower($3::text) AS given""",
            account_id,
            spellings,
            email,
        )
        hashed = None
        if erased_pads is not None:
            keyed = erasure_db.hmac_sql("a", "$3::bytea", "$4::bytea")
            hashed = await conn.fetchrow(
                f"""DELETE FROM erased_suppressions
                    WHERE account_id = $1 AND email_hash = ANY(SELECT {keyed} FROM unnest($2::text[]) a)
                    RETURNING reason, at, lower($5::text) AS email""",
                account_id,
                spellings,
                *erased_pads,
                email,
            )
        if not records and hashed is None:
            return None
        removed = sorted({r["email"] for r in records}) or [email]
        for address in removed:
            await audit(conn, account_id, address, "removed", reason, source)
    if records:
        return _row(next((r for r in records if r["given"]), records[0]))
    assert hashed is not None
    return Suppression(account_id, hashed["email"], hashed["reason"], ERASED_SOURCE, hashed["at"])


async def page(
    conn: asyncpg.Connection, account_id: int, *, after: str = "", limit: int = 100
) -> list[Suppression]:
    """Up to ``limit`` rows of the account with ``email > lower(after)``, by address (the primary key)."""
    rows = await conn.fetch(
        """SELECT * FROM suppressions WHERE account_id = $1 AND email > lower($2)
           ORDER BY email LIMIT $3""",
        account_id,
        after,
        limit,
    )
    return [_row(r) for r in rows]


async def audit(
    conn: asyncpg.Connection, account_id: int, email: str, action: str, reason: str, source: str
) -> None:
    """Record one change of the list (``action`` is ``added`` or ``removed``)."""
    await conn.execute(
        """INSERT INTO suppression_audit (account_id, email, action, reason, source)
           VALUES ($1, lower($2), $3, $4, $5)""",
        account_id,
        email,
        action,
        reason,
        source,
    )


# --- import ----------------------------------------------------------------------------------


async def create_import_staging(conn: asyncpg.Connection) -> None:
    """The import's staging table ``(line, email, reason, given)``, dropped when its transaction
    ends (``given``: the spelling the line has, not its other IDNA one)."""
    await conn.execute(
        f"CREATE TEMP TABLE {IMPORT_STAGING} (line bigint, email text, reason text, given boolean)"
        " ON COMMIT DROP"
    )


async def copy_import_rows(conn: asyncpg.Connection, rows: Sequence[tuple[int, str, str]]) -> None:
    """Stage ``(line, email, reason)`` rows (addresses trimmed and valid: the merge lower-cases
    them), an address with an IDN domain in its other IDNA spelling too, as :func:`add` does."""
    records = [
        (line, spelling, reason, n == 0)
        for line, email, reason in rows
        for n, spelling in enumerate(idn.spellings(email))
    ]
    await conn.copy_records_to_table(
        IMPORT_STAGING, records=records, columns=("line", "email", "reason", "given")
    )


async def merge_import(conn: asyncpg.Connection, account_id: int, source: str) -> int:
    """Add the staged addresses to the account's list (the first line of an address wins) with
    their audit rows, in one statement; returns how many lines' addresses were added (new to the
    list: the other IDNA spelling of a line's address is not counted)."""
    added: int = await conn.fetchval(
        f"""WITH picked AS (
                SELECT DISTINCT ON (lower(email)) lower(email) AS email, reason, given
                FROM {IMPORT_STAGING} ORDER BY lower(email), line, given DESC
            ), added AS (
                INSERT INTO suppressions (account_id, email, reason, source)
                SELECT $1::bigint, email, reason, $2::text FROM picked
                ON CONFLICT DO NOTHING
                RETURNING account_id, email, reason, source
            ), audited AS (
                INSERT INTO suppression_audit (account_id, email, action, reason, source)
                SELECT account_id, email, 'added', reason, source FROM added)
            SELECT count(*) FROM added JOIN picked USING (email) WHERE picked.given""",
        account_id,
        source,
    )
    return added


async def add_many(conn: asyncpg.Connection, entries: Mapping[tuple[int, str], tuple[str, str]]) -> int:
    """Suppress ``(account_id, email) -> (reason, source)`` where not yet suppressed, auditing
    each addition (the address lower-cased here, as every way onto the list does). Returns how
    many were added."""
    if not entries:
        return 0
    keys = list(entries)
    added = await conn.fetch(
        """INSERT INTO suppressions (account_id, email, reason, source)
           SELECT a, lower(e), r, s
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS v(a, e, r, s)
           ON CONFLICT DO NOTHING RETURNING account_id, email, reason, source""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [entries[k][0] for k in keys],
        [entries[k][1] for k in keys],
    )
    if added:
        await conn.copy_records_to_table(
            "suppression_audit",
            records=[(r["account_id"], r["email"], "added", r["reason"], r["source"]) for r in added],
            columns=("account_id", "email", "action", "reason", "source"),
        )
    return len(added)
