"""An erasure and a provider event about the same person, committing in either order: no copy
of the address survives. Two real connections, the steps ordered by explicit transactions (a
step that must wait for the other's commit is seen waiting on its lock, never slept for)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import asyncpg
import pytest

from mailerd import campaigns, deadletter, erasure, events
from mailerd.db import connect as db_connect
from mailerd.db import erasure as erasure_db
from mailerd.models import Event, EventKind
from tests.integration.helpers import daemon_config, new_campaign
from tests.integration.test_erasure import ADDRESS, KEY, _event, _lead, _text_hits

PADS = erasure.key_pads(KEY)


async def _started(
    conn: asyncpg.Connection, other: asyncpg.Connection, step: Awaitable[None]
) -> asyncio.Task[None]:
    """Start ``step`` on ``other`` and return it once it has finished or waits on a lock (the
    caller awaits it after the commit that releases it)."""
    task = asyncio.ensure_future(step)
    pid = other.get_server_pid()
    async with asyncio.timeout(10):
        while not task.done() and not await conn.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            await asyncio.sleep(0.005)  # polling a condition, not ordering the steps
    return task


async def _finished(task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(10):
        await task


async def _complaint(conn: asyncpg.Connection, lead_id: int) -> list[Event]:
    """A complaint about the lead, as the webhook handler resolves it (it suppresses the address
    and its texts quote it)."""
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    late = _event(
        EventKind.COMPLAINT,
        f"race-1:{ADDRESS}",
        campaign_id=campaign_id,
        lead_id=lead_id,
        provider_type=f"feedback for {ADDRESS}",
    )
    return await events.resolve(conn, [late], provider_kinds={})


async def _record(conn: asyncpg.Connection, batch: list[Event]) -> None:
    await events.record(conn, batch, soft_bounce_limit=3, soft_bounce_window_s=3600, erased_pads=PADS)


async def _erase(conn: asyncpg.Connection, lead_id: int) -> None:
    await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=lead_id)


async def test_an_event_stored_before_the_erasure_commits_is_scrubbed(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # the webhook's flush inserted its event (and suppressed the address), the erasure scrubbed
    # without seeing it (not committed yet), then the flush committed: the address stayed in
    # email_events, suppressions and suppression_audit
    lead_id = await _lead(conn, 1, ADDRESS)
    batch = await _complaint(conn, lead_id)
    webhook, eraser = await db_connect.connect(dsn), await db_connect.connect(dsn)
    try:
        flush = webhook.transaction()
        await flush.start()
        await _record(webhook, batch)
        erasing = await _started(conn, eraser, _erase(eraser, lead_id))
        await flush.commit()
        await _finished(erasing)
    finally:
        await webhook.close()
        await eraser.close()
    assert await _text_hits(conn, ADDRESS) == []
    assert await conn.fetchval("SELECT count(*) FROM email_events WHERE email IS NULL") == 1
    assert await conn.fetchval("SELECT count(*) FROM erased_suppressions") == 1


async def test_an_event_checked_before_the_erasure_commits_is_stored_scrubbed(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # the erasure ran, not committed yet; the flush looked for erasures (none committed), then
    # stored the event with the address and committed after the erasure
    lead_id = await _lead(conn, 1, ADDRESS)
    batch = await _complaint(conn, lead_id)
    webhook, eraser = await db_connect.connect(dsn), await db_connect.connect(dsn)
    try:
        erasing = eraser.transaction()
        await erasing.start()
        await _erase(eraser, lead_id)
        flush = webhook.transaction()
        await flush.start()
        recording = await _started(conn, webhook, _record(webhook, batch))
        await erasing.commit()
        await _finished(recording)
        await flush.commit()
    finally:
        await webhook.close()
        await eraser.close()
    assert await _text_hits(conn, ADDRESS) == []
    assert await conn.fetchval("SELECT count(*) FROM email_events WHERE email IS NULL") == 1
    assert await conn.fetchval("SELECT count(*) FROM erased_suppressions") == 1


@pytest.mark.parametrize("erasure_first", [False, True], ids=["letter-first", "erasure-first"])
async def test_a_dead_letter_racing_the_erasure_keeps_no_address(
    conn: asyncpg.Connection, dsn: str, erasure_first: bool
) -> None:
    # a refused webhook's events, dead-lettered while the erasure ran: the letter's payload
    # kept the address when either committed while the other was under way
    lead_id = await _lead(conn, 1, ADDRESS)
    batch = await _complaint(conn, lead_id)
    letter = deadletter.Letter("events", None, None, None, list(batch), ValueError(f"refused {ADDRESS}"))
    writing, eraser = await db_connect.connect(dsn), await db_connect.connect(dsn)
    try:
        held = (eraser if erasure_first else writing).transaction()
        await held.start()
        if erasure_first:
            await _erase(eraser, lead_id)
            second = await _started(conn, writing, _dead_letter(writing, letter))
        else:
            await deadletter.record(writing, letter, PADS)
            second = await _started(conn, eraser, _erase(eraser, lead_id))
        await held.commit()
        await _finished(second)
    finally:
        await writing.close()
        await eraser.close()
    assert await _text_hits(conn, ADDRESS) == []
    assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 1


async def _dead_letter(conn: asyncpg.Connection, letter: deadletter.Letter) -> None:
    """As the writer keeps one: in a transaction of its own."""
    async with conn.transaction():
        await deadletter.record(conn, letter, PADS)


async def test_a_flush_of_many_addressed_events_takes_a_bounded_number_of_locks(
    conn: asyncpg.Connection,
) -> None:
    # one advisory lock per distinct address: a flush of 20,000 events (flush_rows is 10,000,
    # a flush after an outage takes up to max_buffer_rows, 50,000) filled the server's shared
    # lock table ("out of shared memory", a transient error: the writer retried it forever)
    batch = [_event(EventKind.DELIVERED, f"many-{n}", email=f"person{n}@example.com") for n in range(20_000)]
    async with conn.transaction():
        stored = await _record_counted(conn, batch)
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
    assert stored == 20_000
    assert held <= erasure_db.ADDRESS_LOCK_BUCKETS


async def _record_counted(conn: asyncpg.Connection, batch: list[Event]) -> int:
    recorded = await events.record(
        conn, batch, soft_bounce_limit=3, soft_bounce_window_s=3600, erased_pads=PADS
    )
    return len(recorded.events)


async def test_a_small_flush_about_someone_else_does_not_wait_for_an_erasure(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # an erasure holds its locks while it scans the account's events (seconds on a big account):
    # a flush of a few events about other people, even in the erased address's lock bucket,
    # goes on (only a flush too big to lock per address shares buckets)
    lead_id = await _lead(conn, 1, ADDRESS)
    other = await conn.fetchval(
        """SELECT a FROM (SELECT 'someone' || n || '@example.com' AS a FROM generate_series(1, 100000) n) s
           WHERE hashtext(lower(a)) & $2 = hashtext(lower($1)) & $2 LIMIT 1""",
        ADDRESS,
        erasure_db.ADDRESS_LOCK_BUCKETS - 1,
    )
    batch = [_event(EventKind.COMPLAINT, "other-1", email=other)]
    webhook, eraser = await db_connect.connect(dsn), await db_connect.connect(dsn)
    try:
        async with eraser.transaction():
            await _erase(eraser, lead_id)
            async with webhook.transaction(), asyncio.timeout(5):
                await _record(webhook, batch)
    finally:
        await webhook.close()
        await eraser.close()
    assert await conn.fetchval("SELECT email FROM email_events") == other


async def test_a_big_flush_about_the_person_being_erased_waits_and_stores_it_scrubbed(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # a flush of more addresses than it locks one by one takes their buckets: still serialised
    # with the erasure of one of them
    lead_id = await _lead(conn, 1, ADDRESS)
    crowd = [
        _event(EventKind.DELIVERED, f"crowd-{n}", email=f"crowd{n}@example.com")
        for n in range(erasure_db.ADDRESS_LOCK_BUCKETS + 10)
    ]
    batch = [*await _complaint(conn, lead_id), *crowd]
    webhook, eraser = await db_connect.connect(dsn), await db_connect.connect(dsn)
    try:
        erasing = eraser.transaction()
        await erasing.start()
        await _erase(eraser, lead_id)
        flush = webhook.transaction()
        await flush.start()
        recording = await _started(conn, webhook, _record(webhook, batch))
        assert not recording.done()
        await erasing.commit()
        await _finished(recording)
        await flush.commit()
    finally:
        await webhook.close()
        await eraser.close()
    assert await _text_hits(conn, ADDRESS) == []
