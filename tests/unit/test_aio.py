"""aio.all_or_first_error: results in order, the first failure as itself, cancellation kept."""

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
