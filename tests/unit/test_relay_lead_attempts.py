"""Relay.run tries the lead again after any failure: a lead whose TaskGroup child failed must not
leave the loop taking the next ordinary failure for a cancellation (Python 3.11 leaves the task's
``cancelling()`` raised after such a group; the relay then ended for good, with no log line)."""

from __future__ import annotations

import asyncio

from mailerd import config
from mailerd.relay.leader import Relay


async def test_a_lead_whose_task_group_failed_does_not_end_the_relay() -> None:
    stop = asyncio.Event()
    relay = Relay(
        config=config.from_mapping({"relay": {"lock_retry_s": 0.05}}),
        dsn="postgresql://unused", stop=stop, destinations=list, node="test",
    )  # fmt: skip
    attempts = 0

    async def fail() -> None:
        raise RuntimeError("a stream failed")

    async def try_lead() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            async with asyncio.TaskGroup() as group:  # fails once the body is over, as _lead's
                group.create_task(fail())
        elif attempts < 4:
            raise OSError("the database does not answer")  # relay_lock_failed, then again
        else:
            stop.set()

    relay._try_lead = try_lead  # type: ignore[method-assign]
    task = asyncio.create_task(relay.run())
    async with asyncio.timeout(5):
        await asyncio.wait({task})
    assert not task.cancelled() and task.exception() is None
    assert attempts == 4
