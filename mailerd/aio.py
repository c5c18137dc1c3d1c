"""Small asyncio helpers the stages share (structured: every task lives in a TaskGroup)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def first_completed(*coroutines: Coroutine[Any, Any, Any]) -> list[asyncio.Task[Any]]:
    """Run the coroutines until the first of them finishes, cancel the others, and return the
    tasks in order (so a caller can ask which ones completed rather than being cancelled)."""
    tasks: list[asyncio.Task[Any]] = []

    def cancel_others(finished: asyncio.Task[Any]) -> None:
        for task in tasks:
            if task is not finished:
                task.cancel()

    async with asyncio.TaskGroup() as group:
        for coroutine in coroutines:
            task = group.create_task(coroutine)
            task.add_done_callback(cancel_others)
            tasks.append(task)
    return tasks


async def all_or_first_error(*coroutines: Coroutine[Any, Any, T]) -> list[T]:
    """Run the coroutines at once and return their results in order; the first failure cancels
    the others and is raised as itself (not an ExceptionGroup), so callers keep catching the
    errors they know. A cancellation of the caller stays a cancellation. Every task is finished
    (awaited) before this returns or raises.

    Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails leaves its parent's
    ``cancelling()`` count raised, so neither could the caller's own cancellation be told from a
    child's failure, nor would a later ``asyncio.timeout`` in that task behave."""
    if not coroutines:
        return []
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op on those already done
        await asyncio.gather(*tasks, return_exceptions=True)
    # The failure that stopped the wait, not one a sibling raised while being cancelled.
    for task in tasks:
        error = task.exception() if task in done and not task.cancelled() else None
        if error is not None:
            raise error from None
    return [task.result() for task in tasks]


def completed(task: asyncio.Task[Any]) -> bool:
    """Finished by itself, not by cancellation."""
    return task.done() and not task.cancelled()


async def sleep_unless(delay: float, event: asyncio.Event) -> None:
    """Sleep ``delay`` seconds, or less if ``event`` is set meanwhile."""
    if delay <= 0 or event.is_set():
        return
    try:
        async with asyncio.timeout(delay):
            await event.wait()
    except TimeoutError:
        pass


def raise_if_cancelling() -> None:
    """Raise the current task's pending cancellation, for a retry loop's ``except`` to call first.

    A cancellation can reach such a loop as another error: asyncpg, cancelled in a query on a
    server that does not answer, releases the connection on the way out and raises that
    release's ``TimeoutError`` or ``OSError`` in place of the ``CancelledError``. A loop that
    retries those errors then retried forever, and the drain deadline never ended the process."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
