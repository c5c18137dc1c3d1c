"""One provider's daily quota and warm-up on this node: an allowance reserved from the database
in blocks (:func:`mailerd.db.provider_quota.reserve`), so a batch takes from memory and the node
reserves about once a second at most, never per email: a block is one reservation step
(``concurrency x batch_size``), doubled while reservations come less than a second apart.

When the limits are used up the gate says how long to wait (until the window frees, or the next
warm-up day; re-checked every ``recheck_s``, since another node may give back what it did not
use), and the sender's workers wait, holding their batches: the campaign keeps running, nothing
is failed, and the campaign status shows why and until when (``provider_quotas``). What the node
holds and did not send is given back when its sender stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import asyncpg
import structlog

from mailerd import db, metrics, quota
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
        self.step = step
        self.recheck_s = recheck_s
        self.allowance = 0
        self._want = step
        self._clock = clock
        self._limit: int | None = None  # the smaller limit the last reservation saw
        self._reserved_at = -1.0  # monotonic time of the last reservation
        self._pool = pool
        self._hour: dt.datetime | None = None  # the bucket of the last grant: unused goes back there
        self._lock = asyncio.Lock()
        self._retry_at = 0.0  # monotonic: used up, no reservation before this
        self._exhausted = False
        self._waiting = metrics.PROVIDER_QUOTA_WAITING.labels(provider)
        self._remaining = metrics.PROVIDER_QUOTA_REMAINING.labels(provider)

    def set_account_quota(self, max_24_hour_send: int | None) -> None:
        """``seed_rate_from_account``: the account's ``Max24HourSend`` when lower than the
        configured quota."""
        self.schedule = self.schedule.with_account_quota(max_24_hour_send)

    def _take_local(self, count: int) -> bool:
        if self.allowance < count:
            return False
        self.allowance -= count
        return True

    async def take(self, count: int) -> float:
        """Take ``count`` from the allowance: 0 when taken, else the seconds to wait before
        asking again (nothing taken)."""
        if not self.schedule.limited:  # seed_rate_from_account found no quota on the account
            return 0.0
        if self._take_local(count):
            return 0.0
        async with self._lock:  # one reservation at a time per node and provider
            if self._take_local(count):
                return 0.0
            wait = self._retry_at - self._clock()
            if wait > 0:
                return wait
            block = self._block_size()
            try:
                async with self._pool.acquire() as conn:
                    got = await provider_quota.reserve(
                        conn, self.provider, self.schedule, max(block, count - self.allowance)
                    )
            except db.DB_ERRORS as exc:
                log.warning("provider_quota_reserve_failed", provider=self.provider, error=str(exc))
                self._retry_at = self._clock() + RETRY_AFTER_ERROR_S
                return RETRY_AFTER_ERROR_S
            decision = got.decision
            self.allowance += decision.granted
            self._hour = got.hour
            self._limit = min(
                (n for n in (decision.daily_limit, decision.warmup_limit) if n is not None), default=None
            )
            self._remaining.set(_remaining(decision))
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

    def _block_size(self) -> int:
        """One step, doubled while reservations come less than a second apart (at most
        :data:`MAX_STEPS` steps, or a :data:`LIMIT_SHARE` of the limit when that is more than a
        step)."""
        now = self._clock()
        recent = self._reserved_at >= 0 and now - self._reserved_at < 1.0
        self._reserved_at = now
        if not recent:
            self._want = self.step
            return self._want
        most = self.step * MAX_STEPS
        if self._limit is not None:
            most = min(most, max(self.step, self._limit // LIMIT_SHARE))
        self._want = min(self._want * 2, most)
        return self._want

    def refund(self, count: int) -> None:
        """A batch that took its share and was not sent (its shard stopped first)."""
        self.allowance += count

    async def close(self) -> None:
        """Give back what this node holds and did not send (best effort: a node that cannot
        loses at most one step, which the window frees a day later)."""
        unused, self.allowance = self.allowance, 0
        if unused <= 0 or self._hour is None:
            return
        try:
            async with self._pool.acquire() as conn:
                await provider_quota.give_back(conn, self.provider, self._hour, unused)
        except db.DB_ERRORS as exc:
            log.warning(
                "provider_quota_give_back_failed", provider=self.provider, unused=unused, error=str(exc)
            )
            return
        log.info("provider_quota_given_back", provider=self.provider, unused=unused)

    def _set_exhausted(self, exhausted: bool, decision: quota.Decision) -> None:
        self._waiting.set(1 if exhausted else 0)
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
