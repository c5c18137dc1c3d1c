"""The writer fences each claim on its own, and finished campaigns are always closed."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid

import asyncpg
import pytest

from mailerd import campaigns, metrics
from mailerd import config as config_mod
from mailerd.db import connect
from mailerd.models import Event, EventKind, LogStatus
from mailerd.scheduler import Scheduler
from mailerd.shard import Ledger
from mailerd.writer import Entry, ShardLost, Writer
from tests.integration.helpers import add_leads, daemon_config, new_campaign


@dataclasses.dataclass
class Claim:
    """A stand-in for one claim of a shard (what the writer needs of a ShardRun)."""

    campaign_id: int
    shard_no: int
    epoch: int
    lead_id_to: int
    ledger: Ledger
    provider_name: str = "sink"
    lost: bool = False

    def checkpoint_if_logged(self, complete: set[int]) -> tuple[int, bool]:
        checkpoint = self.ledger.checkpoint_if_logged(complete)
        return checkpoint, checkpoint >= self.lead_id_to

    def on_logged(self, seqs: set[int], complete: set[int]) -> None:
        self.ledger.mark_logged(seqs, complete)

    def on_lost(self) -> None:
        self.lost = True


async def _campaign_with_shard(conn: asyncpg.Connection, epoch: int) -> int:
    await add_leads(conn, 1, 30)
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    await conn.execute(
        """INSERT INTO campaign_shards
               (campaign_id, shard_no, lead_id_from, lead_id_to, checkpoint, reserved_upto, epoch)
           VALUES ($1, 0, 0, 1000, 0, 1000, $2)""",
        campaign_id,
        epoch,
    )
    return campaign_id


async def test_rows_of_an_earlier_claim_are_fenced_apart_from_the_current_one(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    campaign_id = await _campaign_with_shard(conn, epoch=2)
    stale = Claim(campaign_id, 0, 1, 1000, Ledger(0))
    current = Claim(campaign_id, 0, 2, 1000, Ledger(0))
    stale.ledger.add(1, 10)
    current.ledger.add(1, 20)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=10))
    task = asyncio.create_task(writer.run())
    now = dt.datetime.now(dt.UTC)
    late = await writer.submit(stale, 1, [(now, campaign_id, 5, LogStatus.SENT, "m-old", None)])
    fresh = await writer.submit(current, 1, [(now, campaign_id, 15, LogStatus.SENT, "m-new", None)])
    await fresh
    with pytest.raises(ShardLost):
        await late
    writer.close()
    await task
    assert stale.lost and not current.lost
    rows = await conn.fetch("SELECT lead_id FROM email_log WHERE campaign_id = $1", campaign_id)
    assert [r["lead_id"] for r in rows] == [15]
    assert current.ledger.checkpoint == 20


async def test_a_campaign_whose_shards_are_all_done_is_finished_by_the_sweep(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    campaign_id = await _campaign_with_shard(conn, epoch=1)
    await conn.execute("UPDATE campaigns SET status = 'running' WHERE id = $1", campaign_id)
    await conn.execute("UPDATE campaign_shards SET state = 'done' WHERE campaign_id = $1", campaign_id)
    config = daemon_config(1)
    scheduler = Scheduler(
        config=config, dsn=dsn, pool=pool, lanes={}, sink=Writer(pool, config.writer), stop=asyncio.Event()
    )
    await scheduler._finish_done()
    assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id) == "finished"


async def test_a_retried_flush_that_had_committed_is_not_written_twice(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """The connection died during COMMIT, after the server committed: the retry finds the flush
    id, does only the bookkeeping, and writes no second row."""
    campaign_id = await _campaign_with_shard(conn, epoch=1)
    claim = Claim(campaign_id, 0, 1, 1000, Ledger(0))
    claim.ledger.add(1, 10)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=10))
    now = dt.datetime.now(dt.UTC)
    row = (now, campaign_id, 5, LogStatus.SENT, "m-1", None)
    await conn.copy_records_to_table(
        "email_log",
        records=[row],
        columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
    )
    flush_id = uuid.uuid4()
    await conn.execute("INSERT INTO writer_flushes (id) VALUES ($1)", flush_id)
    entry = Entry(claim, 1, [row], 0, True, asyncio.get_running_loop().create_future())
    writer._retry = (flush_id, [entry])
    writer._rows = 1
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(entry.done, 5)
    writer.close()
    await task
    assert await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id) == 1
    assert claim.ledger.checkpoint == 10


async def test_a_retried_flush_whose_first_attempt_commits_during_the_retry_is_not_written_twice(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    """The connection died during COMMIT while the server was still committing (a slow fsync, a
    synchronous standby): the retry's look-up found no flush id, and its own insert of the id then
    met the first attempt's, committed meanwhile (23505). That was taken for bad data: the flush
    was split and written again under new ids, every row twice. Now it is the committed flush."""
    campaign_id = await _campaign_with_shard(conn, epoch=1)
    claim = Claim(campaign_id, 0, 1, 1000, Ledger(0))
    claim.ledger.add(1, 10)
    claim.ledger.add(2, 20)
    now = dt.datetime.now(dt.UTC)
    rows = [
        (now, campaign_id, 5, LogStatus.SENT, "m-5", None),
        (now, campaign_id, 15, LogStatus.SENT, "m-15", None),
    ]
    loop = asyncio.get_running_loop()
    entries = [
        Entry(claim, seq, [row], 0, True, loop.create_future()) for seq, row in ((1, rows[0]), (2, rows[1]))
    ]
    flush_id = uuid.uuid4()
    first = await asyncpg.connect(dsn)  # the first attempt's transaction, not committed yet
    try:
        async with first.transaction():
            await first.execute("INSERT INTO writer_flushes (id) VALUES ($1)", flush_id)
            await first.copy_records_to_table(
                "email_log",
                records=rows,
                columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
            )
            await first.execute(
                "UPDATE campaign_stats SET sent = sent + 2 WHERE campaign_id = $1", campaign_id
            )
            await first.execute(
                "UPDATE campaign_shards SET checkpoint = 20 WHERE campaign_id = $1", campaign_id
            )
            writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=10))
            writer._retry = (flush_id, entries)
            writer._rows = 2
            task = asyncio.create_task(writer.run())
            async with asyncio.timeout(10):
                while not await conn.fetchval("SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted)"):
                    await asyncio.sleep(0.01)
        async with asyncio.timeout(20):
            await asyncio.gather(*(e.done for e in entries))
    finally:
        await first.close()
    writer.close()
    await asyncio.wait_for(task, 10)
    logged = await conn.fetch(
        "SELECT lead_id FROM email_log WHERE campaign_id = $1 ORDER BY lead_id", campaign_id
    )
    assert [r["lead_id"] for r in logged] == [5, 15]
    assert await conn.fetchval("SELECT sent FROM campaign_stats WHERE campaign_id = $1", campaign_id) == 2
    assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
    assert claim.ledger.checkpoint == 20 and not claim.lost


async def test_two_nodes_flushing_the_same_campaigns_do_not_deadlock(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """A flush adds to campaign_stats for its batches first and for its webhooks' events later.
    Node 1 sending campaign A while taking webhooks about B, node 2 the reverse: each held one
    row and waited for the other's, and Postgres broke the deadlock after deadlock_timeout by
    failing one flush (a second's stall, flush_failed, /readyz 503 meanwhile). A flush now locks
    all the counters it adds to first, in campaign id order."""
    await add_leads(conn, 1, 30)
    ids = [await campaigns.create(conn, new_campaign(), daemon_config(1)) for _ in range(2)]
    for campaign_id in ids:
        for shard_no in (0, 1):
            await conn.execute(
                """INSERT INTO campaign_shards (campaign_id, shard_no, lead_id_from, lead_id_to,
                                                checkpoint, reserved_upto, epoch)
                   VALUES ($1, $2, $3::bigint, $3::bigint + 1000, $3::bigint, $3::bigint + 1000, 1)""",
                campaign_id,
                shard_no,
                shard_no * 1000,
            )
    pools = [await connect.create_pool(dsn, min_size=1, max_size=2) for _ in range(2)]
    writers = [Writer(p, config_mod.WriterConfig(flush_interval_ms=10)) for p in pools]
    tasks = [asyncio.create_task(w.run()) for w in writers]
    failures = metrics.FLUSH_FAILURES._value.get()
    now = dt.datetime.now(dt.UTC)
    try:
        async with conn.transaction():
            # Both nodes' flushes wait here for their batch's campaign, then go at once.
            await conn.execute("SELECT 1 FROM campaign_stats WHERE campaign_id = ANY($1) FOR UPDATE", ids)
            futures = []
            for node, (sending, other) in enumerate((ids, ids[::-1])):
                claim = Claim(sending, node, 1, node * 1000 + 1000, Ledger(node * 1000))
                claim.ledger.add(1, node * 1000 + 10)
                row = (now, sending, node * 1000 + 5, LogStatus.SENT, "m", None)
                futures.append(await writers[node].submit(claim, 1, [row]))
                event = Event(
                    "sink", EventKind.DELIVERED, now, None, f"r{node}", campaign_id=other, lead_id=1
                )
                futures.append(await writers[node].submit_events([event]))
            async with asyncio.timeout(10):
                while await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted") < 2:
                    await asyncio.sleep(0.01)
        async with asyncio.timeout(20):
            await asyncio.gather(*futures)
    finally:
        for writer in writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for p in pools:
            await p.close()
    assert metrics.FLUSH_FAILURES._value.get() == failures
    counters = await conn.fetch(
        "SELECT sent, delivered FROM campaign_stats WHERE campaign_id = ANY($1) ORDER BY campaign_id", ids
    )
    assert [tuple(r) for r in counters] == [(1, 1), (1, 1)]
