"""Issue 9: one entry Postgres refuses never wedges the writer.

A flush that fails because of its data is split until the entries that cause it are found:
those are dead-lettered (a webhook's events refused, a batch's rows kept with their status and
the error), and everything else in the flush commits. Only a lost database is retried forever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from mailerd import app, campaigns, db, events
from mailerd import config as config_mod
from mailerd.db import partitions
from mailerd.models import Event, EventKind, LogStatus
from mailerd.shard import Ledger
from mailerd.writer import EventsRefused, Writer
from tests.integration.helpers import add_leads, daemon_config, new_campaign

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"


@dataclasses.dataclass
class Claim:
    """A stand-in for one claim of a shard (what the writer sees of a ShardRun)."""

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


async def _claimed_shard(conn: asyncpg.Connection) -> Claim:
    await add_leads(conn, 1, 30)
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    await conn.execute(
        """INSERT INTO campaign_shards
               (campaign_id, shard_no, lead_id_from, lead_id_to, checkpoint, reserved_upto, epoch)
           VALUES ($1, 0, 0, 1000, 0, 1000, 1)""",
        campaign_id,
    )
    return Claim(campaign_id, 0, 1, 1000, Ledger(0))


def _event(receipt: str, email: str = "someone@example.com") -> Event:
    return Event(
        provider="postmark",
        kind=EventKind.HARD_BOUNCE,
        occurred_at=dt.datetime.now(dt.UTC),
        email=email,
        receipt=receipt,
    )


async def _running(writer: Writer) -> asyncio.Task[None]:
    return asyncio.create_task(writer.run())


async def test_an_event_postgres_refuses_is_refused_alone_and_the_rest_commits(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    claim = await _claimed_shard(conn)
    claim.ledger.add(1, 10)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=20))
    task = await _running(writer)
    now = dt.datetime.now(dt.UTC)
    # A NUL in the provider's text: Postgres text cannot hold it (SQLSTATE 22021).
    poisoned = await writer.submit_events([dataclasses.replace(_event("bad-1"), reason="bounced\x00here")])
    good = await writer.submit_events([_event("ok-1")])
    rows = await writer.submit(claim, 1, [(now, claim.campaign_id, 5, LogStatus.SENT, "m-1", None)])
    async with asyncio.timeout(20):
        with pytest.raises(EventsRefused):
            await poisoned
        await good
        await rows
        later = await writer.submit_events([_event("ok-2")])
        await later
    writer.close()
    await asyncio.wait_for(task, 10)
    assert writer.healthy
    receipts = {r["receipt"] for r in await conn.fetch("SELECT receipt FROM webhook_receipts")}
    assert receipts == {events.receipt_key("ok-1"), events.receipt_key("ok-2")}
    assert (
        await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", claim.campaign_id) == 1
    )
    letter = await conn.fetchrow("SELECT * FROM dead_letters")
    assert letter["kind"] == "events" and letter["sqlstate"] == "22021" and letter["entries"] == 1
    assert "bounced\\u0000here" in letter["payload"]


async def test_rows_postgres_refuses_are_dead_lettered_and_the_shard_moves_on(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A provider message id Postgres cannot store (a NUL) in one batch: that batch's rows are
    kept in dead_letters with their status, the checkpoint passes them (never sent again), and
    the batches around it are logged."""
    claim = await _claimed_shard(conn)
    for seq, upto in ((1, 10), (2, 20), (3, 30)):
        claim.ledger.add(seq, upto)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=20))
    task = await _running(writer)
    now = dt.datetime.now(dt.UTC)
    cid = claim.campaign_id
    futures = [
        await writer.submit(claim, 1, [(now, cid, 5, LogStatus.SENT, "m-5", None)]),
        await writer.submit(claim, 2, [(now, cid, 15, LogStatus.SENT, "bad\x00id", None)]),
        await writer.submit(claim, 3, [(now, cid, 25, LogStatus.FAILED, None, "rejected")]),
    ]
    async with asyncio.timeout(20):
        await asyncio.gather(*futures)
    writer.close()
    await asyncio.wait_for(task, 10)
    logged = await conn.fetch("SELECT lead_id FROM email_log WHERE campaign_id = $1 ORDER BY lead_id", cid)
    assert [r["lead_id"] for r in logged] == [5, 25]
    letter = await conn.fetchrow("SELECT * FROM dead_letters")
    assert letter["kind"] == "emails" and letter["campaign_id"] == cid and letter["seq"] == 2
    assert letter["sqlstate"] is not None and letter["sqlstate"].startswith("22")
    stored = orjson.loads(letter["payload"])
    assert stored[0][2] == 15 and stored[0][3] == LogStatus.SENT and stored[0][4] == "bad\x00id"
    assert claim.ledger.checkpoint == 30 and not claim.lost
    shard = await conn.fetchrow("SELECT checkpoint FROM campaign_shards WHERE campaign_id = $1", cid)
    assert shard["checkpoint"] == 30
    stats = await conn.fetchrow("SELECT sent, failed FROM campaign_stats WHERE campaign_id = $1", cid)
    assert (stats["sent"], stats["failed"]) == (1, 1)


async def test_a_value_the_driver_cannot_encode_does_not_end_the_writer(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A lone surrogate cannot even be encoded to UTF-8: before, the error ended the writer
    task (and the node); now that entry is dead-lettered like any other."""
    claim = await _claimed_shard(conn)
    claim.ledger.add(1, 10)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=20))
    task = await _running(writer)
    poisoned = await writer.submit_events([_event("receipt-1", email="x\ud800@example.com")])
    rows = await writer.submit(
        claim, 1, [(dt.datetime.now(dt.UTC), claim.campaign_id, 5, LogStatus.SENT, "m-1", None)]
    )
    async with asyncio.timeout(20):
        with pytest.raises(EventsRefused):
            await poisoned
        await rows
    assert not task.done()
    writer.close()
    await asyncio.wait_for(task, 10)
    assert await conn.fetchval("SELECT count(*) FROM dead_letters WHERE kind = 'events'") == 1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (asyncpg.exceptions.AdminShutdownError("terminating"), True),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), True),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), True),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("standby"), True),
        (asyncpg.exceptions.ProgramLimitExceededError("index row size"), False),
        (asyncpg.exceptions.CharacterNotInRepertoireError("0x00"), False),
        (asyncpg.exceptions.ForeignKeyViolationError("fk"), False),
        (asyncpg.exceptions._base.DataError("invalid input for query argument"), False),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
        (OverflowError("value out of int64 range"), False),
    ],
)
def test_only_a_lost_database_is_transient(error: BaseException, transient: bool) -> None:
    assert db.is_transient(error) is transient


async def test_sigterm_drains_within_the_grace_period_while_the_writer_cannot_commit(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """A webhook waits for a flush that cannot commit (a lock held elsewhere): the drain still
    ends within shutdown_grace_s, and the webhook is answered 503 rather than left hanging."""
    config = daemon_config(
        1,
        provider={"endpoint": "http://127.0.0.1:9"},
        node={"shutdown_grace_s": 2.0},
        database={"command_timeout_s": 60},
        webhooks={"postmark": {"verify_signatures": False}},
    )
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    daemon = asyncio.create_task(app.run_with_dsn(config, dsn, stop, on_ready=bound.set_result))
    port = await asyncio.wait_for(bound, 30)
    blocker = await asyncpg.connect(dsn)
    body = (FIXTURES / "postmark" / "bounce.json").read_bytes()
    try:
        await blocker.execute("BEGIN; LOCK TABLE webhook_receipts IN ACCESS EXCLUSIVE MODE")
        async with aiohttp.ClientSession() as session:
            answer = asyncio.create_task(
                session.post(
                    f"http://127.0.0.1:{port}/webhooks/postmark",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
            )
            async with asyncio.timeout(10):  # the flush is blocked on the lock
                while not await blocker.fetchval(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE relation = 'webhook_receipts'::regclass AND NOT granted"
                ):
                    await asyncio.sleep(0.02)
            started = time.monotonic()
            stop.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(daemon, 15)
            drained_in = time.monotonic() - started
            response = await asyncio.wait_for(answer, 5)
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "unavailable"
        assert drained_in < 2.0 + 3.0
    finally:
        await blocker.close()
        if not daemon.done():
            daemon.cancel()


async def test_rows_routed_to_the_default_partition_while_their_day_is_attached_are_retried(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    """A COPY that began while another node attached the partition of its rows' day (a node whose
    clock runs ahead writes a day that has no partition yet) routes them to the default partition
    and fails there (23514) once the attach commits. That is no fault of the rows: they were
    dead-lettered (left out of email_log and the counters); now the flush is retried and commits."""
    claim = await _claimed_shard(conn)
    claim.ledger.add(1, 10)
    day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)
    sent_at = dt.datetime(day.year, day.month, day.day, 6, tzinfo=dt.UTC)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=10))
    task = await _running(writer)
    ddl = await asyncpg.connect(dsn)
    try:
        async with ddl.transaction():
            # The day's partition is attached, not yet committed: the default partition is locked.
            assert [a.verb for a in await partitions.create_day(ddl, "email_log", day)] == ["created"]
            row = (sent_at, claim.campaign_id, 5, LogStatus.SENT, "m-1", None)
            rows = await writer.submit(claim, 1, [row])
            async with asyncio.timeout(10):
                while not await conn.fetchval("SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted)"):
                    await asyncio.sleep(0.01)
        async with asyncio.timeout(20):
            await rows
    finally:
        await ddl.close()
    writer.close()
    await asyncio.wait_for(task, 10)
    assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
    where = await conn.fetch(
        "SELECT tableoid::regclass::text AS part FROM email_log WHERE campaign_id = $1", claim.campaign_id
    )
    assert [r["part"] for r in where] == [partitions.partition_name("email_log", day)]
    sent = await conn.fetchval("SELECT sent FROM campaign_stats WHERE campaign_id = $1", claim.campaign_id)
    assert sent == 1 and claim.ledger.checkpoint == 10
