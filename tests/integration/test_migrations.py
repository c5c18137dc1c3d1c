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


async def test_migration_0019_adds_the_lead_spelling_of_an_idn_suppression(conn) -> None:  # type: ignore[no-untyped-def]
    # SES reported the A-label spelling it was sent, and the suppression stored it: it held
    # nobody (the lead stream compares lower(leads.email), the Unicode spelling)
    leads = await conn.fetch(
        """INSERT INTO leads (account_id, email)
           VALUES (1, 'Ann@Bücher.de'), (1, 'bob@straße.de'), (1, 'eve@bücher.de'), (2, 'ann@bücher.de')
           RETURNING id"""
    )
    ann, bob, eve, other = (r["id"] for r in leads)
    await conn.execute(
        """INSERT INTO suppressions (account_id, email, reason, source, at) VALUES
           (1, 'ann@xn--bcher-kva.de', 'complaint', 'ses', '2026-01-02'),
           (1, 'bob@strasse.de', 'hard_bounce', 'ses', '2026-01-03'),
           (1, 'zed@xn--bcher-kva.de', 'hard_bounce', 'ses', '2026-01-04')"""
    )
    await conn.executemany(
        """INSERT INTO email_events (occurred_at, account_id, lead_id, email, kind, provider)
           VALUES (now(), $1, $2, $3, 'complaint', 'ses')""",
        [
            (1, ann, "ann@xn--bcher-kva.de"),
            (1, ann, "ann@xn--bcher-kva.de"),  # redelivered under another receipt
            (1, bob, "bob@strasse.de"),
            (1, eve, "zed@xn--bcher-kva.de"),  # another local part: not this lead's address
            (2, other, "ann@xn--bcher-kva.de"),  # account 2 has no such suppression
        ],
    )
    migration = Path(migrate.__file__).parent / "migrations" / "0019_idn_suppressions.sql"
    await conn.execute(migration.read_text(encoding="utf-8"))
    rows = await conn.fetch(
        "SELECT account_id, email, reason, source FROM suppressions ORDER BY account_id, email"
    )
    assert [tuple(r) for r in rows] == [
        (1, "ann@bücher.de", "complaint", "ses"),
        (1, "ann@xn--bcher-kva.de", "complaint", "ses"),
        (1, "bob@strasse.de", "hard_bounce", "ses"),
        (1, "bob@straße.de", "hard_bounce", "ses"),
        (1, "zed@xn--bcher-kva.de", "hard_bounce", "ses"),
    ]
    audit = await conn.fetch("SELECT email, action, source FROM suppression_audit ORDER BY email")
    assert [tuple(r) for r in audit] == [
        ("ann@bücher.de", "added", "migration 0019"),
        ("bob@straße.de", "added", "migration 0019"),
    ]
    await conn.execute(migration.read_text(encoding="utf-8"))  # again: nothing more
    assert await conn.fetchval("SELECT count(*) FROM suppression_audit") == 2
