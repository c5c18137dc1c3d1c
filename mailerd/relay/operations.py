"""``mailerd relay status`` and ``mailerd relay replay``: what an operator sees and re-sends.

Replay goes through the destination itself (the same Kafka topics, the same signed callbacks)
without moving its position, so the live stream is untouched: a range of the log by time (to
backfill a new warehouse, or after a consumer lost data), or the destination's dead letters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import asyncpg
import orjson

from mailerd import backoff
from mailerd.config import Config
from mailerd.db import relay as relay_db
from mailerd.relay import destinations, outbox, records
from mailerd.relay.destination import DeliveryRefused, Destination, DestinationUnavailable
from mailerd.relay.leader import RELAY_LOCK_KEY, count_lag
from mailerd.relay.records import Record

REPLAY_ATTEMPTS = 8
REPLAY_MAX_WAIT_S = 60.0  # a command someone waits for: a destination's Retry-After, at most this


class OperationError(Exception):
    """A mistake in the command (an unknown destination...): its message is for the operator."""


def configured(config: Config, name: str, main_dsn: str) -> Destination:
    """The configured destination called ``name``, to replay through."""
    for destination in destinations.from_config(config, main_dsn, replay=True):
        if destination.name == name:
            return destination
    known = ", ".join(destinations.names(config)) or "none configured"
    raise OperationError(f"unknown destination {name!r} (configured: {known})")


async def status(conn: asyncpg.Connection, config: Config, main_dsn: str) -> list[dict[str, Any]]:
    """Each configured destination's position, lag (records, seconds), last error, dead letters."""
    stored = {p.destination: p for p in await relay_db.positions(conn, destinations.names(config))}
    now = dt.datetime.now(dt.UTC)
    # The session's application_name is the node only when the DSN names one: otherwise the node
    # that took the positions last (the lock holder raised their epochs when it took the lock).
    leader = await conn.fetchval(
        """SELECT coalesce(nullif(a.application_name, ''),
                           (SELECT p.owner FROM relay_positions p WHERE p.owner IS NOT NULL
                            ORDER BY p.updated_at DESC LIMIT 1), 'unnamed')
                  || ' (pid ' || l.pid || coalesce(', ' || host(a.client_addr), '') || ')'
           FROM pg_locks l
           JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((l.classid::bigint << 32) | l.objid::bigint) = $1""",
        RELAY_LOCK_KEY,
    )
    result = []
    for destination in destinations.from_config(config, main_dsn):
        position = stored.get(destination.name)
        dead = await conn.fetchval(
            "SELECT count(*) FROM relay_dead_letters WHERE destination = $1 AND replayed_at IS NULL",
            destination.name,
        )
        entry: dict[str, Any] = {"destination": destination.name, "dead_letters": dead, "relay": leader}
        if position is None:
            entry.update(position=None, lag_records=None, lag_s=None)
        else:
            entry.update(
                position=str(outbox.position_of(position)),
                owner=position.owner,
                as_of=position.as_of.isoformat(),
                lag_s=round(max(0.0, (now - position.as_of).total_seconds()), 1),
                lag_records=await count_lag(conn, destination.kinds, outbox.position_of(position)),
                published=position.published,
                updated_at=position.updated_at.isoformat(),
                last_error=position.last_error,
                last_error_at=position.last_error_at.isoformat() if position.last_error_at else None,
            )
        result.append(entry)
    return result


def print_status(entries: list[dict[str, Any]], *, as_json: bool, out: TextIO = sys.stdout) -> None:
    if as_json:
        out.write(orjson.dumps(entries, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not entries:
        out.write("no relay destination configured ([kafka], [callbacks.NAME], [reports])\n")
        return
    out.write(f"relay lock held by: {entries[0]['relay'] or 'nobody'}\n")
    for entry in entries:
        if entry["position"] is None:
            out.write(f"{entry['destination']}: no position yet (the relay has not run with it)\n")
            continue
        out.write(
            f"{entry['destination']}: lag {entry['lag_records']:,} records, {entry['lag_s']} s; "
            f"published {entry['published']:,}; dead letters {entry['dead_letters']:,}; "
            f"position {entry['position']} as of {entry['as_of']}\n"
        )
        if entry["last_error"]:
            out.write(f"  last error ({entry['last_error_at']}): {entry['last_error']}\n")


@dataclasses.dataclass(slots=True)
class ReplayResult:
    delivered: int = 0
    refused: int = 0


async def replay_range(
    conn: asyncpg.Connection,
    destination: Destination,
    *,
    start: dt.datetime,
    end: dt.datetime,
    campaign_id: int | None,
    batch: int,
) -> ReplayResult:
    """Re-send every record of the destination's kinds whose time is in ``[start, end)``
    (emails by sent_at, events by received_at, ...), through the destination. A campaign that
    does not exist, of which nothing was found either, is an :class:`OperationError`."""
    result = ReplayResult()
    found = False
    for kind in records.KINDS:
        table = relay_db.TABLES.get(kind)
        if (
            table is None
            or kind not in destination.kinds
            or (campaign_id is not None and not table.by_campaign)
        ):
            continue
        args: list[Any] = [start, end] + ([campaign_id] if campaign_id is not None else [])
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(relay_db.replay_sql(table, campaign=campaign_id is not None), *args)
            while rows := await cursor.fetch(batch):
                found = True
                await _deliver(destination, await outbox.build(conn, table, rows), result)
    if campaign_id is not None and not found and not await relay_db.campaign_exists(conn, campaign_id):
        # "replayed 0 records" and success for a mistyped id; a deleted campaign's rows still replay
        raise OperationError(f"unknown campaign {campaign_id} (and no records of it in that range)")
    return result


async def replay_dead_letters(
    conn: asyncpg.Connection, destination: Destination, *, batch: int
) -> ReplayResult:
    """Re-send the destination's dead letters; those it takes are marked replayed."""
    result = ReplayResult()
    after = 0
    while letters := await relay_db.pending_dead_letters(conn, destination.name, after=after, limit=batch):
        after = letters[-1]["id"]
        refused = await _deliver(destination, [outbox.stored(letter) for letter in letters], result)
        # those taken are replayed, even when others of the batch were refused again (else each
        # replay sent them once more, and the dead-letter count never came down)
        taken = [letter["id"] for index, letter in enumerate(letters) if index not in refused]
        if taken:
            await relay_db.mark_replayed(conn, taken)
    return result


async def _deliver(destination: Destination, batch: Sequence[Record], result: ReplayResult) -> set[int]:
    """Deliver with retries; what is refused again is counted (and stays a dead letter). Returns
    the positions in ``batch`` of the records refused."""
    pending = batch
    offset = 0  # the position in ``batch`` of pending[0]
    refused: set[int] = set()
    attempt = 0
    while pending:
        try:
            await destination.deliver(pending)
            result.delivered += len(pending)
            return refused
        except DeliveryRefused as exc:
            end = len(pending) if exc.refused is None else exc.acknowledged + exc.refused
            again: Sequence[int] = range(exc.acknowledged, end)
            if exc.kept is not None:  # the destination names the records it refused: only those
                kept = {id(record) for record in exc.kept}
                again = [at for at in again if id(pending[at]) in kept]
            result.delivered += end - len(again)
            result.refused += len(again)
            refused.update(offset + at for at in again)
            print(f"refused: {exc.reason}", file=sys.stderr)
            pending, offset = pending[end:], offset + end
        except DestinationUnavailable as exc:
            result.delivered += exc.acknowledged
            pending, offset = pending[exc.acknowledged :], offset + exc.acknowledged
            # failures in a row give up, not failures in all: an endpoint throttling one request
            # in ten, with progress between, ended a long replay after eight of them
            attempt = attempt + 1 if exc.acknowledged == 0 else 1
            if attempt >= REPLAY_ATTEMPTS:
                raise OperationError(f"{destination.name} unavailable: {exc.reason}") from exc
            wait = backoff.capped_retry_after(exc.retry_after, REPLAY_MAX_WAIT_S)
            await asyncio.sleep(backoff.delay(attempt, base=0.5, cap=10.0, retry_after=wait))
    return refused
