"""The report answers' shared ``as_of``: one read for the requests at the same moment, read again
once older than its maximum age, a failed read failing only its own callers."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from mailerd.http.freshness import Freshness

T1 = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)
T2 = T1 + dt.timedelta(seconds=1)


class Position:
    """A stand-in for the position read: counts its reads, answers when released."""

    def __init__(self, *values: dt.datetime | None) -> None:
        self.values = list(values)
        self.reads = 0
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False

    async def read(self) -> dt.datetime | None:
        self.reads += 1
        await self.release.wait()
        if self.fail:
            raise ConnectionError("the main database is down")
        return self.values[min(self.reads, len(self.values)) - 1]


async def test_requests_at_the_same_moment_share_one_read() -> None:
    position = Position(T1)
    position.release.clear()
    freshness = Freshness(max_age_s=60)
    waiting = [asyncio.ensure_future(freshness.as_of(position.read)) for _ in range(20)]
    async with asyncio.timeout(5):
        while position.reads == 0:
            await asyncio.sleep(0)
    position.release.set()
    assert await asyncio.gather(*waiting) == [T1] * 20
    assert position.reads == 1
    assert await freshness.as_of(position.read) == T1 and position.reads == 1


async def test_a_value_older_than_the_maximum_age_is_read_again() -> None:
    position = Position(None, T1, T2)
    freshness = Freshness(max_age_s=0)
    assert await freshness.as_of(position.read) is None  # before the relay's first delivery
    assert await freshness.as_of(position.read) == T1
    assert await freshness.as_of(position.read) == T2
    assert position.reads == 3


async def test_a_failed_read_fails_its_callers_and_the_next_call_reads_again() -> None:
    position = Position(T1)
    position.fail = True
    freshness = Freshness(max_age_s=60)
    with pytest.raises(ConnectionError):
        await freshness.as_of(position.read)
    position.fail = False
    assert await freshness.as_of(position.read) == T1
    assert position.reads == 2


async def test_a_caller_going_away_does_not_cancel_the_read_of_the_others() -> None:
    position = Position(T1)
    position.release.clear()
    freshness = Freshness(max_age_s=60)
    leaving = asyncio.ensure_future(freshness.as_of(position.read))
    staying = asyncio.ensure_future(freshness.as_of(position.read))
    async with asyncio.timeout(5):
        while position.reads == 0:
            await asyncio.sleep(0)
    leaving.cancel()
    position.release.set()
    assert await staying == T1
    assert leaving.cancelled() and position.reads == 1


async def test_close_cancels_the_read_under_way() -> None:
    position = Position(T1)
    position.release.clear()
    freshness = Freshness(max_age_s=60)
    waiting = asyncio.ensure_future(freshness.as_of(position.read))
    async with asyncio.timeout(5):
        while position.reads == 0:
            await asyncio.sleep(0)
    await freshness.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await freshness.close()  # nothing under way: nothing happens
    position.release.set()
    assert await freshness.as_of(position.read) == T1  # a new read after the cancelled one
