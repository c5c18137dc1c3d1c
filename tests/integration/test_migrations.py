"""Migrations: applied once, idempotent, and safe when two run at the same moment."""

from __future__ import annotations

import asyncio

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
