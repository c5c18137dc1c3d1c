"""Daily partitions of the append-only tables: create ahead, drop past retention.

Both ``email_log`` and ``email_events`` are range-partitioned by day (UTC) with a default
partition, so a row is never refused even when the daemon has not created its day yet. When a
day is created after rows already landed for it in the default partition, those rows are moved
into the new partition in the same transaction, so nothing is lost and lookups keep working.

Partition DDL never makes the writer wait for long. A DDL statement queues for its lock, and every
later statement on the table queues behind it: behind a long reader of ``email_log`` (pg_dump, a
report), a ``CREATE TABLE ... PARTITION OF`` or ``DETACH PARTITION`` (ACCESS EXCLUSIVE on the
parent) held up every INSERT and COPY for as long as the reader ran. So a day is created as a
table of its own and then attached (SHARE UPDATE EXCLUSIVE on the parent, which writes do not
conflict with), and every DDL transaction waits at most :data:`DDL_LOCK_TIMEOUT_MS` for a lock;
past that it gives up (action ``deferred``) and a later round does it. ``DETACH ... CONCURRENTLY``
is not an option: Postgres refuses it on a table with a default partition.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import asyncpg

from mailerd.db import provider_quota, provider_usage

# table -> partition key column
PARTITIONED = {"email_log": "sent_at", "email_events": "received_at"}
# Serialises partition DDL between nodes (two CREATE ... PARTITION OF at once deadlock).
PARTITION_LOCK_KEY = 0x6D61696C7074  # "mailpt"
# The longest a partition DDL transaction waits for each table lock it needs. While it waits, the
# statements that need a conflicting lock wait behind it (readers of the default partition while a
# day is attached; readers and writers of the parent while a day is detached): this bounds that.
DDL_LOCK_TIMEOUT_MS = 250
# A campaign in one of these statuses may still send (a draft has no rows yet; finished, cancelled
# and failed are final): its email_log rows are what keeps a lead from being emailed twice (a send
# window's shard skips the leads already logged, crash recovery logs unknown only the reserved
# leads without a row), so retention keeps them; and its email_events rows with them, so its
# record stays whole while it may go on (what its bounces were, when an operator weighs resuming
# it after a guard paused it; a lead's history, log and events together).
UNFINISHED_STATUSES = ("scheduled", "running", "paused")
_DAY = dt.timedelta(days=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """One thing :func:`maintain` did, for the CLI to print and the daemon to log."""

    verb: str  # "created", "moved", "dropped", "purged", "kept", "deferred"
    table: str
    detail: str
    # Why a partition was kept: "relay" (a destination has not passed its rows) or "campaign"
    # (rows of a campaign not finished); empty for the other verbs.
    cause: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.table} {self.detail}".rstrip()


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return start, start + _DAY


async def existing_days(conn: asyncpg.Connection, table: str) -> list[dt.date]:
    """The days that have their own partition of ``table``."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.relname = $1""",
        table,
    )
    return sorted(day for row in rows if (day := day_of(table, row["relname"])) is not None)


def day_of(table: str, partition: str) -> dt.date | None:
    """The day of a partition named by :func:`partition_name`; None for any other name (the
    default partition, one attached by hand)."""
    match = re.fullmatch(rf"{re.escape(table)}_p(\d{{8}})", partition)
    if match is None:
        return None
    try:
        return dt.datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


async def database_today(conn: asyncpg.Connection) -> dt.date:
    """Today (UTC) by the database's clock, the same for every node (each node stamps its rows
    with its own clock): a node whose clock runs ahead would otherwise take live days for
    expired ones and drop them."""
    today: dt.date = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return today


def _deferred(table: str, what: str) -> Action:
    return Action(
        "deferred",
        table,
        f"{what}: a lock was not granted within {DDL_LOCK_TIMEOUT_MS} ms "
        "(a transaction is using the table); retried next round",
    )


async def create_day(conn: asyncpg.Connection, table: str, day: dt.date) -> list[Action]:
    """Create the partition of ``table`` for ``day`` unless it exists; move stray rows into it.
    A lock not granted in time is the action ``deferred``: nothing was changed."""
    name = partition_name(table, day)
    low, high = _bounds(day)
    try:
        moved = await create_partition(conn, table, name, PARTITIONED[table], low, high, PARTITION_LOCK_KEY)
    except asyncpg.LockNotAvailableError:
        return [_deferred(table, f"creating {name}")]
    if moved is None:
        return []
    actions = [Action("moved", table, f"{moved} rows from {table}_default to {name}")] if moved else []
    return [*actions, Action("created", table, name)]


async def create_partition(
    conn: asyncpg.Connection,
    parent: str,
    name: str,
    column: str,
    low: dt.datetime,
    high: dt.datetime,
    lock_key: int,
) -> int | None:
    """Create ``name``, the partition of ``parent`` for ``column`` in [low, high), unless it exists
    (None); returns the rows moved into it from the default partition, in the same transaction
    (Postgres refuses a partition whose range the default one holds rows of). ``lock_key``
    serialises partition DDL between nodes (two CREATE ... PARTITION OF at once deadlock); the
    reports database uses this too (:mod:`mailerd.db.reports_load`).

    The partition is made as a table of its own and attached: ATTACH takes SHARE UPDATE
    EXCLUSIVE on the parent, which INSERT and COPY do not conflict with (``PARTITION OF`` took
    ACCESS EXCLUSIVE), and ACCESS EXCLUSIVE on the default partition only, taken first so no row
    of the day lands there between the move and the attach. Each lock is waited for
    :data:`DDL_LOCK_TIMEOUT_MS` at most: past that, :class:`asyncpg.LockNotAvailableError` and
    nothing changed."""
    bounds = f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
    status = "INSERT 0 0"
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        if await table_exists(conn, name):
            return None
        # After the advisory lock: waiting for another node's DDL is not waiting on a reader.
        await conn.execute(f"SET LOCAL lock_timeout = {DDL_LOCK_TIMEOUT_MS}")
        await conn.execute(f"LOCK TABLE {parent}_default IN ACCESS EXCLUSIVE MODE")
        await conn.execute(f"CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        if await conn.fetchval(
            f"SELECT EXISTS (SELECT FROM {parent}_default WHERE {column} >= $1 AND {column} < $2)", low, high
        ):
            status = await conn.execute(
                f"""WITH moved AS (DELETE FROM {parent}_default
                                   WHERE {column} >= $1 AND {column} < $2 RETURNING *)
                    INSERT INTO {name} SELECT * FROM moved""",
                low,
                high,
            )
        await conn.execute(f"ALTER TABLE {parent} ATTACH PARTITION {name} {bounds}")
    return int(status.rsplit(" ", 1)[-1])


async def table_exists(conn: asyncpg.Connection, name: str) -> bool:
    """Whether table ``name`` exists, read from ``pg_class`` with this statement's snapshot.
    ``to_regclass`` goes through the backend's catalog cache: after a check made before an
    advisory lock, it answered "no" from the cache for a table another session committed while
    this one waited (waiting on an advisory lock does not refresh the cache)."""
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE c.relname = $1 AND n.nspname = current_schema())""",
            name,
        )
    )


# A relay destination's position as a txid snapshot (xmin, xmax, xip): it has passed every
# transaction below xmax that is not in xip (see mailerd/relay/position.py).
RelayPosition = tuple[int, int, Sequence[int]]


async def drop_before(
    conn: asyncpg.Connection,
    table: str,
    cutoff: dt.date,
    *,
    relay_positions: Sequence[RelayPosition] | None = None,
) -> list[Action]:
    """Detach and drop the partitions of days before ``cutoff``; purge older default rows.

    A partition is kept (action ``kept``), and so are such rows of the default partition, while
    it holds rows of a campaign not finished (cause ``campaign``: see
    :data:`UNFINISHED_STATUSES`) or, with ``relay_positions``, a row that one of them has not
    passed (cause ``relay``: retention never drops what the relay has not delivered). Either
    rule alone keeps it. A lock not granted in time leaves this day and the later ones to the
    next round (action ``deferred``).
    """
    unpassed, args = _unpassed(relay_positions or [])
    actions: list[Action] = []
    for day in await existing_days(conn, table):
        if day >= cutoff:
            continue
        name = partition_name(table, day)
        try:
            outcome = await _drop_partition(conn, table, name, unpassed, args)
        except asyncpg.LockNotAvailableError:
            actions.append(_deferred(table, f"dropping {name} (and any later day past retention)"))
            break
        if outcome == "dropped":
            actions.append(Action("dropped", table, name))
        elif outcome:
            actions.append(Action("kept", table, f"{name}: {_KEPT[outcome]}", outcome))
    low, _ = _bounds(cutoff)
    column = PARTITIONED[table]
    where = f"{column} < ${len(args) + 1}"
    if unpassed:
        where += f" AND NOT ({unpassed})"
    where += f" AND NOT EXISTS (SELECT FROM campaigns c WHERE c.id = d.campaign_id AND {_UNFINISHED})"
    status = await conn.execute(f"DELETE FROM {table}_default d WHERE {where}", *args, low)
    purged = int(status.split()[-1])
    if purged:
        actions.append(Action("purged", table, f"{purged} rows older than {cutoff} from {table}_default"))
    return actions


# Campaigns ``c`` that may still send (the statuses of the partial index campaigns_status_idx).
_UNFINISHED = "c.status IN ({})".format(", ".join(f"'{status}'" for status in UNFINISHED_STATUSES))


_KEPT = {"campaign": "rows of campaigns not finished", "relay": "rows the relay has not passed"}


async def _drop_partition(
    conn: asyncpg.Connection, table: str, name: str, unpassed: str, args: list[Any]
) -> str:
    """Detach and drop ``name`` unless it must be kept: ``"dropped"``, the cause it was kept for
    (``"campaign"``, ``"relay"``: see :func:`drop_before`), or ``""`` (another node dropped it
    first). Raises :class:`asyncpg.LockNotAvailableError` when a lock is not granted within
    :data:`DDL_LOCK_TIMEOUT_MS` (nothing changed)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
        if not await table_exists(conn, name):
            return ""
        await conn.execute(f"SET LOCAL lock_timeout = {DDL_LOCK_TIMEOUT_MS}")
        # The day's table first: only its own readers and writers conflict, and the parent is not
        # held (its writers stalled) while waiting for them. Its rows are checked under SHARE (no
        # more writes, reads go on): checked before, a row committed while the drop waited for
        # its lock went with the day unchecked. DETACH then queues for ACCESS EXCLUSIVE on the
        # parent, where writes wait behind it for the lock timeout at most.
        await conn.execute(f"LOCK TABLE {name} IN SHARE MODE")
        if await conn.fetchval(
            f"SELECT EXISTS (SELECT FROM campaigns c WHERE {_UNFINISHED} AND EXISTS "
            f"(SELECT FROM {name} p WHERE p.campaign_id = c.id))"
        ):
            return "campaign"
        if unpassed and await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name} WHERE {unpassed})", *args):
            return "relay"
        await conn.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
        await conn.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
        await conn.execute(f"DROP TABLE {name}")
    return "dropped"


def _unpassed(positions: Sequence[RelayPosition]) -> tuple[str, list[Any]]:
    """A condition on ``tx`` true for rows some position has not passed, and its parameters.
    Every tx below the lowest xmin is passed by all: that bound lets the BRIN index on tx skip
    old ranges."""
    if not positions:
        return "", []
    args: list[Any] = [min(p[0] for p in positions)]
    terms = []
    for _, xmax, xip in positions:
        args += [xmax, list(xip)]
        terms.append(f"tx >= ${len(args) - 1} OR tx = ANY(${len(args)}::bigint[])")
    return f"tx >= $1 AND ({' OR '.join(terms)})", args


async def maintain(
    conn: asyncpg.Connection,
    *,
    ahead_days: int,
    retention_days: int,
    today: dt.date | None = None,
    relay_positions: Sequence[RelayPosition] | None = None,
) -> list[Action]:
    """Create today's and the next ``ahead_days - 1`` days; drop days older than retention (but
    not rows of campaigns not finished nor rows the relay has not passed: see
    :func:`drop_before`). ``today`` is the database's (:func:`database_today`) unless given."""
    today = today or await database_today(conn)
    actions: list[Action] = []
    for table in PARTITIONED:
        for offset in range(ahead_days):
            created = await create_day(conn, table, today + offset * _DAY)
            actions += created
            if any(a.verb == "deferred" for a in created):
                break  # the table is in use: its later days wait for the next round too
        actions += await drop_before(
            conn, table, today - retention_days * _DAY, relay_positions=relay_positions
        )
    actions += await prune_receipts(conn, today - retention_days * _DAY)
    if await conn.fetchval("SELECT to_regclass('provider_usage') IS NOT NULL"):
        pruned = await provider_usage.prune(conn)
        if pruned:
            actions.append(Action("purged", "provider_usage", f"{pruned} hour rows older than the window"))
    if await conn.fetchval("SELECT to_regclass('provider_quota_hours') IS NOT NULL"):
        pruned = await provider_quota.prune(conn)
        if pruned:
            actions.append(
                Action("purged", "provider_quota_hours", f"{pruned} hour rows older than two days")
            )
    return actions


async def prune_receipts(conn: asyncpg.Connection, cutoff: dt.date) -> list[Action]:
    """Forget webhook de-duplication keys older than the retention period (the events they
    guarded are gone with their partitions)."""
    low, _ = _bounds(cutoff)
    if not await conn.fetchval("SELECT to_regclass('webhook_receipts') IS NOT NULL"):
        return []
    status = await conn.execute("DELETE FROM webhook_receipts WHERE received_at < $1", low)
    purged = int(status.split()[-1])
    if await conn.fetchval("SELECT to_regclass('writer_flushes') IS NOT NULL"):
        # Flush ids only matter while a flush is being retried: a day is plenty.
        await conn.execute("DELETE FROM writer_flushes WHERE at < now() - interval '1 day'")
    return [Action("purged", "webhook_receipts", f"{purged} receipts older than {cutoff}")] if purged else []
