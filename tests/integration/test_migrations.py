"""Migrations: applied once, idempotent, and safe when two run at the same moment."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailerd.db import connect, migrate


async def test_migrate_twice_is_a_no_op(empty_dsn: str) -> None:
    conn = await connect.connect(empty_dsn)
    try:
        first = await migrate.migrate(conn)
        second = await migrate.migrate(conn)
        assert [m.version for m in first] == [m.version for m in migrate.available()]
        assert second == []
        assert await migrate.pending(conn) == []
    finally:
        await conn.close()


async def test_two_concurrent_migrations_apply_each_file_once(empty_dsn: str) -> None:
    conns = [await connect.connect(empty_dsn) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        applied = sorted(m.version for result in results for m in result)
        assert applied == [m.version for m in migrate.available()]
        rows = await conns[0].fetch("SELECT version FROM mailerd_migrations ORDER BY version")
        assert [r["version"] for r in rows] == applied
    finally:
        for c in conns:
            await c.close()


async def test_email_log_has_only_the_campaign_lead_index(conn) -> None:  # type: ignore[no-untyped-def]
    """One btree, (campaign_id, lead_id); besides it only the relay's BRIN on tx (almost free on
    insert), nothing else."""
    indexes = await conn.fetch(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'email_log' ORDER BY indexname"
    )
    assert len(indexes) == 2
    assert "USING btree (campaign_id, lead_id)" in indexes[0]["indexdef"]
    assert "USING brin (tx) WITH (pages_per_range='32', autosummarize='on')" in indexes[1]["indexdef"]


async def test_migration_0016_puts_stored_addresses_in_composed_form(conn) -> None:  # type: ignore[no-untyped-def]
    # addresses stored decomposed before the API and imports wrote NFC: a re-import made a second
    # lead, and a decomposed suppression no longer held the composed lead
    decomposed = "jose\u0301@example.com"
    both = "zoe\u0308@example.com"  # an account holding both forms keeps both, unchanged
    await conn.execute(
        "INSERT INTO leads (account_id, email) VALUES (1, $1), (1, $2), (1, $3)",
        decomposed,
        both,
        "zoë@example.com",
    )
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason, source) VALUES (1, $1, 'complaint', 'test')",
        decomposed,
    )
    # an account keeping erased addresses as keyed hashes is left as it is: the hash of the
    # decomposed form would stop matching its rewritten lead, mailed again
    await conn.execute("INSERT INTO leads (account_id, email) VALUES (2, $1)", decomposed)
    erasure_id = await conn.fetchval(
        """INSERT INTO erasures (account_id, email_hashes, lead_ids, requested_by, removed)
           VALUES (2, '{}', '{}', 'test', '{}') RETURNING id"""
    )
    await conn.execute(
        """INSERT INTO erased_suppressions (account_id, email_hash, reason, erasure_id)
           VALUES (2, '\\x00', 'complaint', $1)""",
        erasure_id,
    )
    migration = Path(migrate.__file__).parent / "migrations" / "0016_nfc_addresses.sql"
    await conn.execute(migration.read_text(encoding="utf-8"))
    emails = sorted(r["email"] for r in await conn.fetch("SELECT email FROM leads WHERE account_id = 1"))
    assert emails == sorted(["josé@example.com", both, "zoë@example.com"])
    assert await conn.fetchval("SELECT email FROM suppressions") == "josé@example.com"
    assert await conn.fetchval("SELECT email FROM leads WHERE account_id = 2") == decomposed
