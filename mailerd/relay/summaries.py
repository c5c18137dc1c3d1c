"""Keeps the outbox's BRIN summaries on ``tx`` current while the relay reads.

A read by ``tx`` skips a block range only once the range is summarised, and Postgres summarises
new ranges only on autovacuum's rounds (``autosummarize``: a minute apart by default, never with
autovacuum off). Until then every read scans all of them: behind a full-speed campaign, a minute
of sends (millions of rows) for each batch of a few thousand. So the node running the relay
summarises the new ranges of the partitions that take rows now (today's, yesterday's, the default)
itself, at most once a :data:`EVERY_S`, after a stream read rows. A lead's first round covers
every partition (a relay days behind reads older days; autovacuum may be off); one it could not
do then (a VACUUM held its lock) is tried again each round until done.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Collection

import asyncpg
import structlog

from mailerd import aio, db, metrics
from mailerd.db import partitions
from mailerd.db import relay as relay_db

log = structlog.get_logger(__name__)

EVERY_S = 1.0


def tables_of(kinds: Collection[str]) -> list[str]:
    """The partitioned outbox tables the destinations read (``campaign_changes`` and
    ``erasures`` are small and left to autovacuum)."""
    names = {relay_db.TABLES[kind].name for kind in kinds if kind in relay_db.TABLES}
    return sorted(names & set(partitions.PARTITIONED))


def takes_rows(table: str, partition: str, today: dt.date) -> bool:
    """Whether new rows can land in ``partition`` of ``table``: a day from yesterday on (a row
    stamped just before midnight commits after it), or any other partition (the default)."""
    day = partitions.day_of(table, partition)
    return day is None or day >= today - dt.timedelta(days=1)


class Summaries:
    """One per relay lead: :meth:`run` summarises after :meth:`note_read` said rows were read."""

    def __init__(self, pool: asyncpg.Pool, tables: Collection[str]) -> None:
        self._pool = pool
        self._tables = list(tables)
        self._read = asyncio.Event()
        self.refused = False  # the role may not summarise (not the tables' owner): reads scan more
        self._pending: set[str] | None = None  # the first round's partitions not done (None: all)
        for table in self._tables:
            metrics.RELAY_BRIN_RANGES.labels(table)  # at 0 from the start

    def note_read(self) -> None:
        self._read.set()

    async def run(self, halt: asyncio.Event) -> None:
        while not halt.is_set() and not self.refused and self._tables:
            await aio.first_completed(self._read.wait(), halt.wait())
            if halt.is_set():
                return
            self._read.clear()
            try:
                # A first round over days never summarised can take long: a stop does not wait.
                await aio.first_completed(self.round(), halt.wait())
            except Exception as exc:  # summaries only speed the reads up: never end the lead
                aio.raise_if_cancelling()
                log.error("relay_brin_summaries_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            await aio.sleep_unless(EVERY_S, halt)

    async def round(self) -> int:
        """Summarise the new ranges once; returns how many. Never raises a database error: the
        reads are right without summaries, only slower."""
        total = 0
        try:
            async with self._pool.acquire() as conn:
                today = await partitions.database_today(conn)
                left: set[str] = set()
                for table, partition, index in await relay_db.brin_indexes(conn, self._tables):
                    wanted = self._pending is None or partition in self._pending
                    if not wanted and not takes_rows(table, partition, today):
                        continue
                    try:
                        summarized = await relay_db.summarize_new_ranges(conn, index)
                    except asyncpg.InsufficientPrivilegeError:
                        raise
                    except asyncpg.PostgresError as exc:
                        # A VACUUM or partition DDL holds its lock, or it was dropped meanwhile.
                        if wanted:
                            left.add(partition)
                        log.info("relay_brin_summary_skipped", index=index, error=str(exc))
                        continue
                    if summarized:
                        metrics.RELAY_BRIN_RANGES.labels(table).inc(summarized)
                        total += summarized
                self._pending = left
        except asyncpg.InsufficientPrivilegeError as exc:
            self.refused = True
            log.warning("relay_brin_summaries_refused", error=str(exc))
        except db.DB_ERRORS_OR_TIMEOUT as exc:
            aio.raise_if_cancelling()
            log.warning("relay_brin_summaries_failed", error=str(exc) or type(exc).__name__)
        return total
