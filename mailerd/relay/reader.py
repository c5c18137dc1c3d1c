"""Reading one batch after a position: every due row below a cutoff, never part of a transaction.

One batch is read in one REPEATABLE READ, read-only transaction (it takes no transaction id of
its own): first ``txid_current_snapshot()`` (S), then each outbox table the destination wants,
with the rows due between its position P and S (:func:`mailerd.relay.position.due`).

Capping the batch without skipping: each table is read in ``tx`` order with ``LIMIT limit + 1``.
When a table has more, the tx of its last row becomes the cutoff: rows at or above it are
dropped from the batch (from every table), so every transaction below the cutoff is read whole
and none above it partly. The new position is :func:`~mailerd.relay.position.advance` (P, S,
cutoff): transactions running in S stay unpassed whatever the cutoff. One transaction with more
rows than a batch (a writer flush of ``flush_rows``) is read whole on its own; the reader then
takes at least that many rows per read (up to ``MAX_WHOLE``), so the next flushes of that size
come in one read instead of a capped read thrown away and a second one.

Far behind (a destination that was down, or a campaign sending faster than one connection reads),
a read from P to S would scan and sort the whole backlog for every batch. So the reader bounds
the range it scans to ``span`` transaction ids, learnt from the last reads: for one range, twice
the ids that filled the last capped batch (:meth:`Reader._learn_alone`); for several, from the rows
per transaction id so that a range holds about ``FILL`` of its share of the batch
(:meth:`Reader._learn`). Once a read reaches S without being capped, the bound is lifted.

Behind, one read covers up to ``parts`` consecutive ranges ``[P.xmax + i * span, P.xmax + (i + 1)
* span)``, each on its own connection at once (on a busy server one connection's share of the CPU
does not keep up with a full-speed campaign). The other connections' transactions begin after S
was taken, so they see every transaction S saw ended; what S saw running is filtered out by S
itself, as in the first range. The ranges are joined in order up to the first one that was capped:
its cutoff is the read's cutoff, and the ranges after it are dropped (read again next time), so
the batch is still every due row below one cutoff. Each range is sized to hold its share of a batch
(``limit / parts``) but capped at a whole batch (``limit``): writer flushes are whole transactions
of hundreds or thousands of rows, so a range sized to its share often holds one more, and a range
capped at its share was capped in a third of the reads of a daemon's log, each time throwing away
the ranges read after it (bench/relay.py: more rows read than kept by a third, slower than one
range). A batch of several ranges holds up to ``parts * limit`` rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Collection

import asyncpg

from mailerd import aio
from mailerd.db import relay as relay_db
from mailerd.relay import outbox, records
from mailerd.relay.position import Snapshot, advance
from mailerd.relay.records import Record

_MIN_SPAN = 4  # ranges read at once
_MIN_SPAN_ALONE = 64  # one range
FILL = 0.75  # the part of its share of a batch a range among several is sized to hold
MAX_WHOLE = 100_000  # the most rows a read grows to after reading a big transaction whole


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """What one read returned: ``records`` (commit-safe order, an erasure after its leads'
    records), the position once they are delivered, whether the read reached the snapshot
    (caught up), and the time up to which everything committed is in it (or earlier)."""

    records: list[Record]
    end: Snapshot
    caught_up: bool
    as_of: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Range:
    """What one range of a read kept: its records (commit-safe order) and its cutoff (its upper
    bound when it was not capped)."""

    records: list[Record]
    cutoff: int
    upper: int

    @property
    def capped(self) -> bool:
        return self.cutoff < self.upper


class Reader:
    """Reads batches of the given kinds for one destination (it keeps the learnt span). Behind,
    a read covers up to ``parts`` ranges at once, on as many connections."""

    def __init__(self, pool: asyncpg.Pool, kinds: Collection[str], limit: int, parts: int = 1) -> None:
        self._pool = pool
        self._tables = [
            relay_db.TABLES[kind] for kind in records.KINDS if kind in kinds and kind in relay_db.TABLES
        ]
        self._limit = limit
        self._erasures = any(table.kind == "erasure" for table in self._tables)
        self._parts = max(1, parts)
        self._largest = 0  # the most rows of one transaction read whole (at most MAX_WHOLE)
        self.span: int | None = None
        self.whole_reads = 0  # transactions too big for a read, read again whole (a second query)
        self.split_reads = 0  # reads that covered more than one range
        self.joined_reads = 0  # reads whose batch joined more than one range
        self.dropped_ranges = 0  # ranges read after a capped one, thrown away (read again next time)

    @property
    def limit(self) -> int:
        """Rows per read: the configured batch, or the biggest transaction read whole since."""
        return max(self._limit, self._largest)

    def _share(self, ranges: int) -> int:
        """The rows a range is sized to hold (each is capped at :attr:`limit`): the batch shared
        among the ranges, and never below the biggest transaction read whole."""
        return max(-(-self._limit // ranges), self._largest)

    def _uppers(self, position: Snapshot, snapshot: Snapshot) -> list[int]:
        """Each range's upper bound: one range up to S until a span is learnt, else up to
        ``parts`` spans after the position (the last one ending at S when it gets there)."""
        if self.span is None:
            return [snapshot.xmax]
        uppers: list[int] = []
        lower = position.xmax
        while len(uppers) < self._parts and lower < snapshot.xmax:
            lower = min(lower + self.span, snapshot.xmax)
            uppers.append(lower)
        return uppers or [snapshot.xmax]

    async def read(self, position: Snapshot) -> Batch:
        """The next batch after ``position`` (possibly empty)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            await relay_db.plan_reads_by_tx(conn)
            snapshot, taken_at = await outbox.snapshot(conn)
            uppers = self._uppers(position, snapshot)
            cap = self.limit
            first = self._read_range(conn, position, snapshot, uppers[0], cap)
            if len(uppers) == 1:
                ranges = [await first]
            else:
                self.split_reads += 1
                rest = [
                    self._read_apart(Snapshot(lower, lower), snapshot, upper, cap)
                    for lower, upper in itertools.pairwise(uppers)
                ]
                ranges = await aio.all_or_first_error(first, *rest)
        batch: list[Record] = []
        used = 0
        for kept in ranges:
            batch += kept.records
            used += 1
            if kept.capped:
                break
        self.joined_reads += used > 1
        self.dropped_ranges += len(ranges) - used
        lowest = batch[0].tx if batch else position.xmax  # before the erasures move
        if self._erasures:
            batch = records.erasures_last(batch)
        cutoff, upper = kept.cutoff, kept.upper
        truncated = kept.capped
        bounded = upper < snapshot.xmax
        caught_up = not truncated and not bounded
        if caught_up:
            self.span = None
        elif self._parts == 1:
            self._learn_alone(lowest, cutoff, truncated=truncated)
        else:
            self._learn(position.xmax, cutoff, len(batch), self._share(len(uppers)))
        end = advance(position, snapshot, None if caught_up else cutoff)
        as_of = taken_at if caught_up else max((r.at for r in batch), default=None)
        return Batch(batch, end, caught_up, as_of)

    async def _read_apart(self, lower: Snapshot, snapshot: Snapshot, upper: int, cap: int) -> _Range:
        """A range after the first, on a connection of its own (its transaction begins after
        ``snapshot`` was taken: everything that had ended in it is visible)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            await relay_db.plan_reads_by_tx(conn)
            return await self._read_range(conn, lower, snapshot, upper, cap)

    async def _read_range(
        self, conn: asyncpg.Connection, position: Snapshot, snapshot: Snapshot, upper: int, cap: int
    ) -> _Range:
        groups, cutoff = await self._read_tables(conn, position, snapshot, upper, cap)
        built = [
            await outbox.build(conn, table, [r for r in rows if r[0] < cutoff]) for table, rows in groups
        ]
        return _Range(records.merged(*built), cutoff, upper)

    async def _read_tables(
        self, conn: asyncpg.Connection, position: Snapshot, snapshot: Snapshot, upper: int, cap: int
    ) -> tuple[list[tuple[relay_db.Table, list[asyncpg.Record]]], int]:
        """Each table's due rows, and the cutoff (``upper`` when no table had more than ``cap``):
        the caller keeps the rows below it. Later tables are read only below the cutoff found so
        far. Rows are built into records only once kept."""
        cutoff = upper
        groups: list[tuple[relay_db.Table, list[asyncpg.Record]]] = []
        for table in self._tables:
            rows = await relay_db.read_due(conn, table, position, snapshot, cutoff, cap + 1)
            if len(rows) > cap:
                last = rows[-1][0]
                rows = [row for row in rows if row[0] < last]
                if rows:
                    cutoff = last
                else:
                    # One transaction holds more than a range: take all of it, and only it.
                    rows = await relay_db.read_transaction(conn, table, last)
                    cutoff = last + 1
                    self.whole_reads += 1
                    self._largest = max(self._largest, min(len(rows), MAX_WHOLE))
            groups.append((table, rows))
        return groups, cutoff

    def _learn_alone(self, first: int, cutoff: int, *, truncated: bool) -> None:
        """One range (behind only): twice the transaction ids that filled this capped batch
        (``first`` is its lowest tx), so the next read is capped too and its batch full; doubled
        while reads come back short. A lone range loses nothing to its cap but a scan, and in
        bench/reports.py full batches beat ranges sized to fit (fewer batches to load)."""
        if truncated:
            self.span = max(_MIN_SPAN_ALONE, 2 * (cutoff - first))
        else:
            assert self.span is not None
            self.span *= 2

    def _learn(self, lower: int, upper: int, rows: int, share: int) -> None:
        """Size the next ranges (several at once, behind only): the transaction ids ``[lower,
        upper)`` this read covered held ``rows`` rows, so a range of ``span`` ids holds about
        ``FILL`` of ``share`` (:meth:`_share`). A read that found nothing doubles the span; it
        never grows more than twofold per read (one sparse stretch does not make the next read
        scan a whole backlog)."""
        covered = max(1, upper - lower)
        if rows == 0:
            span = 2 * (self.span or covered)
        else:
            span = int(FILL * share * covered / rows)
            if self.span is not None:
                span = min(span, 2 * self.span)
        self.span = max(_MIN_SPAN, span)
