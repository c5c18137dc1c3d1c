"""The event-loop lag monitor, on a clock the test controls."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from mailerd import looplag


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


class FakeLoop:
    """A clock and a sleep: each sleep lasts its interval plus the next scripted lag."""

    def __init__(self, lags: list[float], stop: asyncio.Event) -> None:
        self.now = 1000.0
        self.lags = lags
        self.stop = stop
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds + self.lags.pop(0)
        if not self.lags:
            self.stop.set()
        await asyncio.sleep(0)


async def test_each_wake_up_is_recorded_as_lag() -> None:
    stop = asyncio.Event()
    fake = FakeLoop([0.0, 0.004, 0.3, -0.0005, 0.02], stop)
    count = sample("mailerd_event_loop_lag_seconds_count")
    total = sample("mailerd_event_loop_lag_seconds_sum")
    under_100ms = sample("mailerd_event_loop_lag_seconds_bucket", le="0.1")
    async with asyncio.timeout(10):
        await looplag.monitor(stop, interval_s=0.1, clock=fake.clock, sleep=fake.sleep)
    assert fake.slept == [0.1] * 5
    assert sample("mailerd_event_loop_lag_seconds_count") - count == 5
    # An early wake-up (timer resolution) counts as no lag.
    assert sample("mailerd_event_loop_lag_seconds_sum") - total == pytest.approx(0.324)
    assert sample("mailerd_event_loop_lag_seconds_bucket", le="0.1") - under_100ms == 4
    assert sample("mailerd_event_loop_lag_max_seconds") == pytest.approx(0.3)


async def test_the_max_forgets_what_is_older_than_the_window() -> None:
    stop = asyncio.Event()
    lags = [0.5] + [0.001] * int(looplag.WINDOW_S / 0.1)
    fake = FakeLoop(lags, stop)
    async with asyncio.timeout(10):
        await looplag.monitor(stop, interval_s=0.1, clock=fake.clock, sleep=fake.sleep)
    assert sample("mailerd_event_loop_lag_max_seconds") == pytest.approx(0.001)


async def test_a_set_stop_returns_at_once_and_on_the_real_loop_it_samples_until_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    count = sample("mailerd_event_loop_lag_seconds_count")
    async with asyncio.timeout(10):
        await looplag.monitor(stop)
    assert sample("mailerd_event_loop_lag_seconds_count") == count

    # On the real loop: samples come in while it runs, and it stops within an interval.
    stop = asyncio.Event()
    task = asyncio.create_task(looplag.monitor(stop, interval_s=0.01))
    async with asyncio.timeout(10):
        while sample("mailerd_event_loop_lag_seconds_count") < count + 3:
            await asyncio.sleep(0.01)
    stop.set()
    async with asyncio.timeout(10):
        await task
