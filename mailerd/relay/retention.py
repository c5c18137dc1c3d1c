"""Partition retention that waits for the relay: a partition the relay has not passed is kept.

The floor is the lowest ``tx_xmin`` over the configured destinations' positions: every
transaction below it is delivered everywhere. A partition past retention holding a row at or
above the floor is kept (log ``partition_kept_for_relay``, gauge
``mailerd_partitions_kept_for_relay``) until the relay has passed it. Positions of destinations
no longer configured do not count; a configured destination with no position yet counts from
the start its ``[relay] start`` says.
"""

from __future__ import annotations

import collections
import datetime as dt

import asyncpg
import structlog

from mailerd import metrics
from mailerd.config import Config
from mailerd.db import partitions
from mailerd.db import relay as relay_db
from mailerd.relay import destinations
from mailerd.relay import position as position_mod

log = structlog.get_logger(__name__)


async def floor(conn: asyncpg.Connection, config: Config) -> int | None:
    """Every transaction below this is passed by every configured destination (None: no relay)."""
    names = destinations.names(config)
    if not names:
        return None
    stored = await relay_db.positions(conn, names)
    lowest = [p.snapshot.xmin for p in stored]
    if len(stored) < len(names) and config.relay.start == "earliest":
        lowest.append(position_mod.EARLIEST_TX)
    return min(lowest, default=None)


async def maintain(
    conn: asyncpg.Connection, config: Config, *, ahead_days: int | None = None, today: dt.date | None = None
) -> list[partitions.Action]:
    """:func:`mailerd.db.partitions.maintain` with the relay's floor; reports what it kept."""
    actions = await partitions.maintain(
        conn,
        ahead_days=config.retention.partitions_ahead_days if ahead_days is None else ahead_days,
        retention_days=config.retention.days,
        today=today,
        relay_floor=await floor(conn, config),
    )
    kept = collections.Counter(a.table for a in actions if a.verb == "kept")
    for table in partitions.PARTITIONED:
        metrics.PARTITIONS_KEPT_FOR_RELAY.labels(table).set(kept[table])
    for action in actions:
        if action.verb == "kept":
            log.warning("partition_kept_for_relay", table=action.table, detail=action.detail)
    return actions
