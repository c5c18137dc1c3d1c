"""Keeps the outbox's BRIN summaries on ``tx`` current while the relay reads.

A read by ``tx`` skips a block range only once the range is summarised, and Postgres summarises
new ranges only on autovacuum's rounds (``autosummarize``: a minute apart by default, never with
autovacuum off). Until then every read scans all of them: behind a full-speed campaign, a minute
of sends (millions of rows) for each batch of a few thousand. So the node running the relay
summarises the new ranges of the partitions that take rows now (today's, yesterday's, the default)
itself, at most once a :data:`EVERY_S`, after a stream read rows. The first round of a lead
covers every partition (a relay days behind reads older days; autovacuum may be off).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import asyncpg
import structlog

from mailerd import aio, db, metrics
from mailerd.db import partitions
from mailerd.db import relay as relay_db

log = structlog.get_logger(__name__)

EVERY_S = 1.0
TABLES = tuple(partitions.PARTITIONED)  # the partitioned outbox tables (the others are small)
_DAY = re.compile(r"_p(\d{8})$")


def takes_rows(partition: str, today: dt.date) -> bool:
    """Whether new rows can land in ``partition`` (``<table>_pYYYYMMDD`` or the default): a day
    from yesterday on (a row stamped just before midnight commits after it), or the default."""
    match = _DAY.search(partition)
    if match is None:
        return True
    day = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
    return day >= today - dt.timedelta(days=1)


class Summaries:
    """One per relay lead: :meth:`run` summarises after :meth:`note_read` said rows were read."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._read = asyncio.Event()
        self.refused = False  # the role may not summarise (not the tables' owner): reads scan more
        self._every_partition = True  # until a round got through

    def note_read(self) -> None:
        self._read.set()

    async def run(self, halt: asyncio.Event) -> None:
        while not halt.is_set() and not self.refused:
            await aio.first_completed(self._read.wait(), halt.wait())
            if halt.is_set():
                return
            self._read.clear()
            await self.round()
            await aio.sleep_unless(EVERY_S, halt)

    async def round(self) -> int:
        """Summarise the new ranges once; returns how many. Never raises a database error: the
        reads are right without summaries, only slower."""
        total = 0
        try:
            async with self._pool.acquire() as conn:
                today = await partitions.database_today(conn)
                for partition, index in await relay_db.brin_indexes(conn, TABLES):
                    if not self._every_partition and not takes_rows(partition, today):
                        continue
                    try:
                        summarized = await relay_db.summarize_new_ranges(conn, index)
                    except (asyncpg.LockNotAvailableError, asyncpg.UndefinedTableError):
                        continue  # a VACUUM or partition DDL holds it; dropped meanwhile: next round
                    if summarized:
                        table = partition.rsplit("_", 1)[0]
                        metrics.RELAY_BRIN_RANGES.labels(table).inc(summarized)
                        total += summarized
            self._every_partition = False
        except asyncpg.InsufficientPrivilegeError as exc:
            self.refused = True
            log.warning("relay_brin_summaries_refused", error=str(exc))
        except db.DB_ERRORS_OR_TIMEOUT as exc:
            aio.raise_if_cancelling()
            log.warning("relay_brin_summaries_failed", error=str(exc) or type(exc).__name__)
        return total
