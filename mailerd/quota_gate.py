"""One provider's daily quota and warm-up on this node: an allowance reserved from the database
in blocks (:func:`mailerd.db.provider_quota.reserve`), so a batch takes from memory and the node
reserves about once a second at most, never per email: a block is one reservation step
(``concurrency x batch_size``), doubled while reservations come less than a second apart.

A shard takes its batch's share *before* it dispatches the batch (:meth:`QuotaGate.acquire`),
so every batch queued or in flight holds its share, and the leads a shard reserves in the
database (``reserved_upto``) are only those of such batches: a node that dies while the quota is
used up leaves nothing uncertain behind the wait. When the limits are used up the shard waits
(until the window frees, or the next warm-up day; re-checked every ``recheck_s``, since another
node may give back what it did not use): the campaign keeps running, nothing is failed, and the
campaign status shows why and until when (``provider_quotas``).

An allowance belongs to the hour it was reserved in: at the end of that hour (the database's
clock) what is left is given back there and the node reserves again, so no email is sent outside
the window that counted it (nor a warm-up day's volume on the next day). What the node holds when
it stops is given back too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable

import asyncpg
import structlog

from mailerd import aio, db, metrics, quota
from mailerd.config import ProviderConfig
from mailerd.db import provider_quota

log = structlog.get_logger(__name__)

RETRY_AFTER_ERROR_S = 1.0  # the database did not answer: try again soon, never send unreserved
# At full speed a step lasts milliseconds: a node that reserves again within a second doubles its
# block, up to this many steps, so it reserves about once a second whatever its rate; never more
# than a LIMIT_SHARE of the smaller limit (a node that dies loses its block for a day).
MAX_STEPS = 64
LIMIT_SHARE = 20


def schedule_of(config: ProviderConfig) -> quota.Schedule:
    """The provider's configured limits (the account's quota is added at start)."""
    start = dt.date.fromisoformat(config.warmup_start) if config.warmup_start else None
    return quota.Schedule(config.daily_quota, config.warmup, start)


class QuotaGate:
    """The allowance of one provider on this node (one per provider lane)."""

    def __init__(
        self,
        provider: str,
        pool: asyncpg.Pool,
        schedule: quota.Schedule,
        *,
        step: int,
        recheck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.schedule = schedule
        self._configured = schedule  # before the account's own quota lowered it
        self.step = step
        self.recheck_s = recheck_s
        self.allowance = 0
        self._hour: dt.datetime | None = None  # the database hour the allowance was reserved in
        self._expires_at = 0.0  # monotonic: the end of that hour
        self._want = step
        self._clock = clock
        self._limit: int | None = None  # the smaller limit the last reservation saw
        self._reserved_at = -1.0  # monotonic time of the last reservation
        self._pool = pool
        self._lock = asyncio.Lock()
        self._retry_at = 0.0  # monotonic: used up, no reservation before this
        self._exhausted = False
        self._waiters = 0
        self._waiting = metrics.PROVIDER_QUOTA_WAITING.labels(provider)
        self._waited = metrics.PROVIDER_QUOTA_WAIT.labels(provider)

    def set_account_quota(self, max_24_hour_send: int | None) -> None:
        """``seed_rate_from_account``: the account's ``Max24HourSend``, a limit beside the
        configured quota (it alone counts what the account sent elsewhere). Read again later, a
        raised quota replaces the one read before."""
        self.schedule = self._configured.with_account_quota(max_24_hour_send)
        if not self.schedule.limited:  # no limit left: what the last reservation saw is not one
            with contextlib.suppress(KeyError):
                metrics.PROVIDER_QUOTA_REMAINING.remove(self.provider)

    async def count_sent_elsewhere(self, sent_24h: int) -> int:
        """``seed_rate_from_account``: what the account sent in the last 24 hours beyond what the
        nodes reserved counts against the account's quota. Returns how much was added."""
        if not self.schedule.limited:
            return 0
        async with self._pool.acquire() as conn:
            return await provider_quota.count_sent_elsewhere(conn, self.provider, sent_24h)

    async def acquire(self, count: int, stopped: asyncio.Event) -> bool:
        """Take ``count`` for a batch, waiting while the limits are used up; False (nothing
        taken) when ``stopped`` is set first."""
        wait = await self.take(count)
        if wait <= 0:
            return True
        self._waiters += 1
        self._waiting.set(1)
        try:
            while wait > 0:
                started = self._clock()
                await aio.sleep_unless(wait, stopped)
                self._waited.inc(max(0.0, self._clock() - started))
                if stopped.is_set():
                    return False
                wait = await self.take(count)
            return True
        finally:
            self._waiters -= 1
            if not self._waiters:
                self._waiting.set(0)

    async def take(self, count: int) -> float:
        """Take ``count`` from the allowance: 0 when taken, else the seconds to wait before
        asking again (nothing taken)."""
        if not self.schedule.limited:  # seed_rate_from_account found no quota on the account
            return 0.0
        if self._clock() < self._expires_at and self._take_local(count):
            return 0.0
        async with self._lock:  # one reservation at a time per node and provider
            await self._give_back_expired()
            if self._take_local(count):
                return 0.0
            wait = self._retry_at - self._clock()
            if wait > 0:
                return wait
            need = count - self.allowance
            try:
                async with self._pool.acquire() as conn:
                    got = await provider_quota.reserve(
                        conn, self.provider, self.schedule, max(self._block_size(), need), need
                    )
            except db.DB_ERRORS as exc:
                aio.raise_if_cancelling()
                log.warning("provider_quota_reserve_failed", provider=self.provider, error=str(exc))
                self._retry_at = self._clock() + RETRY_AFTER_ERROR_S
                return RETRY_AFTER_ERROR_S
            decision = got.decision
            if decision.granted:
                if self.allowance and got.hour != self._hour:
                    await self._give_back(self.allowance)  # left from an hour that just ended
                    self.allowance = 0
                self.allowance += decision.granted
                self._hour = got.hour
                self._expires_at = self._clock() + (got.hour + quota.HOUR - got.now).total_seconds()
            self._limit = min(
                (n for n in (decision.daily_limit, decision.warmup_limit) if n is not None), default=None
            )
            # Exported from the first reservation on: before it, 0 would read as used up.
            metrics.PROVIDER_QUOTA_REMAINING.labels(self.provider).set(_remaining(decision))
            if self._take_local(count):
                self._set_exhausted(False, decision)
                return 0.0
            self._set_exhausted(True, decision)
            seconds = (
                (decision.exhausted_until - got.now).total_seconds()
                if decision.exhausted_until is not None
                else self.recheck_s
            )
            wait = max(0.01, min(self.recheck_s, seconds))
            self._retry_at = self._clock() + wait
            return wait

    def refund(self, count: int) -> None:
        """A batch that took its share and was not sent (its shard stopped first). The share
        goes back to the allowance, or is lost (counted, not sent) once the hour it came from
        ended: the safe side. Without limits (the account's quota read as none since) the batch
        took nothing, so nothing goes back: the node would give back more than it reserved."""
        if self.schedule.limited and self._clock() < self._expires_at:
            self.allowance += count

    async def close(self) -> None:
        """Give back what this node holds and did not send (best effort: a node that cannot
        loses at most one block, which the window frees a day later)."""
        async with self._lock:
            await self._give_back_expired()
            unused, self.allowance = self.allowance, 0
            await self._give_back(unused)

    def _take_local(self, count: int) -> bool:
        if self.allowance < count:
            return False
        self.allowance -= count
        return True

    async def _give_back_expired(self) -> None:
        """The hour the allowance was reserved in has ended: what is left goes back there."""
        if self.allowance and self._clock() >= self._expires_at:
            unused, self.allowance = self.allowance, 0
            await self._give_back(unused)

    async def _give_back(self, unused: int) -> None:
        if unused <= 0 or self._hour is None:
            return
        try:
            async with self._pool.acquire() as conn:
                await provider_quota.give_back(conn, self.provider, self._hour, unused)
        except db.DB_ERRORS as exc:
            aio.raise_if_cancelling()
            log.warning(
                "provider_quota_give_back_failed", provider=self.provider, unused=unused, error=str(exc)
            )
            return
        log.info("provider_quota_given_back", provider=self.provider, unused=unused)

    def _block_size(self) -> int:
        """One step, doubled while reservations come less than a second apart: at most
        :data:`MAX_STEPS` steps and a :data:`LIMIT_SHARE` of the smaller limit."""
        now = self._clock()
        recent = self._reserved_at >= 0 and now - self._reserved_at < 1.0
        self._reserved_at = now
        most = self.step * MAX_STEPS
        if self._limit is not None:
            most = min(most, max(1, self._limit // LIMIT_SHARE))
        self._want = min(self._want * 2 if recent else self.step, most)
        return self._want

    def _set_exhausted(self, exhausted: bool, decision: quota.Decision) -> None:
        if exhausted and not self._exhausted:
            log.warning(
                "provider_quota_reached",
                provider=self.provider,
                reason=decision.reason,
                until=decision.exhausted_until.isoformat() if decision.exhausted_until else None,
            )
        elif self._exhausted and not exhausted:
            log.info("provider_quota_available", provider=self.provider)
        self._exhausted = exhausted


def _remaining(decision: quota.Decision) -> int:
    """What the limits leave after this grant (the lower of the quota's and the warm-up's)."""
    left = []
    if decision.daily_limit is not None:
        left.append(decision.daily_limit - decision.reserved_24h)
    if decision.warmup_limit is not None:
        left.append(decision.warmup_limit - decision.reserved_today)
    return max(0, min(left)) if left else 0
