"""The relay's reads by ``tx`` on real Postgres: the BRIN index, not a scan of the partition.

A read of one batch used to scan the whole day's partition (a sequential scan, or the BRIN index
with every new range unsummarised): on a campaign's log each batch cost as much as the log so far.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import orjson
from structlog.testing import capture_logs

from mailerd.db import connect, partitions
from mailerd.db import relay as relay_db
from mailerd.relay import position as position_mod
from mailerd.relay.position import Snapshot
from mailerd.relay.reader import Reader
from mailerd.relay.summaries import Summaries, takes_rows
from tests.integration.relay_rows import log_rows, make_campaign

FLUSHES = 100
ROWS_PER_FLUSH = 250
PARTITION = "email_log_default"  # where relay_rows.NOW's rows land
TABLES = ["email_log", "email_events"]


async def _fill(conn: asyncpg.Connection) -> tuple[int, list[int], Snapshot]:
    """FLUSHES writer flushes; the campaign, its leads and the position just before the last.
    Autovacuum is kept off the partition: it would summarise it (autosummarize) at any moment."""
    await conn.execute(f"ALTER TABLE {PARTITION} SET (autovacuum_enabled = off)")
    await conn.execute(f"ALTER INDEX {await _brin_of(conn, PARTITION)} SET (autosummarize = off)")
    campaign_id, leads = await make_campaign(conn, FLUSHES * ROWS_PER_FLUSH)
    before_last = Snapshot(0, 0)
    for n in range(FLUSHES):
        if n == FLUSHES - 1:
            # Everything before the last flush passed (a snapshot's xmin is the server's oldest
            # running transaction: another test's open one would widen the read).
            xmax = Snapshot.parse(await conn.fetchval("SELECT txid_current_snapshot()::text")).xmax
            before_last = Snapshot(xmax, xmax)
        await log_rows(conn, campaign_id, leads[n * ROWS_PER_FLUSH : (n + 1) * ROWS_PER_FLUSH])
    return campaign_id, leads, before_last


async def _brin_of(conn: asyncpg.Connection, partition: str) -> str:
    table = partition.rsplit("_", 1)[0]
    return next(index for _, leaf, index in await relay_db.brin_indexes(conn, [table]) if leaf == partition)


async def _heap_blocks_of_a_read(conn: asyncpg.Connection, position: Snapshot) -> tuple[int, int]:
    """(blocks the read's scan of the partition visited, blocks of the partition), planned as the
    reader plans its reads."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await relay_db.plan_reads_by_tx(conn)
        snapshot = Snapshot.parse(await conn.fetchval("SELECT txid_current_snapshot()::text"))
        args = (position.xmin, snapshot.xmax, list(snapshot.xip), position.xmax, list(position.xip), 5000)
        plan = orjson.loads(
            await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {relay_db.TABLES['email'].due_sql()}", *args)
        )
    pages = await conn.fetchval("SELECT pg_relation_size($1) / current_setting('block_size')::int", PARTITION)
    scans = [node for node in _nodes(plan[0]["Plan"]) if node.get("Relation Name") == PARTITION]
    assert scans, "the read did not reach the partition"
    visited = 0
    for scan in scans:
        assert scan["Node Type"] == "Bitmap Heap Scan", scan["Node Type"]  # the BRIN, not a seq scan
        visited += scan.get("Exact Heap Blocks", 0) + scan.get("Lossy Heap Blocks", 0)
    return visited, int(pages)


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found += _nodes(child)
    return found


async def test_a_read_of_the_newest_flush_visits_only_its_block_ranges_once_summarised(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    campaign_id, leads, before_last = await _fill(conn)
    unsummarised, pages = await _heap_blocks_of_a_read(conn, before_last)
    assert pages > 4 * 32, pages  # several BRIN ranges (32 pages each)
    assert unsummarised > pages // 2, (unsummarised, pages)  # an unsummarised range always matches

    summarized = await Summaries(pool, TABLES).round()
    assert summarized >= pages // 32

    visited, _ = await _heap_blocks_of_a_read(conn, before_last)
    assert visited <= 2 * 32, (visited, pages)  # the last flush's ranges only

    # A later flush into the last (partial, summarised) range widens its summary: still read.
    second = await conn.fetchval(
        """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject, provider)
           SELECT account_id, 'again', status, segment, from_address, subject, provider
           FROM campaigns WHERE id = $1 RETURNING id""",
        campaign_id,
    )
    position = Snapshot.parse(await conn.fetchval("SELECT txid_current_snapshot()::text"))
    await log_rows(conn, second, leads[:10])
    batch = await Reader(pool, {"email"}, limit=5000).read(position)
    assert sorted(record.lead_id or 0 for record in batch.records) == leads[:10]


async def test_the_reader_plans_its_reads_on_the_tx_index(dsn: str, conn: asyncpg.Connection) -> None:
    """The reader's own reads (the statistics of the partition: no sequential scan of it)."""
    await _fill(conn)
    pool = await connect.create_pool(dsn, min_size=1, max_size=1)  # the reads' connection is ours
    try:
        async with pool.acquire() as own:
            before = await _scans(own)
        reader = Reader(pool, {"email"}, limit=5000)
        position = position_mod.earliest()
        for _ in range(FLUSHES):
            batch = await reader.read(position)
            position = batch.end
            if batch.caught_up:
                break
        async with pool.acquire() as own:
            after = await _scans(own)
    finally:
        await pool.close()
    assert after["seq_scan"] == before["seq_scan"], (before, after)
    assert after["idx_scan"] > before["idx_scan"], (before, after)


async def _scans(conn: asyncpg.Connection) -> dict[str, int]:
    """The partition's scan counts, with this session's own reads counted (flushed first)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")  # flushed when this statement ends
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT seq_scan, coalesce(idx_scan, 0) AS idx_scan FROM pg_stat_user_tables WHERE relname = $1",
        PARTITION,
    )
    assert row is not None
    return dict(row)


async def test_a_role_that_may_not_summarise_is_told_once_and_the_reads_go_on(
    dsn: str, conn: asyncpg.Connection
) -> None:
    campaign_id, leads = await make_campaign(conn, 50)
    await log_rows(conn, campaign_id, leads)
    role = f"mailerd_reader_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role}")
    try:
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        pool = await connect.create_pool(dsn, min_size=1, max_size=2, server_settings={"role": role})
        try:
            summaries = Summaries(pool, TABLES)
            with capture_logs() as logged:
                assert await summaries.round() == 0
            assert summaries.refused
            assert [entry["event"] for entry in logged] == ["relay_brin_summaries_refused"]
            batch = await Reader(pool, {"email"}, limit=5000).read(position_mod.earliest())
            assert len(batch.records) == len(leads)
        finally:
            await pool.close()
    finally:
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        await conn.execute(f"DROP ROLE {role}")


async def test_the_first_round_covers_every_day_and_later_rounds_only_the_days_taking_rows(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """A relay days behind reads old days too: its lead's first round summarises them."""
    today = await partitions.database_today(conn)
    old_day = today - dt.timedelta(days=5)
    await partitions.create_day(conn, "email_log", old_day)
    campaign_id, leads = await make_campaign(conn, 4000)
    old_rows = [
        (
            dt.datetime(old_day.year, old_day.month, old_day.day, 12, tzinfo=dt.UTC),
            campaign_id,
            lead,
            1,
            "m",
            None,
        )
        for lead in leads
    ]

    async def write_old_day() -> None:
        await conn.copy_records_to_table(
            "email_log",
            records=old_rows,
            columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
        )

    await write_old_day()
    summaries = Summaries(pool, TABLES)
    await summaries.round()
    assert await _unsummarised(conn, partitions.partition_name("email_log", old_day)) == 0

    await write_old_day()  # new ranges of an old day (a late row): left to autovacuum
    await summaries.round()
    assert await _unsummarised(conn, partitions.partition_name("email_log", old_day)) > 0


async def _unsummarised(conn: asyncpg.Connection, partition: str) -> int:
    """How many block ranges of ``partition``'s BRIN index had no summary (it summarises them:
    a summary is written to the index at once, not undone by a rollback)."""
    return int(
        await conn.fetchval("SELECT brin_summarize_new_values($1::regclass)", await _brin_of(conn, partition))
    )


def test_the_partitions_summarised_are_those_that_take_rows() -> None:
    today = dt.date(2026, 12, 7)
    assert takes_rows("email_log", "email_log_default", today)
    assert takes_rows("email_log", "email_log_p20261207", today)
    assert takes_rows("email_events", "email_events_p20261208", today)  # created ahead
    assert takes_rows("email_log", "email_log_p20261206", today)  # just before midnight, committed after it
    assert not takes_rows("email_log", "email_log_p20261205", today)
