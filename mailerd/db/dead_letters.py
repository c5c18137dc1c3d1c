"""``dead_letters``: entries the writer could not store, kept where an operator can see them."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused writer entry, as recorded."""

    flush_id: uuid.UUID
    kind: str  # 'emails' or 'events'
    campaign_id: int | None
    shard_no: int | None
    seq: int | None
    entries: int
    sqlstate: str | None
    error: str
    payload: str


async def record(conn: asyncpg.Connection, letter: DeadLetter) -> None:
    """Insert once per ``flush_id`` (a retry after an unknown commit outcome adds nothing)."""
    await conn.execute(
        """INSERT INTO dead_letters
               (flush_id, kind, campaign_id, shard_no, seq, entries, sqlstate, error, payload)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (flush_id) DO NOTHING""",
        letter.flush_id,
        letter.kind,
        letter.campaign_id,
        letter.shard_no,
        letter.seq,
        letter.entries,
        letter.sqlstate,
        letter.error,
        letter.payload,
    )


async def recent(conn: asyncpg.Connection, *, limit: int = 100) -> list[asyncpg.Record]:
    """The newest dead letters first."""
    return list(await conn.fetch("SELECT * FROM dead_letters ORDER BY id DESC LIMIT $1", limit))
