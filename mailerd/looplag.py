"""Event-loop lag: how late the loop wakes a coroutine that asked to sleep.

Everything in the daemon shares one event loop, so anything that holds it (a costly template
render, a big JSON document, a blocking call) delays every webhook answer, health check and
send. :func:`monitor` sleeps :data:`INTERVAL_S` over and over and records how much later than
asked it woke up, in ``mailerd_event_loop_lag_seconds`` (a histogram) and
``mailerd_event_loop_lag_max_seconds`` (the largest sample of the last :data:`WINDOW_S`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Final

from mailerd import metrics

INTERVAL_S: Final = 0.1
WINDOW_S: Final = 10.0


async def monitor(
    stop: asyncio.Event,
    *,
    interval_s: float = INTERVAL_S,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Sample the loop's lag every ``interval_s`` until ``stop`` is set (it returns within one
    interval). ``clock`` defaults to the loop's own; tests pass ``clock`` and ``sleep``."""
    now = clock or asyncio.get_running_loop().time
    recent: collections.deque[float] = collections.deque(maxlen=max(1, round(WINDOW_S / interval_s)))
    while not stop.is_set():
        asked = now()
        await sleep(interval_s)
        # A timer may fire up to one clock tick early: that is no lag.
        lag = max(0.0, now() - asked - interval_s)
        recent.append(lag)
        metrics.LOOP_LAG.observe(lag)
        metrics.LOOP_LAG_MAX.set(max(recent))
