"""The relay's reads on real Postgres: commit-safe order, capped batches that skip nothing, a
writer that took its transaction id early and commits late."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Sequence

import asyncpg
import orjson
import pytest
from prometheus_client import REGISTRY

from mailerd import config, erasure, events, metrics
from mailerd.db import connect
from mailerd.db import relay as relay_db
from mailerd.models import Event, EventKind
from mailerd.relay import position as position_mod
from mailerd.relay import records
from mailerd.relay.position import Snapshot
from mailerd.relay.reader import Reader
from mailerd.relay.records import Record
from mailerd.relay.stream import Stream
from tests import relay_schemas
from tests.integration.relay_rows import NOW, email_record, log_rows, make_campaign


async def drain(reader: Reader, position: Snapshot, rounds: int = 500) -> tuple[list[str], Snapshot]:
    """Read until caught up with nothing more to read; the ids in the order read."""
    ids: list[str] = []
    for _ in range(rounds):
        batch = await reader.read(position)
        ids += [record.id for record in batch.records]
        relay_schemas.check(orjson.loads(record.value) for record in batch.records)
        position = batch.end
        if batch.caught_up and not batch.records:
            return ids, position
    raise AssertionError("the reader never caught up")


async def test_a_late_committing_writer_is_read_after_it_commits(pool: asyncpg.Pool, dsn: str) -> None:
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn)
    reader = Reader(pool, {"email", "event"}, limit=1000)
    position = position_mod.earliest()
    slow = await connect.connect(dsn)
    try:
        slow_tx = slow.transaction()
        await slow_tx.start()
        await log_rows(slow, campaign_id, leads[:3])  # takes its xid now, commits last
        async with pool.acquire() as conn:
            await log_rows(conn, campaign_id, leads[3:10])
        batch = await reader.read(position)
        assert sorted(r.lead_id or 0 for r in batch.records) == leads[3:10]
        assert batch.caught_up
        position = batch.end
        async with pool.acquire() as conn:
            await log_rows(conn, campaign_id, leads[10:12])
        batch = await reader.read(position)  # the relay polls past the slow writer again
        assert sorted(r.lead_id or 0 for r in batch.records) == leads[10:12]
        position = batch.end
        await slow_tx.commit()
    finally:
        await slow.close()
    ids, position = await drain(reader, position)
    assert sorted(ids) == sorted(f"email:{campaign_id}:{lead}" for lead in leads[:3])


@pytest.mark.parametrize("parts", [1, 3])
async def test_capped_batches_with_concurrent_writers_read_every_row_once(
    pool: asyncpg.Pool, dsn: str, parts: int
) -> None:
    """Many small flushes, some held open across polls, one flush bigger than a batch; batches of
    7 rows, read in one range or up to three at once: every committed row read exactly once, none
    of an aborted transaction."""
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 400)
    rng = random.Random(5)
    reader = Reader(pool, {"email", "event"}, limit=7, parts=parts)
    position = position_mod.earliest()
    writers = [await connect.connect(dsn) for _ in range(3)]
    open_tx: dict[int, tuple[asyncpg.transaction.Transaction, list[int]]] = {}
    expected: list[int] = []
    read: list[str] = []
    cursor = 0
    try:
        while cursor < len(leads):
            slot = rng.randrange(len(writers))
            if slot not in open_tx:
                tx = writers[slot].transaction()
                await tx.start()
                open_tx[slot] = (tx, [])
            elif rng.random() < 0.4:
                tx, written = open_tx.pop(slot)
                if rng.random() < 0.2:
                    await tx.rollback()
                else:
                    await tx.commit()
                    expected += written
            else:
                size = 30 if cursor == 100 else rng.randint(1, 5)  # one flush bigger than a batch
                chunk = leads[cursor : cursor + size]
                cursor += len(chunk)
                await log_rows(writers[slot], campaign_id, chunk)
                open_tx[slot][1].extend(chunk)
            if rng.random() < 0.4:
                batch = await reader.read(position)
                read += [r.id for r in batch.records]
                position = batch.end
        for tx, written in open_tx.values():
            await tx.commit()
            expected += written
    finally:
        for writer in writers:
            await writer.close()
    rest, _ = await drain(reader, position)
    read += rest
    assert len(read) == len(set(read)), "a row was read twice"
    assert sorted(read) == sorted(f"email:{campaign_id}:{lead}" for lead in expected)


async def test_records_carry_the_lead_address_and_event_fields(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 3)
        await log_rows(conn, campaign_id, leads)
        await conn.execute("DELETE FROM leads WHERE id = $1", leads[2])
        await conn.execute(
            """INSERT INTO email_events (occurred_at, account_id, campaign_id, lead_id, email, kind,
                                         provider, provider_event_id, provider_message_id,
                                         provider_type, reason, smtp_status)
               VALUES ($1, 1, $2, $3, 'user0@example.com', 'hard_bounce', 'ses', 'evt-1/user0@example.com',
                       'msg-1', 'Permanent/General', 'no such user', '5.1.1')""",
            NOW,
            campaign_id,
            leads[0],
        )
    batch = await Reader(pool, {"email", "event"}, limit=100).read(position_mod.earliest())
    emails = [r for r in batch.records if r.kind == "email"]
    events = [r for r in batch.records if r.kind == "event"]
    assert [orjson.loads(r.value)["address"] for r in emails] == [
        "User0@Example.com",
        "User1@Example.com",
        None,
    ]
    assert emails[0].key == f"1:{leads[0]}".encode()
    event = orjson.loads(events[0].value)
    assert event["id"] == "event:ses:evt-1/user0@example.com"
    assert (event["type"], event["bounce"], event["smtp_status"]) == ("hard_bounce", "hard", "5.1.1")
    assert batch.records[-1].kind == "event"  # written after the emails: read after them
    relay_schemas.check(orjson.loads(r.value) for r in batch.records)


async def test_email_records_built_by_the_database_match_the_python_builder(pool: asyncpg.Pool) -> None:
    """The JSON the read builds in SQL is the record ``records.email`` defines: every status,
    nulls, text that needs escaping, a deleted lead, a deleted campaign."""
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 5)
        gone_campaign = await conn.fetchval(
            """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject, provider)
               VALUES (1, 'gone', 'finished', '{}'::jsonb, 'a@example.com', 's', 'ses') RETURNING id"""
        )
        at = dt.datetime(2026, 1, 2, 3, 4, 5, 120_000, tzinfo=dt.UTC)
        rows = [
            (at, campaign_id, leads[0], 1, "msg-0", None),
            (NOW, campaign_id, leads[1], 2, None, 'HTTP 400: "bad" \\ \n é ✓'),
            (at, campaign_id, leads[2], 3, None, "uncertain"),
            (at, campaign_id, leads[3], 4, None, "suppressed: complaint"),
            (at, gone_campaign, leads[4], 1, "msg-4", None),
        ]
        await conn.copy_records_to_table(
            "email_log",
            records=rows,
            columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
        )
        await conn.execute("DELETE FROM leads WHERE id = $1", leads[3])
        await conn.execute("DELETE FROM campaigns WHERE id = $1", gone_campaign)
    batch = await Reader(pool, {"email"}, limit=100).read(position_mod.earliest())
    built = {record.lead_id: record for record in batch.records}
    addresses = {lead: f"User{n}@Example.com" for n, lead in enumerate(leads) if n != 3}
    for sent_at, campaign, lead, status, message_id, error in rows:
        known = campaign == campaign_id
        expected = records.email(
            tx=0, campaign_id=campaign, lead_id=lead, status=status, provider_message_id=message_id,
            error=error, sent_at=sent_at, account_id=1 if known else None,
            provider="sink" if known else None, address=addresses.get(lead) if known else None,
        )  # fmt: skip
        got = orjson.loads(built[lead].value)
        assert dt.datetime.fromisoformat(got.pop("sent_at")) == sent_at
        assert got == {k: v for k, v in expected.fields.items() if k != "sent_at"}
        assert (built[lead].id, built[lead].key, built[lead].at) == (expected.id, expected.key, sent_at)
    relay_schemas.check(orjson.loads(r.value) for r in batch.records)


class _Collect:
    """A destination that keeps what it is given (the stream's own logic under test)."""

    name = "collect"
    kinds = frozenset({"email", "event", "campaign", "erasure"})

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    async def deliver(self, records: Sequence[Record]) -> None:
        self.records += [orjson.loads(r.value) for r in records]

    async def close(self) -> None:
        pass


async def test_an_erasure_is_published_after_the_persons_records_and_drops_their_dead_letters(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 3)
        await log_rows(conn, campaign_id, leads)
        refused = (await Reader(pool, {"email"}, limit=10).read(position_mod.earliest())).records
        await relay_db.add_dead_letters(conn, "callbacks.app", refused, "HTTP 400")
        erased = await erasure.erase(conn, account_id=1, key=b"k" * 32, by="test", lead_id=leads[0])
        taken = await relay_db.take_positions(conn, ["collect"], position_mod.earliest(), "test")
    destination = _Collect()
    stop = asyncio.Event()
    stream = Stream(
        destination, pool, config.RelayConfig(poll_interval_ms=10), epoch=taken["collect"].epoch,
        position=position_mod.earliest(), as_of=NOW, stop=stop,
    )  # fmt: skip
    task = asyncio.create_task(stream.run())
    async with asyncio.timeout(10):
        while not any(r["kind"] == "erasure" for r in destination.records):
            await asyncio.sleep(0.02)
    stop.set()
    await task
    kinds = [r["kind"] for r in destination.records]
    assert kinds.index("erasure") > max(i for i, kind in enumerate(kinds) if kind == "email")
    erasure_record = destination.records[kinds.index("erasure")]
    assert (erasure_record["id"], erasure_record["lead_ids"]) == (f"erasure:{erased.id}", [leads[0]])
    assert len(erasure_record["address_hashes"]) == 1
    relay_schemas.check(destination.records)
    async with pool.acquire() as conn:
        left = await conn.fetch("SELECT lead_id FROM relay_dead_letters ORDER BY lead_id")
    assert [r["lead_id"] for r in left] == leads[1:]


async def test_an_erasure_comes_after_a_flush_that_took_its_id_later_but_committed_first(
    pool: asyncpg.Pool, dsn: str
) -> None:
    """The erasure's transaction takes its id first; a writer flush of the erased lead takes a
    later one and commits before the erasure does. Both are in the next batch: ordered by
    transaction id, the erasure came first and the email of the person it erased after it (a
    consumer that had deleted the lead stored it again)."""
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 3)
    erasing = await connect.connect(dsn)
    try:
        async with erasing.transaction():
            await erasing.fetchval("SELECT txid_current()")  # its id first
            async with pool.acquire() as conn:
                await log_rows(conn, campaign_id, leads)  # a later id, committed first
            await erasure.erase(erasing, account_id=1, key=b"k" * 32, by="test", lead_id=leads[0])
    finally:
        await erasing.close()
    batch = await Reader(pool, {"email", "erasure"}, limit=100).read(position_mod.earliest())
    assert batch.caught_up
    kinds = [record.kind for record in batch.records]
    assert sorted(kinds) == ["email", "email", "email", "erasure"]
    order = [(record.kind, record.lead_id) for record in batch.records]
    assert order.index(("erasure", None)) > order.index(("email", leads[0])), order


async def test_the_email_of_a_person_imported_again_after_the_erasure_comes_after_it(
    pool: asyncpg.Pool,
) -> None:
    """The host imports an erased person anew (a new lead, same address) and a campaign sends to
    them, after the erasure committed, in the same batch: moved after every other record, the
    erasure came after the new lead's email, and consumers (the reports database, a warehouse
    deleting by address hash) erased the new person's record, which the erasure is not about."""
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 2)
        await erasure.erase(conn, account_id=1, key=b"k" * 32, by="test", lead_id=leads[0])
        again = await conn.fetchval(
            """INSERT INTO leads (account_id, email, attributes)
               VALUES (1, 'User0@Example.com', '{}') RETURNING id"""
        )
        await log_rows(conn, campaign_id, [again])
    batch = await Reader(pool, {"email", "erasure"}, limit=100).read(position_mod.earliest())
    assert batch.caught_up
    assert [(r.kind, r.lead_id) for r in batch.records] == [("erasure", None), ("email", again)]


async def test_flushes_bigger_than_a_batch_are_read_whole_and_then_in_one_read(pool: asyncpg.Pool) -> None:
    """Writer flushes of 12 rows against batches of 5: the first is read whole by a second query,
    and from then on a read takes 12 rows, so the next flushes come in one read each."""
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 48)
        for start in range(0, 48, 12):
            async with conn.transaction():
                await log_rows(conn, campaign_id, leads[start : start + 12])
    reader = Reader(pool, {"email", "event"}, limit=5)
    position = position_mod.earliest()
    sizes = []
    while True:
        batch = await reader.read(position)
        position = batch.end
        if not batch.records and batch.caught_up:
            break
        sizes.append(len(batch.records))
    assert sizes == [12, 12, 12, 12]
    assert reader.whole_reads == 1
    assert reader.limit == 12


class _Slow(_Collect):
    """Takes at least ``HOLD_S`` per delivery."""

    HOLD_S = 0.05
    calls = 0

    async def deliver(self, records: Sequence[Record]) -> None:
        await asyncio.sleep(self.HOLD_S)
        self.calls += 1
        await super().deliver(records)


async def test_the_stage_seconds_split_each_batch_into_read_deliver_and_commit(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 30)
        for flush in range(3):
            await log_rows(conn, campaign_id, leads[flush * 10 : flush * 10 + 10])
        taken = await relay_db.take_positions(conn, ["stages"], position_mod.earliest(), "test")
    destination = _Slow()
    destination.name = "stages"

    def stage(name: str) -> float:
        return float(metrics.RELAY_STAGE_SECONDS.labels("stages", name)._value.get())

    before = {name: stage(name) for name in ("read", "deliver", "commit")}
    stop = asyncio.Event()
    stream = Stream(
        destination, pool, config.RelayConfig(poll_interval_ms=10, batch_records=10),
        epoch=taken["stages"].epoch, position=position_mod.earliest(), as_of=NOW, stop=stop,
    )  # fmt: skip
    task = asyncio.create_task(stream.run())
    async with asyncio.timeout(10):
        while len(destination.records) < 30:
            await asyncio.sleep(0.02)
    stop.set()
    await task
    spent = {name: stage(name) - was for name, was in before.items()}
    assert destination.calls == 3  # three flushes of 10, 10 rows a batch
    assert spent["deliver"] >= destination.calls * _Slow.HOLD_S
    assert spent["read"] > 0  # the first read is always waited for
    assert spent["commit"] > 0


async def test_a_backlog_is_read_in_ranges_at_once_without_a_gap_or_a_repeat(
    pool: asyncpg.Pool, dsn: str
) -> None:
    """Far behind, reads cover three ranges at once (each on its own connection); two
    transactions are still open during them, one that took its id first and one that took it
    halfway (inside a later range), and now and then a flush nearly a batch big, so that a range
    is capped and the ranges after it are dropped. Every row comes once, in tx order within each
    batch, the open transactions' rows after they commit; a batch never holds more than a batch
    per range."""
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 600)
    slow, halfway = await connect.connect(dsn), await connect.connect(dsn)
    rng = random.Random(11)
    try:
        slow_tx, halfway_tx = slow.transaction(), halfway.transaction()
        await slow_tx.start()
        await slow.fetchval("SELECT txid_current()")  # takes its id now, among the first
        cursor = 0
        halfway_open = False
        async with pool.acquire() as conn:
            while cursor < 560:
                if cursor >= 280 and not halfway_open:
                    await halfway_tx.start()
                    await halfway.fetchval("SELECT txid_current()")
                    halfway_open = True
                size = 25 if rng.random() < 0.1 else rng.randint(1, 9)
                await log_rows(conn, campaign_id, leads[cursor : cursor + size])
                cursor += size
                await conn.fetchval("SELECT txid_current()")  # ids without rows between flushes
        reader = Reader(pool, {"email", "event"}, limit=30, parts=3)
        position = position_mod.earliest()
        read: list[str] = []
        for _ in range(500):
            batch = await reader.read(position)
            assert len(batch.records) <= 3 * 30
            assert [r.tx for r in batch.records] == sorted(r.tx for r in batch.records)
            read += [r.id for r in batch.records]
            position = batch.end
            if batch.caught_up and not batch.records:
                break
        assert reader.split_reads > 0 and reader.joined_reads > 0 and reader.dropped_ranges > 0
        await log_rows(halfway, campaign_id, leads[cursor : cursor + 20])
        await halfway_tx.commit()
        await log_rows(slow, campaign_id, leads[cursor + 20 :])
        await slow_tx.commit()
    finally:
        await slow.close()
        await halfway.close()
    rest, _ = await drain(reader, position)
    read += rest
    assert len(read) == len(set(read)), "a row was read twice"
    assert sorted(read) == sorted(f"email:{campaign_id}:{lead}" for lead in leads)


async def test_an_event_refused_while_its_person_was_erased_leaves_no_dead_letter(
    pool: asyncpg.Pool,
) -> None:
    # the relay read an event before the erasure, its destination refused it after the erasure
    # had deleted the dead letters naming the address: the erasure record passing deleted only
    # the erased leads' (by lead id), and an event with no lead id (matched to a batch by its
    # message id, or by no lead) kept the address in relay_dead_letters
    key = b"k" * 32
    address = "erin.person@example.com"
    async with pool.acquire() as conn:
        campaign_id, _ = await make_campaign(conn, 1)
        lead_id = await conn.fetchval(
            "INSERT INTO leads (account_id, email, attributes) VALUES (1, $1, '{}') RETURNING id", address
        )
        occurred = dt.datetime.now(dt.UTC)
        about = [
            Event("sendgrid", EventKind.COMPLAINT, occurred, address, "c-1", campaign_id=campaign_id,
                  account_id=1),
            Event("sendgrid", EventKind.DELIVERED, occurred, address, "d-1"),  # matched no account
        ]  # fmt: skip
        async with conn.transaction():
            await events.record(conn, about, soft_bounce_limit=3, soft_bounce_window_s=3600)
        read = (await Reader(pool, {"event"}, limit=10).read(position_mod.earliest())).records
        assert [r.fields["address"] for r in read] == [address, address]
        await erasure.erase(conn, account_id=1, key=key, by="test", lead_id=lead_id)
        await relay_db.add_dead_letters(conn, "callbacks.app", read, "HTTP 400")  # refused meanwhile
        taken = await relay_db.take_positions(conn, ["collect"], position_mod.earliest(), "test")
    destination = _Collect()
    stop = asyncio.Event()
    stream = Stream(
        destination, pool, config.RelayConfig(poll_interval_ms=10), epoch=taken["collect"].epoch,
        position=position_mod.earliest(), as_of=NOW, stop=stop, erased_pads=erasure.key_pads(key),
    )  # fmt: skip
    task = asyncio.create_task(stream.run())
    async with pool.acquire() as conn, asyncio.timeout(10):
        while await conn.fetchval("SELECT count(*) FROM relay_dead_letters"):
            await asyncio.sleep(0.02)
    stop.set()
    await task
    assert [r["kind"] for r in destination.records][-1] == "erasure"


async def test_a_destination_starts_with_its_counters_at_zero(pool: asyncpg.Pool) -> None:
    """A counter series that first appears with a value hides that first increase from
    ``increase()``: MailerdRelayDeadLetters never fired for a destination's first refusal."""
    destination = _Collect()
    destination.name = "zero-start"
    Stream(
        destination, pool, config.RelayConfig(), epoch=1, position=position_mod.earliest(), as_of=NOW,
        stop=asyncio.Event(),
    )  # fmt: skip
    labels = {"destination": "zero-start"}
    assert REGISTRY.get_sample_value("mailerd_relay_dead_letters_total", labels) == 0
    for reason in ("unavailable", "refused"):
        assert REGISTRY.get_sample_value("mailerd_relay_failures_total", {**labels, "reason": reason}) == 0
    for kind in destination.kinds:
        assert REGISTRY.get_sample_value("mailerd_relay_records_total", {**labels, "kind": kind}) == 0


async def test_the_erasure_passing_keeps_the_dead_letters_of_the_person_imported_again(
    pool: asyncpg.Pool,
) -> None:
    # erased, then imported again (a new lead, the same address) and sent to; a destination
    # refused the new lead's email: the erasure record passing deleted it with the erased
    # person's (by the address's keyed hash), although it is not about the lead it erased
    key = b"k" * 32
    address = "erin.person@example.com"
    async with pool.acquire() as conn:
        await make_campaign(conn, 1)
        lead_id = await conn.fetchval(
            "INSERT INTO leads (account_id, email, attributes) VALUES (1, $1, '{}') RETURNING id", address
        )
        await erasure.erase(conn, account_id=1, key=key, by="test", lead_id=lead_id)
        again = await conn.fetchval(
            "INSERT INTO leads (account_id, email, attributes) VALUES (1, $1, '{}') RETURNING id", address
        )
        unmatched = records.event(
            {"tx": 0, "kind": "delivered", "provider": "sendgrid", "provider_event_id": "d-1",
             "provider_message_id": None, "campaign_id": None, "lead_id": None, "account_id": None,
             "email": address, "received_at": NOW, "occurred_at": NOW, "reason": None,
             "provider_type": None, "smtp_status": None, "bounce_class": None}
        )  # fmt: skip
        refused = [unmatched, email_record(again, address)]  # the erased person's, the new lead's
        await relay_db.add_dead_letters(conn, "callbacks.app", refused, "HTTP 400")
        taken = await relay_db.take_positions(conn, ["collect"], position_mod.earliest(), "test")
    stop = asyncio.Event()
    stream = Stream(
        _Collect(), pool, config.RelayConfig(poll_interval_ms=10), epoch=taken["collect"].epoch,
        position=position_mod.earliest(), as_of=NOW, stop=stop, erased_pads=erasure.key_pads(key),
    )  # fmt: skip
    task = asyncio.create_task(stream.run())
    async with pool.acquire() as conn, asyncio.timeout(10):
        while await conn.fetchval("SELECT count(*) FROM relay_dead_letters WHERE lead_id IS NULL"):
            await asyncio.sleep(0.02)
        stop.set()
        await task
        left = await conn.fetch("SELECT lead_id FROM relay_dead_letters")
    assert [r["lead_id"] for r in left] == [again]
