"""The sender: concurrent workers per provider take batches, respect the rate limits, call the
provider, retry what may be retried, and hand one row per recipient to the writer.

A batch is sent only after its shard has reserved its leads (``reserved_upto``, committed), so a
crash can never hide a send. Retries keep the batch's worker: the per-provider ``concurrency`` is
the number of calls that may be outstanding, retries included. A worker never waits for the
writer's commit, only for buffer space (back-pressure).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import random
import re
import time
from collections.abc import Awaitable, Callable

import structlog

from mailerd import aio, backoff, bounces, idn, metrics, ratelimit, rejections
from mailerd.config import ProviderConfig
from mailerd.erasure import RecentErasures
from mailerd.models import (
    Batch,
    Campaign,
    CampaignBroken,
    Event,
    HaltError,
    LogRow,
    LogStatus,
    Outcome,
    PermanentError,
    RecipientResult,
    RetryableError,
    UncertainError,
)
from mailerd.ratelimit import TokenBucket
from mailerd.stages import ClaimedShard, ProviderLane, RowSink, ShardLostError

log = structlog.get_logger(__name__)

# (campaign, reason): the provider halted or the error rate passed its limit -> pause it;
# the campaign carries the status generation this node saw, so a stale pause changes nothing.
HaltCallback = Callable[[Campaign, str], Awaitable[None]]
# (campaign, reason): the campaign can never be sent as it is -> fail it.
FailCallback = Callable[[Campaign, str], Awaitable[None]]
# How a worker waits for the rate limiters (seconds, the shard's stop): injected in tests
# together with the buckets' clock, so they control time instead of waiting for it.
RateSleep = ratelimit.StoppableSleep


class ErrorRate:
    """Permanent failures among (about) the last ``window`` recipients of one campaign (pure).

    Counted per batch, not per recipient: the hot path adds one pair per batch.
    """

    __slots__ = ("_batches", "_failed", "_total", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self._batches: collections.deque[tuple[int, int]] = collections.deque()
        self._total = 0
        self._failed = 0

    def add(self, total: int, failed: int) -> None:
        self._batches.append((total, failed))
        self._total += total
        self._failed += failed
        while self._batches and self._total - self._batches[0][0] >= self.window:
            old_total, old_failed = self._batches.popleft()
            self._total -= old_total
            self._failed -= old_failed

    @property
    def full(self) -> bool:
        return self._total >= self.window

    @property
    def rate(self) -> float:
        return self._failed / self._total if self._total else 0.0


class ProviderSender:
    """The workers of one provider lane, with the provider's shared token bucket."""

    def __init__(
        self,
        lane: ProviderLane,
        config: ProviderConfig,
        writer: RowSink,
        on_halt: HaltCallback,
        on_fail: FailCallback,
        *,
        rng: random.Random | None = None,
        rate_sleep: RateSleep = aio.sleep_unless,
        clock: ratelimit.Clock = time.monotonic,
        erased: RecentErasures | None = None,
    ) -> None:
        self.lane = lane
        # Leads erased lately: a batch read before an erasure must not send them after it.
        self._erased = erased
        self.config = config
        self.bucket = TokenBucket(config.rate_per_s, config.burst or None, clock=clock)
        self._rate_sleep = rate_sleep
        self._error_rates: dict[int, ErrorRate] = {}
        self._writer = writer
        self._on_halt = on_halt
        self._on_fail = on_fail
        self._rng = rng or random.Random()
        name = lane.name
        self._in_flight = metrics.BATCHES_IN_FLIGHT.labels(name)
        self._queue_depth = metrics.QUEUE_DEPTH.labels(name)
        self._call_seconds = metrics.PROVIDER_CALLS.labels(name)
        self._waits = metrics.RATE_LIMIT_WAIT.labels(name)
        self._retries = {r: metrics.RETRIES.labels(name, r) for r in ("throttled", "error", "entry")}
        self._rejected = {c: metrics.SMTP_REJECTIONS.labels(name, str(c)) for c in bounces.BounceClass}

    async def run(self) -> None:
        """Run ``concurrency`` workers until each has taken an end marker."""
        async with asyncio.TaskGroup() as group:
            for number in range(self.lane.workers):
                group.create_task(self._worker(), name=f"sender-{self.lane.name}-{number}")

    async def _worker(self) -> None:
        queue = self.lane.queue
        while True:
            item = await queue.get()
            self._queue_depth.set(queue.qsize())
            if item is None:
                return
            run, batch = item
            if run.stopping:
                run.discard(batch.seq)
                run.give_back(batch.leads)
                continue
            try:
                await run.ensure_reserved(batch)
            except ShardLostError as exc:
                run.log.warning("batch_not_reserved", seq=batch.seq, error=str(exc))
                run.discard(batch.seq)
                run.give_back(batch.leads)
                continue
            self._in_flight.inc()
            try:
                await self._send(run, batch)
            finally:
                self._in_flight.dec()

    async def _acquire(self, delivery: _Delivery, stopped: asyncio.Event) -> bool:
        """Wait for the provider's rate; False (tokens given back) if the shard stops meanwhile.

        Only the provider's: the campaign's own ``rate`` (:mod:`mailerd.campaign_caps`) and the
        ``[pace.NAME]`` groups (:mod:`mailerd.pace`) were waited for by the shard before the
        batch was dispatched, never here, in a worker the whole lane shares. The provider's
        tokens are taken only now, so a batch that waited for those never goes out on top of a
        provider burst that refilled meanwhile (taken together, it did: twice the burst at once).
        """
        count = len(delivery.pending)
        if not await self._wait(self.bucket.reserve(count), stopped):
            self.bucket.refund(count)
            return False
        return True

    def _give_back_dropped(self, run: ClaimedShard, delivery: _Delivery, dropped: list[int]) -> None:
        """Recipients dropped after the provider's wait (erased meanwhile) give back its tokens,
        and what the shard took for them at dispatch (quota share, the campaign's and the
        group's tokens): the next batches need not wait for them again."""
        self.bucket.refund(len(dropped))
        leads = delivery.batch.leads
        run.give_back([leads[position] for position in dropped])

    async def _wait(self, wait: float, stopped: asyncio.Event) -> bool:
        """Sleep ``wait`` seconds unless the shard stops first; False if it has stopped."""
        if wait > 0:
            self._waits.inc(wait)
            await self._rate_sleep(wait, stopped)
        return not stopped.is_set()

    def forget(self, campaign_id: int) -> None:
        """This node sends nothing of the campaign any more: drop its error window."""
        self._error_rates.pop(campaign_id, None)

    async def _send(self, run: ClaimedShard, batch: Batch) -> None:
        """Send one batch to completion (with retries) and hand its rows to the writer."""
        delivery = _Delivery(batch)
        attempt = 0
        while delivery.pending:
            if run.stopping or not await self._acquire(delivery, run.stopped):
                delivery.complete = False  # leave the unsent for whoever resumes the shard
                break
            if self._erased:  # after every wait: an erasure may have come while it lasted
                dropped = delivery.drop_erased(self._erased)
                if dropped:
                    self._give_back_dropped(run, delivery, dropped)
                if not delivery.pending:
                    break
            if not await self._call(run, delivery) or not delivery.pending:
                break
            attempt += 1
            if attempt >= self.config.max_attempts:
                delivery.settle_pending(
                    Outcome.FAILED, f"gave up after {attempt} attempts: {delivery.last_reason}"
                )
                break
            delivery.retried += len(delivery.pending)
            self._retries[delivery.retry_reason].inc(len(delivery.pending))  # as retried, not at the last try
            cap = self.config.max_retry_after_s
            retry_after = backoff.capped_retry_after(delivery.retry_after, cap)
            if retry_after != delivery.retry_after:
                run.log.warning("provider_retry_after_capped", retry_after_s=delivery.retry_after, cap_s=cap)
            delay = backoff.delay(
                attempt,
                base=self.config.backoff_base_s,
                cap=self.config.backoff_max_s,
                retry_after=retry_after,
                rng=self._rng,
            )
            await aio.sleep_unless(delay, run.stopped)
        if not delivery.reached:
            # the provider accepted nothing: what the batch took goes back (the erased already did)
            run.give_back([batch.leads[i] for i in range(len(batch.leads)) if i not in delivery.dropped])
        rows, counts = _log_rows(batch, delivery.results)
        bounced = self._rejections(delivery) if counts[1] else None
        await self._writer.submit(
            run,
            batch.seq,
            rows,
            retried=delivery.retried,
            complete=delivery.complete,
            counts=counts,
            events=bounced,
        )
        await self._check_error_rate(batch, sent=counts[0], failed=counts[1])

    def _rejections(self, delivery: _Delivery) -> list[Event] | None:
        """The batch's final SMTP rejections as bounce events (:mod:`mailerd.rejections`)."""
        batch = delivery.batch
        found = rejections.events(
            self.lane.name,
            batch.campaign,
            batch.leads,
            delivery.results,
            delivery.deferred,
            dt.datetime.now(dt.UTC),
            _storable,
        )
        for event in found:
            if event.bounce_class is not None:
                self._rejected[bounces.BounceClass(event.bounce_class)].inc()
        return found or None

    async def _call(self, run: ClaimedShard, delivery: _Delivery) -> bool:
        """One provider call for the pending recipients; False when the batch is settled (or
        must stop), True when some recipients are to be retried."""
        batch = delivery.batch
        pending = delivery.pending
        part = batch if len(pending) == len(batch.leads) else _sub_batch(batch, pending)
        delivery.retry_after = None
        started = time.perf_counter()
        try:
            answers = await self.lane.provider.send(part)
        except RetryableError as exc:
            delivery.last_reason = exc.reason
            delivery.retry_after = exc.retry_after
            delivery.retry_reason = "throttled" if _is_throttle(exc.reason) else "error"
            return True
        except UncertainError as exc:
            return self._uncertain(run, delivery, exc.reason)
        except PermanentError as exc:
            delivery.settle_pending(Outcome.FAILED, exc.reason)
            return False
        except CampaignBroken as exc:
            run.log.error("campaign_broken", seq=batch.seq, reason=exc.reason)
            delivery.complete = False  # nothing of this batch was sent
            if not run.stopping:
                await self._on_fail(batch.campaign, exc.reason)
            return False
        except HaltError as exc:
            run.log.error("provider_halted", reason=exc.reason)
            delivery.complete = False
            # Only a claim still sending pauses the campaign: in a stopped one (an earlier
            # halt of a concurrent batch, a pause) the news is old, and pausing again could
            # undo a resume the operator made since.
            if not run.stopping:
                await self._on_halt(batch.campaign, exc.reason)
            return False
        except Exception as exc:  # a provider client's bug on an answer it did not expect
            # The call may have gone through: as uncertain, never a crash of the node (which
            # would log the claims' whole reservations unknown, sent or not).
            run.log.exception("provider_answer_unreadable", seq=batch.seq, error=str(exc)[:200])
            return self._uncertain(run, delivery, f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self._call_seconds.observe(time.perf_counter() - started)
        delivery.reached = True
        delivery.take_answers(answers)
        delivery.retry_reason = "entry"
        return True

    def _uncertain(self, run: ClaimedShard, delivery: _Delivery, reason: str) -> bool:
        """The call may have gone through: its pending recipients are ``unknown``, or retried
        with ``resend_uncertain``. True when they are to be retried."""
        delivery.reached = True  # the provider may have sent
        if delivery.batch.campaign.resend_uncertain:
            delivery.last_reason = reason
            delivery.retry_reason = "error"
            return True
        run.log.warning("batch_outcome_uncertain", seq=delivery.batch.seq, reason=reason)
        delivery.settle_pending(Outcome.UNKNOWN, f"uncertain: {reason}")
        return False

    async def _check_error_rate(self, batch: Batch, *, sent: int, failed: int) -> None:
        """Pause a campaign whose permanent failures pass ``max_error_rate`` over the window."""
        errors = self._error_rates.get(batch.campaign.id)
        if errors is None:
            errors = self._error_rates[batch.campaign.id] = ErrorRate(self.config.error_window)
        errors.add(sent + failed, failed)
        if errors.full and errors.rate > self.config.max_error_rate:
            reason = (
                f"error rate {errors.rate:.0%} over the last {errors.window} recipients "
                f"exceeds max_error_rate {self.config.max_error_rate:.0%}"
            )
            self._error_rates.pop(batch.campaign.id, None)
            await self._on_halt(batch.campaign, reason)


class _Delivery:
    """One batch on its way: who is settled, who is still to be sent, and why they wait."""

    __slots__ = (
        "batch",
        "complete",
        "deferred",
        "dropped",
        "last_reason",
        "pending",
        "reached",
        "results",
        "retried",
        "retry_after",
        "retry_reason",
    )

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.results: list[RecipientResult | None] = [None] * len(batch.leads)
        self.deferred: dict[int, RecipientResult] = {}  # the last 4xx SMTP reply, by position
        self.pending = list(range(len(batch.leads)))
        self.retried = 0
        self.last_reason = ""
        self.retry_after: float | None = None
        self.retry_reason = "error"  # why the pending are retried (mailerd_provider_retries_total)
        self.complete = True
        self.reached = False  # a call was answered (or may have been sent): the quota counts it
        self.dropped: set[int] = set()  # positions dropped as erased (what they took given back)

    def drop_erased(self, erased: RecentErasures) -> list[int]:
        """Leads erased since the batch was read are not sent (logged ``suppressed``); returns
        their positions."""
        account_id, leads = self.batch.campaign.account_id, self.batch.leads
        gone = [index for index in self.pending if erased.erased(account_id, leads[index].id)]
        for index in gone:
            self.results[index] = RecipientResult(Outcome.ERASED, error="erased")
        if gone:
            self.dropped.update(gone)
            self.pending = [index for index in self.pending if index not in self.dropped]
        return gone

    def settle_pending(self, outcome: Outcome, error: str) -> None:
        for index in self.pending:
            self.results[index] = RecipientResult(outcome, error=error)
        self.pending = []

    def take_answers(self, answers: list[RecipientResult]) -> int:
        """Record a call's answers; the recipients to retry stay pending. Returns their count."""
        still = []
        for index, answer in zip(self.pending, answers, strict=True):
            if answer.outcome == Outcome.RETRY:
                still.append(index)
                self.last_reason = answer.error or "retryable"
                if answer.smtp_code is not None:
                    self.deferred[index] = answer
                else:
                    self.deferred.pop(index, None)
            else:
                self.results[index] = answer
        self.pending = still
        return len(still)


def _log_rows(
    batch: Batch, results: list[RecipientResult | None]
) -> tuple[list[LogRow], tuple[int, int, int, int]]:
    """One email_log row per recipient with an outcome, and the counts (sent, failed, unknown,
    suppressed) the writer and the error rate need, in one pass."""
    now = dt.datetime.now(dt.UTC)
    campaign_id = batch.campaign.id
    rows: list[LogRow] = []
    append = rows.append
    failed = unknown = suppressed = 0
    for lead, result in zip(batch.leads, results, strict=True):
        if result is None:
            continue
        outcome = result.outcome
        if outcome is Outcome.SENT:
            append((now, campaign_id, lead.id, LogStatus.SENT, result.message_id, None))
        elif outcome is Outcome.ERASED:
            suppressed += 1
            append((now, campaign_id, lead.id, LogStatus.SUPPRESSED, None, "erased"))
        elif outcome is Outcome.UNKNOWN:
            unknown += 1
            append((now, campaign_id, lead.id, LogStatus.UNKNOWN, None, _storable(result.error, lead.email)))
        else:
            failed += 1
            append(
                (
                    now,
                    campaign_id,
                    lead.id,
                    LogStatus.FAILED,
                    result.message_id,
                    _storable(result.error, lead.email),
                )
            )
    return rows, (len(rows) - failed - unknown - suppressed, failed, unknown, suppressed)


MAX_ERROR_CHARS = 1000


def _storable(text: str | None, address: str) -> str | None:
    """Provider error text as the log keeps it: no NUL (Postgres text cannot hold it), bounded,
    and without the recipient's address (providers quote it; email_log holds no address, so an
    erasure never has to touch it)."""
    if not text:
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if "@" in text:
        text = _quoted_address(address).sub("<recipient>", text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


@functools.lru_cache(maxsize=1024)
def _quoted_address(address: str) -> re.Pattern[str]:
    """The address in any case and in either IDNA spelling: an IDN domain goes to SES and SMTP
    servers in A-labels, and their replies quote it so (``<erin@xn--bcher-kva.de>``)."""
    return re.compile("|".join(re.escape(spelling) for spelling in idn.spellings(address)), re.IGNORECASE)


def _sub_batch(batch: Batch, indexes: list[int]) -> Batch:
    return Batch(
        batch.campaign,
        batch.shard_no,
        batch.seq,
        [batch.leads[i] for i in indexes],
        batch.upto,
        batch.attempts,
    )


def _is_throttle(reason: str) -> bool:
    lowered = reason.lower()
    return "throttl" in lowered or "toomanyrequests" in lowered or "429" in lowered
