"""One claimed shard: its ledger, its reservations, its windows of leads, and its release.

Everything "no lead is emailed twice" rests on, for one shard, is here:

- The **ledger** records every dispatched batch in lead-id order. The writer tells the shard when
  a batch's rows commit; the checkpoint is the ``upto`` of the longest prefix of batches that are
  all logged, so every lead at or below it has its row. A batch that was not (fully) sent
  (the shard stopped, the provider halted) is *discarded*: it blocks the checkpoint, and the next
  owner re-dispatches the leads of that gap that have no row.
- **Reservations**: before a sender sends a batch whose leads lie past ``reserved_upto``, one
  committed, epoch-fenced UPDATE raises it (:meth:`ShardRun.ensure_reserved`), so after a crash
  the leads that may have been sent are exactly ``(checkpoint, reserved_upto]``.
- **Release**: a run that saw every dispatched batch logged or discarded releases cleanly
  (``released_clean``), so the next owner re-sends the reserved leads instead of logging them
  ``unknown``.

The sender and the writer see a run only through :mod:`mailerd.stages`' protocols.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import enum
import time
from typing import Any

import asyncpg
import structlog

from mailerd import aio, db, metrics
from mailerd.db import leads as leads_db
from mailerd.db import shards as shards_db
from mailerd.models import Batch, Campaign, Lead, LogRow, LogStatus
from mailerd.ratelimit import TokenBucket
from mailerd.stages import PlannedBatch, ProviderLane, RowSink, ShardLostError

log = structlog.get_logger(__name__)

# Errors after which a connection's session is over (its socket may not have said so yet).
_SESSION_ENDED = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionError,
)


class EntryState(enum.IntEnum):
    """Where a dispatched batch stands."""

    PENDING = 0
    LOGGED = 1
    DISCARDED = 2


class Ledger:
    """Entries of one shard, oldest first, and the checkpoint they allow (pure bookkeeping)."""

    __slots__ = ("_entries", "_unresolved", "checkpoint")

    def __init__(self, checkpoint: int) -> None:
        self.checkpoint = checkpoint
        # seq -> [upto, state]; insertion order is seq order.
        self._entries: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self._unresolved = 0

    def add(self, seq: int, upto: int) -> None:
        """Record a dispatched batch (in seq order) covering leads up to ``upto``."""
        self._entries[seq] = [upto, EntryState.PENDING]
        self._unresolved += 1

    def discard(self, seq: int) -> None:
        """The batch will not be logged in full: the checkpoint stops before it."""
        entry = self._entries.get(seq)
        if entry is not None and entry[1] == EntryState.PENDING:
            entry[1] = EntryState.DISCARDED
            self._unresolved -= 1

    def checkpoint_if_logged(self, seqs: set[int]) -> int:
        """The checkpoint that would hold if ``seqs`` were logged now (no change made)."""
        checkpoint = self.checkpoint
        for seq, (upto, state) in self._entries.items():
            if state == EntryState.LOGGED or (state == EntryState.PENDING and seq in seqs):
                checkpoint = upto
            else:
                break
        return checkpoint

    def mark_logged(self, seqs: set[int], complete: set[int] | None = None) -> int:
        """Resolve ``seqs`` after their rows committed; return the new checkpoint.

        Seqs not in ``complete`` (when given) were only partly sent and become discarded.
        """
        for seq in seqs:
            entry = self._entries.get(seq)
            if entry is None or entry[1] != EntryState.PENDING:
                continue
            entry[1] = EntryState.LOGGED if complete is None or seq in complete else EntryState.DISCARDED
            self._unresolved -= 1
        while self._entries:
            seq, (upto, state) = next(iter(self._entries.items()))
            if state != EntryState.LOGGED:
                break
            self.checkpoint = upto
            del self._entries[seq]
        return self.checkpoint

    def pending_before(self, seq: int) -> int:
        """Entries older than ``seq`` that hold the checkpoint back (dispatched, not all logged)."""
        count = 0
        for entry_seq in self._entries:
            if entry_seq >= seq:
                break
            count += 1
        return count

    def upto_ahead(self, seq: int, count: int) -> int:
        """The ``upto`` of the entry ``count`` places after ``seq`` (or the last one added)."""
        found = False
        upto = 0
        remaining = count
        for entry_seq, (entry_upto, _) in self._entries.items():
            if entry_seq == seq:
                found = True
            if found:
                upto = entry_upto
                if remaining == 0:
                    break
                remaining -= 1
        return upto

    @property
    def unresolved(self) -> int:
        """Entries neither logged nor discarded: batches queued or in flight."""
        return self._unresolved

    def __len__(self) -> int:
        return len(self._entries)


MAX_SPAN_FACTOR = 16  # a zone shard's window spans at most this many window_size of ids


def next_span(span: int, read: int, window_size: int) -> int:
    """The id span of a zone shard's next window: the leads of one zone are a fraction of the
    ids, so the span follows the density the last window saw, aiming at ``window_size`` leads
    (at most 4x wider at a time, within 1 to ``MAX_SPAN_FACTOR`` times ``window_size``)."""
    wanted = span * 4 if read == 0 else span * window_size // read
    return max(window_size, min(wanted, span * 4, window_size * MAX_SPAN_FACTOR))


# A window's batch dispatched later than this after the window was read (its campaign's rate or
# the provider's quota held it) first drops the leads deleted or erased meanwhile.
STALE_WINDOW_S = 60.0


class ShardRun:
    """One claimed shard: stream windows into the provider lane, track them, release."""

    def __init__(
        self,
        *,
        campaign: Campaign,
        row: asyncpg.Record,
        claim: asyncpg.Connection,
        pool: asyncpg.Pool,
        lane: ProviderLane,
        sink: RowSink,
        window_size: int,
        logged_upto: int = 0,
        erased_pads: tuple[bytes, bytes] | None = None,
        zone: str | None = None,
        closes_at: dt.datetime | None = None,
    ) -> None:
        self.campaign = campaign
        # A windowed campaign's shard: its time zone, and when its window closes (the scheduler
        # then stops it; it releases cleanly and waits for the next opening).
        self.zone = zone
        self.closes_at = closes_at
        self._logged_upto = logged_upto
        self.campaign_id: int = row["campaign_id"]
        self.shard_no: int = row["shard_no"]
        self.lead_id_from: int = row["lead_id_from"]
        self.lead_id_to: int = row["lead_id_to"]
        self.epoch: int = row["epoch"]
        self.reserved_upto: int = row["reserved_upto"]
        self.ledger = Ledger(row["checkpoint"])
        self.provider_name = lane.name
        self._claim = claim
        self._pool = pool
        self._lane = lane
        self._sink = sink
        self._window_size = window_size
        self._erased_pads = erased_pads
        self._seq = 0
        self._reserve_lock = asyncio.Lock()
        self._resolved = asyncio.Event()
        self._progress = asyncio.Event()
        self.stopped = asyncio.Event()
        self.lost = False
        self.fenced = False
        self.done = False
        self.stop_reason = ""
        self.log = log.bind(campaign_id=self.campaign_id, shard_no=self.shard_no, epoch=self.epoch)
        claim.add_termination_listener(self._on_claim_closed)

    # --- seen by the sender and the writer (mailerd.stages) -----------------------------------

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    def stop(self, reason: str) -> None:
        """Dispatch nothing more; batches still queued are discarded by the senders."""
        if not self.stopped.is_set():
            self.stop_reason = reason
            self.stopped.set()
            self._progress.set()  # wake workers waiting in reservation flow control
            self.log.info("shard_stopping", reason=reason)
            # Its batches still queued will not be sent: take them back now rather than wait
            # for the lane's workers to reach them behind other campaigns' calls.
            for batch in self._lane.queue.take_out(self):
                self._take_back(batch)

    def _take_back(self, batch: Batch) -> None:
        """A batch taken out of the lane's queue unsent: discarded, what it took given back."""
        self.give_back(batch.leads)
        self.discard(batch.seq)

    def discard(self, seq: int) -> None:
        """A batch that was not sent (stopping shard, halted provider)."""
        self.ledger.discard(seq)
        self._progress.set()
        self._check_resolved()

    def checkpoint_if_logged(self, complete: set[int]) -> tuple[int, bool]:
        checkpoint = self.ledger.checkpoint_if_logged(complete)
        return checkpoint, checkpoint >= self.lead_id_to

    def on_logged(self, seqs: set[int], complete: set[int]) -> None:
        checkpoint = self.ledger.mark_logged(seqs, complete)
        if checkpoint >= self.lead_id_to:
            self.done = True
        self._progress.set()
        self._check_resolved()

    def on_lost(self) -> None:
        """Fenced out (epoch mismatch): the new owner accounts for this shard's leads."""
        self.fenced = True
        self._lose("fenced out by a newer owner")

    async def ensure_reserved(self, batch: Batch) -> None:
        """Raise ``reserved_upto`` (committed) before this batch's leads may be sent."""
        if batch.last_lead_id <= self.reserved_upto:
            return
        ahead = self._lane.batches_ahead
        # Flow control: reserve past the checkpoint only while fewer than `ahead` older batches
        # are uncommitted, so a crash leaves at most about 2 x reservation_step uncertain. The
        # oldest batch never waits here, so the window always drains.
        while self.ledger.pending_before(batch.seq) >= ahead and not self.stopping:
            self._progress.clear()
            self._sink.flush_soon()
            await self._progress.wait()
        if self.stopping:
            raise ShardLostError("shard stopping")
        async with self._reserve_lock:
            if batch.last_lead_id <= self.reserved_upto:
                return
            if self.lost or self._claim.is_closed():
                raise ShardLostError("claim connection is gone")
            target = min(self.lead_id_to, max(batch.last_lead_id, self.ledger.upto_ahead(batch.seq, ahead)))
            try:
                reserved = await shards_db.reserve(
                    self._claim, self.campaign_id, self.shard_no, self.epoch, target
                )
            except db.DB_ERRORS as exc:
                aio.raise_if_cancelling()
                self._lose("reservation failed")
                raise ShardLostError(f"reservation failed: {exc}") from exc
            if not reserved:
                self.on_lost()
                raise ShardLostError("fenced out")
            self.reserved_upto = target

    # --- the shard's own task -----------------------------------------------------------------

    async def run(self) -> None:
        """Recover, dispatch every window, wait for the in-flight batches, release the claim."""
        clean = False
        try:
            try:
                await self._dispatch_all()
            except db.DB_ERRORS as exc:
                # A cancellation asyncpg turned into a database error (the drain deadline, the
                # database not answering) must stay one: the wait below lasted for ever.
                aio.raise_if_cancelling()
                self._lose(f"reading leads failed: {exc}")
            except Exception as exc:  # a row or a bug nothing foresaw: this shard stops, not the node
                aio.raise_if_cancelling()
                self.log.exception("shard_failed", error=f"{type(exc).__name__}: {exc}")
                self._lose(f"shard failed: {type(exc).__name__}")
            await self._wait_resolved()
            # Every dispatched batch is logged or was not sent: a clean release, even if the claim
            # connection dropped meanwhile (then the next claim re-sends, nothing is uncertain).
            clean = not self.fenced and self.ledger.unresolved == 0
        finally:
            await self._release(clean)

    def _lose(self, reason: str) -> None:
        """The claim is gone: dispatch nothing more. Unless fenced, in-flight rows still commit."""
        if not self.lost:
            self.lost = True
            metrics.SHARDS_LOST.inc()
            self.stop(reason)
        self._progress.set()
        self._resolved.set()

    async def _dispatch_all(self) -> None:
        checkpoint = self.ledger.checkpoint
        if checkpoint < self.reserved_upto:
            await self._dispatch_range(checkpoint, self.reserved_upto, skip_logged=True)
        position = max(self.reserved_upto, checkpoint)
        span = self._window_size
        while position < self.lead_id_to and not self.stopping:
            end = min(position + span, self.lead_id_to)
            read = await self._dispatch_range(position, end, skip_logged=position < self._logged_upto)
            position = end
            if self.zone is not None:
                span = next_span(span, read, self._window_size)
        if (
            position >= self.lead_id_to
            and not self.stopping
            and self.ledger.unresolved == 0
            and len(self.ledger) == 0
        ):
            # Nothing dispatched at all (e.g. recovered to the end): make the checkpoint final.
            # Not when stopping: a stop in the last window's cap or quota wait left its later
            # leads undispatched, and this made the shard done without them (never sent).
            await self._submit(Batch(self.campaign, self.shard_no, self._next_seq(), [], self.lead_id_to), [])

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _dispatch_range(self, start: int, end: int, *, skip_logged: bool) -> int:
        """Read leads in ``(start, end]`` and hand them on, in lead-id order; how many were read."""
        rows = await leads_db.read_window(
            self._pool,
            account_id=self.campaign.account_id,
            campaign_id=self.campaign_id,
            segment=self.campaign.segment,
            start=start,
            end=end,
            skip_logged=skip_logged,
            erased_pads=self._erased_pads,
        )
        now = dt.datetime.now(dt.UTC)
        suppressed: list[LogRow] = []
        leads: list[Lead] = []
        campaign_id = self.campaign_id
        for lead_id, email, attributes, is_suppressed in rows:
            if is_suppressed:
                suppressed.append((now, campaign_id, lead_id, LogStatus.SUPPRESSED, None, "suppressed"))
            else:
                leads.append(Lead(lead_id, email, attributes))
        read_at = time.monotonic()
        planned = self._plan(leads, end)
        if suppressed or not planned:
            upto = start if planned else end
            await self._submit(Batch(self.campaign, self.shard_no, self._next_seq(), [], upto), suppressed)
        done_upto = start  # what the batches submitted so far cover (suppressed rows: no further)
        for chunk, group, upto in planned:
            if not await self._wait_to_dispatch(len(chunk), group):
                break
            if time.monotonic() - read_at > STALE_WINDOW_S:
                # Read long ago (a low rate, a quota): leads deleted or erased since are not sent,
                # nor those suppressed since (logged so).
                chunk, now_suppressed = await self._still_present(chunk)
                if now_suppressed or not chunk:
                    at = dt.datetime.now(dt.UTC)
                    gone: list[LogRow] = [
                        (at, campaign_id, lead.id, LogStatus.SUPPRESSED, None, "suppressed")
                        for lead in now_suppressed
                    ]
                    if not chunk:
                        done_upto = upto
                    await self._submit(
                        Batch(self.campaign, self.shard_no, self._next_seq(), [], done_upto), gone
                    )
                if not chunk:
                    continue
            batch = Batch(self.campaign, self.shard_no, self._next_seq(), chunk, upto)
            self.ledger.add(batch.seq, batch.upto)
            self._resolved.clear()
            if not await self._put(batch):
                self.discard(batch.seq)
                self.give_back(chunk)
                break
            done_upto = upto
        return len(rows)

    def _plan(self, leads: list[Lead], end: int) -> list[PlannedBatch]:
        """A window's batches in dispatch order, each with its ``upto``."""
        lane = self._lane
        size = lane.batch_size
        if lane.pace is not None:
            # Each [pace.NAME] group's recipients in batches of their own, the unpaced going
            # first within a reservation step (so a crash leaves no more leads uncertain)
            return lane.pace.plan(leads, size, end, hold=max(lane.reservation_step, size))
        chunks = [leads[i : i + size] for i in range(0, len(leads), size)]
        last = len(chunks) - 1
        return [(chunk, None, end if i == last else chunk[-1].id) for i, chunk in enumerate(chunks)]

    async def _wait_to_dispatch(self, count: int, group: TokenBucket | None) -> bool:
        """The waits a batch makes before it joins the lane, in this shard, so that each holds
        back this campaign (or this group's recipients) only: in a sender worker they held the
        provider's shared workers. False (nothing kept: the batch is not dispatched) when the
        shard stops.

        The daily quota first (it can wait for hours), the rates after it: tokens taken before
        a long wait would let the batches that waited reach the provider at once, above the
        campaign's or the group's rate. Undispatched, a batch has no ledger entry and no earlier
        entry's upto passes its leads: the next owner reads them again."""
        # The daily quota: every batch queued or in flight holds its share, so what the claim
        # reserves is never stuck behind a quota wait.
        quota = self._lane.quota
        if quota is not None and not await quota.acquire(count, self.stopped):
            return False
        # The campaign's own rate
        if not await self._lane.caps.acquire(self.campaign, count, self.stopped, self.shard_no):
            if quota is not None:
                quota.refund(count)
            return False
        # Its [pace.NAME] group's rate
        pacing = self._lane.pace
        if group is not None and pacing is not None and not await pacing.acquire(group, count, self.stopped):
            self._lane.caps.refund(self.campaign, count)
            if quota is not None:
                quota.refund(count)
            return False
        return True

    async def _still_present(self, chunk: list[Lead]) -> tuple[list[Lead], list[Lead]]:
        """The leads of ``chunk`` not deleted or erased since their window was read, and those
        suppressed since (one query). What the others took of the quota, the campaign's cap and
        their [pace.NAME] group goes back; all of it when the query fails (the shard is then
        lost: nothing of the chunk goes)."""
        try:
            present = await leads_db.still_present(
                self._pool, self.campaign.account_id, [x.id for x in chunk], self._erased_pads
            )
        except db.DB_ERRORS:
            self.give_back(chunk)
            raise
        sendable = [lead for lead in chunk if present.get(lead.id) is False]
        if len(sendable) < len(chunk):
            self.give_back([lead for lead in chunk if present.get(lead.id) is not False])
        return sendable, [lead for lead in chunk if present.get(lead.id)]

    def give_back(self, leads: list[Lead]) -> None:
        """The quota share, the campaign's cap tokens and the [pace.NAME] group's tokens of leads
        that waited for them and will not be sent (not dispatched, or taken back out of the
        lane's queue): the next batches may use them."""
        lane = self._lane
        if lane.quota is not None:
            lane.quota.refund(len(leads))
        lane.caps.refund(self.campaign, len(leads))
        if lane.pace is not None:
            lane.pace.refund(lead.email for lead in leads)

    async def _submit(self, batch: Batch, rows: list[LogRow]) -> None:
        """Rows that need no sending (suppressed leads, empty windows) go straight to the writer."""
        self.ledger.add(batch.seq, batch.upto)
        self._resolved.clear()
        await self._sink.submit(self, batch.seq, rows)

    async def _put(self, batch: Batch) -> bool:
        """Enqueue for the senders unless the shard stops first."""
        if self.stopping:
            return False
        queue = self._lane.queue
        if not queue.full():
            queue.put_nowait((self, batch))
            return True
        put, _ = await aio.first_completed(queue.put((self, batch)), self.stopped.wait())
        if aio.completed(put) and self.stopping:
            # Stopped while the put waited, and put all the same: back out (stop() took the rest).
            # A sender worker may have taken the batch meanwhile: it discards it and gives back
            # what it took, so then it counts as put (given back once, by the worker).
            taken_back = False
            for queued in queue.take_out(self):
                if queued is batch:
                    taken_back = True
                else:
                    self._take_back(queued)
            return not taken_back
        return aio.completed(put)

    def _check_resolved(self) -> None:
        if self.ledger.unresolved == 0:
            self._resolved.set()

    def _on_claim_closed(self, _conn: Any) -> None:
        self.log.warning("shard_claim_connection_closed")
        self._lose("claim connection closed")

    async def _wait_resolved(self) -> None:
        self._check_resolved()
        while self.ledger.unresolved and not self.fenced:
            self._resolved.clear()
            self._check_resolved()
            await self._resolved.wait()

    async def _release(self, clean: bool) -> None:
        """Close the claim; when ``clean`` (every dispatched batch resolved), store
        ``released_clean`` first, through the pool when the claim connection is gone.
        ``shard_released`` says whether it was stored: the next owner doubts the reserved leads
        (logs them ``unknown``) unless it was."""
        self.stop("released")  # whatever ended the run, queued batches must not go out now
        stored = False
        gone = self._claim.is_closed()
        try:
            if clean and not gone:
                try:
                    stored = await shards_db.release_clean(
                        self._claim, self.campaign_id, self.shard_no, self.epoch
                    )
                    await shards_db.unlock(self._claim, self.campaign_id, self.shard_no)
                except db.DB_ERRORS as exc:
                    aio.raise_if_cancelling()  # the drain deadline: no retry through the pool
                    self.log.warning("shard_release_failed", error=str(exc))
                    gone = self._claim.is_closed() or isinstance(exc, _SESSION_ENDED)
            # The claim connection dropped, before or during the release: through the pool.
            if clean and not stored and gone:
                stored = await self._release_clean_without_claim()
        finally:
            self._claim.remove_termination_listener(self._on_claim_closed)
            with contextlib.suppress(
                Exception
            ):  # the connection may already be gone: it is closed either way
                await self._claim.close(timeout=5)
            self.log.info("shard_released", clean=stored, done=self.done, checkpoint=self.ledger.checkpoint)

    async def _release_clean_without_claim(self) -> bool:
        """The claim connection dropped but every batch is resolved: say so through the pool
        (fenced by epoch), retrying until Postgres answers, so the next owner re-sends the
        reserved leads that were never sent instead of logging them ``unknown``. False: fenced
        (another node claimed the shard meanwhile)."""
        delay = 0.2
        while True:
            try:
                async with self._pool.acquire() as conn:
                    stored = await shards_db.release_clean(conn, self.campaign_id, self.shard_no, self.epoch)
                if stored:
                    self.log.info("shard_released_clean_after_disconnect")
                return stored
            except db.DB_ERRORS as exc:
                aio.raise_if_cancelling()
                self.log.warning("shard_release_retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
