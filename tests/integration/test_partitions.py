"""Daily partitions of email_log and email_events: ahead, idempotent, retention, default rows;
maintenance never holds up writes behind a long reader; days are the database's."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import types
from typing import Any

import asyncpg
import pytest

from mailerd import config as config_mod
from mailerd import metrics
from mailerd.db import connect, partitions
from mailerd.relay import retention

TABLES = list(partitions.PARTITIONED)


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)


async def insert(
    conn: asyncpg.Connection, table: str, when: dt.datetime, campaign_id: int, lead_id: int
) -> None:
    if table == "email_log":
        await conn.execute(
            "INSERT INTO email_log (sent_at, campaign_id, lead_id, status) VALUES ($1, $2, $3, 1)",
            when,
            campaign_id,
            lead_id,
        )
    else:
        await conn.execute(
            """INSERT INTO email_events (received_at, occurred_at, campaign_id, lead_id, kind, provider)
               VALUES ($1, $1, $2, $3, 'delivered', 'sink')""",
            when,
            campaign_id,
            lead_id,
        )


async def lookup(conn: asyncpg.Connection, table: str, campaign_id: int, lead_id: int) -> list[str]:
    """The partitions holding the rows of one (campaign, lead), as a report would find them."""
    rows = await conn.fetch(
        f"SELECT tableoid::regclass::text AS part FROM {table} WHERE campaign_id = $1 AND lead_id = $2",
        campaign_id,
        lead_id,
    )
    return sorted(r["part"] for r in rows)


async def count(conn: asyncpg.Connection, relation: str) -> int:
    value: Any = await conn.fetchval(f"SELECT count(*) FROM {relation}")
    return int(value)


async def test_creates_today_and_the_days_ahead(conn: asyncpg.Connection) -> None:
    today = dt.date(2024, 5, 30)
    actions = await partitions.maintain(conn, ahead_days=3, retention_days=30, today=today)
    days = [today, dt.date(2024, 5, 31), dt.date(2024, 6, 1)]
    assert [str(a) for a in actions] == [
        f"created {table} {partitions.partition_name(table, day)}" for table in TABLES for day in days
    ]
    for table in TABLES:
        assert await partitions.existing_days(conn, table) == days
        # Each partition carries the (campaign_id, lead_id) index of its parent.
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1", partitions.partition_name(table, today)
        )
        # email_log: that one btree and the relay's BRIN on tx only; email_events also its
        # partial soft-bounce index.
        assert len(indexes) == (2 if table == "email_log" else 3)
        assert any("(campaign_id, lead_id)" in i["indexdef"] for i in indexes)
        assert any("USING brin (tx)" in i["indexdef"] for i in indexes)


async def test_second_run_is_a_no_op(conn: asyncpg.Connection) -> None:
    today = dt.date(2024, 5, 30)
    assert await partitions.maintain(conn, ahead_days=4, retention_days=30, today=today)
    assert await partitions.maintain(conn, ahead_days=4, retention_days=30, today=today) == []
    # A day later only the new last day is created.
    actions = await partitions.maintain(
        conn, ahead_days=4, retention_days=30, today=today + dt.timedelta(days=1)
    )
    assert [str(a) for a in actions] == [f"created {t} {t}_p20240603" for t in TABLES]


async def test_partition_bounds_are_utc_days(conn: asyncpg.Connection) -> None:
    await conn.execute("SET TimeZone = 'America/New_York'")
    day = dt.date(2024, 3, 10)  # a DST change in New York: still 24 UTC hours
    await partitions.maintain(conn, ahead_days=2, retention_days=30, today=day)
    midnight = dt.datetime(2024, 3, 11, tzinfo=dt.UTC)
    for table in TABLES:
        await insert(conn, table, midnight - dt.timedelta(microseconds=1), 1, 1)
        await insert(conn, table, midnight, 1, 2)
        assert await lookup(conn, table, 1, 1) == [f"{table}_p20240310"]
        assert await lookup(conn, table, 1, 2) == [f"{table}_p20240311"]


async def test_drops_partitions_past_retention(conn: asyncpg.Connection) -> None:
    first = dt.date(2024, 1, 1)
    await partitions.maintain(conn, ahead_days=5, retention_days=30, today=first)
    for table in TABLES:
        await insert(conn, table, at(first), 7, 1)
        await insert(conn, table, at(dt.date(2024, 1, 4)), 7, 2)
    later = dt.date(2024, 1, 6)
    actions = await partitions.maintain(conn, ahead_days=2, retention_days=3, today=later)
    # cutoff = Jan 3: Jan 1 and Jan 2 go, Jan 3 onwards stay.
    for table in TABLES:
        assert f"dropped {table} {table}_p20240101" in map(str, actions)
        assert f"dropped {table} {table}_p20240102" in map(str, actions)
        assert await partitions.existing_days(conn, table) == [dt.date(2024, 1, d) for d in (3, 4, 5, 6, 7)]
        assert await lookup(conn, table, 7, 1) == []
        assert await lookup(conn, table, 7, 2) == [f"{table}_p20240104"]
        assert await conn.fetchval("SELECT to_regclass($1)", f"{table}_p20240101") is None
    assert await partitions.maintain(conn, ahead_days=2, retention_days=3, today=later) == []


@pytest.mark.parametrize("table", TABLES)
async def test_rows_without_a_partition_land_in_default_and_move_when_it_is_created(
    conn: asyncpg.Connection, table: str
) -> None:
    day = dt.date(2024, 2, 29)
    await insert(conn, table, at(day, 0), 10, 1)
    await insert(conn, table, at(day, 23), 10, 2)
    await insert(conn, table, at(day + dt.timedelta(days=1), 1), 10, 3)  # another day: stays
    default = f"{table}_default"
    assert await lookup(conn, table, 10, 1) == [default]
    assert await lookup(conn, table, 10, 2) == [default]

    actions = await partitions.create_day(conn, table, day)

    name = partitions.partition_name(table, day)
    assert [str(a) for a in actions] == [
        f"moved {table} 2 rows from {default} to {name}",
        f"created {table} {name}",
    ]
    assert await lookup(conn, table, 10, 1) == [name]
    assert await lookup(conn, table, 10, 2) == [name]
    assert await lookup(conn, table, 10, 3) == [default]
    assert await count(conn, default) == 1
    assert await count(conn, name) == 2
    assert await partitions.existing_days(conn, table) == [day]
    # The moved-into partition is a real partition with the parent's index, and new rows of
    # that day go straight to it.
    indexes = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = $1", name)
    assert len(indexes) == (2 if table == "email_log" else 3)
    await insert(conn, table, at(day, 5), 10, 4)
    assert await lookup(conn, table, 10, 4) == [name]
    assert await partitions.create_day(conn, table, day) == []


async def test_moving_keeps_every_column(conn: asyncpg.Connection) -> None:
    day = dt.date(2024, 2, 1)
    sent_at = at(day, 9)
    await conn.execute(
        """INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id, error)
           VALUES ($1, 5, 6, 2, 'msg-1', 'mailbox full')""",
        sent_at,
    )
    before = await conn.fetchrow("SELECT * FROM email_log")
    await partitions.create_day(conn, "email_log", day)
    after = await conn.fetchrow("SELECT * FROM email_log")
    assert dict(after) == dict(before)


async def test_default_rows_older_than_retention_are_purged(conn: asyncpg.Connection) -> None:
    old, recent = dt.date(2023, 12, 1), dt.date(2024, 1, 8)
    for table in TABLES:
        await insert(conn, table, at(old), 20, 1)
        await insert(conn, table, at(old, 23), 20, 2)
        await insert(conn, table, at(recent), 20, 3)
    today = dt.date(2024, 1, 10)
    actions = await partitions.maintain(conn, ahead_days=1, retention_days=5, today=today)
    for table in TABLES:
        assert f"purged {table} 2 rows older than 2024-01-05 from {table}_default" in map(str, actions)
        assert await lookup(conn, table, 20, 1) == []
        assert await lookup(conn, table, 20, 2) == []
        assert await lookup(conn, table, 20, 3) == [f"{table}_default"]
    # Creating the recent day later still moves its row out of the default partition.
    actions = await partitions.maintain(conn, ahead_days=3, retention_days=5, today=recent)
    for table in TABLES:
        assert f"moved {table} 1 rows from {table}_default to {table}_p20240108" in map(str, actions)
        assert await lookup(conn, table, 20, 3) == [f"{table}_p20240108"]
        assert await count(conn, f"{table}_default") == 0


async def test_two_nodes_maintaining_at_once(dsn: str) -> None:
    """Without a lock between nodes, their CREATE ... PARTITION OF collide or deadlock."""
    conns = [await connect.connect(dsn) for _ in range(2)]
    try:
        today = dt.date(2024, 4, 1)
        results = await asyncio.gather(
            *(partitions.maintain(c, ahead_days=7, retention_days=30, today=today) for c in conns)
        )
        created = sorted(str(a) for result in results for a in result)
        assert len(created) == 2 * 7
        assert len(set(created)) == len(created)
    finally:
        for c in conns:
            await c.close()


async def _until_waiting_or_done(conn: asyncpg.Connection, task: asyncio.Task[Any]) -> None:
    """Until ``task`` waits for a lock in this database (or has ended without one)."""
    async with asyncio.timeout(10):
        while not task.done() and not await conn.fetchval(
            """SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                              WHERE NOT l.granted AND d.datname = current_database())"""
        ):
            await asyncio.sleep(0.01)


# What a long transaction (pg_dump, a report) read: the whole table, or only today's partition.
READERS = {
    "whole": "SELECT count(*) FROM {table}",
    "today": "SELECT count(*) FROM {table} WHERE {column} >= $1",
}


@pytest.mark.parametrize(("ddl", "reading"), [("create", "whole"), ("drop", "whole"), ("drop", "today")])
@pytest.mark.parametrize("table", TABLES)
async def test_ddl_behind_a_long_reader_never_holds_up_writes(
    conn: asyncpg.Connection, dsn: str, table: str, ddl: str, reading: str
) -> None:
    """A transaction that read the table holds its lock until it ends. DDL queued behind it for
    ACCESS EXCLUSIVE on the parent made every INSERT and COPY queue behind the DDL, as long as the
    reader ran. Now the DDL waits its lock timeout at most and is left for the next round."""
    config = config_mod.from_mapping({"retention": {"days": 30}}, env={})
    today = dt.date(2024, 5, 1)
    expired = today - dt.timedelta(days=40)
    for day in [today, expired] if ddl == "drop" else [today]:
        await partitions.create_day(conn, table, day)
    ahead = 3 if ddl == "create" else 1
    name = partitions.partition_name(table, today + dt.timedelta(days=1) if ddl == "create" else expired)
    other = next(t for t in TABLES if t != table)
    deferred = metrics.PARTITION_MAINTENANCE_DEFERRED.labels(table)._value.get()
    reader, maintainer = await connect.connect(dsn), await connect.connect(dsn)
    try:
        async with reader.transaction():
            sql = READERS[reading].format(table=table, column=partitions.PARTITIONED[table])
            await reader.fetchval(sql, *([at(today, 0)] if reading == "today" else []))
            job = asyncio.create_task(retention.maintain(maintainer, config, ahead_days=ahead, today=today))
            try:
                await _until_waiting_or_done(conn, job)
                started = time.monotonic()
                async with asyncio.timeout(5):
                    await insert(conn, table, at(today), 1, 1)
                waited = time.monotonic() - started
            finally:
                async with asyncio.timeout(10):
                    actions = [str(a) for a in await job]
        assert waited < 2 * partitions.DDL_LOCK_TIMEOUT_MS / 1000 + 0.5
        verb = "creating" if ddl == "create" else "dropping"
        assert [a for a in actions if a.startswith(f"deferred {table}")] == [
            f"deferred {table} {verb} {name}"
            + (" (and any later day past retention)" if ddl == "drop" else "")
            + f": a lock was not granted within {partitions.DDL_LOCK_TIMEOUT_MS} ms"
            " (a transaction is using the table); retried next round"
        ]
        assert not [
            a for a in actions if a.startswith(f"created {table}") or a.startswith(f"dropped {table}")
        ]
        if ddl == "create":  # the other table is not held up
            assert (
                f"created {other} {partitions.partition_name(other, today + dt.timedelta(days=2))}" in actions
            )
        assert metrics.PARTITION_MAINTENANCE_DEFERRED.labels(table)._value.get() == deferred + 1
        # The reader is gone: the next round does it.
        actions = [
            str(a) for a in await retention.maintain(maintainer, config, ahead_days=ahead, today=today)
        ]
        assert f"{'created' if ddl == 'create' else 'dropped'} {table} {name}" in actions
        assert not [a for a in actions if a.startswith("deferred")]
    finally:
        await reader.close()
        await maintainer.close()


async def test_today_is_the_database_s_not_the_node_s(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows are stamped by the database's clock: a node whose clock ran two days ahead
    dropped, with a retention of one day, the partition written to at that moment."""
    config = config_mod.from_mapping({"retention": {"days": 1}}, env={})
    await retention.maintain(conn, config)
    await insert(conn, "email_log", await conn.fetchval("SELECT now()"), 1, 1)

    class AheadClock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> AheadClock:
            return cls.fromtimestamp((dt.datetime.now(tz) + dt.timedelta(days=2)).timestamp(), tz)

    monkeypatch.setattr(partitions, "dt", types.SimpleNamespace(**{**vars(dt), "datetime": AheadClock}))
    actions = [str(a) for a in await retention.maintain(conn, config)]
    assert not [a for a in actions if a.startswith("dropped")]
    assert await count(conn, "email_log") == 1
