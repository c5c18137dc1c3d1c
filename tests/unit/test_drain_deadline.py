"""The drain deadline ends the drain even when its cancellation is lost on the way."""

from __future__ import annotations

import asyncio

from mailerd import app, http, systemd
from mailerd.config import from_mapping


async def test_a_cancellation_lost_on_the_way_is_repeated_until_it_takes() -> None:
    """asyncpg's close of a connection to a server that does not answer raised TimeoutError in
    place of the cancellation under way, a retry loop caught it as a database error, and the
    process never exited: the deadline had cancelled once and was done."""
    stop = asyncio.Event()
    swallowed = asyncio.Event()

    async def drain() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # like `except db.DB_ERRORS` after the close's TimeoutError
        await asyncio.sleep(3600)  # the drain goes on waiting for a database that is gone

    main = asyncio.create_task(drain())
    config = from_mapping({"node": {"shutdown_grace_s": 0.05}})
    deadline = asyncio.create_task(
        app._drain_deadline(stop, http.Health(), config, main, systemd.Notifier(), pools=list)
    )
    try:
        stop.set()
        async with asyncio.timeout(5):
            await swallowed.wait()
            await asyncio.wait({main})
        assert main.cancelled()
    finally:
        main.cancel()
        deadline.cancel()
        await asyncio.gather(main, deadline, return_exceptions=True)
