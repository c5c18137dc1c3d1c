"""Token buckets under virtual time: rate, burst, debt, fairness, cancellation, caps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any

import pytest

from mailerd import ratelimit


class VirtualTime:
    """A fake clock plus a fake sleep that advances it.

    :meth:`run` drives a set of tasks: once every unfinished task is parked in :meth:`sleep`,
    the clock jumps to the earliest wake-up time and that sleeper (only) is woken. No real time
    passes, and concurrent sleepers overlap exactly as they would on a real clock.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), future))
        self._changed.set()
        await future

    def sleeping(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def until_sleeping(self, count: int = 1) -> None:
        """Return once ``count`` callers are parked in :meth:`sleep`."""
        async with asyncio.timeout(5):
            while self.sleeping() < count:
                self._changed.clear()
                await self._changed.wait()

    def wake_next(self) -> None:
        """Advance to the earliest live sleeper and wake it."""
        while self._sleepers:
            at, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                self.now = max(self.now, at)
                future.set_result(None)
                return
        raise AssertionError("nobody is sleeping")

    async def run(self, *coros: Coroutine[Any, Any, Any]) -> list[Any]:
        tasks = [asyncio.create_task(c) for c in coros]
        for task in tasks:
            task.add_done_callback(lambda _: self._changed.set())
        async with asyncio.timeout(30):
            while True:
                pending = [t for t in tasks if not t.done()]
                if not pending:
                    break
                if self.sleeping() == len(pending):
                    self.wake_next()
                self._changed.clear()
                await self._changed.wait()
        return [t.result() for t in tasks]


def test_burst_passes_at_once_then_rate_applies() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    assert bucket.burst == 10
    assert bucket.reserve(10) == 0
    assert bucket.reserve(1) == pytest.approx(0.1)
    assert bucket.reserve(5) == pytest.approx(0.6)
    vt.now = 0.6
    assert bucket.tokens() == pytest.approx(0)
    vt.now = 100  # a long quiet spell saves up no more than the burst
    assert bucket.tokens() == pytest.approx(10)


def test_explicit_burst_and_default_burst_at_low_rates() -> None:
    vt = VirtualTime()
    assert ratelimit.TokenBucket(0.5, clock=vt.clock).burst == 1  # at least one token
    bucket = ratelimit.TokenBucket(10, burst=100, clock=vt.clock)
    assert bucket.reserve(100) == 0
    assert bucket.reserve(10) == pytest.approx(1.0)


def test_batch_larger_than_burst_passes_into_debt() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    assert bucket.reserve(50) == pytest.approx(4.0)  # 10 in hand, 40 of debt at 10/s
    assert bucket.tokens() == pytest.approx(-40)
    vt.now = 4.0
    assert bucket.reserve(0) == 0
    assert bucket.tokens() == pytest.approx(0)


def test_unlimited_never_waits() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(0, clock=vt.clock)
    assert bucket.unlimited
    assert all(bucket.reserve(1000) == 0 for _ in range(1000))


def test_negative_counts_and_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        ratelimit.TokenBucket(-1)
    with pytest.raises(ValueError, match="rate"):
        ratelimit.TokenBucket(float("nan"))
    with pytest.raises(ValueError, match="negative"):
        ratelimit.TokenBucket(1).reserve(-1)


async def test_rate_holds_for_concurrent_batches() -> None:
    """10,000 recipients, batches of 50, 8 tasks: within 5% of the rate and never above it."""
    vt = VirtualTime()
    rate = 100.0
    bucket = ratelimit.TokenBucket(rate, clock=vt.clock)
    sent: list[tuple[float, int]] = []

    async def worker() -> None:
        for _ in range(25):
            await bucket.acquire(50, sleep=vt.sleep)
            sent.append((vt.now, 50))

    await vt.run(*(worker() for _ in range(8)))
    total = sum(n for _, n in sent)
    assert total == 10_000
    elapsed = sent[-1][0] - sent[0][0]
    assert elapsed == pytest.approx((total - bucket.burst) / rate)
    assert total / elapsed == pytest.approx(rate, rel=0.05)
    # The bucket's contract, over every window: sent <= burst + rate * duration.
    times = [t for t, _ in sent]
    for i, start in enumerate(times):
        in_window = 0
        for j in range(i, len(times)):
            in_window += sent[j][1]
            assert in_window <= bucket.burst + rate * (times[j] - start) + 1e-6


async def test_callers_are_served_in_fifo_order() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    order: list[int] = []

    async def caller(i: int, n: int) -> None:
        await bucket.acquire(n, sleep=vt.sleep)
        order.append(i)

    # A big request first, small ones after it: the small ones do not overtake it.
    await vt.run(caller(0, 10), caller(1, 30), caller(2, 1), caller(3, 1), caller(4, 5))
    assert order == [0, 1, 2, 3, 4]
    assert vt.now == pytest.approx(3.7)


async def test_acquire_returns_the_wait_and_does_not_sleep_when_free() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    assert await bucket.acquire(10, sleep=vt.sleep) == 0
    [waited] = await vt.run(bucket.acquire(5, sleep=vt.sleep))
    assert waited == pytest.approx(0.5)
    assert vt.now == pytest.approx(0.5)


def test_set_rate_credits_elapsed_time_at_the_old_rate() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    bucket.reserve(30)  # 20 of debt
    vt.now = 1.0  # 10 paid back at the old rate
    bucket.set_rate(100)
    assert bucket.burst == 100  # the default burst follows the rate
    assert bucket.tokens() == pytest.approx(-10)
    assert bucket.reserve(10) == pytest.approx(0.2)


def test_set_rate_keeps_an_explicit_burst_and_can_change_it() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, burst=5, clock=vt.clock)
    bucket.set_rate(100)
    assert bucket.burst == 5
    bucket.set_rate(100, burst=50)
    assert bucket.burst == 50
    bucket.set_rate(100, burst=0)  # back to the default: one second of rate
    assert bucket.burst == 100


def test_set_rate_between_unlimited_and_limited() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(0, clock=vt.clock)
    bucket.reserve(1_000_000)
    bucket.set_rate(14)  # e.g. SES MaxSendRate: starts with a full bucket
    assert bucket.rate == 14
    assert bucket.tokens() == pytest.approx(14)
    assert bucket.reserve(28) == pytest.approx(1.0)
    bucket.set_rate(0)
    assert bucket.reserve(1000) == 0


async def test_cancelled_waiter_refunds_its_reservation() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    bucket.reserve(10)
    task = asyncio.create_task(bucket.acquire(20, sleep=vt.sleep))
    await vt.until_sleeping()
    assert bucket.tokens() == pytest.approx(-20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bucket.tokens() == pytest.approx(0)
    assert bucket.reserve(10) == pytest.approx(1.0)  # as if the cancelled call never happened


async def test_refund_never_lets_the_bucket_exceed_its_burst() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    bucket.reserve(5)
    vt.now = 10
    bucket.refund(5)
    assert bucket.tokens() == pytest.approx(10)


async def _acquire(vt: VirtualTime, buckets: list[ratelimit.TokenBucket], n: int) -> float:
    """What a batch goes through: each bucket in turn (the campaign's cap when the shard
    dispatches it, the provider's last, in the sender worker), sleeping each wait."""
    waited = 0.0
    for bucket in buckets:
        wait = bucket.reserve(n)
        if wait > 0:
            await vt.sleep(wait)
            waited += wait
    return waited


async def test_campaign_cap_lower_than_provider_rate_governs() -> None:
    vt = VirtualTime()
    provider = ratelimit.TokenBucket(1000, clock=vt.clock)
    capped = ratelimit.TokenBucket(10, clock=vt.clock)
    sent: list[float] = []

    async def worker() -> None:
        for _ in range(10):
            await _acquire(vt, [capped, provider], 10)
            sent.append(vt.now)

    await vt.run(*(worker() for _ in range(4)))
    # 400 recipients at 10/s with a burst of 10: the last batch leaves after 39 s.
    assert max(sent) == pytest.approx(39.0)


async def test_provider_limit_is_shared_by_campaigns() -> None:
    vt = VirtualTime()
    provider = ratelimit.TokenBucket(20, clock=vt.clock)
    campaigns = [[ratelimit.TokenBucket(100, clock=vt.clock), provider], [provider]]
    waits: list[float] = []

    async def worker(buckets: list[ratelimit.TokenBucket]) -> None:
        for _ in range(5):
            waits.append(await _acquire(vt, buckets, 10))

    await vt.run(*(worker(b) for b in campaigns))
    assert vt.now == pytest.approx((100 - 20) / 20)
    assert sum(waits) > 0


async def test_provider_tokens_taken_after_another_wait_never_double_its_burst() -> None:
    """A batch that waited 9 s for its campaign (or [pace] group) takes the provider's tokens
    then: another batch arriving at that moment waits for them. Taken together at t=0 (as
    the sender did), both went at t=9, twice the provider's burst at once."""
    vt = VirtualTime()
    provider = ratelimit.TokenBucket(10, 10, clock=vt.clock)
    capped = ratelimit.TokenBucket(1, clock=vt.clock)
    sent: list[float] = []

    async def batch(buckets: list[ratelimit.TokenBucket], start: float) -> None:
        await vt.sleep(start)
        await _acquire(vt, buckets, 10)
        sent.append(vt.now)

    await vt.run(batch([capped, provider], 0), batch([provider], 9))
    assert sorted(sent) == [9.0, 10.0]  # 10 at once, then 10 a second later


def test_set_rate_turns_an_unlimited_bucket_into_a_limited_one() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(0, clock=vt.clock)
    assert bucket.unlimited
    bucket.set_rate(50)
    assert bucket.rate == 50
    assert bucket.burst == 50


def test_a_clock_that_steps_back_does_not_mint_tokens() -> None:
    vt = VirtualTime()
    bucket = ratelimit.TokenBucket(10, clock=vt.clock)
    vt.now = 5
    bucket.reserve(10)
    vt.now = 4
    assert bucket.tokens() == pytest.approx(0)
    vt.now = 5.5
    assert bucket.tokens() == pytest.approx(5)
