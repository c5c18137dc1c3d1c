"""The reports database as a relay destination: every record loaded, idempotent on its id.

A batch is acknowledged once all of it committed: rows inserted, rollups added, erasures
applied, in the batch's order (an erasure follows every record of its person that came before
it, and precedes every record after it). The emails and events between two erasures load in up
to ``[reports] load_connections`` transactions at once: on a busy server one connection's share
of the CPU does not keep up with a full-speed campaign. Loading is idempotent on the record id
(:mod:`mailerd.db.reports_load`: rows and the rollups they add commit together), so what the
relay's at-least-once delivery repeats (a crash between commit here and the position's commit
there, a takeover, a replay, a batch of which one transaction failed) never changes a count.
Nothing is ever refused: a database error is
:class:`~mailerd.relay.destination.DestinationUnavailable` and the batch is retried as a whole,
holding back only this destination's position.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog

from mailerd import aio, db
from mailerd.config import PrivacyConfig, ReportsConfig
from mailerd.db import connect
from mailerd.db import reports_load as load
from mailerd.relay.destination import DestinationUnavailable
from mailerd.relay.records import KINDS, Record

log = structlog.get_logger(__name__)

NAME = "reports"
RETENTION_MARGIN_DAYS = 2  # a node's clock may run ahead of this one's
MIN_PART = 500  # emails or events per transaction, at least, when a batch is split across connections
# A month whose partition was deferred (a long report held its lock) is tried again this long
# after, by the next batch whether or not it has records of that month: one wait of the lock
# timeout a minute at most, not one per batch, while the report runs.
RETRY_DEFERRED_S = 60.0
T = TypeVar("T")
_BLOCK = 64  # SHA-256's block size (HMAC pads the key to it)


def key_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer pads (RFC 2104), as :mod:`mailerd.erasure` computes them."""
    import hashlib

    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(value: Any) -> Any:
    """A record read back from JSON (a dead letter) carries its times as text."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def split(items: Sequence[T], parts: int, minimum: int) -> list[Sequence[T]]:
    """``items`` in at most ``parts`` runs in order, each of at least ``minimum`` items (a short
    list stays one run: another transaction would cost more than it saves)."""
    if not items:
        return []
    count = max(1, min(parts, len(items) // minimum))
    bounds = [len(items) * n // count for n in range(count + 1)]  # sizes differ by one at most
    return [items[start:end] for start, end in itertools.pairwise(bounds)]


def _runs(records: Sequence[Record]) -> list[tuple[Sequence[Record], Record | None]]:
    """The records between erasures, each run with the erasure that ends it (``None`` for the
    last): an erasure is applied after every record before it was loaded, before any after it."""
    runs: list[tuple[Sequence[Record], Record | None]] = []
    start = 0
    for index, record in enumerate(records):
        if record.kind == "erasure":
            runs.append((records[start:index], record))
            start = index + 1
    runs.append((records[start:], None))
    return runs


async def _in_transaction(pool: asyncpg.Pool, job: Callable[[asyncpg.Connection], Awaitable[object]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await job(conn)


def _fields(record: Record, times: tuple[str, ...]) -> dict[str, Any]:
    fields = dict(record.fields)
    for name in times:
        fields[name] = _time(fields.get(name))
    return fields


class ReportsDestination:
    """``[reports]``: a small pool to the reports database, opened on first use."""

    name = NAME
    kinds = frozenset(KINDS)

    def __init__(
        self,
        config: ReportsConfig,
        dsn: str,
        privacy: PrivacyConfig,
        now: Callable[[], dt.datetime] = _utc_now,
        clock: Callable[[], float] = time.monotonic,
        *,
        command_timeout_s: float | None = None,
    ) -> None:
        self._config = config
        self._command_timeout_s = command_timeout_s
        self._now = now
        self._dsn = dsn
        key = privacy.erasure_key
        self._pads = key_pads(key.reveal().encode("utf-8")) if key is not None else None
        self._pool: asyncpg.Pool | None = None
        self._clock = clock
        self._months: set[dt.date] = set()  # months whose partitions exist
        self._deferred: dict[dt.date, float] = {}  # month -> when (clock) to try it again

    async def deliver(self, records: Sequence[Record]) -> None:
        """Load every record; :class:`DestinationUnavailable` on any error (the relay retries
        the batch as a whole, and what was committed of it before conflicts and counts nothing)."""
        try:
            pool = await self._connected()
            for run, erasure in _runs(records):
                await self._load_run(pool, run)
                if erasure is not None:
                    async with pool.acquire() as conn, conn.transaction():
                        await self._erase(conn, erasure)
        except db.DB_ERRORS_OR_TIMEOUT as exc:
            self._months.clear()
            raise DestinationUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc

    async def _connected(self) -> asyncpg.Pool:
        if self._pool is None:
            # The main database's command timeout, as the daemon's reports pool: a load on a
            # server that stopped answering waited for ever.
            self._pool = await connect.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._config.load_connections,
                command_timeout=self._command_timeout_s,
            )
        return self._pool

    def pools(self) -> list[asyncpg.Pool]:
        """The loader's pool while open, for the drain deadline to cut off."""
        return [self._pool] if self._pool is not None else []

    async def _load_run(self, pool: asyncpg.Pool, run: Sequence[Record]) -> None:
        """Records between two erasures: their months' partitions first (committed, so the loads
        do not serialise on creating them; a month deferred behind a report is tried again
        :data:`RETRY_DEFERRED_S` later, its records meanwhile in the default partition), then
        the emails and events in up to ``load_connections`` transactions at once. Emails and
        events go in as their JSON (parsed by the statement); ``Record.at`` is their partition's
        time (sent_at, received_at)."""
        first_kept = self._first_kept_month()
        rows = [r for r in run if r.kind in ("email", "event")]
        kept_from = dt.datetime.combine(first_kept, dt.time(), dt.UTC)
        kept = [r for r in rows if r.at >= kept_from]
        if len(kept) < len(rows):
            log.warning(
                "reports_records_past_retention", skipped=len(rows) - len(kept), months_before=str(first_kept)
            )
        emails = [r.value for r in kept if r.kind == "email"]
        events = [r.value for r in kept if r.kind == "event"]
        changes = [_fields(r, ("at",)) for r in run if r.kind == "campaign"]
        self._months = {month for month in self._months if month >= first_kept}
        self._deferred = {month: at for month, at in self._deferred.items() if month >= first_kept}
        now = self._clock()
        due = {month for month, at in self._deferred.items() if at <= now}
        months = ({load.month_of(r.at) for r in kept} - self._months - self._deferred.keys()) | due
        if months:
            async with pool.acquire() as conn:
                ensured = await load.ensure_partitions(conn, months)
            for line in ensured.moved:
                log.warning("reports_partition_rows_moved", detail=line)
            # A deferred month is not taken for made: its records would go to the default
            # partition for as long as this process runs.
            self._months |= months - ensured.deferred
            for month in months:
                self._deferred.pop(month, None)
            self._deferred.update(dict.fromkeys(ensured.deferred, now + RETRY_DEFERRED_S))
        parts = self._config.load_connections
        jobs: list[Callable[[asyncpg.Connection], Awaitable[object]]] = [
            functools.partial(load.load_emails, values=part) for part in split(emails, parts, MIN_PART)
        ]
        jobs += [functools.partial(load.load_events, values=part) for part in split(events, parts, MIN_PART)]
        if changes:
            jobs.append(functools.partial(load.load_campaigns, records=changes))
        await aio.all_or_first_error(*(_in_transaction(pool, job) for job in jobs))

    def _first_kept_month(self) -> dt.date:
        """The first month retention keeps: the months before it it may have dropped already (the
        daemon's hourly maintenance, perhaps in another process, perhaps with a clock a little
        ahead). Their records are not loaded: a late one (a replay, a relay long behind) would
        otherwise bring its month back with only its own counts in the day and minute rollups,
        count again in the lifetime ones (domains, bounce reasons), and land in the default
        partition while a remembered month's partition was gone. The margin for a clock ahead is
        kept under the retention itself: with retention_days 1 or 2 it reached today or past it,
        and left out the records of a month's last day (all of them on that day, and those a
        relay still held at midnight) while their month was kept."""
        retention = self._config.retention_days
        margin = dt.timedelta(days=min(RETENTION_MARGIN_DAYS, retention - 1))
        cutoff = self._now().date() - dt.timedelta(days=retention) + margin
        return load.month_of(dt.datetime.combine(cutoff, dt.time(), dt.UTC))

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
