"""``campaign_shards``: the unit of work a node claims, with its checkpoint and reservation.

A claim is a session-level advisory lock on a dedicated connection plus ``epoch = epoch + 1``
(the claim's fencing token). Every later write for the claim carries that epoch in its WHERE
clause, so a node that lost the shard can no longer move it. Invariant, enforced by a CHECK:
``lead_id_from <= checkpoint <= reserved_upto``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from mailerd import segments

LOCK_KEY_MODULUS = 2_147_483_647


def lock_key(campaign_id: int) -> int:
    """The advisory lock's first int4 key. Ids past 2^31 wrap: two shards sharing a lock only
    serialise, they never share an owner."""
    return campaign_id % LOCK_KEY_MODULUS


async def try_lock(claim: asyncpg.Connection, campaign_id: int, shard_no: int) -> bool:
    """Take the shard's session-level advisory lock on ``claim`` if nobody holds it."""
    return bool(
        await claim.fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)", lock_key(campaign_id), shard_no)
    )


async def unlock(claim: asyncpg.Connection, campaign_id: int, shard_no: int) -> None:
    await claim.execute("SELECT pg_advisory_unlock($1::int, $2::int)", lock_key(campaign_id), shard_no)


async def pending(
    conn: asyncpg.Connection,
    providers: Sequence[str],
    per_campaign: int,
    limit: int = 1000,
    now: dt.datetime | None = None,
) -> list[tuple[int, int]]:
    """``(campaign_id, shard_no)`` of pending shards of running campaigns these providers send
    that no session holds (their advisory lock is free: a crashed owner's too), at most
    ``per_campaign`` of each, but not those waiting for their send window (``not_before`` after
    ``now``). Shards held by other nodes, or many shards of a campaign this node cannot send,
    would otherwise fill the list and hide every later campaign (and each costs a connection)."""
    rows = await conn.fetch(
        """WITH held AS MATERIALIZED (
               SELECT classid::bigint AS lock_key, objid::bigint AS shard_no FROM pg_locks
               WHERE locktype = 'advisory' AND objsubid = 2 AND granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
           SELECT c.id AS campaign_id, s.shard_no FROM campaigns c
           CROSS JOIN LATERAL (
               SELECT s.shard_no FROM campaign_shards s
               WHERE s.campaign_id = c.id AND s.state = 'pending'
                 AND (s.not_before IS NULL OR s.not_before <= coalesce($3::timestamptz, now()))
                 AND NOT EXISTS (SELECT 1 FROM held h
                                 WHERE h.lock_key = c.id % $5 AND h.shard_no = s.shard_no)
               ORDER BY s.shard_no LIMIT $4) s
           WHERE c.status = 'running' AND c.provider = ANY($1::text[])
           ORDER BY c.id, s.shard_no LIMIT $2""",
        list(providers),
        limit,
        now,
        per_campaign,
        LOCK_KEY_MODULUS,
    )
    return [(r["campaign_id"], r["shard_no"]) for r in rows]


async def take(
    claim: asyncpg.Connection, campaign_id: int, shard_no: int, owner: str
) -> asyncpg.Record | None:
    """Bump the epoch of a still-pending shard (inside the claim transaction); its new row, plus
    ``previous_owner``: the node that made the claim this one replaces (NULL after a clean
    release), which a recovery names as the node whose crash left leads uncertain. A shard that
    waited for its send window waits no more."""
    row: asyncpg.Record | None = await claim.fetchrow(
        """UPDATE campaign_shards s SET epoch = s.epoch + 1, owner = $3, not_before = NULL, updated_at = now()
           FROM (SELECT owner FROM campaign_shards
                 WHERE campaign_id = $1 AND shard_no = $2 FOR UPDATE) AS previous
           WHERE s.campaign_id = $1 AND s.shard_no = $2 AND s.state = 'pending'
           RETURNING s.*, previous.owner AS previous_owner""",
        campaign_id,
        shard_no,
        owner,
    )
    return row


async def mark_unclean(claim: asyncpg.Connection, campaign_id: int, shard_no: int) -> None:
    """From now until a clean release, a crash leaves the reserved leads uncertain."""
    await claim.execute(
        "UPDATE campaign_shards SET released_clean = false WHERE campaign_id = $1 AND shard_no = $2",
        campaign_id,
        shard_no,
    )


async def checkpoint_to_reservation(
    claim: asyncpg.Connection, campaign_id: int, shard_no: int
) -> asyncpg.Record:
    """After logging the uncertain leads: everything up to the reservation is accounted for."""
    row: asyncpg.Record | None = await claim.fetchrow(
        """UPDATE campaign_shards SET checkpoint = reserved_upto
           WHERE campaign_id = $1 AND shard_no = $2 RETURNING *""",
        campaign_id,
        shard_no,
    )
    assert row is not None
    return row


async def reserve(claim: asyncpg.Connection, campaign_id: int, shard_no: int, epoch: int, upto: int) -> bool:
    """Raise ``reserved_upto`` to ``upto`` (committed) for this claim; False when fenced out."""
    status = await claim.execute(
        """UPDATE campaign_shards
           SET reserved_upto = GREATEST(reserved_upto, $1), updated_at = now()
           WHERE campaign_id = $2 AND shard_no = $3 AND epoch = $4""",
        upto,
        campaign_id,
        shard_no,
        epoch,
    )
    return bool(status == "UPDATE 1")


async def release_clean(conn: asyncpg.Connection, campaign_id: int, shard_no: int, epoch: int) -> bool:
    """Every batch of the claim is logged or was never sent: the next owner need not doubt.
    False when fenced out (another claim since)."""
    status = await conn.execute(
        """UPDATE campaign_shards SET released_clean = true, owner = NULL, updated_at = now()
           WHERE campaign_id = $1 AND shard_no = $2 AND epoch = $3""",
        campaign_id,
        shard_no,
        epoch,
    )
    return bool(status == "UPDATE 1")


Checkpoint = tuple[int, int, int, int, bool]  # campaign_id, shard_no, epoch, checkpoint, done


async def advance(conn: asyncpg.Connection, checkpoints: Sequence[Checkpoint]) -> set[tuple[int, int, int]]:
    """Move each claim's checkpoint (and reservation, to keep the invariant), fenced by epoch;
    mark shards done. Returns the ``(campaign_id, shard_no, epoch)`` claims that matched."""
    rows = await conn.fetch(
        """UPDATE campaign_shards s
           SET checkpoint = GREATEST(s.checkpoint, v.checkpoint),
               reserved_upto = GREATEST(s.reserved_upto, v.checkpoint),
               state = CASE WHEN v.done THEN 'done' ELSE s.state END,
               updated_at = now()
           FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::bool[])
                AS v(campaign_id, shard_no, epoch, checkpoint, done)
           WHERE s.campaign_id = v.campaign_id AND s.shard_no = v.shard_no AND s.epoch = v.epoch
           RETURNING s.campaign_id, s.shard_no, s.epoch""",
        *([c[i] for c in checkpoints] for i in range(5)),
    )
    return {(r["campaign_id"], r["shard_no"], r["epoch"]) for r in rows}


async def count(conn: asyncpg.Connection, campaign_id: int) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id)
    )


async def boundaries(conn: asyncpg.Connection, account_id: int, shard_size: int) -> list[int]:
    """Upper lead-id bounds of shards of about ``shard_size`` of the account's leads, in order
    (the last is the account's highest lead id); empty when the account has no leads."""
    bounds = await conn.fetch(
        """SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n
                           FROM leads WHERE account_id = $1) AS numbered
           WHERE n % $2 = 0 ORDER BY id""",
        account_id,
        shard_size,
    )
    last = await last_lead_id(conn, account_id)
    if last is None:
        return []
    return [r["id"] for r in bounds if r["id"] < last] + [last]


async def last_lead_id(conn: asyncpg.Connection, account_id: int) -> int | None:
    """The account's highest lead id (the end of its last shard); None without leads."""
    last: int | None = await conn.fetchval("SELECT max(id) FROM leads WHERE account_id = $1", account_id)
    return last


async def create(conn: asyncpg.Connection, campaign_id: int, edges: Sequence[int]) -> None:
    """Shard ``n`` covers ``(edges[n-1], edges[n]]``; the first starts at 0."""
    low = 0
    shards = []
    for number, high in enumerate(edges):
        shards.append((campaign_id, number, low, high, low, low))
        low = high
    await conn.copy_records_to_table(
        "campaign_shards",
        records=shards,
        columns=("campaign_id", "shard_no", "lead_id_from", "lead_id_to", "checkpoint", "reserved_upto"),
    )


async def defer(conn: asyncpg.Connection, campaign_id: int, shard_no: int, until: dt.datetime) -> None:
    """A pending shard whose send window is closed waits until ``until`` (its next opening)."""
    await conn.execute(
        """UPDATE campaign_shards SET not_before = $3, updated_at = now()
           WHERE campaign_id = $1 AND shard_no = $2 AND state = 'pending'""",
        campaign_id,
        shard_no,
        until,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """Where a campaign's shards are: all done or not, the highest shard number, lead id and
    ``unsent_round`` (see :func:`unsent_zones`)."""

    done: bool
    last_shard_no: int
    last_lead_id: int
    unsent_round: int


async def progress(conn: asyncpg.Connection, campaign_id: int) -> Progress:
    """The campaign's :class:`Progress`."""
    row = await conn.fetchrow(
        """SELECT coalesce(bool_and(state = 'done'), false), coalesce(max(shard_no), -1),
                  coalesce(max(lead_id_to), 0), coalesce(max(unsent_round), 0)
           FROM campaign_shards WHERE campaign_id = $1""",
        campaign_id,
    )
    assert row is not None
    return Progress(*row)


async def zones(conn: asyncpg.Connection, campaign_id: int) -> dict[str, list[str]]:
    """The time zones a windowed campaign was split into, each with the zone names it sends."""
    rows = await conn.fetch(
        """SELECT DISTINCT zone, zone_names FROM campaign_shards
           WHERE campaign_id = $1 AND zone IS NOT NULL""",
        campaign_id,
    )
    return {r["zone"]: list(r["zone_names"] or ()) for r in rows}


def _zone_text(keys: int) -> str:
    """The attribute at the path ``$2`` (``keys`` long) as text when it is a JSON string, else
    NULL: read key by key with ``->``, as a segment reads it (``#>`` would step into an array at
    a key such as ``0``, where the zone's segment condition finds nothing)."""
    value = "l.attributes" + "".join(f" -> ($2::text[])[{i}]" for i in range(1, keys + 1))
    return f"CASE WHEN jsonb_typeof({value}) = 'string' THEN {value} #>> '{{}}' END"


async def zone_boundaries(
    conn: asyncpg.Connection,
    account_id: int,
    segment: segments.Segment,
    path: Sequence[str],
    shard_size: int,
) -> dict[str | None, list[int]]:
    """The values of the attribute at ``path`` among the leads the segment matches (None: missing
    or not a string), each with the ids that cut its leads into shards of ``shard_size`` (every
    ``shard_size``-th id). One scan of the account's leads."""
    condition, params = segments.compile(segment, first_param=4, alias="l")
    rows = await conn.fetch(
        f"""SELECT zone, id, n FROM (
                SELECT z.raw AS zone, l.id, row_number() OVER (PARTITION BY z.raw ORDER BY l.id) AS n
                FROM leads l
                CROSS JOIN LATERAL (SELECT {_zone_text(len(path))} AS raw) z
                WHERE l.account_id = $1 AND ({condition})) numbered
            WHERE n = 1 OR n % $3 = 0
            ORDER BY id""",
        account_id,
        list(path),
        shard_size,
        *params,
    )
    found: dict[str | None, list[int]] = {}
    for row in rows:
        cuts = found.setdefault(row["zone"], [])
        if row["n"] % shard_size == 0:
            cuts.append(row["id"])
    return found


@dataclasses.dataclass(slots=True)
class UnsentZone:
    """The unsent leads of one zone value: the first and last id, how many, and the ids that
    cut them into shards (every ``shard_size``-th)."""

    first: int
    last: int
    count: int
    cuts: list[int]


async def unsent_zones(
    conn: asyncpg.Connection,
    account_id: int,
    campaign_id: int,
    segment: segments.Segment,
    path: Sequence[str],
    upto: int,
    shard_size: int,
) -> dict[str | None, UnsentZone]:
    """The leads with ids up to ``upto`` that the segment matches and that have no ``email_log``
    row for the campaign, by the value of the attribute at ``path`` (as in
    :func:`zone_boundaries`). One scan of the account's leads."""
    condition, params = segments.compile(segment, first_param=6, alias="l")
    rows = await conn.fetch(
        f"""SELECT zone, id, n, total FROM (
                SELECT z.raw AS zone, l.id, row_number() OVER (PARTITION BY z.raw ORDER BY l.id) AS n,
                       count(*) OVER (PARTITION BY z.raw) AS total
                FROM leads l
                CROSS JOIN LATERAL (SELECT {_zone_text(len(path))} AS raw) z
                WHERE l.account_id = $1 AND l.id <= $4 AND ({condition})
                  AND NOT EXISTS (SELECT 1 FROM email_log e WHERE e.campaign_id = $5 AND e.lead_id = l.id)
            ) numbered
            WHERE n = 1 OR n % $3 = 0 OR n = total
            ORDER BY id""",
        account_id,
        list(path),
        shard_size,
        upto,
        campaign_id,
        *params,
    )
    found: dict[str | None, UnsentZone] = {}
    for row in rows:
        zone = found.setdefault(row["zone"], UnsentZone(row["id"], row["id"], row["total"], []))
        zone.last = row["id"]
        if row["n"] % shard_size == 0:
            zone.cuts.append(row["id"])
    return found


async def create_zoned(
    conn: asyncpg.Connection,
    campaign_id: int,
    edges: Mapping[str, Sequence[int]],
    names: Mapping[str, Iterable[str]],
    not_before: Mapping[str, dt.datetime | None],
    *,
    starts: Mapping[str, int] | None = None,
    first_shard_no: int = 0,
    unsent_round: int = 0,
) -> int:
    """The shards of a windowed campaign: per zone, shard ``n`` covers ``(edges[n-1], edges[n]]``
    of the leads of that zone's ``names``, the first from ``starts[zone]`` (0 by default);
    numbered zone after zone from ``first_shard_no``. ``unsent_round``: 0 at the split, n for the
    shards of the n-th check for unsent leads. Returns how many."""
    shards: list[tuple[Any, ...]] = []
    for zone in sorted(edges):
        low = 0 if starts is None else starts.get(zone, 0)
        zone_names = sorted(names.get(zone, ()))
        for high in edges[zone]:
            number = first_shard_no + len(shards)
            shards.append(
                (
                    campaign_id,
                    number,
                    low,
                    high,
                    low,
                    low,
                    zone,
                    zone_names,
                    not_before.get(zone),
                    unsent_round,
                )
            )
            low = high
    await conn.copy_records_to_table(
        "campaign_shards",
        records=shards,
        columns=(
            "campaign_id",
            "shard_no",
            "lead_id_from",
            "lead_id_to",
            "checkpoint",
            "reserved_upto",
            "zone",
            "zone_names",
            "not_before",
            "unsent_round",
        ),
    )
    return len(shards)
