"""``suppressions`` and ``suppression_audit``: addresses an account must not be sent to, and
who added or removed each, written in the same transaction as the change."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg


async def add_many(conn: asyncpg.Connection, entries: Mapping[tuple[int, str], tuple[str, str]]) -> int:
    """Suppress ``(account_id, email) -> (reason, source)`` where not yet suppressed, auditing
    each addition. Returns how many were added."""
    if not entries:
        return 0
    keys = list(entries)
    added = await conn.fetch(
        """INSERT INTO suppressions (account_id, email, reason, source)
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
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
