"""One destination's loop: read after its position, deliver, then commit the position.

The position moves only after the destination acknowledged every record of the batch (or
refused some for good: those are stored in ``relay_dead_letters`` first). A crash
between the acknowledgement and the commit delivers that batch again: at least once, with
duplicates bounded by one batch. A destination that is down is retried with backoff and full
jitter (its ``Retry-After`` a floor) for as long as it takes; only its own position waits.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from collections.abc import Sequence

import asyncpg
import structlog

from mailerd import aio, backoff, metrics
from mailerd.config import RelayConfig
from mailerd.db import relay as relay_db
from mailerd.relay.destination import DeliveryRefused, Destination, DestinationUnavailable
from mailerd.relay.position import Snapshot
from mailerd.relay.reader import Batch, Reader
from mailerd.relay.records import Record
from mailerd.relay.summaries import Summaries

log = structlog.get_logger(__name__)

IDLE_COMMIT_S = 5.0  # an empty poll moves the stored position at most this often
STOP_GRACE_S = 2.0  # a delivery under way when stop is set gets this long to be acknowledged


class LeaseLost(Exception):
    """Another node runs the relay now (this node's epoch no longer matches)."""


class Stopped(Exception):
    """Stop was set while a batch was not yet acknowledged: its position is not moved."""


class Stream:
    """Runs one destination from ``position`` until stop (or :class:`LeaseLost`)."""

    def __init__(
        self,
        destination: Destination,
        pool: asyncpg.Pool,
        config: RelayConfig,
        *,
        epoch: int,
        position: Snapshot,
        as_of: dt.datetime,
        stop: asyncio.Event,
        erased_pads: tuple[bytes, bytes] | None = None,
        summaries: Summaries | None = None,
    ) -> None:
        self.destination = destination
        self.name = destination.name
        self._pool = pool
        self._config = config
        self._epoch = epoch
        self.position = position
        self.as_of = as_of
        self._stop = stop
        self._erased_pads = erased_pads  # the erasure key's HMAC pads ([privacy] erasure_key)
        self._summaries = summaries  # told when a read found rows: their ranges want summaries
        self._reader = Reader(pool, destination.kinds, config.batch_records, config.read_connections)
        self._committed_at = time.monotonic()
        self._failing = False
        self._stages = _Stages(self.name)
        # At 0 from the start: a series born with a value hides its first increase (an alert
        # on the first refusal would never fire).
        metrics.RELAY_DEAD_LETTERS.labels(self.name)
        for reason in ("unavailable", "refused"):
            metrics.RELAY_FAILURES.labels(self.name, reason)
        for kind in destination.kinds:
            metrics.RELAY_RECORDS.labels(self.name, kind)

    async def run(self) -> None:
        interval = self._config.poll_interval_ms / 1000
        ahead: asyncio.Future[Batch] | None = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                batch = await (ahead if ahead is not None else self._reader.read(self.position))
                read = time.monotonic()
                if batch.records and self._summaries is not None:
                    self._summaries.note_read()
                # Behind: read the next batch while this one is being delivered (reading moves
                # nothing; the position is committed in order below).
                ahead = asyncio.ensure_future(self._reader.read(batch.end)) if not batch.caught_up else None
                try:
                    delivered = await self._deliver_all(batch.records) if batch.records else 0
                except Stopped:
                    return
                delivered_at = time.monotonic()
                await self._settle(batch, delivered)
                if batch.records:
                    done = time.monotonic()
                    metrics.RELAY_BATCH_SECONDS.labels(self.name).observe(done - started)
                    self._stages.observe(read - started, delivered_at - read, done - delivered_at)
                self.gauges()
                if batch.caught_up:
                    await aio.sleep_unless(interval, self._stop)
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    async def _settle(self, batch: Batch, delivered: int) -> None:
        """Commit the position after a delivered batch (an empty one now and then only)."""
        if batch.records or time.monotonic() - self._committed_at >= IDLE_COMMIT_S:
            await self._commit(batch, delivered)
            await self._erase_dead_letters(batch.records)
        else:
            self.position = batch.end
            self.as_of = batch.as_of or self.as_of

    async def _commit(self, batch: Batch, delivered: int) -> None:
        as_of = batch.as_of or self.as_of
        async with self._pool.acquire() as conn:
            moved = await relay_db.commit_position(
                conn, self.name, self._epoch, batch.end, as_of=as_of, published=delivered
            )
        if not moved:
            raise LeaseLost(f"the position of {self.name} was taken over")
        self.position, self.as_of = batch.end, as_of
        self._committed_at = time.monotonic()

    async def _erase_dead_letters(self, records: list[Record]) -> None:
        """An erasure passing through also removes the erased leads' dead letters (of every
        destination: they hold the addresses), and with the erasure key those whose record's
        address it erased (an event with no lead id): a destination may have refused them after
        the erasure deleted the dead letters there (read before it, refused after it)."""
        for record in records:
            if record.kind == "erasure" and record.account_id is not None:
                lead_ids = [int(lead) for lead in record.fields.get("lead_ids") or []]
                hashes = [bytes.fromhex(h) for h in record.fields.get("address_hashes") or []]
                async with self._pool.acquire() as conn:
                    removed = await relay_db.forget_leads(conn, record.account_id, lead_ids)
                    if hashes and self._erased_pads is not None:
                        removed += await relay_db.forget_addresses(
                            conn, record.account_id, hashes, *self._erased_pads
                        )
                if removed:
                    log.info("relay_dead_letters_erased", erasure=record.id, removed=removed)

    def gauges(self) -> None:
        """Set the lag and position age from the committed position: after each batch, on each
        failed attempt and from the lag sampler, so they grow while a delivery fails or hangs
        (set only after a batch, they held their last value for as long as a destination was
        down, and an alert on them never fired)."""
        now = time.time()
        metrics.RELAY_LAG_SECONDS.labels(self.name).set(max(0.0, now - self.as_of.timestamp()))
        metrics.RELAY_POSITION_AGE.labels(self.name).set(time.monotonic() - self._committed_at)

    async def _deliver_all(self, records: list[Record]) -> int:
        """Deliver until every record is acknowledged or refused; returns how many were
        acknowledged. Raises :class:`Stopped` when stop is set first."""
        pending: Sequence[Record] = records
        attempt = 0
        delivered = 0
        while pending:
            try:
                await self._attempt(pending)
            except DestinationUnavailable as exc:
                if exc.acknowledged:  # it made progress: the backoff starts again from the base
                    attempt = 0
                delivered += self._count(pending[: exc.acknowledged])
                pending = pending[exc.acknowledged :]
                await self._unavailable(exc, attempt)
                attempt += 1
                continue
            except DeliveryRefused as exc:
                end = len(pending) if exc.refused is None else exc.acknowledged + exc.refused
                settled = pending[exc.acknowledged : end]
                refused = exc.kept if exc.kept is not None else settled
                kept = {id(record) for record in refused}
                delivered += self._count(pending[: exc.acknowledged])
                delivered += self._count([record for record in settled if id(record) not in kept])
                await self._dead_letter(refused, exc)
                pending = pending[end:]
                continue
            delivered += self._count(pending)
            pending = ()
        if self._failing:
            self._failing = False
            log.info("relay_destination_recovered", destination=self.name)
        return delivered

    async def _attempt(self, records: Sequence[Record]) -> None:
        """One delivery; once stop is set it gets :data:`STOP_GRACE_S` more, then is cancelled
        (:class:`Stopped`)."""
        task = asyncio.ensure_future(self.destination.deliver(records))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=STOP_GRACE_S)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise Stopped
        task.result()

    async def _unavailable(self, exc: DestinationUnavailable, attempt: int) -> None:
        metrics.RELAY_FAILURES.labels(self.name, "unavailable").inc()
        wait = backoff.delay(
            attempt, base=self._config.retry_base_s, cap=self._config.retry_max_s, retry_after=exc.retry_after
        )
        log.warning(
            "relay_delivery_failed",
            destination=self.name,
            error=exc.reason,
            attempt=attempt + 1,
            retry_in_s=round(wait, 2),
        )
        self._failing = True
        self.gauges()
        await self._note_error(exc.reason)
        await aio.sleep_unless(wait, self._stop)
        if self._stop.is_set():
            raise Stopped

    async def _dead_letter(self, refused: Sequence[Record], exc: DeliveryRefused) -> None:
        metrics.RELAY_FAILURES.labels(self.name, "refused").inc()
        metrics.RELAY_DEAD_LETTERS.labels(self.name).inc(len(refused))
        log.error("relay_records_refused", destination=self.name, records=len(refused), error=exc.reason)
        if refused:
            async with self._pool.acquire() as conn:
                await relay_db.add_dead_letters(conn, self.name, refused, exc.reason)
        await self._note_error(f"refused: {exc.reason}")

    async def _note_error(self, error: str) -> None:
        try:
            async with self._pool.acquire() as conn:
                await relay_db.record_error(conn, self.name, self._epoch, error)
        except Exception as exc:  # the status note is best effort: the retry loop goes on
            aio.raise_if_cancelling()
            log.warning("relay_error_not_recorded", destination=self.name, error=str(exc))

    def _count(self, records: Sequence[Record]) -> int:
        kinds = collections.Counter(record.kind for record in records)
        for kind, count in kinds.items():
            metrics.RELAY_RECORDS.labels(self.name, kind).inc(count)
        return len(records)


class _Stages:
    """Where one destination's loop spends its time (``mailerd_relay_stage_seconds_total``): the
    read it waited for, the delivery, the position's commit; which one to speed up."""

    def __init__(self, destination: str) -> None:
        self._read = metrics.RELAY_STAGE_SECONDS.labels(destination, "read")
        self._deliver = metrics.RELAY_STAGE_SECONDS.labels(destination, "deliver")
        self._commit = metrics.RELAY_STAGE_SECONDS.labels(destination, "commit")

    def observe(self, read: float, deliver: float, commit: float) -> None:
        self._read.inc(read)
        self._deliver.inc(deliver)
        self._commit.inc(commit)
