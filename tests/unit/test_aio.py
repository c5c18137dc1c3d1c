"""aio: all_or_first_error (results in order, the first failure as itself, cancellation kept) and
raise_if_cancelling (a retry loop does not swallow a cancellation)."""

from __future__ import annotations

import asyncio

import pytest

from mailerd import aio


async def test_results_come_in_the_order_of_the_coroutines() -> None:
    async def value(n: int, started: asyncio.Event) -> int:
        if n == 0:
            await started.wait()  # the first finishes last
        else:
            started.set()
        return n

    started = asyncio.Event()
    assert await aio.all_or_first_error(value(0, started), value(1, started)) == [0, 1]


async def test_nothing_to_run_is_nothing_returned() -> None:
    assert await aio.all_or_first_error() == []


async def test_the_first_failure_is_raised_as_itself_and_cancels_the_others() -> None:
    cancelled = asyncio.Event()

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise OSError("failed while cancelled") from None  # not the failure to report

    async def fails() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await aio.all_or_first_error(waits(), fails())
    assert cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancelled_caller_stays_cancelled_even_when_a_coroutine_fails_on_the_way_out() -> None:
    entered = asyncio.Event()

    async def fails_when_cancelled() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise OSError("connection lost while closing") from None

    caller = asyncio.create_task(aio.all_or_first_error(fails_when_cancelled()))
    await entered.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_a_cancellation_turned_into_another_error_is_raised_again_by_a_retry_loop() -> None:
    """asyncpg, cancelled in a query on a server that does not answer, raises its connection
    release's TimeoutError instead: the loop that retries TimeoutError must still end."""
    attempts = 0
    started = asyncio.Event()

    async def cancelled_into_timeout() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise TimeoutError from None  # what the library's cleanup raised in its place

    async def retry_forever() -> None:
        nonlocal attempts
        while True:
            attempts += 1
            try:
                await cancelled_into_timeout()
            except TimeoutError:
                aio.raise_if_cancelling()
                await asyncio.sleep(0)

    task = asyncio.create_task(retry_forever())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert attempts == 1


async def test_a_timeout_inside_the_loop_is_not_taken_for_a_cancellation() -> None:
    """asyncio.timeout cancels and un-cancels: its TimeoutError leaves the task retrying."""
    attempts = 0
    while attempts < 3:
        try:
            async with asyncio.timeout(0.001):
                await asyncio.Event().wait()
        except TimeoutError:
            aio.raise_if_cancelling()
            attempts += 1
    assert attempts == 3
