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

Far behind (a destination that was down), a read from P to S would scan and sort the whole
backlog for every batch. So the reader also bounds the range it scans, ``[P.xmax, P.xmax +
span)``, with ``span`` learnt from the last batches: about twice the transaction ids that filled
the last capped batch, doubled while batches come back short. Once a read reaches S without being
capped, the bound is lifted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection

import asyncpg

from mailerd.db import relay as relay_db
from mailerd.relay import outbox, records
from mailerd.relay.position import Snapshot, advance
from mailerd.relay.records import Record

_MIN_SPAN = 64
MAX_WHOLE = 100_000  # the most rows a read grows to after reading a big transaction whole


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """What one read returned: ``records`` (commit-safe order), the position once they are
    delivered, whether the read reached the snapshot (caught up), and the time up to which
    everything committed is in it (or earlier)."""

    records: list[Record]
    end: Snapshot
    caught_up: bool
    as_of: dt.datetime | None


class Reader:
    """Reads batches of the given kinds for one destination (it keeps the learnt span)."""

    def __init__(self, pool: asyncpg.Pool, kinds: Collection[str], limit: int) -> None:
        self._pool = pool
        self._tables = [
            relay_db.TABLES[kind] for kind in records.KINDS if kind in kinds and kind in relay_db.TABLES
        ]
        self._limit = limit
        self.span: int | None = None
        self.whole_reads = 0  # transactions too big for a read, read again whole (a second query)

    @property
    def limit(self) -> int:
        """Rows per read: the configured batch, or the biggest transaction read whole since."""
        return self._limit

    async def read(self, position: Snapshot) -> Batch:
        """The next batch after ``position`` (possibly empty)."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot, taken_at = await outbox.snapshot(conn)
            upper = snapshot.xmax
            bounded = self.span is not None and position.xmax + self.span < upper
            if bounded:
                assert self.span is not None
                upper = position.xmax + self.span
            groups, cutoff = await self._read_tables(conn, position, snapshot, upper)
            built = [
                await outbox.build(conn, table, [r for r in rows if r[0] < cutoff]) for table, rows in groups
            ]
        batch = records.merged(*built)
        truncated = cutoff < upper
        first = batch[0].tx if batch else position.xmax
        self._learn(first, cutoff, truncated=truncated, bounded=bounded)
        caught_up = not truncated and not bounded
        end = advance(position, snapshot, None if caught_up else cutoff)
        as_of = taken_at if caught_up else max((r.at for r in batch), default=None)
        return Batch(batch, end, caught_up, as_of)

    async def _read_tables(
        self, conn: asyncpg.Connection, position: Snapshot, snapshot: Snapshot, upper: int
    ) -> tuple[list[tuple[relay_db.Table, list[asyncpg.Record]]], int]:
        """Each table's due rows, and the cutoff (``upper`` when no table had more than a batch):
        the caller keeps the rows below it. Later tables are read only below the cutoff found so
        far. Rows are built into records only once kept."""
        cutoff = upper
        groups: list[tuple[relay_db.Table, list[asyncpg.Record]]] = []
        for table in self._tables:
            rows = await relay_db.read_due(conn, table, position, snapshot, cutoff, self._limit + 1)
            if len(rows) > self._limit:
                last = rows[-1][0]
                rows = [row for row in rows if row[0] < last]
                if rows:
                    cutoff = last
                else:
                    # One transaction holds more than a batch: take all of it, and only it.
                    rows = await relay_db.read_transaction(conn, table, last)
                    cutoff = last + 1
                    self.whole_reads += 1
                    self._limit = max(self._limit, min(len(rows), MAX_WHOLE))
            groups.append((table, rows))
        return groups, cutoff

    def _learn(self, first: int, cutoff: int, *, truncated: bool, bounded: bool) -> None:
        """Adapt the scanned range to what one batch holds (see the module docstring): ``first``
        is the batch's lowest tx, so the span counts the transaction ids one batch covered."""
        if truncated:
            self.span = max(_MIN_SPAN, 2 * (cutoff - first))
        elif bounded:
            assert self.span is not None
            self.span *= 2
        else:
            self.span = None
