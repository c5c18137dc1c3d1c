"""Partition retention that waits for the relay: a partition the relay has not passed is kept.

A partition past retention holding a row that one of the configured destinations' positions has
not passed is kept (log ``partition_kept_for_relay``, gauge
``mailerd_partitions_kept_for_relay``) until the relay has passed it. Positions of destinations
no longer configured do not count; a configured destination with no position yet counts from
the start its ``[relay] start`` says.

This is the one entry point of partition maintenance (daemon and ``mailerd partitions``), so it
also reports the partitions kept for campaigns not finished (log
``partition_kept_for_campaign``, gauge ``mailerd_partitions_kept_for_campaigns``) and the DDL
left for a later round because a lock was not granted in time (log
``partition_maintenance_deferred``, counter ``mailerd_partition_maintenance_deferred_total``).
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
from mailerd.relay import destinations, outbox
from mailerd.relay import position as position_mod

log = structlog.get_logger(__name__)


async def positions(conn: asyncpg.Connection, config: Config) -> list[partitions.RelayPosition]:
    """The positions of the configured destinations (empty: no relay, nothing to wait for)."""
    names = destinations.names(config)
    if not names:
        return []
    stored = [outbox.position_of(p) for p in await relay_db.positions(conn, names)]
    if len(stored) < len(names) and config.relay.start == "earliest":
        stored.append(position_mod.earliest())
    return [(p.xmin, p.xmax, p.xip) for p in stored]


async def maintain(
    conn: asyncpg.Connection, config: Config, *, ahead_days: int | None = None, today: dt.date | None = None
) -> list[partitions.Action]:
    """:func:`mailerd.db.partitions.maintain` with the relay's floor; reports what it kept."""
    actions = await partitions.maintain(
        conn,
        ahead_days=config.retention.partitions_ahead_days if ahead_days is None else ahead_days,
        retention_days=config.retention.days,
        today=today,
        relay_positions=await positions(conn, config),
    )
    kept = collections.Counter((a.table, a.cause) for a in actions if a.verb == "kept")
    for table in partitions.PARTITIONED:
        metrics.PARTITIONS_KEPT_FOR_RELAY.labels(table).set(kept[table, "relay"])
        metrics.PARTITIONS_KEPT_FOR_CAMPAIGNS.labels(table).set(kept[table, "campaign"])
    for action in actions:
        if action.verb == "kept":
            event = "partition_kept_for_relay" if action.cause == "relay" else "partition_kept_for_campaign"
            log.warning(event, table=action.table, detail=action.detail)
        elif action.verb == "deferred":
            metrics.PARTITION_MAINTENANCE_DEFERRED.labels(action.table).inc()
            log.warning("partition_maintenance_deferred", table=action.table, detail=action.detail)
    return actions
