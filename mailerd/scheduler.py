"""The scheduler: starts due campaigns, splits them into shards, claims shards for this node.

A shard is claimed with a session-level ``pg_try_advisory_lock`` on a dedicated connection: if
this node dies, the lock dies with its connection and another node claims the shard. Each claim
bumps the shard's ``epoch``, the fencing token the writer checks on every flush. On claim, if
the previous owner crashed (``released_clean`` false) with leads reserved but not logged, those
leads are logged ``unknown`` (or re-sent when the campaign says ``resend_uncertain``); if it let
go cleanly, they were certainly not sent and are re-dispatched. What a claimed shard then does
is :class:`mailerd.shard.ShardRun`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from mailerd import aio, backoff, db, erasure, metrics, segments, windows
from mailerd.config import Config
from mailerd.db import campaigns as campaigns_db
from mailerd.db import connect
from mailerd.db import email_log as email_log_db
from mailerd.db import erasure as erasure_db
from mailerd.db import shards as shards_db
from mailerd.db import stats as stats_db
from mailerd.models import Campaign, CampaignBroken, CampaignStatus, PermanentError
from mailerd.shard import ShardRun
from mailerd.splitting import campaign_from_row, finish_windowed, split_campaign, with_condition
from mailerd.stages import ProviderLane, RowSink

log = structlog.get_logger(__name__)

CLAIM_COMMAND_TIMEOUT_S = 15.0  # a claim connection that cannot answer in time counts as lost
WINDOW_CLOSED = "send window closed"  # the stop reason of a shard whose zone's window closed
PREPARE_RETRY_MAX_S = 60.0  # the longest wait between two tries of a failing preparation

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The scheduler's default clock (tests inject their own to move send windows)."""
    return dt.datetime.now(dt.UTC)


class _NotClaimable(Exception):
    pass


class _WindowClosed(_NotClaimable):
    """The shard's zone is outside its send window: it waits until ``opens``."""

    def __init__(self, opens: dt.datetime) -> None:
        super().__init__(f"send window opens at {opens.isoformat()}")
        self.opens = opens


class Scheduler:
    """Claims work for this node and runs its shards until ``stop`` is set."""

    def __init__(
        self,
        *,
        config: Config,
        dsn: str,
        pool: asyncpg.Pool,
        lanes: dict[str, ProviderLane],
        sink: RowSink,
        stop: asyncio.Event,
        on_idle: Callable[[str, int], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._config = config
        self._dsn = dsn
        self._pool = pool
        self._lanes = lanes
        self._sink = sink
        self._stop = stop
        self._on_idle = on_idle
        self._clock = clock
        self._runs: dict[tuple[int, int], ShardRun] = {}
        self._prepared: set[tuple[str, int]] = set()
        # A campaign whose preparation failed: how many times in a row, and when to try again.
        self._prepare_failures: dict[tuple[str, int], tuple[int, float]] = {}
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
                        aio.raise_if_cancelling()
                        log.warning("scheduler_tick_failed", error=str(exc))
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await aio.first_completed(self._stop.wait(), self._wakeup.wait())
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
                await conn.add_listener(campaigns_db.NOTIFY_CHANNEL, self._on_notify)
                await closed.wait()
                log.warning("campaign_listener_disconnected")
            except db.DB_ERRORS as exc:
                aio.raise_if_cancelling()
                log.warning("campaign_listener_failed", error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):  # closing a broken connection: nothing to save
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
        self._close_windows()
        await self._activate_due()
        await self._finish_done()
        await self._watch_statuses()
        capacity = self._config.scheduler.max_shards_per_node - len(self._runs)
        if capacity > 0:
            await self._claim(group, capacity)

    def _close_windows(self) -> None:
        """Stop the shards whose zone's send window has closed (they release cleanly, like a
        pause, and wait for the next opening)."""
        now = self._clock()
        for run in self._runs.values():
            if run.closes_at is not None and now >= run.closes_at:
                run.stop(WINDOW_CLOSED)

    async def _finish_done(self) -> None:
        """Finish campaigns whose shards are all done. The writer does it in the flush that
        completes the last shard; two nodes completing the last two shards at once can each miss
        the other's, so this sweep closes that gap. A campaign with a send window is finished
        here only, after a check for leads its zone shards left unsent (a lead's zone changed)."""
        async with self._pool.acquire() as conn:
            finished = await campaigns_db.sweep(conn, "done", cause="scheduler")
            for campaign_id in await campaigns_db.windowed_done(conn):
                try:
                    if await finish_windowed(
                        conn, campaign_id, self._config.scheduler.shard_size, now=self._clock()
                    ):
                        finished.append(campaign_id)
                except segments.SegmentError as exc:
                    await fail_campaign(conn, campaign_id, f"segment no longer valid: {exc}")
                except windows.WindowError as exc:
                    # As at the split: another node may have the zone data this one lacks.
                    log.error("campaign_window_unusable", campaign_id=campaign_id, error=str(exc))
        for campaign_id in finished:
            log.info("campaign_finished", campaign_id=campaign_id)

    async def _activate_due(self) -> None:
        async with self._pool.acquire() as conn:
            for campaign_id in await campaigns_db.sweep(conn, "due", cause="scheduler"):
                log.info("campaign_started", campaign_id=campaign_id)
            for campaign_id in await campaigns_db.unsplit(conn):
                try:
                    await split_campaign(
                        conn, campaign_id, self._config.scheduler.shard_size, now=self._clock()
                    )
                except segments.SegmentError as exc:
                    await fail_campaign(conn, campaign_id, f"segment no longer valid: {exc}")
                except windows.WindowError as exc:
                    # e.g. this machine's time zone database lacks the default zone: another
                    # node may split it; failing the campaign for everyone would be wrong.
                    log.error("campaign_window_unusable", campaign_id=campaign_id, error=str(exc))
                except db.DB_ERRORS:
                    raise  # the tick's: every campaign waits for the next one
                except Exception as exc:  # a row or a bug nothing foresaw: this campaign waits, not the node
                    aio.raise_if_cancelling()
                    metrics.CAMPAIGN_ACTIVATION_FAILURES.inc()
                    log.exception(
                        "campaign_activation_failed",
                        campaign_id=campaign_id,
                        error=f"{type(exc).__name__}: {exc}",
                    )

    async def _watch_statuses(self) -> None:
        """Periodic re-read of the status of campaigns this node is sending."""
        if not self._runs:
            return
        ids = sorted({run.campaign_id for run in self._runs.values()})
        async with self._pool.acquire() as conn:
            status = await campaigns_db.statuses(conn, ids)
        for campaign_id in ids:
            current = status.get(campaign_id)
            if current != CampaignStatus.RUNNING and current != CampaignStatus.FINISHED:
                self.stop_campaign(campaign_id, f"campaign {current or 'deleted'}")

    async def _claim(self, group: asyncio.TaskGroup, capacity: int) -> None:
        async with self._pool.acquire() as conn:
            # Only campaigns whose provider this node has: the others are for other nodes.
            candidates = await shards_db.pending(
                conn, sorted(self._lanes), per_campaign=capacity, now=self._clock()
            )
            orphaned = await campaigns_db.without_provider(conn, sorted(self._lanes))
        for campaign_id, provider in orphaned:
            if campaign_id not in self._warned_providers:
                self._warned_providers.add(campaign_id)
                log.error("campaign_provider_unknown", campaign_id=campaign_id, provider=provider)
        waiting = self._preparations_waiting({campaign_id for campaign_id, _ in candidates})
        for key in candidates:
            if capacity <= 0 or self._stop.is_set():
                return
            if key in self._runs or key[0] in waiting:
                continue
            run = await self._try_claim(*key)
            if run is None:
                continue
            capacity -= 1
            self._runs[key] = run
            metrics.SHARDS_CLAIMED.set(len(self._runs))
            group.create_task(self._run_shard(key, run), name=f"shard-{key[0]}-{key[1]}")

    def _preparations_waiting(self, pending: set[int]) -> set[int]:
        """The pending campaigns whose failed preparation waits for its next try: their shards
        are not tried (a connection and a lock each, at every poll); and forget the failures of
        campaigns no longer pending here (paused, cancelled, claimed by other nodes)."""
        now = time.monotonic()
        for key in [key for key in self._prepare_failures if key[1] not in pending]:
            del self._prepare_failures[key]
        return {campaign_id for (_, campaign_id), (_, at) in self._prepare_failures.items() if now < at}

    async def _run_shard(self, key: tuple[int, int], run: ShardRun) -> None:
        try:
            await run.run()
            if run.stop_reason == WINDOW_CLOSED and not run.done:
                await self._wait_for_window(run)
        finally:
            del self._runs[key]
            metrics.SHARDS_CLAIMED.set(len(self._runs))
            self._wakeup.set()
            if not any(other.campaign_id == run.campaign_id for other in self._runs.values()):
                # This node holds nothing of the campaign now: forget what was cached for it.
                self._prepared.discard((run.provider_name, run.campaign_id))
                self._prepare_failures.pop((run.provider_name, run.campaign_id), None)
                self._warned_providers.discard(run.campaign_id)
                if self._on_idle is not None:
                    self._on_idle(run.provider_name, run.campaign_id)

    async def _wait_for_window(self, run: ShardRun) -> None:
        """Record when a shard stopped by its closing window opens again (GET campaign shows it;
        until then no node tries to claim it). If this fails, the claim-time check records it."""
        window = run.campaign.send_window
        if window is None or run.zone is None:
            return
        opens = windows.next_open(window, run.zone, self._clock())
        try:
            async with self._pool.acquire() as conn:
                await shards_db.defer(conn, run.campaign_id, run.shard_no, opens)
        except db.DB_ERRORS as exc:
            aio.raise_if_cancelling()
            run.log.warning("shard_defer_failed", error=str(exc))
            return
        run.log.info("shard_waiting_for_window", zone=run.zone, opens=opens.isoformat())

    async def _try_claim(self, campaign_id: int, shard_no: int) -> ShardRun | None:
        claim = await connect.connect(self._dsn, command_timeout=CLAIM_COMMAND_TIMEOUT_S)
        try:
            if not await shards_db.try_lock(claim, campaign_id, shard_no):
                raise _NotClaimable
            campaign, lane = await self._claimable_campaign(claim, campaign_id)
            erased_pads = await self._erased_pads(claim, campaign)
            recovered = 0
            async with claim.transaction():
                row = await shards_db.take(claim, campaign_id, shard_no, self.node)
                if row is None:
                    raise _NotClaimable
                campaign, closes_at = await self._in_window(claim, campaign, row)
                resend = campaign.resend_uncertain or self._config.scheduler.resend_uncertain
                if row["checkpoint"] < row["reserved_upto"] and not row["released_clean"] and not resend:
                    row, recovered = await _log_uncertain(claim, campaign, row)
                await shards_db.mark_unclean(claim, campaign_id, shard_no)
                # Leads past the checkpoint may already have rows (batches logged out of order,
                # suppressed leads logged when their window was read): skip those up to here.
                logged_upto = await email_log_db.highest_logged(
                    claim, campaign_id, row["checkpoint"], row["lead_id_to"]
                )
                if row["zone"] is not None:
                    # Zone shards overlap in id range: a lead whose zone attribute changed since
                    # another zone's shard logged it has its row; never send it twice.
                    logged_upto = row["lead_id_to"]
            # Counted once committed: a claim that fails after logging them rolls the rows back.
            metrics.EMAILS.labels(campaign.provider, "unknown").inc(recovered)
        except _WindowClosed as closed:
            # The transaction rolled back (the epoch is as it was): only record the wait.
            with contextlib.suppress(*db.DB_ERRORS):
                await shards_db.defer(claim, campaign_id, shard_no, closed.opens)
            await claim.close()
            return None
        except _NotClaimable:
            await claim.close()
            return None
        except BaseException:
            # Dropped, not closed: a graceful close waits for the server (up to the command
            # timeout when it does not answer), and the error it then raises replaced a
            # cancellation under way: the drain deadline's was lost and the process never exited.
            claim.terminate()
            raise
        run = ShardRun(
            campaign=campaign,
            row=row,
            claim=claim,
            pool=self._pool,
            lane=lane,
            sink=self._sink,
            window_size=self._config.scheduler.window_size,
            logged_upto=logged_upto,
            erased_pads=erased_pads,
            zone=row["zone"],
            closes_at=closes_at,
        )
        run.log.info(
            "shard_claimed",
            checkpoint=row["checkpoint"],
            reserved_upto=row["reserved_upto"],
            zone=row["zone"],
            closes_at=None if closes_at is None else closes_at.isoformat(),
        )
        return run

    async def _in_window(
        self, claim: asyncpg.Connection, campaign: Campaign, row: asyncpg.Record
    ) -> tuple[Campaign, dt.datetime | None]:
        """For a zone shard: raise :class:`_WindowClosed` unless its window is open now; else the
        campaign narrowed to the zone's leads (every read, and crash recovery, see only those)
        and when the window closes."""
        window, zone = campaign.send_window, row["zone"]
        if window is None or zone is None:
            return campaign, None
        now = self._clock()
        if not windows.is_open(window, zone, now):
            raise _WindowClosed(windows.next_open(window, zone, now))
        condition = windows.zone_condition(window, zone, await shards_db.zones(claim, campaign.id))
        return with_condition(campaign, condition), windows.next_close(window, zone, now)

    async def _erased_pads(self, claim: asyncpg.Connection, campaign: Campaign) -> tuple[bytes, bytes] | None:
        """The erasure key's HMAC pads when the account keeps erased addresses suppressed as
        hashes (its lead windows must check them). Without the key such a campaign is not sent
        by this node: an erased, suppressed address imported again could be mailed."""
        if not await erasure_db.has_erased_suppressions(claim, campaign.account_id):
            return None
        try:
            return erasure.key_pads(erasure.configured_key(self._config))
        except erasure.ErasureUnavailable as exc:
            log.error(
                "campaign_needs_erasure_key",
                campaign_id=campaign.id,
                account_id=campaign.account_id,
                error=str(exc),
            )
            raise _NotClaimable from exc

    async def _claimable_campaign(
        self, claim: asyncpg.Connection, campaign_id: int
    ) -> tuple[Campaign, ProviderLane]:
        """The campaign, if it is running and this node can send it, prepared with its provider
        (e.g. the SES template) before the shard is touched, so a provider error leaves the shard
        exactly as the last owner left it."""
        campaign_row = await campaigns_db.get(claim, campaign_id)
        if campaign_row is None or campaign_row["status"] != "running":
            raise _NotClaimable
        try:
            campaign = campaign_from_row(campaign_row)
        except segments.SegmentError as exc:
            await fail_campaign(claim, campaign_id, f"segment no longer valid: {exc}")
            raise _NotClaimable from exc
        except windows.WindowError as exc:
            log.error("campaign_window_unusable", campaign_id=campaign_id, error=str(exc))
            raise _NotClaimable from exc
        lane = self._lanes.get(campaign.provider)
        if lane is None:
            # Another node may have it configured: skip, do not fail the campaign for all.
            log.error("campaign_provider_unknown", campaign_id=campaign_id, provider=campaign.provider)
            raise _NotClaimable
        key = (lane.name, campaign_id)
        if key not in self._prepared:
            failures, retry_at = self._prepare_failures.get(key, (0, 0.0))
            if time.monotonic() < retry_at:
                raise _NotClaimable
            try:
                await lane.provider.prepare(campaign)
            except (PermanentError, CampaignBroken) as exc:
                # It can never be prepared as stored (a template the provider refuses): failed,
                # with the reason, rather than tried at every poll while it shows "running".
                self._prepare_failures.pop(key, None)
                await fail_campaign(claim, campaign_id, f"the provider cannot send it: {exc}")
                raise _NotClaimable from exc
            except Exception as exc:  # any other provider failure: the shard stays for a later poll
                aio.raise_if_cancelling()
                wait = prepare_retry_s(failures, self._config.scheduler.poll_interval_s)
                self._prepare_failures[key] = (failures + 1, time.monotonic() + wait)
                log.warning(
                    "campaign_prepare_failed", campaign_id=campaign_id, error=str(exc), retry_in_s=wait
                )
                raise _NotClaimable from exc
            self._prepare_failures.pop(key, None)
            self._prepared.add(key)
        return campaign, lane


def prepare_retry_s(failures: int, poll_interval_s: float) -> float:
    """How long a campaign whose preparation failed ``failures + 1`` times in a row waits before
    the next try: a poll interval, doubling up to :data:`PREPARE_RETRY_MAX_S`. Every pending
    shard of the campaign tried it at every poll: with SES throttling or down, 20 shards made
    20 template calls a second, and kept it throttled."""
    return backoff.doubling(failures, base=poll_interval_s, cap=PREPARE_RETRY_MAX_S)


async def fail_campaign(conn: asyncpg.Connection, campaign_id: int, reason: str) -> None:
    """A campaign that can never be sent as stored (its segment no longer parses): ``failed``,
    with the reason, on every node."""
    try:
        await campaigns_db.change_status(conn, campaign_id, "fail", reason, cause="scheduler")
    except campaigns_db.TransitionError as exc:
        log.info("campaign_fail_skipped", campaign_id=campaign_id, reason=str(exc))
        return
    log.error("campaign_failed", campaign_id=campaign_id, reason=reason)


async def _log_uncertain(
    claim: asyncpg.Connection, campaign: Campaign, row: asyncpg.Record
) -> tuple[asyncpg.Record, int]:
    """After a crash: leads reserved but not logged were possibly sent; log them ``unknown``.
    Returns the shard's row as updated and how many were logged (the caller counts them once
    its transaction commits)."""
    unknown = await email_log_db.log_uncertain(claim, campaign, row["checkpoint"], row["reserved_upto"])
    await stats_db.add_outcomes(claim, {campaign.id: (0, 0, unknown, 0, 0)})
    updated = await shards_db.checkpoint_to_reservation(claim, campaign.id, row["shard_no"])
    log.warning(
        "shard_recovered_uncertain",
        campaign_id=campaign.id,
        shard_no=row["shard_no"],
        unknown=unknown,
        # The claim whose leads these were: its epoch and node (the crash that left them).
        recovered_epoch=row["epoch"] - 1,
        previous_owner=row["previous_owner"],
        checkpoint=row["checkpoint"],
        reserved_upto=row["reserved_upto"],
    )
    return updated, unknown
