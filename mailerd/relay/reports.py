"""The reports database as a relay destination: every record loaded, in one transaction a batch.

A batch is acknowledged once its transaction committed: rows inserted, rollups added, erasures
applied, in the batch's order (an erasure follows every record of its person that came before
it). Loading is idempotent on the record id (:mod:`mailerd.db.reports_load`), so the relay's
at-least-once delivery (a crash between commit here and the position's commit there, a takeover,
a replay) never changes a count. Nothing is ever refused: a database error is
:class:`~mailerd.relay.destination.DestinationUnavailable` and the batch is retried as a whole
(its transaction rolled back), holding back only this destination's position.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog

from mailerd import db
from mailerd.config import PrivacyConfig, ReportsConfig
from mailerd.db import connect
from mailerd.db import reports_load as load
from mailerd.relay.destination import DestinationUnavailable
from mailerd.relay.records import KINDS, Record

log = structlog.get_logger(__name__)

NAME = "reports"
_BLOCK = 64  # SHA-256's block size (HMAC pads the key to it)


def key_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer pads (RFC 2104), as :mod:`mailerd.erasure` computes them."""
    import hashlib

    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def _time(value: Any) -> Any:
    """A record read back from JSON (a dead letter) carries its times as text."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _fields(record: Record, times: tuple[str, ...]) -> dict[str, Any]:
    fields = dict(record.fields)
    for name in times:
        fields[name] = _time(fields.get(name))
    return fields


class ReportsDestination:
    """``[reports]``: a small pool to the reports database, opened on first use."""

    name = NAME
    kinds = frozenset(KINDS)

    def __init__(self, config: ReportsConfig, dsn: str, privacy: PrivacyConfig) -> None:
        self._config = config
        self._dsn = dsn
        key = privacy.erasure_key
        self._pads = key_pads(key.reveal().encode("utf-8")) if key is not None else None
        self._pool: asyncpg.Pool | None = None
        self._months: set[dt.date] = set()

    async def deliver(self, records: Sequence[Record]) -> None:
        """Load every record in one transaction; :class:`DestinationUnavailable` on any error."""
        try:
            pool = await self._connected()
            async with pool.acquire() as conn, conn.transaction():
                await self._load(conn, records)
        except db.DB_ERRORS_OR_TIMEOUT as exc:
            self._months.clear()  # the transaction may have created partitions it rolled back
            raise DestinationUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc

    async def _connected(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await connect.create_pool(self._dsn, min_size=1, max_size=2)
        return self._pool

    async def _load(self, conn: asyncpg.Connection, records: Sequence[Record]) -> None:
        """Runs of emails, events and campaign changes between erasures, in order. Emails and
        events go in as their JSON (parsed by the statement); ``Record.at`` is their partition's
        time (sent_at, received_at)."""
        emails: list[bytes] = []
        events: list[bytes] = []
        changes: list[dict[str, Any]] = []
        months: set[dt.date] = set()

        async def flush() -> None:
            if months - self._months:
                await load.ensure_partitions(conn, months - self._months)
                self._months |= months
            if emails:
                await load.load_emails(conn, emails)
            if events:
                await load.load_events(conn, events)
            if changes:
                await load.load_campaigns(conn, changes)
            emails.clear()
            events.clear()
            changes.clear()
            months.clear()

        for record in records:
            if record.kind == "email":
                emails.append(record.value)
                months.add(load.month_of(record.at))
            elif record.kind == "event":
                events.append(record.value)
                months.add(load.month_of(record.at))
            elif record.kind == "campaign":
                changes.append(_fields(record, ("at",)))
            elif record.kind == "erasure":
                await flush()
                await self._erase(conn, record)
        await flush()

    async def _erase(self, conn: asyncpg.Connection, record: Record) -> None:
        account_id = record.account_id
        if account_id is None:
            return
        hashes = [bytes.fromhex(h) for h in record.fields.get("address_hashes") or []]
        lead_ids = [int(lead) for lead in record.fields.get("lead_ids") or []]
        changed = await load.erase(conn, record.id, account_id, lead_ids, hashes, self._pads)
        log.info("reports_erasure_applied", erasure=record.id, account_id=account_id, rows=changed)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
