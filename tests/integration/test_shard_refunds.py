"""What a shard took for leads it then does not dispatch goes back: a batch leaving long after its
window was read drops the leads deleted meanwhile (``shard.STALE_WINDOW_S``), and their
campaign-cap tokens were kept (the campaign's next batch waited for them again); a re-check
that failed kept the whole batch's quota share; batches taken back out of the lane's queue kept
their [pace] group's tokens. The rates are taken after the quota wait. One claimed shard, its
campaign's cap and its group in virtual time, the real writer and quota."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from mailerd import campaigns, pace, providers, quota, quota_gate, shard, splitting
from mailerd.campaign_caps import CampaignCaps
from mailerd.config import WriterConfig
from mailerd.db import campaigns as campaigns_db
from mailerd.db import connect
from mailerd.db import erasure as erasure_db
from mailerd.db import shards as shards_db
from mailerd.erasure import RecentErasures
from mailerd.models import Batch, Campaign, Lead
from mailerd.ratelimit import TokenBucket
from mailerd.sender import ProviderSender
from mailerd.stages import LaneQueue, ProviderLane, QuotaTaker
from mailerd.writer import Writer
from tests.integration.helpers import daemon_config, new_campaign

BATCH = 50
RATE = 50.0  # the campaign's: its bucket holds one batch, the second waits 1 s (virtual)


@pytest.fixture
async def writer(pool: asyncpg.Pool) -> AsyncIterator[Writer]:
    running = Writer(pool, WriterConfig(flush_interval_ms=10))
    task = asyncio.create_task(running.run())
    yield running
    running.close()
    await asyncio.wait_for(task, 10)


class Cap:
    """The campaign's cap on a virtual clock; ``during_wait`` runs while a batch waits."""

    def __init__(self, during_wait: Callable[[], Awaitable[None]]) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.pace_waits: list[float] = []
        self._during_wait = during_wait
        self.caps = CampaignCaps("sink", clock=lambda: self.now, sleep=self._sleep)

    async def _sleep(self, seconds: float, stopped: asyncio.Event) -> None:
        self.waits.append(seconds)
        self.now += seconds
        await self._during_wait()

    async def sleep_for_pace(self, seconds: float, stopped: asyncio.Event) -> None:
        """A [pace] group's wait, on the same virtual clock."""
        self.pace_waits.append(seconds)
        self.now += seconds


async def _leads(conn: asyncpg.Connection, count: int) -> list[int]:
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@example.com", {"plan": "pro"}) for n in range(count)],
        columns=("account_id", "email", "attributes"),
    )
    return [r["id"] for r in await conn.fetch("SELECT id FROM leads ORDER BY id")]


async def _claimed(conn: asyncpg.Connection, dsn: str, upto: int) -> tuple[Campaign, asyncpg.Record, Any]:
    """A capped campaign with one shard over every lead, claimed as the scheduler claims it."""
    campaign_id = await campaigns.create(conn, new_campaign(rate_per_s=RATE, start=False), daemon_config(1))
    await shards_db.create(conn, campaign_id, [upto])
    claim = await connect.connect(dsn)
    row = await shards_db.take(claim, campaign_id, 0, "test-node")
    assert row is not None
    return splitting.campaign_from_row(await campaigns_db.get(conn, campaign_id)), row, claim


def _run(
    campaign: Campaign,
    row: asyncpg.Record,
    claim: Any,
    pool: asyncpg.Pool,
    writer: Writer,
    cap: Cap,
    gate: QuotaTaker | None = None,
    paced: dict[str, TokenBucket] | None = None,
    queue_size: int = 16,
) -> tuple[shard.ShardRun, ProviderLane]:
    lane = ProviderLane(
        name="sink",
        provider=providers.create(daemon_config(1).provider("sink")),
        queue=LaneQueue(maxsize=queue_size),
        batch_size=BATCH,
        workers=1,
        reservation_step=BATCH,
        caps=cap.caps,
        quota=gate,
        pace=pace.LanePace(paced, "sink", sleep=cap.sleep_for_pace) if paced else None,
    )
    run = shard.ShardRun(
        campaign=campaign, row=row, claim=claim, pool=pool, lane=lane, sink=writer, window_size=1000
    )
    return run, lane


def _queued(lane: ProviderLane) -> list[list[int]]:
    items: Any = lane.queue._queue  # type: ignore[attr-defined]  # what waits for the senders
    return [[lead.id for lead in batch.leads] for _, batch in items]


async def test_leads_deleted_while_their_batch_waited_give_back_their_cap_tokens(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard, "STALE_WINDOW_S", -1.0)  # every batch re-checks its leads
    ids = await _leads(conn, 3 * BATCH)
    second = ids[BATCH : 2 * BATCH]

    async def delete_the_second_batch() -> None:  # while it waits for its tokens
        await conn.execute("DELETE FROM leads WHERE id = ANY($1::bigint[])", second)

    cap = Cap(delete_the_second_batch)
    run, lane = _run(*await _claimed(conn, dsn, ids[-1]), pool, writer, cap)
    task = asyncio.create_task(run.run())
    try:
        async with asyncio.timeout(20):
            while len(queued := _queued(lane)) < 2:
                await asyncio.sleep(0.01)
    finally:
        run.stop("test")
        await asyncio.wait_for(task, 20)
        await lane.provider.close()
    assert queued == [ids[:BATCH], ids[2 * BATCH :]]
    # the first batch went at once (a full bucket), the second waited 1 s and was dropped whole;
    # the third had its tokens (it waited 1 s more, for the leads that were not sent)
    assert cap.waits == [1.0]


async def test_leads_suppressed_while_their_batch_waited_are_logged_suppressed_not_sent(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A complaint (or an operator's entry) arrives while the second batch waits for its rate: its
    # window was read before, and the re-check found the leads present, so they were mailed
    monkeypatch.setattr(shard, "STALE_WINDOW_S", -1.0)
    ids = await _leads(conn, 3 * BATCH)
    second = ids[BATCH : 2 * BATCH]

    async def suppress_the_second_batch() -> None:  # while it waits for its tokens
        await conn.execute(
            """INSERT INTO suppressions (account_id, email, reason, source)
               SELECT account_id, lower(email), 'complaint', 'ses' FROM leads WHERE id = ANY($1::bigint[])
               ON CONFLICT DO NOTHING""",
            second,
        )

    cap = Cap(suppress_the_second_batch)
    run, lane = _run(*await _claimed(conn, dsn, ids[-1]), pool, writer, cap)
    task = asyncio.create_task(run.run())
    try:
        async with asyncio.timeout(20):
            while len(queued := _queued(lane)) < 2:
                await asyncio.sleep(0.01)
            while await conn.fetchval("SELECT count(*) FROM email_log") < BATCH:
                await asyncio.sleep(0.01)
    finally:
        run.stop("test")
        await asyncio.wait_for(task, 20)
        await lane.provider.close()
    assert queued == [ids[:BATCH], ids[2 * BATCH :]]
    logged = await conn.fetch("SELECT lead_id, status, error FROM email_log ORDER BY lead_id")
    assert [tuple(r) for r in logged] == [(lead, 4, "suppressed") for lead in second]
    assert cap.waits == [1.0]  # their cap tokens went back


async def test_a_failed_recheck_gives_back_the_batchs_quota_share(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard, "STALE_WINDOW_S", -1.0)
    ids = await _leads(conn, 2 * BATCH)
    reads = await connect.create_pool(dsn, min_size=1, max_size=2)  # the shard's: it goes away
    gate = quota_gate.QuotaGate("sink", pool, quota.Schedule(daily_quota=10_000), step=BATCH)

    async def lose_the_database() -> None:  # while the second batch waits for its tokens
        await reads.close()

    cap = Cap(lose_the_database)
    run, lane = _run(*await _claimed(conn, dsn, ids[-1]), reads, writer, cap, gate)
    try:
        await asyncio.wait_for(run.run(), 20)  # the re-check failed: the shard is lost, released
    finally:
        await lane.provider.close()
    assert run.lost and "reading leads failed" in run.stop_reason
    # nothing was dispatched: every share reserved is back, the first batch's (taken back from
    # the queue, as before) and the second's (it had taken its share and was not dispatched)
    reserved = await conn.fetchval("SELECT sum(reserved) FROM provider_quota_hours WHERE provider = 'sink'")
    assert reserved >= 2 * BATCH and gate.allowance == reserved
    # and its cap tokens: the campaign's next batch does not wait for them again
    assert await cap.caps.acquire(run.campaign, BATCH, asyncio.Event())
    assert cap.waits == [1.0]


async def test_batches_taken_back_unsent_give_back_their_groups_tokens(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, writer: Writer
) -> None:
    ids = await _leads(conn, 2 * BATCH)
    cap = Cap(lambda: asyncio.sleep(0))  # the campaign's rate: one batch at once, the next waits 1 s
    group = TokenBucket(1.0, 2 * BATCH, clock=lambda: cap.now)  # [pace] 1/s, a burst of both
    run, lane = _run(*await _claimed(conn, dsn, ids[-1]), pool, writer, cap, paced={"example.com": group})
    task = asyncio.create_task(run.run())
    try:
        async with asyncio.timeout(20):
            while len(_queued(lane)) < 2:
                await asyncio.sleep(0.01)
        assert group.tokens() < BATCH  # both batches took their group's tokens at dispatch
        run.stop("paused")  # both are taken back out of the queue, never sent
        await asyncio.wait_for(task, 20)
    finally:
        await lane.provider.close()
    assert _queued(lane) == [] and await conn.fetchval("SELECT count(*) FROM email_log") == 0
    # nothing was sent: the next batches of the group (any campaign on the node) have them
    assert group.tokens() == 2 * BATCH
    assert await cap.caps.acquire(run.campaign, BATCH, asyncio.Event())  # and the campaign's


class HeldQuota:
    """A provider's daily quota used up until ``opened`` is set."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.waiting = 0

    async def acquire(self, count: int, stopped: asyncio.Event) -> bool:
        self.waiting += 1
        await self.opened.wait()
        return True

    def refund(self, count: int) -> None:
        pass


async def test_a_batch_takes_its_rate_tokens_after_the_quota_wait(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, writer: Writer
) -> None:
    # the group's tokens were taken before the quota wait: after hours of waiting, every batch
    # that waited reached the provider at once, far above the group's rate
    ids = await _leads(conn, 2 * BATCH)
    cap = Cap(lambda: asyncio.sleep(0))
    group = TokenBucket(1.0, BATCH, clock=lambda: cap.now)
    held = HeldQuota()
    run, lane = _run(
        *await _claimed(conn, dsn, ids[-1]), pool, writer, cap, held, paced={"example.com": group}
    )
    task = asyncio.create_task(run.run())
    try:
        async with asyncio.timeout(20):
            while not held.waiting:
                await asyncio.sleep(0.01)
        # waiting for the quota, the batch holds none of the campaign's or the group's tokens
        assert group.tokens() == BATCH and cap.waits == [] and cap.pace_waits == []
        held.opened.set()
        async with asyncio.timeout(20):
            while len(_queued(lane)) < 2:
                await asyncio.sleep(0.01)
    finally:
        run.stop("test")
        await asyncio.wait_for(task, 20)
        await lane.provider.close()
    # then each batch waits for the rates in turn: the second one batch's worth of the group
    assert cap.pace_waits == [pytest.approx(BATCH / 1.0, abs=1.0)]


class CountingQuota:
    """A daily quota that always has room and counts what is given back."""

    def __init__(self) -> None:
        self.given_back = 0

    async def acquire(self, count: int, stopped: asyncio.Event) -> bool:
        return True

    def refund(self, count: int) -> None:
        self.given_back += count


async def _nothing(campaign: Campaign, reason: str) -> None:
    return None


@pytest.mark.parametrize("erased", [4, 2])
async def test_leads_dropped_as_erased_give_back_what_they_took_once(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, writer: Writer, erased: int
) -> None:
    # the sender gave the dropped leads' group tokens back, then, the provider having taken
    # nothing (all erased; or the rest refused), gave the whole batch's back again: 8 of 4
    ids = await _leads(conn, 4)
    await erasure_db.record(conn, 1, [], ids[:erased], "test")
    recent = RecentErasures()
    await recent.refresh(conn)
    cap = Cap(lambda: asyncio.sleep(0))
    group = TokenBucket(1.0, 10, clock=lambda: 0.0)  # time stands still
    counted = CountingQuota()
    run, lane = _run(
        *await _claimed(conn, dsn, ids[-1]), pool, writer, cap, counted, paced={"example.com": group}
    )
    assert group.reserve(10) == 0  # the shard took the batch's 4 at dispatch (and 6 others went)
    provider = dataclasses.replace(daemon_config(1).provider("sink"), max_attempts=1)
    sender = ProviderSender(lane, provider, writer, _nothing, _nothing, erased=recent)
    batch = Batch(
        run.campaign, 0, 1, [Lead(i, f"user{n}@example.com", {}) for n, i in enumerate(ids)], ids[-1]
    )
    run.ledger.add(batch.seq, batch.upto)
    try:
        # (the provider, on a port nobody listens on, takes none of the others)
        await asyncio.wait_for(sender._send(run, batch), 20)
    finally:
        await lane.provider.close()
        await run._claim.close()
    assert counted.given_back == 4 and group.tokens() == 4.0


async def test_a_batch_put_as_its_shard_stops_is_given_back_once(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str, writer: Writer
) -> None:
    # stop() took a queued batch out, which let a waiting put through; a sender worker took that
    # batch and gave it back, and the put, backing out, found it gone and gave it back again
    ids = await _leads(conn, 4)
    counted = CountingQuota()
    claimed = await _claimed(conn, dsn, ids[-1])
    run, lane = _run(*claimed, pool, writer, Cap(lambda: asyncio.sleep(0)), counted, queue_size=1)
    leads = [Lead(lead_id, f"user{n}@example.com", {}) for n, lead_id in enumerate(ids)]
    first, second = (Batch(run.campaign, 0, seq, leads[2 * seq - 2 : 2 * seq], 0) for seq in (1, 2))
    for batch in (first, second):
        run.ledger.add(batch.seq, batch.upto)
    lane.queue.put_nowait((run, first))  # the lane is full: the second's put waits
    sender = ProviderSender(lane, daemon_config(1).provider("sink"), writer, _nothing, _nothing)

    async def dispatch_second() -> None:  # as ShardRun dispatches a batch
        if not await run._put(second):
            run.discard(second.seq)
            run.give_back(second.leads)

    putting = asyncio.create_task(dispatch_second())
    try:
        async with asyncio.timeout(20):
            while not lane.queue._putters:  # type: ignore[attr-defined]  # the put waits
                await asyncio.sleep(0)
        run.stop("paused")  # the first is taken back out; its slot lets the second's put through
        worker = asyncio.create_task(sender._worker())  # a worker free for the next batch
        await asyncio.wait_for(putting, 20)
        await lane.queue.put(None)
        await asyncio.wait_for(worker, 20)
    finally:
        await lane.provider.close()
        await claimed[2].close()
    assert counted.given_back == 4  # two batches of two, neither sent
