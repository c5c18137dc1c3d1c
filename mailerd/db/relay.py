"""The relay's queries: outbox reads by transaction id, positions, dead letters, replays.

A read takes rows whose ``tx`` is due between a position P and a snapshot S (see
:mod:`mailerd.relay.position`), written once here for every outbox table::

    tx >= P.xmin AND tx < upper                -- upper = min(S.xmax, cutoff)
    AND NOT tx = ANY(S.xip)                    -- ended (committed) in S
    AND (tx >= P.xmax OR tx = ANY(P.xip))      -- not passed by P

The BRIN index on ``tx`` serves the range; rows come in ``tx`` order. ``email_log`` rows come
back as records already (key and JSON built by the statement: the relay publishes one per email
sent, so that work is kept out of Python).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import asyncpg

from mailerd.db import erasure as erasure_db


class TxSnapshot(Protocol):
    """A txid snapshot (``mailerd.relay.position.Snapshot``): passed = below xmax, not in xip."""

    @property
    def xmin(self) -> int: ...
    @property
    def xmax(self) -> int: ...
    @property
    def xip(self) -> tuple[int, ...]: ...


class StoredRecord(Protocol):
    """What a dead letter keeps of a record (``mailerd.relay.records.Record``)."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def account_id(self) -> int | None: ...
    @property
    def lead_id(self) -> int | None: ...
    @property
    def value(self) -> bytes: ...


_DUE = """{a}.tx >= $1 AND {a}.tx < $2 AND NOT {a}.tx = ANY($3::bigint[])
          AND ({a}.tx >= $4 OR {a}.tx = ANY($5::bigint[]))"""

_EMAIL_SELECT = """SELECT e.tx, e.campaign_id, e.lead_id, e.status, e.provider_message_id, e.error, e.sent_at
                   FROM email_log e"""
# Email records are built here, one per email sent: the rows first (a range scan, materialized),
# then each row's campaign (a tiny table) and its lead's address now (a correlated subquery: one
# primary-key probe per row, whatever the planner expects), into the JSON the relay publishes:
# written out as text (to_json escapes each string), about three times cheaper than
# json_build_object, which looks up every argument's type on every row.
# ``records.email`` builds the same record in Python (the tests hold the two together). Rows
# for which {keep} is false come back without a value: the reader drops them (above its cutoff).
# Columns: tx, sent_at, key (bytea), value (bytea, UTF-8 JSON).
_EMAIL_BUILT = """WITH d AS MATERIALIZED ({rows})
SELECT d.tx, d.sent_at,
       convert_to(coalesce(c.account_id::text, '') || ':' || d.lead_id, 'UTF8') AS key,
       CASE WHEN {keep} THEN convert_to(
           '{{"schema":1,"kind":"email","id":"email:' || d.campaign_id || ':' || d.lead_id
           || '","account_id":' || coalesce(c.account_id::text, 'null')
           || ',"campaign_id":' || d.campaign_id || ',"lead_id":' || d.lead_id
           || ',"address":' || coalesce(to_json((
                  SELECT l.email FROM leads l WHERE l.account_id = c.account_id AND l.id = d.lead_id))::text,
                  'null')
           || ',"provider":' || coalesce(to_json(c.provider)::text, 'null')
           || ',"provider_message_id":' || coalesce(to_json(d.provider_message_id)::text, 'null')
           || ',"status":' || CASE d.status WHEN 1 THEN '"sent"' WHEN 2 THEN '"failed"'
                                            WHEN 3 THEN '"unknown"' WHEN 4 THEN '"suppressed"'
                                            ELSE to_json(d.status::text)::text END
           || ',"reason":' || coalesce(to_json(d.error)::text, 'null')
           || ',"sent_at":"' || to_char(d.sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
           || '+00:00"}}',
           'UTF8') END AS value
FROM d LEFT JOIN campaigns c ON c.id = d.campaign_id
ORDER BY {order}"""
# A capped read ($6 = the cap): every row but those of the last transaction when the cap was hit.
_BELOW_LAST = "(SELECT count(*) FROM d) < $6 OR d.tx < (SELECT max(tx) FROM d)"
_CAMPAIGN_SELECT = """SELECT c.tx, c.campaign_id, c.generation, c.account_id, c.status, c.previous_status,
                             c.cause, c.reason, c.at
                      FROM campaign_changes c"""
_ERASURE_SELECT = """SELECT r.tx, r.id, r.account_id, r.email_hashes, r.lead_ids, r.at FROM erasures r"""
_EVENT_SELECT = """SELECT v.tx, v.received_at, v.occurred_at, v.account_id, v.campaign_id, v.lead_id,
                          v.email, v.kind, v.provider, v.provider_event_id, v.provider_message_id,
                          v.provider_type, v.reason, v.smtp_status, v.bounce_class
                   FROM email_events v"""


@dataclasses.dataclass(frozen=True, slots=True)
class Table:
    """One outbox table: the rows of one record kind (``tx`` first in every row)."""

    kind: str
    name: str
    alias: str
    select: str
    time_column: str  # what replay ranges use (a column of the table)
    by_campaign: bool = True  # its rows name a campaign (replay --campaign)

    built: str = ""  # the database builds the records: a wrapper of the rows (see _EMAIL_BUILT)

    def query(self, where: str, *, order: str = "tx", limit: str = "", keep: str = "true") -> str:
        """The rows ``WHERE where`` in ``order`` (a column of the row), as the reader takes them."""
        a = self.alias
        rows = f"{self.select} WHERE {where} ORDER BY {a}.{order}{limit}"
        if not self.built:
            return rows
        return self.built.format(rows=rows, keep=keep, order=f"d.{order}")

    def due_sql(self) -> str:
        """Due rows (see the module docstring), up to ``$6`` of them."""
        return self.query(_DUE.format(a=self.alias), limit=" LIMIT $6", keep=_BELOW_LAST)


TABLES: dict[str, Table] = {
    "email": Table("email", "email_log", "e", _EMAIL_SELECT, "sent_at", built=_EMAIL_BUILT),
    "event": Table("event", "email_events", "v", _EVENT_SELECT, "received_at"),
    "campaign": Table("campaign", "campaign_changes", "c", _CAMPAIGN_SELECT, "at"),
    "erasure": Table("erasure", "erasures", "r", _ERASURE_SELECT, "at", by_campaign=False),
}


# Every read of the outbox by ``tx`` (a batch, a whole transaction, the lag count) runs in a
# transaction with these: the BRIN index on ``tx``, not a scan of the whole partition. Postgres
# chose a (parallel) sequential scan of the day's partition for every batch, whatever its range:
# a partition written since its last ANALYZE has no statistics of its newest ``tx`` values, and
# its unsummarised BRIN ranges look as dear as the heap. Each read of a batch then scanned the
# whole day so far (bench/relay.py: 22 µs of Postgres CPU per record on a campaign's log, 11 µs
# with these); parallel workers only add their start-up to a read of a few thousand rows.
READ_SETTINGS = "SET LOCAL enable_seqscan = off; SET LOCAL max_parallel_workers_per_gather = 0"


async def plan_reads_by_tx(conn: asyncpg.Connection) -> None:
    """Make the reads of the transaction under way use the ``tx`` index (:data:`READ_SETTINGS`)."""
    await conn.execute(READ_SETTINGS)


# The leaf BRIN indexes of the partitioned outbox tables, with their partition's name (the day).
_BRIN_LEAVES = """SELECT parent.relname AS parent, child.relname AS partition,
       index.oid::regclass::text AS index
FROM pg_inherits inh
JOIN pg_class parent ON parent.oid = inh.inhparent
JOIN pg_class child ON child.oid = inh.inhrelid
JOIN pg_index ix ON ix.indrelid = inh.inhrelid
JOIN pg_class index ON index.oid = ix.indexrelid
JOIN pg_am am ON am.oid = index.relam
WHERE parent.relname = ANY($1::text[]) AND am.amname = 'brin'
ORDER BY child.relname"""
SUMMARIZE_LOCK_TIMEOUT_MS = 100


async def brin_indexes(conn: asyncpg.Connection, tables: Sequence[str]) -> list[tuple[str, str, str]]:
    """(table, partition, index) of each BRIN index on a partition of ``tables``."""
    rows = await conn.fetch(_BRIN_LEAVES, list(tables))
    return [(row["parent"], row["partition"], row["index"]) for row in rows]


async def summarize_new_ranges(conn: asyncpg.Connection, index: str) -> int:
    """Summarise the block ranges of ``index`` written since its last summary (the last, partial
    one too: later inserts widen its summary), so that reads by ``tx`` skip them. Autovacuum does
    it only on its rounds (a minute apart by default, never when it is off), and until then each
    read scans every unsummarised block. Waits at most :data:`SUMMARIZE_LOCK_TIMEOUT_MS` for its
    lock (SHARE UPDATE EXCLUSIVE: writes go on; a VACUUM or partition DDL holds it off)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {SUMMARIZE_LOCK_TIMEOUT_MS}")
        summarized: int = await conn.fetchval("SELECT brin_summarize_new_values($1::regclass)", index)
    return summarized


def _due_args(position: TxSnapshot, snapshot: TxSnapshot, upper: int) -> tuple[Any, ...]:
    return (position.xmin, upper, list(snapshot.xip), position.xmax, list(position.xip))


async def snapshot(conn: asyncpg.Connection) -> tuple[str, dt.datetime]:
    """The current txid snapshot as text (``xmin:xmax:xip,...``) and the time it was taken (run
    it first in a REPEATABLE READ transaction: the reads after it then see exactly that snapshot)."""
    row = await conn.fetchrow("SELECT txid_current_snapshot()::text AS snap, clock_timestamp() AS at")
    assert row is not None
    return row["snap"], row["at"]


async def read_due(
    conn: asyncpg.Connection, table: Table, position: TxSnapshot, snapshot: TxSnapshot, upper: int, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` due rows of ``table`` below ``upper``, in ``tx`` order (``row[0]`` is tx;
    the relay makes them records; an email row is the record already, see ``_EMAIL_BUILT``)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        table.due_sql(), *_due_args(position, snapshot, upper), limit
    )
    return rows


async def read_transaction(conn: asyncpg.Connection, table: Table, tx: int) -> list[asyncpg.Record]:
    """Every row one transaction wrote to ``table`` (it held more than a batch)."""
    rows: list[asyncpg.Record] = await conn.fetch(table.query(f"{table.alias}.tx = $1"), tx)
    return rows


async def count_due(
    conn: asyncpg.Connection, table: Table, position: TxSnapshot, snapshot: TxSnapshot, cap: int
) -> int:
    """How many rows of ``table`` are due (counted up to ``cap``): the lag in records."""
    a = table.alias
    value = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {table.name} {a} WHERE {_DUE.format(a=a)} LIMIT $6) s",
        *_due_args(position, snapshot, snapshot.xmax),
        cap,
    )
    return int(value)


# --- positions ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """A destination's row in ``relay_positions``."""

    destination: str
    tx_xmin: int
    tx_xmax: int
    tx_xip: tuple[int, ...]
    epoch: int
    owner: str | None
    as_of: dt.datetime
    published: int
    updated_at: dt.datetime
    last_error: str | None
    last_error_at: dt.datetime | None


def _position(row: asyncpg.Record) -> Position:
    return Position(
        destination=row["destination"],
        tx_xmin=row["tx_xmin"],
        tx_xmax=row["tx_xmax"],
        tx_xip=tuple(row["tx_xip"]),
        epoch=row["epoch"],
        owner=row["owner"],
        as_of=row["as_of"],
        published=row["published"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        last_error_at=row["last_error_at"],
    )


async def positions(conn: asyncpg.Connection, names: Collection[str] | None = None) -> list[Position]:
    """The stored positions (of ``names``, or all), by name."""
    rows = await conn.fetch(
        """SELECT * FROM relay_positions WHERE $1::text[] IS NULL OR destination = ANY($1::text[])
           ORDER BY destination""",
        None if names is None else list(names),
    )
    return [_position(row) for row in rows]


async def take_positions(
    conn: asyncpg.Connection, names: Collection[str], start: TxSnapshot, owner: str
) -> dict[str, Position]:
    """On taking the relay lock: create missing positions at ``start``, and raise every epoch,
    so a node that led before can no longer move them."""
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO relay_positions (destination, tx_xmin, tx_xmax, tx_xip)
               SELECT unnest($1::text[]), $2, $3, $4::bigint[] ON CONFLICT (destination) DO NOTHING""",
            list(names),
            start.xmin,
            start.xmax,
            list(start.xip),
        )
        rows = await conn.fetch(
            """UPDATE relay_positions SET epoch = epoch + 1, owner = $2, updated_at = now()
               WHERE destination = ANY($1::text[]) RETURNING *""",
            list(names),
            owner,
        )
    return {row["destination"]: _position(row) for row in rows}


async def commit_position(
    conn: asyncpg.Connection,
    name: str,
    epoch: int,
    position: TxSnapshot,
    *,
    as_of: dt.datetime,
    published: int,
) -> bool:
    """Move a destination's position after its records were acknowledged; False when another
    node has taken the relay since (epoch changed): the caller stops."""
    status = await conn.execute(
        """UPDATE relay_positions
           SET tx_xmin = $3, tx_xmax = $4, tx_xip = $5::bigint[], as_of = $6,
               published = published + $7, updated_at = now(), last_error = NULL
           WHERE destination = $1 AND epoch = $2""",
        name,
        epoch,
        position.xmin,
        position.xmax,
        list(position.xip),
        as_of,
        published,
    )
    return bool(status.endswith(" 1"))


async def record_error(conn: asyncpg.Connection, name: str, epoch: int, error: str) -> None:
    """Remember a destination's last failure for ``mailerd relay status``."""
    await conn.execute(
        """UPDATE relay_positions SET last_error = $3, last_error_at = now()
           WHERE destination = $1 AND epoch = $2""",
        name,
        epoch,
        error[:2000],
    )


async def lowest_passed(conn: asyncpg.Connection, names: Collection[str]) -> int | None:
    """The lowest ``tx_xmin`` over ``names`` (every tx below it is passed by all of them); None
    when none of them has a position yet."""
    value = await conn.fetchval(
        "SELECT min(tx_xmin) FROM relay_positions WHERE destination = ANY($1::text[])", list(names)
    )
    return None if value is None else int(value)


# --- dead letters ---------------------------------------------------------------------------


async def add_dead_letters(
    conn: asyncpg.Connection, destination: str, refused: Sequence[StoredRecord], error: str
) -> None:
    """Keep records a destination refused for good."""
    await conn.executemany(
        """INSERT INTO relay_dead_letters (destination, record_id, kind, account_id, lead_id, record, error)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        [
            (destination, r.id, r.kind, r.account_id, r.lead_id, r.value.decode(), error[:2000])
            for r in refused
        ],
    )


async def pending_dead_letters(
    conn: asyncpg.Connection, destination: str, *, after: int, limit: int
) -> list[asyncpg.Record]:
    """Dead letters of ``destination`` not replayed yet, by id: id, at, kind, record_id, record
    (the JSON text as sent)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, at, kind, record_id, record FROM relay_dead_letters
           WHERE destination = $1 AND replayed_at IS NULL AND id > $2 ORDER BY id LIMIT $3""",
        destination,
        after,
        limit,
    )
    return rows


async def mark_replayed(conn: asyncpg.Connection, ids: Collection[int]) -> None:
    await conn.execute(
        "UPDATE relay_dead_letters SET replayed_at = now() WHERE id = ANY($1::bigint[])", list(ids)
    )


async def forget_leads(conn: asyncpg.Connection, account_id: int, lead_ids: Collection[int]) -> int:
    """Erasure: drop the dead letters of these leads (they hold their addresses)."""
    status = await conn.execute(
        "DELETE FROM relay_dead_letters WHERE account_id = $1 AND lead_id = ANY($2::bigint[])",
        account_id,
        list(lead_ids),
    )
    return int(status.split()[-1])


async def forget_addresses(
    conn: asyncpg.Connection, account_id: int, email_hashes: Sequence[bytes], ipad: bytes, opad: bytes
) -> int:
    """Erasure: drop the dead letters of the account (or of no account: an event no lead
    matched) whose record names no lead and whose address has one of ``email_hashes`` (keyed as
    :mod:`mailerd.db.erasure` hashes, the key's pads given). Records of an event with no lead id
    (matched to a batch by its message id, or to nobody) hold the address too, and a destination
    may refuse one after the erasure deleted those there. A record with a lead id is the erased
    leads' (:func:`forget_leads`) or someone else's: the person imported again after the
    erasure is a new lead, whose records keep their address."""
    keyed = erasure_db.hmac_sql("(record->>'address')", "$3::bytea", "$4::bytea")
    status = await conn.execute(
        f"""DELETE FROM relay_dead_letters
            WHERE (account_id = $1 OR account_id IS NULL) AND lead_id IS NULL
              AND record->>'address' IS NOT NULL AND {keyed} = ANY($2::bytea[])""",
        account_id,
        list(email_hashes),
        ipad,
        opad,
    )
    return int(status.split()[-1])


# --- replay ---------------------------------------------------------------------------------


def replay_sql(table: Table, *, campaign: bool) -> str:
    """Rows of ``table`` whose time is in ``[$1, $2)`` (and of campaign ``$3``)."""
    column = f"{table.alias}.{table.time_column}"
    where = f"{column} >= $1 AND {column} < $2"
    if campaign:
        where += f" AND {table.alias}.campaign_id = $3"
    return table.query(where, order=table.time_column)


async def campaign_exists(conn: asyncpg.Connection, campaign_id: int) -> bool:
    """Whether ``campaigns`` has this id (a replay of none found says which mistake it was)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1)", campaign_id))
