"""``shard_released`` says ``clean`` as stored (``campaign_shards.released_clean``): it said
``clean=true`` after a clean release that failed on the claim connection (the next owner then
treats the shard as crashed, logging its reserved leads ``unknown``), ``clean=false`` after one
written through the pool once the claim connection had dropped, and nothing at all when that
retry was cancelled (the drain deadline). And a claim connection whose session ended during the
release (a server restart, a terminated backend) left the shard unclean: the release is now
written through the pool, as when the connection had dropped before it. Found by a review."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from mailerd import campaigns, providers, shard, splitting
from mailerd.campaign_caps import CampaignCaps
from mailerd.config import WriterConfig
from mailerd.db import campaigns as campaigns_db
from mailerd.db import connect
from mailerd.db import shards as shards_db
from mailerd.stages import LaneQueue, ProviderLane
from mailerd.writer import Writer
from tests.integration.helpers import daemon_config, new_campaign


@pytest.fixture
async def claimed(conn: asyncpg.Connection, dsn: str, pool: asyncpg.Pool) -> AsyncIterator[shard.ShardRun]:
    """A shard claimed as the scheduler claims it."""
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await shards_db.create(conn, campaign_id, [1000])
    claim = await connect.connect(dsn)
    assert await shards_db.try_lock(claim, campaign_id, 0)
    async with claim.transaction():
        row = await shards_db.take(claim, campaign_id, 0, "test-node")
        assert row is not None
        await shards_db.mark_unclean(claim, campaign_id, 0)
    lane = ProviderLane(
        name="sink",
        provider=providers.create(daemon_config(1).provider("sink")),
        queue=LaneQueue(maxsize=4),
        batch_size=50,
        workers=1,
        reservation_step=50,
        caps=CampaignCaps("sink"),
    )
    campaign = splitting.campaign_from_row(await campaigns_db.get(conn, campaign_id))
    run = shard.ShardRun(
        campaign=campaign, row=row, claim=claim, pool=pool, lane=lane, sink=Writer(pool, WriterConfig()),
        window_size=1000,
    )  # fmt: skip
    try:
        yield run
    finally:
        claim.terminate()


async def _stored(conn: asyncpg.Connection, run: shard.ShardRun) -> bool:
    query = "SELECT released_clean FROM campaign_shards WHERE campaign_id = $1 AND shard_no = 0"
    return bool(await conn.fetchval(query, run.campaign_id))


def _released(logs: list[dict[str, Any]]) -> list[bool]:
    return [entry["clean"] for entry in logs if entry["event"] == "shard_released"]


async def _row_locked(dsn: str, run: shard.ShardRun) -> asyncpg.Connection:
    """Another session holding the shard's row (a long transaction): a release waits for it."""
    other = await asyncpg.connect(dsn)
    await other.execute("BEGIN")
    await other.execute(
        "SELECT 1 FROM campaign_shards WHERE campaign_id = $1 AND shard_no = 0 FOR UPDATE", run.campaign_id
    )
    return other


async def _waiting_for_the_row(conn: asyncpg.Connection, pid: int | None = None) -> None:
    """Until a session (``pid``, or any) waits for a lock."""
    query = """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'
                 AND ($1::int IS NULL OR pid = $1)"""
    async with asyncio.timeout(10):
        while not await conn.fetchval(query, pid):
            await asyncio.sleep(0.02)


async def test_a_release_that_failed_on_the_claim_connection_is_logged_not_clean(
    conn: asyncpg.Connection, dsn: str, claimed: shard.ShardRun
) -> None:
    await claimed._claim.execute("SET statement_timeout = 500")
    other = await _row_locked(dsn, claimed)
    try:
        with capture_logs() as logs:
            await claimed._release(True)  # its UPDATE times out behind the lock
    finally:
        await other.close()
    assert [e["event"] for e in logs if e["event"] == "shard_release_failed"]
    assert not await _stored(conn, claimed)
    assert _released(logs) == [False]


async def test_a_claim_connection_lost_in_the_release_is_released_through_the_pool(
    conn: asyncpg.Connection, dsn: str, claimed: shard.ShardRun
) -> None:
    other = await _row_locked(dsn, claimed)
    try:
        with capture_logs() as logs:
            release = asyncio.create_task(claimed._release(True))
            claim_pid = claimed._claim.get_server_pid()
            await _waiting_for_the_row(conn, claim_pid)
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", claim_pid)
            await _waiting_for_the_row(conn)  # through the pool now, behind the same row
            await other.execute("ROLLBACK")
            async with asyncio.timeout(10):
                await release
    finally:
        await other.close()
    assert await _stored(conn, claimed)
    assert _released(logs) == [True]


async def test_a_release_through_the_pool_is_logged_clean(
    conn: asyncpg.Connection, claimed: shard.ShardRun
) -> None:
    claimed._claim.terminate()  # the claim connection dropped; every batch resolved
    with capture_logs() as logs:
        await claimed._release(True)
    assert await _stored(conn, claimed)
    assert _released(logs) == [True]


async def test_a_release_through_the_pool_given_up_is_logged_not_clean(
    conn: asyncpg.Connection, dsn: str, claimed: shard.ShardRun
) -> None:
    claimed._pool = closed = await connect.create_pool(dsn, min_size=0, max_size=1)
    await closed.close()  # every try fails: the release retries until cancelled (the deadline)
    claimed._claim.terminate()
    with capture_logs() as logs:
        release = asyncio.create_task(claimed._release(True))
        async with asyncio.timeout(10):
            while not any(e["event"] == "shard_release_retrying" for e in logs):
                await asyncio.sleep(0.02)
        release.cancel()
        with pytest.raises(asyncio.CancelledError):
            await release
    assert not await _stored(conn, claimed)
    assert _released(logs) == [False]
