"""The writer: buffers one row per email and flushes with COPY, one short transaction per flush.

Each flush, in one transaction: raise each shard's checkpoint (fenced by the shard's epoch, so a
node that lost a shard cannot write for it), COPY the rows into ``email_log``, upsert one
``campaign_stats`` row per campaign, finish campaigns whose shards are all done, and record the
provider events of the webhooks waiting for it.

Back-pressure: :meth:`Writer.submit` waits while the buffer holds ``max_buffer_rows``, so when
Postgres is slow or down the senders stop sending (nothing is sent that cannot be logged).

Failures: a flush that fails because the database is unavailable (see
:func:`mailerd.db.is_transient`) keeps its rows and is retried with backoff, under the same
flush id, since it may have committed after all. A flush that fails for any other reason fails
because of something in it (a value Postgres refuses, a key too large for its index, a campaign
deleted under it): it is split in halves until the entries that cause it are found; each is
dead-lettered (:mod:`mailerd.deadletter`) and the rest commits. Nothing is dropped except the
rows of a shard that was fenced out (its new owner has already accounted for those leads).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import uuid
from collections.abc import Mapping

import asyncpg
import structlog

from mailerd import aio, backoff, db, deadletter, erasure, guards, metrics, provider_guard
from mailerd import events as events_mod
from mailerd.config import GuardsConfig, PrivacyConfig, ProviderConfig, WebhooksConfig, WriterConfig
from mailerd.db import campaigns as campaigns_db
from mailerd.db import email_log as email_log_db
from mailerd.db import provider_usage as usage_db
from mailerd.db import shards as shards_db
from mailerd.db import stats as stats_db
from mailerd.flush_entries import (
    Entry,
    Plan,
    ShardKey,
    count_emails,
    entry_letter,
    gather_rows,
    plan_of,
    shard_key,
)
from mailerd.models import Event, LogRow
from mailerd.stages import ShardHandle, StatusCounts

log = structlog.get_logger(__name__)

EVENT_FLUSH_S = 0.02  # webhook events wait at most this long for their flush
_RETRY_MAX_S = 5.0


class EventsRefused(Exception):
    """The database refused these events' data (not a transient error): nothing of them stored."""


class ShardLost(Exception):
    """The rows were dropped because their shard was fenced out."""


class WriterClosed(RuntimeError):
    """The writer has stopped: nothing more is accepted, and what it still held was abandoned."""


class _Poisoned(Exception):
    """A flush failed because of its data, not because the database is unavailable."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Writer:
    """One per process. Run :meth:`run` in the TaskGroup; :meth:`close` ends it after a last flush."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: WriterConfig,
        webhooks: WebhooksConfig | None = None,
        guard_config: GuardsConfig | None = None,
        providers: Mapping[str, ProviderConfig] | None = None,
        privacy: PrivacyConfig | None = None,
    ) -> None:
        self._pool = pool
        # Events about a person erased before they arrived are stored scrubbed (events.record).
        self._erased_pads = erasure.configured_pads(privacy or PrivacyConfig())
        self._config = config
        self._webhooks = webhooks or WebhooksConfig()
        self._guard = guards.CampaignGuard(guard_config or GuardsConfig())
        self._provider_guard = provider_guard.ProviderGuard(guard_config or GuardsConfig(), providers)
        self._touched: set[int] = set()  # campaigns counted since the last guard check
        self._buffer: list[Entry] = []
        self._rows = 0
        self._deadline = 0.0
        self._closed = False
        self._wakeup = asyncio.Event()
        self._urgent = False
        # A flush that failed transiently, to be retried first and under its id.
        self._retry: tuple[uuid.UUID, list[Entry]] | None = None
        self._flushing: list[Entry] = []  # the entries of the flush under way
        self._space = asyncio.Event()  # set whenever the buffer shrinks or the writer stops
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
        events: list[Event] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a batch's rows (with ``events``, its SMTP rejections: recorded in the same
        transaction); wait only while the buffer is full. The returned future resolves when the
        rows are committed (or raises :class:`ShardLost`)."""
        entry = Entry(shard, seq, rows, retried, complete, self._future(), events, counts)
        return await self._enqueue(entry)

    async def submit_events(self, events: list[Event]) -> asyncio.Future[None]:
        """Queue provider events for a flush within ``EVENT_FLUSH_S`` (a webhook is waiting for
        the commit); the future resolves once they commit, or raises :class:`EventsRefused`
        (their data cannot be stored) or :class:`WriterClosed`."""
        return await self._enqueue(Entry(None, 0, [], 0, True, self._future(), events), EVENT_FLUSH_S)

    @staticmethod
    def _future() -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, entry: Entry, within_s: float | None = None) -> asyncio.Future[None]:
        if self._closed:
            raise WriterClosed("writer is closed")
        while self._rows >= self._config.max_buffer_rows and not self._closed:
            self._space.clear()
            await self._space.wait()
        if self._closed:
            raise WriterClosed("writer is closed")
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
        """Flush on size or time until closed and empty. However it ends (closed, or cancelled by
        the drain deadline), whatever is still buffered is abandoned at once: a webhook waiting
        for its commit answers 503 instead of waiting for a flush that will not come."""
        try:
            while True:
                work = await self._next_flush()
                if work is None:
                    return
                flush_id, entries, retrying = work
                self._flushing = entries
                await self._commit(flush_id, entries, retrying=retrying)
                await self._check_guard()
                self._flushing = []
                self._rows -= sum(e.size for e in entries)
                metrics.WRITER_BUFFER_ROWS.set(self._rows)
                self._space.set()
        finally:
            self._abandon()

    async def _next_flush(self) -> tuple[uuid.UUID, list[Entry], bool] | None:
        """Wait until a flush is due (size, time, urgency, close); None when closed and empty."""
        while True:
            if self._retry is not None:
                flush_id, entries = self._retry
                self._retry = None
                return flush_id, entries, True
            if not self._buffer:
                if self._closed:
                    return None
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            remaining = self._deadline - time.monotonic()
            if remaining <= 0 or self._rows >= self._config.flush_rows or self._closed or self._urgent:
                entries, self._buffer = self._buffer, []
                self._urgent = False
                return uuid.uuid4(), entries, False
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def _check_guard(self) -> None:
        """After a commit: pause the campaigns it pushed past a guard's threshold. A failed
        check keeps its campaigns for the next one (the counters are committed either way)."""
        if not self._touched:
            return
        touched, self._touched = self._touched, set()
        try:
            async with self._pool.acquire() as conn:
                await self._guard.check(conn, touched)
                await self._provider_guard.check(conn, touched)
        except db.DB_ERRORS as exc:
            aio.raise_if_cancelling()
            self._touched |= touched
            log.warning("guard_check_failed", error=str(exc), campaigns=len(touched))

    def _abandon(self) -> None:
        self._closed = True
        leftover = [e for e in self._flushing + self._buffer if not e.done.done()]
        self._buffer, self._retry, self._flushing = [], None, []
        for entry in leftover:
            _fail(entry, WriterClosed("the writer stopped before these rows were committed"))
        if leftover:
            log.warning("writer_abandoned", entries=len(leftover), rows=sum(e.size for e in leftover))
        self._space.set()  # whoever waits for buffer space hears that the writer is gone

    async def _commit(self, flush_id: uuid.UUID, entries: list[Entry], *, retrying: bool) -> None:
        """Commit ``entries``; split on a failure caused by their data, until the entries that
        cause it are found and dead-lettered."""
        groups = [(flush_id, entries, retrying)]
        while groups:
            group_id, group, group_retrying = groups.pop()
            try:
                await self._flush_until_done(group_id, group, retrying=group_retrying)
            except _Poisoned as poisoned:
                live = [e for e in group if not e.done.done()]
                if len(live) > 1:
                    half = len(live) // 2
                    log.warning("flush_split", entries=len(live), error=str(poisoned.error))
                    groups.append((uuid.uuid4(), live[half:], False))
                    groups.append((uuid.uuid4(), live[:half], False))
                elif live:
                    await self._dead_letter(live[0], poisoned.error)

    async def _flush_until_done(self, flush_id: uuid.UUID, entries: list[Entry], *, retrying: bool) -> None:
        """Flush, retrying transient failures forever under the same id (it may have committed);
        raise :class:`_Poisoned` for any other failure."""
        failures = 0
        while True:
            try:
                await self._flush(entries, flush_id, retrying=retrying)
                break
            except Exception as exc:
                aio.raise_if_cancelling()
                if not db.is_transient(exc):
                    raise _Poisoned(exc) from exc
                failures += 1
                retrying = True
                self.healthy = False
                metrics.FLUSH_FAILURES.inc()
                delay = backoff.doubling(failures, base=0.1, cap=_RETRY_MAX_S)
                log.warning("flush_failed", error=str(exc), rows=self._rows, retry_in_s=delay)
                await asyncio.sleep(delay)
        if failures:
            log.info("flush_recovered", after_failures=failures)
        self.healthy = True

    async def _dead_letter(self, entry: Entry, error: BaseException) -> None:
        """Keep one entry that cannot be stored where an operator sees it, and go on. A batch's
        rows count as logged for its shard (in the same transaction as the dead letter), so its
        leads are never sent again; a webhook's events are refused."""
        letter = entry_letter(entry, error)
        # Counted as logged even if the batch was only partly sent: its sent leads have no
        # email_log row, so the checkpoint must pass them or a next owner would send them again.
        plans = (
            [plan_of(shard_key(entry.shard), [dataclasses.replace(entry, complete=True)])]
            if entry.shard
            else []
        )
        erased: list[str] = []  # addresses of erased people cut out of it
        while True:
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    lost = await advance_checkpoints(conn, plans)
                    if not lost:
                        erased = await deadletter.record(conn, letter, self._erased_pads)
                break
            except Exception as exc:
                aio.raise_if_cancelling()
                if db.is_transient(exc):
                    log.warning("dead_letter_failed", error=str(exc), retry_in_s=_RETRY_MAX_S)
                    await asyncio.sleep(_RETRY_MAX_S)
                    continue
                deadletter.lost(letter, exc)
                _fail(entry, EventsRefused(str(error)) if entry.webhook else ShardLost(str(error)))
                if entry.shard is not None:
                    entry.shard.on_lost()  # released unclean: its leads become `unknown`, never re-sent
                return
        if lost:
            _fail(entry, ShardLost("shard fenced out"))
            assert entry.shard is not None
            entry.shard.on_lost()
            return
        deadletter.recorded(letter, erased)
        for plan in plans:
            plan.shard.on_logged(plan.seqs, plan.complete)
        if entry.webhook:
            _fail(entry, EventsRefused(str(error)))
        elif not entry.done.done():
            entry.done.set_result(None)

    async def _flush(self, entries: list[Entry], flush_id: uuid.UUID, *, retrying: bool = False) -> None:
        started = time.perf_counter()
        committed = False
        if retrying:
            async with self._pool.acquire() as conn:
                committed = await email_log_db.flush_recorded(conn, flush_id)
        while True:
            if committed:
                # The last attempt committed before its connection died: only the bookkeeping
                # is left, writing again would log the same emails twice.
                log.warning("flush_found_committed", flush_id=str(flush_id))
                entries = [e for e in entries if not e.done.done()]
            by_shard = _by_claim(entries)
            try:
                lost = await self._flush_once(entries, by_shard, flush_id, write=not committed)
            except asyncpg.UniqueViolationError as exc:
                if not retrying or exc.constraint_name != email_log_db.FLUSH_ID_KEY:
                    raise
                # The last attempt was still committing when the look-up above ran: it has
                # committed now (its id is taken), so this is the case above.
                committed = True
                continue
            if not lost:
                break
            # Drop the rows of fenced-out shards and write the rest.
            for key in lost:
                for entry in by_shard.pop(key):
                    _fail(entry, ShardLost(f"shard {key} was fenced out"))
                    assert entry.shard is not None
                    entry.shard.on_lost()
            entries = [e for e in entries if e.shard is None or shard_key(e.shard) in by_shard]
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.FLUSH_ROWS.observe(sum(len(e.rows) for e in entries))
        for entry in entries:
            if not entry.done.done():
                entry.done.set_result(None)

    async def _flush_once(
        self,
        entries: list[Entry],
        by_shard: dict[ShardKey, list[Entry]],
        flush_id: uuid.UUID,
        *,
        write: bool = True,
    ) -> set[ShardKey]:
        """One transaction; returns the shards found fenced out (then nothing was written)."""
        plans = [plan_of(key, shard_entries) for key, shard_entries in by_shard.items()]
        records, stats, per_entry = gather_rows(entries)
        events = [event for entry in entries if entry.events for event in entry.events]
        try:
            if write:
                await self._transaction(flush_id, plans, records, stats, events)
        except _Rollback as rollback:
            return rollback.lost
        for plan in plans:
            plan.shard.on_logged(plan.seqs, plan.complete)
        count_emails(per_entry)
        self._touched.update(stats)
        self._touched.update(e.campaign_id for e in events if e.campaign_id is not None)
        return set()

    async def _transaction(
        self,
        flush_id: uuid.UUID,
        plans: list[Plan],
        records: list[LogRow],
        stats: dict[int, list[int]],
        events: list[Event],
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            judged = events_mod.judged_campaigns(events)
            if judged:
                # First, before any row lock (a release takes this lock alone, then rows): the
                # flush's bounces are then all before a provider's release or all after it.
                await usage_db.share_locks_of(conn, sorted(judged))
            await email_log_db.record_flush(conn, flush_id)
            lost = await advance_checkpoints(conn, plans)
            if lost:
                log.warning("shards_fenced_out", shards=sorted(lost))
                raise _Rollback(lost)
            if records:
                await email_log_db.copy_rows(conn, records)
            # Every counter row this flush adds to, in id order, before adding: the events' are
            # added later than the batches', and another node's flush may hold them the other way.
            await stats_db.lock_counters(conn, [*stats, *(e.campaign_id for e in events if e.campaign_id)])
            await stats_db.add_outcomes(conn, stats)
            provider_counts: dict[int, list[int]] = {}
            if events:
                recorded = await events_mod.record(
                    conn,
                    events,
                    soft_bounce_limit=self._webhooks.soft_bounce_limit,
                    soft_bounce_window_s=self._webhooks.soft_bounce_window_s,
                    erased_pads=self._erased_pads,
                )
                provider_counts = recorded.provider_counts
            # Last: the provider rows are the flush's hottest (every node adds to them).
            await usage_db.add(conn, usage_db.per_campaign(stats, provider_counts))


async def advance_checkpoints(conn: asyncpg.Connection, plans: list[Plan]) -> set[ShardKey]:
    """Move the claims' checkpoints, fenced by epoch, and finish campaigns whose shards are now
    all done. Returns the claims that were fenced out (the caller rolls back)."""
    if not plans:
        return set()
    matched = await shards_db.advance(conn, [(*p.key, p.checkpoint, p.done) for p in plans])
    lost = {p.key for p in plans} - matched
    if not lost:
        finished = sorted({p.key[0] for p in plans if p.done})
        if finished:
            await campaigns_db.sweep(conn, "done", cause="writer", ids=finished)
    return lost


def _by_claim(entries: list[Entry]) -> dict[ShardKey, list[Entry]]:
    """The batches' entries by claim (epoch too): late rows of an earlier claim of the same shard
    on this node must be fenced on their own, never mixed into the current claim's ledger."""
    by_shard: dict[ShardKey, list[Entry]] = collections.defaultdict(list)
    for entry in entries:
        if entry.shard is not None:
            by_shard[shard_key(entry.shard)].append(entry)
    return by_shard


def _fail(entry: Entry, error: Exception) -> None:
    if not entry.done.done():
        entry.done.set_exception(error)
        entry.done.exception()  # retrieved: nobody has to await it


class _Rollback(Exception):
    def __init__(self, lost: set[ShardKey]) -> None:
        super().__init__("fenced out")
        self.lost = lost
