"""The scheduler: starts due campaigns, splits them into shards, claims shards and streams leads.

A shard is claimed with a session-level ``pg_try_advisory_lock`` on a dedicated connection: if
this node dies, the lock dies with its connection and another node claims the shard. Each claim
bumps the shard's ``epoch``, the fencing token the writer checks on every flush.

A claimed shard streams its matching leads window by window (an id range read through a
server-side cursor in its own short transaction, so no transaction waits on a queue) into the
provider's bounded queue of batches. Leads on the suppression list are logged ``suppressed``
without being sent.

On claim, if the previous owner crashed (``released_clean`` false) with leads reserved but not
logged, those leads are logged ``unknown`` (or re-sent when the campaign says
``resend_uncertain``); if it let go cleanly, they were certainly not sent and are re-dispatched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from mailerd import campaigns, db, metrics, segments
from mailerd.config import Config
from mailerd.db import connect
from mailerd.ledger import Ledger
from mailerd.models import Batch, Campaign, CampaignStatus, Lead, LogRow, LogStatus
from mailerd.providers.base import Provider
from mailerd.writer import Writer

log = structlog.get_logger(__name__)

QueueItem = tuple["ShardRun", Batch] | None  # None: end marker, one per sender worker
CLAIM_COMMAND_TIMEOUT_S = 15.0  # a claim connection that cannot answer in time counts as lost
WINDOW_FETCH_ROWS = 2_000  # rows per round trip on a window's server-side cursor


class ShardLostError(Exception):
    """The claim on a shard is gone (connection dropped or fenced out by a newer epoch)."""


@dataclasses.dataclass(slots=True)
class ProviderLane:
    """A provider with its bounded batch queue; shared by every campaign using it."""

    name: str
    provider: Provider
    queue: asyncio.Queue[QueueItem]
    batch_size: int
    workers: int
    reservation_step: int


def campaign_from_row(row: asyncpg.Record) -> Campaign:
    """A campaigns row as the pipeline's :class:`Campaign` (segment parsed and validated)."""
    return Campaign(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        status=CampaignStatus(row["status"]),
        segment=segments.parse(row["segment"]),
        from_address=row["from_address"],
        subject=row["subject"],
        html_body=row["html_body"],
        text_body=row["text_body"],
        provider=row["provider"],
        rate_per_s=row["rate_per_s"],
        resend_uncertain=row["resend_uncertain"],
        status_reason=row["status_reason"],
    )


def _window_sql(segment: segments.Segment, *, skip_logged: bool) -> tuple[str, list[Any]]:
    """Leads of one id window: ``$1`` account, ``$2`` exclusive start, ``$3`` inclusive end,
    ``$4`` campaign (for ``skip_logged``), then the segment's parameters."""
    condition, params = segments.compile(segment, first_param=5, alias="l")
    skip = (
        "AND NOT EXISTS (SELECT 1 FROM email_log e WHERE e.campaign_id = $4 AND e.lead_id = l.id)"
        if skip_logged
        else "AND $4::bigint IS NOT NULL"
    )
    sql = f"""SELECT l.id, l.email, l.attributes,
                     EXISTS (SELECT 1 FROM suppressions s
                             WHERE s.account_id = l.account_id AND s.email = lower(l.email)) AS suppressed
              FROM leads l
              WHERE l.account_id = $1 AND l.id > $2 AND l.id <= $3 AND ({condition}) {skip}
              ORDER BY l.id"""
    return sql, params


class ShardRun:
    """One claimed shard: recover, stream windows into the provider lane, release."""

    def __init__(
        self,
        *,
        campaign: Campaign,
        row: asyncpg.Record,
        claim: asyncpg.Connection,
        pool: asyncpg.Pool,
        lane: ProviderLane,
        writer: Writer,
        window_size: int,
        node: str,
        logged_upto: int = 0,
    ) -> None:
        self.campaign = campaign
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
        self._writer = writer
        self._window_size = window_size
        self._node = node
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

    # --- called by the sender and the writer --------------------------------------------------

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

    def discard(self, seq: int) -> None:
        """A batch that was not sent (stopping shard, halted provider)."""
        self.ledger.discard(seq)
        self._progress.set()
        self._check_resolved()

    def on_logged(self, checkpoint: int, done: bool) -> None:
        if done:
            self.done = True
        self._progress.set()
        self._check_resolved()

    def on_lost(self) -> None:
        """Fenced out (epoch mismatch): the new owner accounts for this shard's leads."""
        self.fenced = True
        self._lose("fenced out by a newer owner")

    def _lose(self, reason: str) -> None:
        """The claim is gone: dispatch nothing more. Unless fenced, in-flight rows still commit."""
        if not self.lost:
            self.lost = True
            metrics.SHARDS_LOST.inc()
            self.stop(reason)
        self._progress.set()
        self._resolved.set()

    async def ensure_reserved(self, batch: Batch) -> None:
        """Raise ``reserved_upto`` (committed) before this batch's leads may be sent."""
        if batch.last_lead_id <= self.reserved_upto:
            return
        ahead = max(1, self._lane.reservation_step // max(1, self._lane.batch_size))
        # Flow control: reserve past the checkpoint only while fewer than `ahead` older batches
        # are uncommitted, so a crash leaves at most about 2 x reservation_step uncertain. The
        # oldest batch never waits here, so the window always drains.
        while self.ledger.pending_before(batch.seq) >= ahead and not self.stopping:
            self._progress.clear()
            self._writer.flush_soon()
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
                status = await self._claim.execute(
                    """UPDATE campaign_shards
                       SET reserved_upto = GREATEST(reserved_upto, $1), updated_at = now()
                       WHERE campaign_id = $2 AND shard_no = $3 AND epoch = $4""",
                    target,
                    self.campaign_id,
                    self.shard_no,
                    self.epoch,
                )
            except db.DB_ERRORS as exc:
                self._lose("reservation failed")
                raise ShardLostError(f"reservation failed: {exc}") from exc
            if status != "UPDATE 1":
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
                self._lose(f"reading leads failed: {exc}")
            await self._wait_resolved()
            # Every dispatched batch is logged or was not sent: a clean release, even if the claim
            # connection dropped meanwhile (then the next claim re-sends, nothing is uncertain).
            clean = not self.fenced and self.ledger.unresolved == 0
        finally:
            await self._release(clean)

    async def _dispatch_all(self) -> None:
        checkpoint = self.ledger.checkpoint
        if checkpoint < self.reserved_upto:
            await self._dispatch_range(checkpoint, self.reserved_upto, skip_logged=True)
        position = max(self.reserved_upto, checkpoint)
        while position < self.lead_id_to and not self.stopping:
            end = min(position + self._window_size, self.lead_id_to)
            await self._dispatch_range(position, end, skip_logged=position < self._logged_upto)
            position = end
        if position >= self.lead_id_to and self.ledger.unresolved == 0 and len(self.ledger) == 0:
            # Nothing dispatched at all (e.g. recovered to the end): make the checkpoint final.
            await self._submit(Batch(self.campaign, self.shard_no, self._next_seq(), [], self.lead_id_to), [])

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _dispatch_range(self, start: int, end: int, *, skip_logged: bool) -> None:
        """Read leads in ``(start, end]`` and hand them on, in lead-id order."""
        sql, params = _window_sql(self.campaign.segment, skip_logged=skip_logged)
        rows: list[asyncpg.Record] = []
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = await conn.cursor(sql, self.campaign.account_id, start, end, self.campaign_id, *params)
            while True:
                chunk = await cursor.fetch(WINDOW_FETCH_ROWS)
                rows.extend(chunk)
                if len(chunk) < WINDOW_FETCH_ROWS:
                    break
        now = dt.datetime.now(dt.UTC)
        suppressed: list[LogRow] = []
        leads: list[Lead] = []
        campaign_id = self.campaign_id
        for lead_id, email, attributes, is_suppressed in rows:
            if is_suppressed:
                suppressed.append((now, campaign_id, lead_id, LogStatus.SUPPRESSED, None, "suppressed"))
            else:
                leads.append(Lead(lead_id, email, attributes))
        size = self._lane.batch_size
        chunks = [leads[i : i + size] for i in range(0, len(leads), size)]
        if suppressed or not chunks:
            upto = start if chunks else end
            batch = Batch(self.campaign, self.shard_no, self._next_seq(), [], upto)
            await self._submit(batch, suppressed)
        for index, chunk in enumerate(chunks):
            upto = end if index == len(chunks) - 1 else chunk[-1].id
            batch = Batch(self.campaign, self.shard_no, self._next_seq(), chunk, upto)
            self.ledger.add(batch.seq, batch.upto)
            self._resolved.clear()
            if not await self._put(batch):
                self.discard(batch.seq)
                return

    async def _submit(self, batch: Batch, rows: list[LogRow]) -> None:
        """Rows that need no sending (suppressed leads, empty windows) go straight to the writer."""
        self.ledger.add(batch.seq, batch.upto)
        self._resolved.clear()
        await self._writer.submit(self, batch.seq, rows)

    async def _put(self, batch: Batch) -> bool:
        """Enqueue for the senders unless the shard stops first."""
        if self.stopping:
            return False
        queue = self._lane.queue
        if not queue.full():
            queue.put_nowait((self, batch))
            return True
        put = asyncio.ensure_future(queue.put((self, batch)))
        stop = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait({put, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not put.done():
                put.cancel()
        return put.done() and not put.cancelled()

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
        self.stop("released")  # whatever ended the run, queued batches must not go out now
        if clean and self._claim.is_closed():
            await self._release_clean_without_claim()
            clean = False  # nothing left to do on the claim connection
        try:
            if clean and not self._claim.is_closed():
                await self._claim.execute(
                    """UPDATE campaign_shards SET released_clean = true, owner = NULL, updated_at = now()
                       WHERE campaign_id = $1 AND shard_no = $2 AND epoch = $3""",
                    self.campaign_id,
                    self.shard_no,
                    self.epoch,
                )
                await self._claim.execute(
                    "SELECT pg_advisory_unlock($1::int, $2::int)", _lock_key(self.campaign_id), self.shard_no
                )
        except db.DB_ERRORS as exc:
            self.log.warning("shard_release_failed", error=str(exc))
        finally:
            self._claim.remove_termination_listener(self._on_claim_closed)
            with contextlib.suppress(Exception):
                await self._claim.close(timeout=5)
            self.log.info("shard_released", clean=clean, done=self.done, checkpoint=self.ledger.checkpoint)

    async def _release_clean_without_claim(self) -> None:
        """The claim connection dropped but every batch is resolved: say so through the pool
        (fenced by epoch), retrying until Postgres answers, so the next owner re-sends the
        reserved leads that were never sent instead of logging them ``unknown``."""
        delay = 0.2
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await conn.execute(
                        """UPDATE campaign_shards SET released_clean = true, owner = NULL,
                                  updated_at = now()
                           WHERE campaign_id = $1 AND shard_no = $2 AND epoch = $3""",
                        self.campaign_id,
                        self.shard_no,
                        self.epoch,
                    )
                self.log.info("shard_released_clean_after_disconnect")
                return
            except db.DB_ERRORS as exc:
                self.log.warning("shard_release_retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


class Scheduler:
    """Claims work for this node and runs its shards until ``stop`` is set."""

    def __init__(
        self,
        *,
        config: Config,
        dsn: str,
        pool: asyncpg.Pool,
        lanes: dict[str, ProviderLane],
        writer: Writer,
        stop: asyncio.Event,
        on_idle: Callable[[str, int], None] | None = None,
    ) -> None:
        self._config = config
        self._dsn = dsn
        self._pool = pool
        self._lanes = lanes
        self._writer = writer
        self._stop = stop
        self._on_idle = on_idle
        self._runs: dict[tuple[int, int], ShardRun] = {}
        self._prepared: set[tuple[str, int]] = set()
        self._warned_providers: set[int] = set()
        self._wakeup = asyncio.Event()
        self.node = config.node.name or "node"

    @property
    def runs(self) -> dict[tuple[int, int], ShardRun]:
        return self._runs

    def wake(self) -> None:
        """Look for work now (a shard finished, a campaign changed)."""
        self._wakeup.set()

    def stop_campaign(self, campaign_id: int, reason: str) -> None:
        """Stop this node's shards of a campaign (paused, cancelled, halted)."""
        for run in self._runs.values():
            if run.campaign_id == campaign_id:
                run.stop(reason)

    async def run(self) -> None:
        """Loop until stopped; then stop every shard, wait for them, and close the lanes."""
        interval = self._config.scheduler.poll_interval_s
        try:
            async with asyncio.TaskGroup() as group:
                listener = group.create_task(self._listen(), name="campaign-listener")
                while not self._stop.is_set():
                    try:
                        await self._tick(group)
                    except db.DB_ERRORS as exc:
                        log.warning("scheduler_tick_failed", error=str(exc))
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await _first(self._stop.wait(), self._wakeup.wait())
                listener.cancel()
                for run in self._runs.values():
                    run.stop("node draining")
        except BaseException:
            for lane in self._lanes.values():
                with contextlib.suppress(asyncio.QueueFull):
                    for _ in range(lane.workers):
                        lane.queue.put_nowait(None)
            raise
        for lane in self._lanes.values():
            for _ in range(lane.workers):
                await lane.queue.put(None)

    async def _listen(self) -> None:
        """LISTEN for campaign changes so pause/cancel reach this node at once; reconnect on loss.

        The periodic status re-read in :meth:`_watch_statuses` covers notifications lost while
        the listening connection was down.
        """
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect.connect(self._dsn)
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _conn, event=closed: event.set())
                await conn.add_listener(campaigns.NOTIFY_CHANNEL, self._on_notify)
                await closed.wait()
                log.warning("campaign_listener_disconnected")
            except db.DB_ERRORS as exc:
                log.warning("campaign_listener_failed", error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            campaign_id_text, status = payload.split(" ", 1)
            campaign_id = int(campaign_id_text)
        except ValueError:
            log.warning("campaign_notification_malformed", payload=payload)
            return
        if status in (CampaignStatus.PAUSED, CampaignStatus.CANCELLED, CampaignStatus.FAILED):
            self.stop_campaign(campaign_id, f"campaign {status}")
        else:
            self._wakeup.set()

    async def _tick(self, group: asyncio.TaskGroup) -> None:
        await self._activate_due()
        await self._finish_done()
        await self._watch_statuses()
        capacity = self._config.scheduler.max_shards_per_node - len(self._runs)
        if capacity > 0:
            await self._claim(group, capacity)

    async def _finish_done(self) -> None:
        """Finish campaigns whose shards are all done. The writer does it in the flush that
        completes the last shard; two nodes completing the last two shards at once can each miss
        the other's, so this sweep closes that gap."""
        async with self._pool.acquire() as conn:
            finished = await conn.fetch(
                """UPDATE campaigns c SET status = 'finished', finished_at = now(), updated_at = now()
                   WHERE c.status IN ('running', 'paused')
                     AND EXISTS (SELECT 1 FROM campaign_shards s WHERE s.campaign_id = c.id)
                     AND NOT EXISTS (SELECT 1 FROM campaign_shards s
                                     WHERE s.campaign_id = c.id AND s.state <> 'done')
                   RETURNING c.id"""
            )
        for row in finished:
            log.info("campaign_finished", campaign_id=row["id"])

    async def _activate_due(self) -> None:
        async with self._pool.acquire() as conn:
            started = await conn.fetch(
                """UPDATE campaigns SET status = 'running', started_at = coalesce(started_at, now()),
                                        updated_at = now()
                   WHERE status = 'scheduled' AND send_at <= now() RETURNING id"""
            )
            for row in started:
                log.info("campaign_started", campaign_id=row["id"])
            unsplit = await conn.fetch(
                """SELECT id FROM campaigns c WHERE status = 'running'
                   AND NOT EXISTS (SELECT 1 FROM campaign_shards s WHERE s.campaign_id = c.id)"""
            )
            for row in unsplit:
                try:
                    await split_campaign(conn, row["id"], self._config.scheduler.shard_size)
                except segments.SegmentError as exc:
                    await fail_campaign(conn, row["id"], f"segment no longer valid: {exc}")

    async def _watch_statuses(self) -> None:
        """Periodic re-read of the status of campaigns this node is sending."""
        if not self._runs:
            return
        ids = sorted({run.campaign_id for run in self._runs.values()})
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, status FROM campaigns WHERE id = ANY($1::bigint[])", ids)
        status = {r["id"]: r["status"] for r in rows}
        for campaign_id in ids:
            current = status.get(campaign_id)
            if current != CampaignStatus.RUNNING and current != CampaignStatus.FINISHED:
                self.stop_campaign(campaign_id, f"campaign {current or 'deleted'}")

    async def _claim(self, group: asyncio.TaskGroup, capacity: int) -> None:
        async with self._pool.acquire() as conn:
            # Only campaigns whose provider this node has: the others are for other nodes.
            candidates = await conn.fetch(
                """SELECT s.campaign_id, s.shard_no FROM campaign_shards s
                   JOIN campaigns c ON c.id = s.campaign_id
                   WHERE c.status = 'running' AND s.state = 'pending' AND c.provider = ANY($1::text[])
                   ORDER BY s.campaign_id, s.shard_no LIMIT 1000""",
                sorted(self._lanes),
            )
            orphaned = await conn.fetch(
                """SELECT id, provider FROM campaigns
                   WHERE status = 'running' AND NOT (provider = ANY($1::text[]))""",
                sorted(self._lanes),
            )
        for row in orphaned:
            if row["id"] not in self._warned_providers:
                self._warned_providers.add(row["id"])
                log.error("campaign_provider_unknown", campaign_id=row["id"], provider=row["provider"])
        for candidate in candidates:
            if capacity <= 0 or self._stop.is_set():
                return
            key = (candidate["campaign_id"], candidate["shard_no"])
            if key in self._runs:
                continue
            run = await self._try_claim(*key)
            if run is None:
                continue
            capacity -= 1
            self._runs[key] = run
            metrics.SHARDS_CLAIMED.set(len(self._runs))
            group.create_task(self._run_shard(key, run), name=f"shard-{key[0]}-{key[1]}")

    async def _run_shard(self, key: tuple[int, int], run: ShardRun) -> None:
        try:
            await run.run()
        finally:
            del self._runs[key]
            metrics.SHARDS_CLAIMED.set(len(self._runs))
            self._wakeup.set()
            if not any(other.campaign_id == run.campaign_id for other in self._runs.values()):
                # This node holds nothing of the campaign now: forget what was cached for it.
                self._prepared.discard((run.provider_name, run.campaign_id))
                self._warned_providers.discard(run.campaign_id)
                if self._on_idle is not None:
                    self._on_idle(run.provider_name, run.campaign_id)

    async def _try_claim(self, campaign_id: int, shard_no: int) -> ShardRun | None:
        claim = await connect.connect(self._dsn, command_timeout=CLAIM_COMMAND_TIMEOUT_S)
        try:
            locked = await claim.fetchval(
                "SELECT pg_try_advisory_lock($1::int, $2::int)", _lock_key(campaign_id), shard_no
            )
            if not locked:
                raise _NotClaimable
            campaign_row = await claim.fetchrow("SELECT * FROM campaigns WHERE id = $1", campaign_id)
            if campaign_row is None or campaign_row["status"] != "running":
                raise _NotClaimable
            try:
                campaign = campaign_from_row(campaign_row)
            except segments.SegmentError as exc:
                await fail_campaign(claim, campaign_id, f"segment no longer valid: {exc}")
                raise _NotClaimable from exc
            lane = self._lanes.get(campaign.provider)
            if lane is None:
                # Another node may have it configured: skip, do not fail the campaign for all.
                log.error("campaign_provider_unknown", campaign_id=campaign_id, provider=campaign.provider)
                raise _NotClaimable
            # Prepare (e.g. the SES template) before touching the shard, so a provider error
            # leaves the shard exactly as the last owner left it.
            if (lane.name, campaign_id) not in self._prepared:
                try:
                    await lane.provider.prepare(campaign)
                except Exception as exc:
                    log.warning("campaign_prepare_failed", campaign_id=campaign_id, error=str(exc))
                    raise _NotClaimable from exc
                self._prepared.add((lane.name, campaign_id))
            async with claim.transaction():
                row = await claim.fetchrow(
                    """UPDATE campaign_shards SET epoch = epoch + 1, owner = $3, updated_at = now()
                       WHERE campaign_id = $1 AND shard_no = $2 AND state = 'pending'
                       RETURNING *""",
                    campaign_id,
                    shard_no,
                    self.node,
                )
                if row is None:
                    raise _NotClaimable
                resend = campaign.resend_uncertain or self._config.scheduler.resend_uncertain
                if row["checkpoint"] < row["reserved_upto"] and not row["released_clean"] and not resend:
                    row = await _log_uncertain(claim, campaign, row)
                await claim.execute(
                    """UPDATE campaign_shards SET released_clean = false
                       WHERE campaign_id = $1 AND shard_no = $2""",
                    campaign_id,
                    shard_no,
                )
                # Leads past the checkpoint may already have rows (batches logged out of order,
                # suppressed leads logged when their window was read): skip those up to here.
                logged_upto = await claim.fetchval(
                    """SELECT max(lead_id) FROM email_log
                       WHERE campaign_id = $1 AND lead_id > $2 AND lead_id <= $3""",
                    campaign_id,
                    row["checkpoint"],
                    row["lead_id_to"],
                )
        except _NotClaimable:
            await claim.close()
            return None
        except BaseException:
            await claim.close()
            raise
        run = ShardRun(
            campaign=campaign,
            row=row,
            claim=claim,
            pool=self._pool,
            lane=lane,
            writer=self._writer,
            window_size=self._config.scheduler.window_size,
            node=self.node,
            logged_upto=logged_upto or 0,
        )
        run.log.info("shard_claimed", checkpoint=row["checkpoint"], reserved_upto=row["reserved_upto"])
        return run


def _lock_key(campaign_id: int) -> int:
    """The advisory lock's first int4 key. Ids past 2^31 wrap: two shards sharing a lock only
    serialise, they never share an owner."""
    return campaign_id % 2_147_483_647


async def fail_campaign(conn: asyncpg.Connection, campaign_id: int, reason: str) -> None:
    """A campaign that can never be sent as stored (its segment no longer parses): ``failed``,
    with the reason, on every node."""
    await conn.execute(
        """UPDATE campaigns SET status = 'failed', status_reason = $2, updated_at = now()
           WHERE id = $1 AND status IN ('running', 'scheduled', 'paused')""",
        campaign_id,
        reason,
    )
    await conn.execute("SELECT pg_notify($1, $2)", campaigns.NOTIFY_CHANNEL, f"{campaign_id} failed")
    log.error("campaign_failed", campaign_id=campaign_id, reason=reason)


class _NotClaimable(Exception):
    pass


async def _log_uncertain(
    claim: asyncpg.Connection, campaign: Campaign, row: asyncpg.Record
) -> asyncpg.Record:
    """After a crash: leads reserved but not logged were possibly sent; log them ``unknown``."""
    condition, params = segments.compile(campaign.segment, first_param=5, alias="l")
    inserted = await claim.fetch(
        f"""INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id, error)
            SELECT now(), $4, l.id,
                   CASE WHEN EXISTS (SELECT 1 FROM suppressions s WHERE s.account_id = l.account_id
                                     AND s.email = lower(l.email)) THEN {int(LogStatus.SUPPRESSED)}
                        ELSE {int(LogStatus.UNKNOWN)} END,
                   NULL, 'in flight when its node stopped'
            FROM leads l
            WHERE l.account_id = $1 AND l.id > $2 AND l.id <= $3 AND ({condition})
              AND NOT EXISTS (SELECT 1 FROM email_log e WHERE e.campaign_id = $4 AND e.lead_id = l.id)
            RETURNING status""",
        campaign.account_id,
        row["checkpoint"],
        row["reserved_upto"],
        campaign.id,
        *params,
    )
    unknown = sum(1 for r in inserted if r["status"] == LogStatus.UNKNOWN)
    suppressed = len(inserted) - unknown
    metrics.EMAILS.labels(campaign.provider, "unknown").inc(unknown)
    metrics.EMAILS.labels(campaign.provider, "suppressed").inc(suppressed)
    await claim.execute(
        """INSERT INTO campaign_stats AS cs (campaign_id, unknown, suppressed) VALUES ($1, $2, $3)
           ON CONFLICT (campaign_id) DO UPDATE SET unknown = cs.unknown + $2,
                suppressed = cs.suppressed + $3, updated_at = now()""",
        campaign.id,
        unknown,
        suppressed,
    )
    updated = await claim.fetchrow(
        """UPDATE campaign_shards SET checkpoint = reserved_upto
           WHERE campaign_id = $1 AND shard_no = $2 RETURNING *""",
        campaign.id,
        row["shard_no"],
    )
    log.warning(
        "shard_recovered_uncertain",
        campaign_id=campaign.id,
        shard_no=row["shard_no"],
        unknown=unknown,
        suppressed=suppressed,
    )
    assert updated is not None
    return updated


async def split_campaign(conn: asyncpg.Connection, campaign_id: int, shard_size: int) -> int:
    """Cut a running campaign into shards of about ``shard_size`` leads; count its matches.

    Idempotent across nodes: the campaign row is locked and shards are made only once.
    Returns the number of shards.
    """
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM campaigns WHERE id = $1 FOR UPDATE", campaign_id)
        if row is None:
            return 0
        existing = await conn.fetchval(
            "SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id
        )
        if existing:
            return int(existing)
        campaign = campaign_from_row(row)
        bounds = await conn.fetch(
            """SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n
                               FROM leads WHERE account_id = $1) AS numbered
               WHERE n % $2 = 0 ORDER BY id""",
            campaign.account_id,
            shard_size,
        )
        last = await conn.fetchval("SELECT max(id) FROM leads WHERE account_id = $1", campaign.account_id)
        condition, params = segments.compile(campaign.segment, first_param=2, alias="l")
        matched = await conn.fetchval(
            f"SELECT count(*) FROM leads l WHERE l.account_id = $1 AND ({condition})",
            campaign.account_id,
            *params,
        )
        await conn.execute(
            """INSERT INTO campaign_stats (campaign_id, matched) VALUES ($1, $2)
               ON CONFLICT (campaign_id) DO UPDATE SET matched = $2, updated_at = now()""",
            campaign_id,
            matched,
        )
        if last is None:
            await conn.execute(
                """UPDATE campaigns SET status = 'finished', finished_at = now(), updated_at = now()
                   WHERE id = $1""",
                campaign_id,
            )
            log.info("campaign_finished_empty", campaign_id=campaign_id)
            return 0
        edges = [r["id"] for r in bounds if r["id"] < last] + [last]
        low = 0
        shards = []
        for number, high in enumerate(edges):
            shards.append((campaign_id, number, low, high, low, low))
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
            ),
        )
        log.info("campaign_split", campaign_id=campaign_id, shards=len(shards), matched=matched)
        return len(shards)


async def _first(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` completes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
