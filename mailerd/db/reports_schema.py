"""The reports database's schema: its own migrations, the embedded database, partitions ahead.

``mailerd reports migrate`` (and ``mailerd migrate`` when ``[reports]`` is set) applies
``mailerd/db/reports_migrations`` to the reports database, creating it first when it is the
embedded one, and creates this month's and next month's partitions.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import structlog

from mailerd.config import Config
from mailerd.db import connect, migrate, reports_load

log = structlog.get_logger(__name__)


async def migrate_reports(config: Config, main_dsn: str) -> list[str]:
    """Bring the reports database up to date; returns what was done, one line each."""
    assert config.reports is not None
    lines = []
    if config.reports.is_embedded and await connect.ensure_database(
        main_dsn, connect.EMBEDDED_REPORTS_DATABASE
    ):
        lines.append(f"reports: created database {connect.EMBEDDED_REPORTS_DATABASE}")
    conn = await connect.connect(connect.reports_dsn(config.reports, main_dsn))
    try:
        done = await migrate.migrate(conn, migrate.REPORTS)
        this_month = reports_load.month_of(dt.datetime.now(dt.UTC))
        ensured = await reports_load.ensure_partitions(
            conn, [this_month, reports_load.next_month(this_month)]
        )
    finally:
        await conn.close()
    lines += [f"reports: applied {m.version:04d}_{m.name}" for m in done]
    lines += [f"reports: {line}" for line in ensured.moved]
    return lines or ["reports: nothing to do: the schema is up to date"]


async def pending(config: Config, main_dsn: str) -> list[str]:
    """The reports migrations not applied yet (names)."""
    assert config.reports is not None
    conn = await connect.connect(connect.reports_dsn(config.reports, main_dsn))
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrate.pending(conn, migrate.REPORTS)]
    finally:
        await conn.close()


async def maintain(
    conn: asyncpg.Connection, retention_days: int, now: dt.datetime | None = None
) -> list[str]:
    """This month's and next month's partitions; months wholly past retention dropped (with
    rollup rows older than it). Returns the partitions dropped. ``now`` is the reports
    database's unless given: a node whose clock runs ahead would drop a month still kept."""
    now = now or await conn.fetchval("SELECT now()")
    this_month = reports_load.month_of(now)
    ensured = await reports_load.ensure_partitions(conn, [this_month, reports_load.next_month(this_month)])
    for line in ensured.moved:
        log.warning("reports_partition_rows_moved", detail=line)
    cutoff = (now - dt.timedelta(days=retention_days)).date()
    return await reports_load.drop_before(conn, cutoff)
