"""The writer: buffers one row per email and flushes with COPY, one short transaction per flush.

Each flush, in one transaction: raise each shard's checkpoint (fenced by the shard's epoch, so a
node that lost a shard cannot write for it), COPY the rows into ``email_log``, upsert one
``campaign_stats`` row per campaign, and finish campaigns whose shards are all done.

Back-pressure: :meth:`Writer.submit` waits while the buffer holds ``max_buffer_rows``, so when
Postgres is slow or down the senders stop sending (nothing is sent that cannot be logged). A
failed flush keeps its rows and retries with backoff; nothing is dropped except the rows of a
shard that was fenced out (its new owner has already accounted for those leads).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import uuid

import asyncpg
import structlog

from mailerd import db, metrics
from mailerd import events as events_mod
from mailerd.config import WebhooksConfig, WriterConfig
from mailerd.db import campaigns as campaigns_db
from mailerd.db import email_log as email_log_db
from mailerd.db import shards as shards_db
from mailerd.db import stats as stats_db
from mailerd.models import Event, LogRow, LogStatus
from mailerd.stages import ShardHandle, StatusCounts

log = structlog.get_logger(__name__)

_ShardKey = tuple[int, int, int]  # campaign, shard, epoch: one claim

EVENT_FLUSH_S = 0.02  # webhook events wait at most this long for their flush


class EventsRefused(Exception):
    """The database refused these events' data (not a transient error): nothing of them stored."""


class ShardLost(Exception):
    """The rows were dropped because their shard was fenced out."""


@dataclasses.dataclass(slots=True)
class _Entry:
    shard: ShardHandle | None
    seq: int
    rows: list[LogRow]
    retried: int
    complete: bool
    done: asyncio.Future[None]
    events: list[Event] | None = None
    counts: StatusCounts | None = None  # sent, failed, unknown, suppressed

    @property
    def size(self) -> int:
        return len(self.rows) + (len(self.events) if self.events else 0)


class Writer:
    """One per process. Run :meth:`run` in the TaskGroup; :meth:`close` ends it after a last flush."""

    def __init__(
        self, pool: asyncpg.Pool, config: WriterConfig, webhooks: WebhooksConfig | None = None
    ) -> None:
        self._pool = pool
        self._config = config
        self._webhooks = webhooks or WebhooksConfig()
        self._buffer: list[_Entry] = []
        self._rows = 0
        self._deadline = 0.0
        self._closed = False
        self._wakeup = asyncio.Event()
        self._urgent = False
        self._retry: tuple[uuid.UUID, list[_Entry]] | None = None
        self._space = asyncio.Condition()
        self.healthy = True

    @property
    def buffered_rows(self) -> int:
        return self._rows

    async def submit(
        self,
        shard: ShardHandle | None,
        seq: int,
        rows: list[LogRow],
        *,
        retried: int = 0,
        complete: bool = True,
        counts: StatusCounts | None = None,
    ) -> asyncio.Future[None]:
        """Queue a batch's rows; wait only while the buffer is full. The returned future
        resolves when the rows are committed (or raises :class:`ShardLost`)."""
        return await self._enqueue(_Entry(shard, seq, rows, retried, complete, self._future(), counts=counts))

    async def submit_events(self, events: list[Event]) -> asyncio.Future[None]:
        """Queue provider events for a flush within ``EVENT_FLUSH_S`` (a webhook is waiting for
        the commit); the future resolves once they commit."""
        return await self._enqueue(_Entry(None, 0, [], 0, True, self._future(), events), EVENT_FLUSH_S)

    @staticmethod
    def _future() -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, entry: _Entry, within_s: float | None = None) -> asyncio.Future[None]:
        if self._closed:
            raise RuntimeError("writer is closed")
        if self._rows >= self._config.max_buffer_rows:
            async with self._space:
                await self._space.wait_for(lambda: self._rows < self._config.max_buffer_rows)
            if self._closed:
                raise RuntimeError("writer is closed")
        now = time.monotonic()
        if not self._buffer:
            self._deadline = now + self._config.flush_interval_ms / 1000
        if within_s is not None and now + within_s < self._deadline:
            self._deadline = now + within_s
            self._wakeup.set()
        self._buffer.append(entry)
        self._rows += entry.size
        metrics.WRITER_BUFFER_ROWS.set(self._rows)
        if self._rows >= self._config.flush_rows or len(self._buffer) == 1:
            self._wakeup.set()
        return entry.done

    def flush_soon(self) -> None:
        """A sender waits for a commit (its shard's uncertain window is full): flush now."""
        self._urgent = True
        self._wakeup.set()

    def close(self) -> None:
        """No more submissions: flush what is buffered, then :meth:`run` returns."""
        self._closed = True
        self._wakeup.set()

    async def run(self) -> None:
        """Flush on size or time until closed and empty."""
        failures = 0
        while True:
            if not self._buffer and self._retry is None:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            remaining = self._deadline - time.monotonic()
            if (
                remaining > 0
                and self._rows < self._config.flush_rows
                and not self._closed
                and not self._urgent
            ):
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                continue
            retrying = self._retry is not None
            if self._retry is not None:
                flush_id, entries = self._retry
            else:
                flush_id, entries = uuid.uuid4(), self._buffer
                self._buffer = []
            self._retry = None
            self._urgent = False
            try:
                await self._flush(entries, flush_id, retrying=retrying)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # Not transient: retrying the same data fails the same way. Webhook events are
                # the only outside data here: refuse them (their senders answer an error and the
                # provider may retry), keep the email rows and flush again.
                refused = [e for e in entries if e.events]
                if not refused:
                    raise
                log.error("events_refused", error=str(exc), entries=len(refused))
                for entry in refused:
                    entry.done.set_exception(EventsRefused(str(exc)))
                    entry.done.exception()
                self._rows -= sum(e.size for e in refused)
                # That transaction failed for sure: the rest goes again under a new id.
                self._retry = (uuid.uuid4(), [e for e in entries if not e.events])
                continue
            except db.DB_ERRORS_OR_TIMEOUT as exc:
                failures += 1
                self.healthy = False
                metrics.FLUSH_FAILURES.inc()
                # Retried alone and under the same id: it may have committed after all.
                self._retry = (flush_id, entries)
                delay = min(0.1 * 2 ** min(failures, 6), 5.0)
                log.warning("flush_failed", error=str(exc), rows=self._rows, retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("flush_recovered", after_failures=failures)
            failures = 0
            self.healthy = True
            self._rows -= sum(e.size for e in entries)
            metrics.WRITER_BUFFER_ROWS.set(self._rows)
            async with self._space:
                self._space.notify_all()

    async def _flush(self, entries: list[_Entry], flush_id: uuid.UUID, *, retrying: bool = False) -> None:
        started = time.perf_counter()
        committed = False
        if retrying:
            async with self._pool.acquire() as conn:
                committed = await email_log_db.flush_recorded(conn, flush_id)
            if committed:
                # The last attempt committed before its connection died: only the bookkeeping
                # is left, writing again would log the same emails twice.
                log.warning("flush_found_committed", flush_id=str(flush_id))
                entries = [e for e in entries if not e.done.done()]
        # Keyed by the claim (epoch too): late rows of an earlier claim of the same shard on this
        # node must be fenced on their own, never mixed into the current claim's ledger.
        by_shard: dict[_ShardKey, list[_Entry]] = collections.defaultdict(list)
        for entry in entries:
            if entry.shard is not None:
                by_shard[_key(entry.shard)].append(entry)
        while True:
            lost = await self._flush_once(entries, by_shard, flush_id, write=not committed)
            if not lost:
                break
            # Drop the rows of fenced-out shards and write the rest.
            for key in lost:
                for entry in by_shard.pop(key):
                    if not entry.done.done():
                        entry.done.set_exception(ShardLost(f"shard {key} was fenced out"))
                        entry.done.exception()  # retrieved: nobody has to await it
                    assert entry.shard is not None
                    entry.shard.on_lost()
            entries = [e for e in entries if e.shard is None or _key(e.shard) in by_shard]
        rows = sum(len(e.rows) for e in entries)
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.FLUSH_ROWS.observe(rows)
        for entry in entries:
            if not entry.done.done():
                entry.done.set_result(None)

    async def _flush_once(
        self,
        entries: list[_Entry],
        by_shard: dict[_ShardKey, list[_Entry]],
        flush_id: uuid.UUID,
        *,
        write: bool = True,
    ) -> set[_ShardKey]:
        """One transaction; returns the shards found fenced out (then nothing was written)."""
        plans = [_plan(key, shard_entries) for key, shard_entries in by_shard.items()]
        records, stats, per_entry = _gather_rows(entries)
        events = [event for entry in entries if entry.events for event in entry.events]
        try:
            if write:
                await self._transaction(flush_id, plans, records, stats, events)
        except _Rollback as rollback:
            return rollback.lost
        for plan in plans:
            plan.shard.on_logged(plan.seqs, plan.complete)
        _count_emails(per_entry)
        return set()

    async def _transaction(
        self,
        flush_id: uuid.UUID,
        plans: list[_Plan],
        records: list[LogRow],
        stats: dict[int, list[int]],
        events: list[Event],
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await email_log_db.record_flush(conn, flush_id)
            if plans:
                matched = await shards_db.advance(
                    conn,
                    [(p.key[0], p.key[1], p.key[2], p.checkpoint, p.done) for p in plans],
                )
                lost = {p.key for p in plans} - matched
                if lost:
                    log.warning("shards_fenced_out", shards=sorted(lost))
                    raise _Rollback(lost)
            if records:
                await email_log_db.copy_rows(conn, records)
            await stats_db.add_outcomes(conn, stats)
            finished = sorted({p.key[0] for p in plans if p.done})
            if finished:
                await campaigns_db.finish_done(conn, finished)
            if events:
                await events_mod.record(
                    conn,
                    events,
                    soft_bounce_limit=self._webhooks.soft_bounce_limit,
                    soft_bounce_window_s=self._webhooks.soft_bounce_window_s,
                )


@dataclasses.dataclass(slots=True)
class _Plan:
    """What one flush does for one claim: the batches it logs and the checkpoint they allow."""

    key: _ShardKey
    shard: ShardHandle
    seqs: set[int]
    complete: set[int]
    checkpoint: int
    done: bool


def _plan(key: _ShardKey, entries: list[_Entry]) -> _Plan:
    shard = entries[0].shard
    assert shard is not None
    complete = {e.seq for e in entries if e.complete}
    checkpoint, done = shard.checkpoint_if_logged(complete)
    return _Plan(key, shard, {e.seq for e in entries}, complete, checkpoint, done)


def _gather_rows(
    entries: list[_Entry],
) -> tuple[list[LogRow], dict[int, list[int]], list[tuple[_Entry, StatusCounts]]]:
    """All rows of a flush, the counters per campaign (sent, failed, unknown, suppressed,
    retried), and each entry's status counts (for the metrics once committed)."""
    stats: dict[int, list[int]] = {}
    records: list[LogRow] = []
    per_entry: list[tuple[_Entry, StatusCounts]] = []
    for entry in entries:
        if not entry.rows:
            continue
        records.extend(entry.rows)
        entry_counts = entry.counts or _count_statuses(entry.rows)
        per_entry.append((entry, entry_counts))
        # Every row of an entry belongs to one campaign (one batch, or one window).
        counts = stats.get(entry.rows[0][1])
        if counts is None:
            counts = stats[entry.rows[0][1]] = [0, 0, 0, 0, 0]
        for index, count in enumerate(entry_counts):
            counts[index] += count
        counts[4] += entry.retried
    return records, stats, per_entry


def _count_emails(per_entry: list[tuple[_Entry, StatusCounts]]) -> None:
    per_status: collections.Counter[tuple[str, int]] = collections.Counter()
    for entry, entry_counts in per_entry:
        if entry.shard is not None:
            for index, count in enumerate(entry_counts):
                per_status[(entry.shard.provider_name, index + 1)] += count
    for (name, status), count in per_status.items():
        if count:
            _status_counters(name)[status].inc(count)


def _key(shard: ShardHandle) -> _ShardKey:
    return (shard.campaign_id, shard.shard_no, shard.epoch)


_COUNTERS: dict[str, dict[int, metrics.Counter]] = {}


def _status_counters(provider: str) -> dict[int, metrics.Counter]:
    """Label children cached per provider: ``labels()`` is too slow for once per row."""
    counters = _COUNTERS.get(provider)
    if counters is None:
        counters = _COUNTERS[provider] = {
            int(status): metrics.EMAILS.labels(provider, status.name.lower()) for status in LogStatus
        }
    return counters


def _count_statuses(rows: list[LogRow]) -> StatusCounts:
    """(sent, failed, unknown, suppressed) of rows whose submitter did not count them."""
    counts = [0, 0, 0, 0]
    for row in rows:
        counts[row[3] - 1] += 1
    return counts[0], counts[1], counts[2], counts[3]


class _Rollback(Exception):
    def __init__(self, lost: set[_ShardKey]) -> None:
        super().__init__("fenced out")
        self.lost = lost
