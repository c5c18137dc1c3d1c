"""Every session mailerd opens cuts hours and days in UTC, whatever the database's TimeZone."""

from __future__ import annotations

import datetime as dt

import asyncpg

from mailerd.db import connect


async def test_hours_are_cut_in_utc_whatever_the_databases_time_zone(
    conn: asyncpg.Connection, dsn: str
) -> None:
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Kolkata'")  # UTC+05:30
    at = dt.datetime(2026, 12, 7, 7, 10, tzinfo=dt.UTC)
    for session in (await connect.connect(dsn), await connect.create_pool(dsn, min_size=1, max_size=1)):
        try:
            hour = await session.fetchval("SELECT date_trunc('hour', $1::timestamptz)", at)
            day = await session.fetchval("SELECT ($1::timestamptz - interval '8 hours')::date", at)
        finally:
            await session.close()
        assert hour == dt.datetime(2026, 12, 7, 7, tzinfo=dt.UTC)  # not 06:30 UTC
        assert day == dt.date(2026, 12, 6)  # 23:10 UTC the day before (04:40 on the 7th in Kolkata)
    plain = await asyncpg.connect(dsn)  # the database's own setting, as another client sees it
    try:
        assert await plain.fetchval("SHOW timezone") == "Asia/Kolkata"
    finally:
        await plain.close()
