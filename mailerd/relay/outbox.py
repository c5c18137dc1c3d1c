"""The outbox tables as the relay sees them: their rows as records, positions as snapshots.

The SQL is in :mod:`mailerd.db.relay`; this module turns its rows into
:class:`~mailerd.relay.records.Record` and its snapshot texts into
:class:`~mailerd.relay.position.Snapshot`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from mailerd.db import relay as relay_db
from mailerd.relay import records
from mailerd.relay.position import Snapshot
from mailerd.relay.records import Record

Builder = Callable[[asyncpg.Connection, Sequence[asyncpg.Record]], Awaitable[list[Record]]]


async def snapshot(conn: asyncpg.Connection) -> tuple[Snapshot, dt.datetime]:
    """The database's txid snapshot now, and when it was taken."""
    text, at = await relay_db.snapshot(conn)
    return Snapshot.parse(text), at


def position_of(stored: relay_db.Position) -> Snapshot:
    return Snapshot.of(stored.tx_xmin, stored.tx_xmax, stored.tx_xip)


async def _emails(_conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[Record]:
    """Email records as the database built them (with each campaign's account and provider and
    each lead's address at read time: null once the lead is gone)."""
    return [records.from_database("email", tx, at, key, value) for tx, at, key, value in rows]


def _each(build: Callable[[asyncpg.Record], Record]) -> Builder:
    """A row-by-row builder as a batch builder (tables whose rows hold everything)."""

    async def batch(_conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[Record]:
        return [build(row) for row in rows]

    return batch


BUILDERS: dict[str, Builder] = {
    "email": _emails,
    "event": _each(records.event),
    "campaign": _each(records.campaign),
    "erasure": _each(records.erasure),
}


async def build(
    conn: asyncpg.Connection, table: relay_db.Table, rows: Sequence[asyncpg.Record]
) -> list[Record]:
    """Rows of ``table`` as records (inside the read's transaction)."""
    return await BUILDERS[table.kind](conn, rows) if rows else []


def stored(row: asyncpg.Record) -> Record:
    """A dead letter's record, as it was sent."""
    return records.stored(row["kind"], row["record_id"], row["record"], row["at"])
