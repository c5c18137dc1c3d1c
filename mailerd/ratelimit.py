"""Token buckets in recipients per second: the provider's shared limit and per-campaign caps.

A bucket may go into debt: :meth:`TokenBucket.reserve` always takes the tokens at once and
returns how long the caller must wait before it may send. Each caller therefore queues behind
every earlier reservation, so concurrent callers are served in FIFO order without a lock, and a
batch larger than the burst still passes (it just waits longer) instead of waiting forever for
a bucket that can never hold it.

The clock and the sleep are injected so tests control time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]
# A sleep that an event cuts short (``aio.sleep_unless``): how the stages wait for tokens.
StoppableSleep = Callable[[float, asyncio.Event], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens (recipients) per second, at most ``burst`` saved up; ``rate = 0`` is unlimited.

    ``burst`` defaults to one second's worth of rate (at least 1); ``None`` or ``0`` mean that
    default, which then follows :meth:`set_rate`. The bucket starts full.
    """

    __slots__ = ("_burst", "_burst_is_default", "_clock", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float | None = None, clock: Clock = time.monotonic) -> None:
        _check_rate(rate)
        self._clock = clock
        self._rate = float(rate)
        self._burst_is_default = burst is None or burst <= 0
        self._burst = _default_burst(rate) if burst is None or burst <= 0 else float(burst)
        self._tokens = self._burst
        self._updated = clock()

    @property
    def rate(self) -> float:
        """Tokens per second; 0 means unlimited."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds (what can pass at once after a quiet spell)."""
        return self._burst

    @property
    def unlimited(self) -> bool:
        return self._rate == 0

    def tokens(self) -> float:
        """Tokens available now; negative while callers are queued (debt)."""
        self._refill()
        return self._tokens

    def reserve(self, n: int) -> float:
        """Take ``n`` tokens now, into debt if need be; return the seconds to wait before sending.

        Pure bookkeeping, never blocks: a later call queues behind every earlier one (FIFO).
        """
        if n < 0:
            raise ValueError(f"cannot reserve a negative number of tokens: {n}")
        if self.unlimited or n == 0:
            return 0.0
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    def refund(self, n: int) -> None:
        """Give back ``n`` reserved tokens that were not used (the caller was cancelled).

        Callers already queued keep their computed waits (they never wait longer than before),
        and the tokens go to the next reservation, so the bucket's limit still holds.
        """
        if self.unlimited or n <= 0:
            return
        self._refill()
        self._tokens = min(self._burst, self._tokens + n)

    async def acquire(self, n: int, sleep: Sleep = asyncio.sleep) -> float:
        """Reserve ``n`` tokens and sleep until they are ours; return the seconds waited.

        Does not yield to the event loop when no wait is needed. If cancelled while sleeping,
        the reservation is refunded before ``CancelledError`` propagates.
        """
        wait = self.reserve(n)
        if wait <= 0:
            return 0.0
        try:
            await sleep(wait)
        except asyncio.CancelledError:
            self.refund(n)
            raise
        return wait

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate from now on (e.g. seeded from SES ``GetAccount`` ``MaxSendRate``).

        Time up to now is credited at the old rate; outstanding debt is kept and is paid off at
        the new rate by later callers (callers already sleeping keep their computed waits).
        Going from unlimited to limited starts with a full bucket.
        """
        _check_rate(rate)
        was_unlimited = self.unlimited
        self._refill()
        self._rate = float(rate)
        if burst is not None:
            self._burst_is_default = burst <= 0
            self._burst = float(burst) if burst > 0 else _default_burst(rate)
        elif self._burst_is_default:
            self._burst = _default_burst(rate)
        if was_unlimited:
            self._tokens = self._burst
        self._tokens = min(self._tokens, self._burst)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = max(now, self._updated)
        if not self.unlimited:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate:g}, burst={self._burst:g})"


def _check_rate(rate: float) -> None:
    if not rate >= 0:  # also refuses NaN
        raise ValueError(f"rate must be 0 (unlimited) or more, got {rate!r}")


def _default_burst(rate: float) -> float:
    return max(float(rate), 1.0)
