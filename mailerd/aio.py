"""Small asyncio helpers the stages share (structured: every task lives in a TaskGroup)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


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
