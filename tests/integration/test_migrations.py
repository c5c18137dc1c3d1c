"""Migrations: applied once, idempotent, and safe when two run at the same moment."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path

from mailerd import idn
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


# Domains in many scripts, as a provider reports them (Python's IDNA codec, as mailerd sends)
IDN_DOMAINS = [
    "bücher.de",
    "mail.münchen.de",
    "例え.jp",
    "пример.рф",
    "ελληνικά.gr",
    "日本語.ドメイン名例.jp",
    "한국어.kr",
    "café.fr",
    "mañana.es",
    "ü.example",
    "中文网.cn",
]


async def test_migration_0019_adds_the_unicode_spelling_of_an_idn_suppression(conn) -> None:  # type: ignore[no-untyped-def]
    # SES reported the A-label spelling it was sent, and the suppression stored it: it held
    # nobody (the lead stream compares lower(leads.email), the Unicode spelling). The migration
    # reads the suppressions alone: reading the events that made them scanned every event.
    reported = {
        f"u{n}@{idn.a_label_address('x@' + d).rpartition('@')[2]}": d for n, d in enumerate(IDN_DOMAINS)
    }
    assert all("xn--" in address for address in reported)
    await conn.executemany(
        """INSERT INTO suppressions (account_id, email, reason, source, at)
           VALUES (1, $1, 'complaint', 'ses', now())""",
        [(address,) for address in reported],
    )
    await conn.execute(
        """INSERT INTO suppressions (account_id, email, reason, source, at) VALUES
           (2, 'ann@xn--bcher-kva.de', 'hard_bounce', 'ses', '2026-01-02'),
           (2, 'ann@bücher.de', 'hard_bounce', 'api', '2026-01-01'),  -- both there already
           (2, 'bob@strasse.de', 'hard_bounce', 'ses', '2026-01-03'),  -- IDNA 2003's straße.de: left
           (2, 'eve@xn--zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.de', 'hard_bounce', 'ses', '2026-01-04'),  -- no IDN
           (2, 'x@xn--9016146o.de', 'hard_bounce', 'ses', '2026-01-04'),  -- a code point past 2^31
           (2, 'x@xn--w416146o.example', 'hard_bounce', 'ses', '2026-01-04'),
           (2, 'joe@example.com', 'hard_bounce', 'ses', '2026-01-05')"""
    )
    migration = Path(migrate.__file__).parent / "migrations" / "0019_idn_suppressions.sql"
    await conn.execute(migration.read_text(encoding="utf-8"))
    added = await conn.fetch("SELECT account_id, email, action, source FROM suppression_audit ORDER BY email")
    expected = sorted(idn.u_label_address(address) for address in reported)
    assert [r["email"] for r in added] == expected
    assert {(r["account_id"], r["action"], r["source"]) for r in added} == {(1, "added", "migration 0019")}
    assert expected == sorted(f"u{n}@{unicodedata.normalize('NFC', d)}" for n, d in enumerate(IDN_DOMAINS))
    kept = await conn.fetch(
        "SELECT email, reason, source FROM suppressions WHERE account_id = 2 ORDER BY email"
    )
    assert [r["email"] for r in kept] == [
        "ann@bücher.de",
        "ann@xn--bcher-kva.de",
        "bob@strasse.de",
        "eve@xn--zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.de",
        "joe@example.com",
        "x@xn--9016146o.de",
        "x@xn--w416146o.example",
    ]
    copied = await conn.fetchrow("SELECT reason, source FROM suppressions WHERE email = $1", expected[0])
    assert tuple(copied) == ("complaint", "ses")
    await conn.execute(migration.read_text(encoding="utf-8"))  # again: nothing more
    assert await conn.fetchval("SELECT count(*) FROM suppression_audit") == len(reported)
