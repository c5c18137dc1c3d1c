"""Loading the reports database: rows in, rollups up, idempotent on the record id.

Each kind is one statement: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` the rows actually
inserted, and in the same statement (data-modifying CTEs) the rollups add exactly those rows. A
record delivered again conflicts on its key (the record id, with the partition key that never
changes for it) and so changes no count. The caller runs a batch in one transaction.

Emails and events come in as the JSON the relay publishes, all of a batch in one parameter; the
statement reads their fields (``json_to_recordset``), so loading parses nothing in Python.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import structlog

from mailerd.db import erasure, partitions

log = structlog.get_logger(__name__)

# The counters of every rollup, in this order.
COUNTERS = (
    "sent",
    "failed",
    "unknown",
    "suppressed",
    "delivered",
    "bounced_hard",
    "bounced_soft",
    "complained",
    "unsubscribed",
)
# What each counter counts: emails by status, events by type.
_EMAIL_COUNTERS = {"sent": "sent", "failed": "failed", "unknown": "unknown", "suppressed": "suppressed"}
_EVENT_COUNTERS = {
    "delivered": "delivered",
    "bounced_hard": "hard_bounce",
    "bounced_soft": "soft_bounce",
    "complained": "complaint",
    "unsubscribed": "unsubscribe",
}
# A diagnostic quotes the recipient: one reason for every recipient, and no address kept.
_ADDRESS_PATTERN = r"[^\s<>()\[\]\",;:\x27]+@[^\s<>()\[\]\",;:\x27]+"


def _indicators(column: str, counters: dict[str, str]) -> str:
    """``(status = 'sent')::int AS sent, ...`` for every counter (0 for the other kind's)."""
    parts = []
    for counter in COUNTERS:
        value = counters.get(counter)
        parts.append(f"({column} = '{value}')::int AS {counter}" if value else f"0 AS {counter}")
    return ", ".join(parts)


def _rollups(source: str) -> str:
    """The CTEs that add ``source``'s rows (campaign_id, account_id, at, domain, counters) to the
    four rollups."""
    sums = ", ".join(f"sum({c})" for c in COUNTERS)
    cols = ", ".join(COUNTERS)
    add = ", ".join(f"{c} = {{table}}.{c} + EXCLUDED.{c}" for c in COUNTERS)
    return f""",
minutes AS (
    INSERT INTO report_campaign_minutes (campaign_id, minute, {cols})
    SELECT campaign_id, date_trunc('minute', at), {sums} FROM {source}
    WHERE campaign_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (campaign_id, minute) DO UPDATE SET {add.format(table="report_campaign_minutes")}
),
totals AS (
    INSERT INTO report_campaign_totals (campaign_id, {cols})
    SELECT campaign_id, {sums} FROM {source}
    WHERE campaign_id IS NOT NULL GROUP BY 1 ORDER BY 1
    ON CONFLICT (campaign_id) DO UPDATE SET {add.format(table="report_campaign_totals")}
),
domains AS (
    INSERT INTO report_campaign_domains (campaign_id, domain, {cols})
    SELECT campaign_id, coalesce(domain, ''), {sums} FROM {source}
    WHERE campaign_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (campaign_id, domain) DO UPDATE SET {add.format(table="report_campaign_domains")}
),
days AS (
    INSERT INTO report_account_days (account_id, day, {cols})
    SELECT account_id, (at AT TIME ZONE 'UTC')::date, {sums} FROM {source}
    WHERE account_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (account_id, day) DO UPDATE SET {add.format(table="report_account_days")}
)"""


LOAD_EMAILS = f"""
WITH input AS (
    SELECT * FROM json_to_recordset($1::json)
        AS t(campaign_id bigint, lead_id bigint, sent_at timestamptz, account_id bigint, address text,
             provider text, provider_message_id text, status text, reason text)
),
inserted AS (
    INSERT INTO report_emails (campaign_id, lead_id, sent_at, account_id, address, domain, provider,
                               provider_message_id, status, reason)
    SELECT campaign_id, lead_id, sent_at, account_id, lower(address),
           nullif(lower(split_part(address, '@', 2)), ''), provider, provider_message_id, status, reason
    FROM input
    ON CONFLICT DO NOTHING
    RETURNING campaign_id, account_id, sent_at AS at, domain, status
),
counted AS (
    SELECT campaign_id, account_id, at, domain, {_indicators("status", _EMAIL_COUNTERS)} FROM inserted
){_rollups("counted")}
SELECT count(*) FROM inserted
"""

LOAD_EVENTS = f"""
WITH input AS (
    SELECT * FROM json_to_recordset($1::json)
        AS t(provider text, provider_event_id text, received_at timestamptz, type text, account_id bigint,
             campaign_id bigint, lead_id bigint, address text, provider_message_id text,
             provider_type text, reason text, smtp_status text, occurred_at timestamptz)
),
inserted AS (
    INSERT INTO report_events (provider, provider_event_id, received_at, type, account_id, campaign_id,
                               lead_id, address, domain, provider_message_id, provider_type, reason,
                               smtp_status, occurred_at)
    SELECT provider, provider_event_id, received_at, type, account_id, campaign_id, lead_id, lower(address),
           nullif(lower(split_part(address, '@', 2)), ''), provider_message_id, provider_type, reason,
           smtp_status, occurred_at
    FROM input
    ON CONFLICT DO NOTHING
    RETURNING campaign_id, account_id, occurred_at AS at, domain, type, reason, smtp_status
),
counted AS (
    SELECT campaign_id, account_id, at, domain, {_indicators("type", _EVENT_COUNTERS)} FROM inserted
){_rollups("counted")},
reasons AS (
    INSERT INTO report_bounce_reasons (campaign_id, bounce, smtp_status, reason, count, last_at)
    SELECT campaign_id, CASE type WHEN 'hard_bounce' THEN 'hard' ELSE 'soft' END, coalesce(smtp_status, ''),
           left(regexp_replace(coalesce(reason, ''), '{_ADDRESS_PATTERN}', '<address>', 'g'), 300),
           count(*), max(at)
    FROM inserted
    WHERE campaign_id IS NOT NULL AND type IN ('hard_bounce', 'soft_bounce')
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (campaign_id, bounce, smtp_status, reason) DO UPDATE
        SET count = report_bounce_reasons.count + EXCLUDED.count,
            last_at = greatest(report_bounce_reasons.last_at, EXCLUDED.last_at)
)
SELECT count(*) FROM inserted
"""


def _json_array(values: Sequence[bytes]) -> str:
    """The records' JSON, as published, in one JSON array: the database takes the fields out
    (``json_to_recordset``), so nothing is parsed in Python on the way in."""
    return (b"[" + b",".join(values) + b"]").decode()


async def load_emails(conn: asyncpg.Connection, values: Sequence[bytes]) -> int:
    """``email`` records (their JSON); returns how many were new."""
    return int(await conn.fetchval(LOAD_EMAILS, _json_array(values)))


async def load_events(conn: asyncpg.Connection, values: Sequence[bytes]) -> int:
    """``event`` records (their JSON); returns how many were new."""
    return int(await conn.fetchval(LOAD_EVENTS, _json_array(values)))


async def load_campaigns(conn: asyncpg.Connection, records: Sequence[dict[str, Any]]) -> None:
    """``campaign`` records: the newest generation of each campaign wins."""
    await conn.executemany(
        """INSERT INTO report_campaigns (campaign_id, account_id, generation, status, at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (campaign_id) DO UPDATE
               SET generation = EXCLUDED.generation, status = EXCLUDED.status, at = EXCLUDED.at
               WHERE report_campaigns.generation < EXCLUDED.generation""",
        [(r["campaign_id"], r["account_id"], r["generation"], r["status"], r["at"]) for r in records],
    )


# --- partitions ---------------------------------------------------------------------------------

# The partitioned tables and the time each is partitioned by (a month per partition).
PARTITIONED = {"report_emails": "sent_at", "report_events": "received_at"}
PARTITION_LOCK_KEY = 0x6D61696C7270  # "mailrp": one creator of a month's partitions at a time


def month_of(at: dt.datetime) -> dt.date:
    """The first day (UTC) of ``at``'s month: the partition it belongs to."""
    utc = at.astimezone(dt.UTC)
    return dt.date(utc.year, utc.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(table: str, month: dt.date) -> str:
    return f"{table}_p{month:%Y%m}"


@dataclasses.dataclass(frozen=True, slots=True)
class Ensured:
    """What :func:`ensure_partitions` did: the rows it moved out of the default partition (one
    line per table), and the months it left for later (a table's lock was not granted in time)."""

    moved: list[str]
    deferred: set[dt.date]


async def ensure_partitions(conn: asyncpg.Connection, months: Iterable[dt.date]) -> Ensured:
    """Each month's partition of every partitioned table (already there: nothing happens).

    Rows of a month that had no partition when they came (retention dropped it while a late
    record was on its way, or its creation was deferred) sit in the default partition: they move
    into the new partition in the same transaction, as on the main database
    (:func:`mailerd.db.partitions.create_partition`).

    A partition whose lock is not granted in time (a long report reads the table) is left for
    later (log ``reports_partition_deferred``), and so are that table's later months of this
    call, without waiting again: their records land in the default partition meanwhile, until a
    later call creates the month (the caller tries the deferred months again)."""
    moved: list[str] = []
    deferred: set[dt.date] = set()
    busy: set[str] = set()  # tables whose lock was not granted in this call
    for month in sorted(set(months)):
        low = dt.datetime.combine(month, dt.time(), dt.UTC)
        high = dt.datetime.combine(next_month(month), dt.time(), dt.UTC)
        for table, column in PARTITIONED.items():
            name = partition_name(table, month)
            if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                continue  # the common case, without a transaction or the lock
            if table in busy:
                deferred.add(month)
                continue
            try:
                rows = await partitions.create_partition(
                    conn, table, name, column, low, high, PARTITION_LOCK_KEY
                )
            except asyncpg.LockNotAvailableError:
                log.warning("reports_partition_deferred", partition=name, operation="create")
                busy.add(table)
                deferred.add(month)
                continue
            if rows:
                moved.append(f"moved {rows} rows from {table}_default to {name}")
    return Ensured(moved, deferred)


async def drop_before(conn: asyncpg.Connection, cutoff: dt.date) -> list[str]:
    """Drop the monthly partitions that end on or before ``cutoff`` (and rows of those months in
    the default partition), and the series' rows of those months (a campaign's totals, domains
    and bounce reasons stay); returns the partitions dropped.

    A drop waits :data:`mailerd.db.partitions.DDL_LOCK_TIMEOUT_MS` at most for each lock (DROP
    takes ACCESS EXCLUSIVE on the parent: behind a long report, the loads would queue behind it);
    past that it is left for the next round (log ``reports_partition_deferred``)."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.relname = ANY($1::text[]) AND c.relname ~ '_p[0-9]{6}$'""",
        list(PARTITIONED),
    )
    dropped = []
    for row in rows:
        name = row["relname"]
        month = dt.date(int(name[-6:-2]), int(name[-2:]), 1)
        if next_month(month) <= cutoff:
            try:
                async with conn.transaction():  # another node's maintenance may drop it first
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
                    if await partitions.table_exists(conn, name):
                        await conn.execute(f"SET LOCAL lock_timeout = {partitions.DDL_LOCK_TIMEOUT_MS}")
                        # The month's table first, so the parent is not held while its readers end.
                        await conn.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
                        await conn.execute(f"DROP TABLE {name}")
                        dropped.append(name)
            except asyncpg.LockNotAvailableError:
                log.warning("reports_partition_deferred", partition=name, operation="drop")
    kept_from = dt.datetime.combine(dt.date(cutoff.year, cutoff.month, 1), dt.time(), dt.UTC)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
        for table, column in PARTITIONED.items():
            await conn.execute(f"DELETE FROM {table}_default WHERE {column} < $1", kept_from)
    # The series go by whole months too, as the partitions do: a late record of a kept month
    # (the loader takes those) must add to its minute and day, not bring back a part of them.
    await conn.execute("DELETE FROM report_campaign_minutes WHERE minute < $1", kept_from)
    await conn.execute("DELETE FROM report_account_days WHERE day < $1", kept_from.date())
    return sorted(dropped)


# --- erasure ------------------------------------------------------------------------------------

ERASED_MARK = erasure.ERASED_MARK
# HMAC-SHA256 of lower(address) in SQL, as the main database computes it (mailerd.db.erasure).
_HMAC = "sha256($4::bytea || sha256($3::bytea || convert_to(lower(address), 'UTF8')))"


async def erase(
    conn: asyncpg.Connection,
    erasure_id: str,
    account_id: int,
    lead_ids: Sequence[int],
    hashes: Sequence[bytes],
    pads: tuple[bytes, bytes] | None,
) -> int:
    """Remove the erased people's addresses from every table (counts stay): rows of their lead
    ids, and rows whose address hashes to one of ``hashes`` (when the key's ``pads`` are known).
    Returns the rows changed; an erasure applied before changes nothing."""
    first = await conn.fetchval(
        """INSERT INTO report_erasures (id, account_id, at) VALUES ($1, $2, now())
           ON CONFLICT DO NOTHING RETURNING true""",
        erasure_id,
        account_id,
    )
    if not first:
        return 0
    by_hash = f"OR (address IS NOT NULL AND {_HMAC} = ANY($5::bytea[]))" if pads else ""
    args: list[Any] = [account_id, list(lead_ids)]
    if pads:
        args += [pads[0], pads[1], list(hashes)]
    addresses: list[str] = await conn.fetchval(
        f"""SELECT coalesce(array_agg(DISTINCT address), '{{}}') FROM (
                SELECT address FROM report_emails
                WHERE account_id = $1 AND address IS NOT NULL AND (lead_id = ANY($2::bigint[]) {by_hash})
                UNION ALL
                SELECT address FROM report_events
                WHERE (account_id = $1 OR account_id IS NULL) AND address IS NOT NULL
                  AND (lead_id = ANY($2::bigint[]) {by_hash})
            ) found""",
        *args,
    )
    changed = 0
    status = await conn.execute(
        """UPDATE report_emails SET address = NULL
           WHERE account_id = $1 AND (lead_id = ANY($2::bigint[]) OR address = ANY($3::text[]))""",
        account_id,
        list(lead_ids),
        addresses,
    )
    changed += int(status.rsplit(" ", 1)[-1])
    # The provider's event id carries the recipient: hashed as the main database does, so the same
    # event read again after the erasure has the same key here.
    status = await conn.execute(
        """UPDATE report_events SET address = NULL,
               provider_event_id = CASE WHEN address = ANY($3::text[])
                   THEN encode(sha256(convert_to(provider_event_id, 'UTF8')), 'hex')
                   ELSE provider_event_id END
           WHERE (account_id = $1 OR account_id IS NULL)
             AND (lead_id = ANY($2::bigint[]) OR address = ANY($3::text[]))""",
        account_id,
        list(lead_ids),
        addresses,
    )
    changed += int(status.rsplit(" ", 1)[-1])
    # Diagnostic texts quote the address in whatever case the provider wrote it.
    await erasure.scrub_texts(conn, "report_emails", ("reason",), addresses, "account_id = $1", account_id)
    await erasure.scrub_texts(
        conn,
        "report_events",
        ("reason", "provider_type"),
        addresses,
        "(account_id = $1 OR account_id IS NULL)",
        account_id,
    )
    return changed
