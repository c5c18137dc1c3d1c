"""The daemon's partition maintenance after a round that failed (the database restarting, a
network blip): the next round came an hour later, so a blip at the wrong moment left tomorrow's
partition uncreated for an hour (its rows in the default partition meanwhile). It now retries
after 5 s, doubling up to ``PARTITION_RETRY_S``; here on timings scaled down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from mailerd import app
from mailerd import config as config_mod
from mailerd.db import connect
from mailerd.relay import retention

EVERY_S = 1.0  # PARTITION_MAINTENANCE_S (an hour)
CAP_S = 0.4  # PARTITION_RETRY_S (5 minutes)
FIRST_RETRY_S = 0.05  # PARTITION_FAILED_RETRY_S (5 s)


class Refusing:
    """New connections to the test's database are refused (``55000``) until :meth:`allow`."""

    def __init__(self, admin: asyncpg.Connection, name: str) -> None:
        self._admin = admin
        self._name = name

    async def refuse(self) -> None:
        await self._admin.execute(f'ALTER DATABASE "{self._name}" ALLOW_CONNECTIONS false')

    async def allow(self) -> None:
        await self._admin.execute(f'ALTER DATABASE "{self._name}" ALLOW_CONNECTIONS true')


@pytest.fixture
async def refusing(conn: asyncpg.Connection, pg_server: str) -> AsyncIterator[Refusing]:
    admin = await asyncpg.connect(pg_server)  # a database may not refuse its own sessions
    switch = Refusing(admin, await conn.fetchval("SELECT current_database()"))
    try:
        await switch.refuse()
        yield switch
    finally:
        await switch.allow()
        await admin.close()


async def test_a_failed_round_is_retried_soon_with_a_backoff(
    conn: asyncpg.Connection, dsn: str, refusing: Refusing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "PARTITION_MAINTENANCE_S", EVERY_S)
    monkeypatch.setattr(app, "PARTITION_RETRY_S", CAP_S)
    monkeypatch.setattr(app, "PARTITION_FAILED_RETRY_S", FIRST_RETRY_S, raising=False)
    config = config_mod.from_mapping({})
    await retention.maintain(conn, config)
    farthest = await conn.fetchval(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'email_log'::regclass AND c.relname LIKE 'email_log_p%'
           ORDER BY c.relname DESC LIMIT 1"""
    )
    await conn.execute(f"DROP TABLE {farthest}")  # what the next round must create
    pool = await connect.create_pool(dsn, min_size=0, max_size=1)  # connects on first use: refused
    stop = asyncio.Event()
    logs: list[dict[str, Any]]
    try:
        with capture_logs() as logs:
            loop = asyncio.create_task(app._partition_loop(pool, config, stop))

            def failed() -> list[float]:
                return [e.get("retry_in_s") for e in logs if e["event"] == "partition_maintenance_failed"]

            async with asyncio.timeout(EVERY_S + 1.5):  # the first round, then 3 quick ones
                while len(failed()) < 4:
                    await asyncio.sleep(0.01)
            assert failed()[:4] == [0.05, 0.1, 0.2, 0.4]
            await refusing.allow()
            async with asyncio.timeout(CAP_S + 1.5):  # the next retry, not the next hour
                while await conn.fetchval("SELECT to_regclass($1) IS NULL", farthest):
                    await asyncio.sleep(0.01)
            stop.set()
            async with asyncio.timeout(5):
                await loop
    finally:
        stop.set()
        await pool.close()
    assert any(e["event"] == "partition_maintained" and farthest in e["action"] for e in logs)


def test_the_retry_wait_stays_capped_after_any_number_of_failures() -> None:
    # 5.0 * 2**1024 raised OverflowError in the loop's except: the daemon's TaskGroup ended
    assert [app.partition_retry_s(n) for n in range(3)] == [5.0, 10.0, 20.0]
    assert app.partition_retry_s(1024) == app.partition_retry_s(10**6) == app.PARTITION_RETRY_S
