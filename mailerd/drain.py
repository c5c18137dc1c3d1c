"""The deadline of a stop, shared by the daemon (``mailerd run``) and the relay process
(``mailerd relay run``): both must exit within ``[node] shutdown_grace_s`` and a few seconds
more, even when the database does not answer at all, or systemd's ``TimeoutStopSec`` kills them.

On stop, :func:`deadline` says ``STOPPING=1`` to systemd; past the grace period it cancels the
main task (again every second until the cancellation takes) and :data:`DEADLINE_CUT_OFF_S`
later drops the pools' connections (:func:`cut_off`). Each pool then closes within
:data:`POOL_CLOSE_S` (:func:`close_pool`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from mailerd import systemd

log = structlog.get_logger(__name__)

DEADLINE_CANCEL_AGAIN_S = 1.0
POOL_CLOSE_S = 3.0
# Past the drain deadline, what still waits on the database after this long is cut off.
DEADLINE_CUT_OFF_S = 3.0
# What the exit may take past the deadline, at most: the cut-off, a shard's claim connection
# (5 s to close), the HTTP server (3 s), the pools (3 s). Told to systemd with STOPPING=1.
EXIT_AFTER_DEADLINE_S = 15.0

Pools = Callable[[], list[asyncpg.Pool]]


async def close_pool(pool: asyncpg.Pool, what: str) -> None:
    """Close gracefully, but within :data:`POOL_CLOSE_S`: closing a connection waits for the
    server to hang up, up to the command timeout each when it does not answer at all, which
    kept the process past systemd's ``TimeoutStopSec``. Past it the connections are dropped."""
    try:
        async with asyncio.timeout(POOL_CLOSE_S):
            await pool.close()
    except TimeoutError:
        pool.terminate()  # asyncpg did already, on the cancellation: a no-op, said for the reader
        log.warning("pool_close_timed_out", pool=what, timeout_s=POOL_CLOSE_S)


def cut_off(pools: list[asyncpg.Pool]) -> None:
    """Drop every connection of ``pools`` at once (the drain deadline passed long enough ago)."""
    open_pools = [pool for pool in pools if not pool.is_closing()]
    if open_pools:
        log.warning("database_connections_cut_off", pools=len(open_pools), after_s=DEADLINE_CUT_OFF_S)
    for pool in open_pools:
        pool.terminate()


async def deadline(
    stop: asyncio.Event,
    grace_s: float,
    main: asyncio.Task[object] | None,
    notifier: systemd.Notifier,
    pools: Pools,
    *,
    status: str = "draining",
) -> None:
    """On stop: say ``STOPPING=1`` (with ``status``); past ``grace_s``, cancel ``main``, and
    :data:`DEADLINE_CUT_OFF_S` later drop the connections of ``pools()`` (asked then: a relay
    opens its pool when it starts leading). Run it as a task beside ``main``'s work, and cancel
    it once the stop is over."""
    await stop.wait()
    notifier.stopping(f"{status}, up to {grace_s:g} s", takes_up_to_s=grace_s + EXIT_AFTER_DEADLINE_S)
    log.info("drain_started", grace_s=grace_s)
    await asyncio.sleep(grace_s)
    log.error("drain_deadline_passed", grace_s=grace_s)
    # A callback, not this task: the TaskGroup cancels this task once the cancellation takes.
    # A task cancelled in a query on a server that does not answer waits, shielded inside
    # asyncpg, for its cancel request up to the command timeout (the writer's last flush took
    # 15 s more); dropping the connections ends those waits.
    asyncio.get_running_loop().call_later(DEADLINE_CUT_OFF_S, lambda: cut_off(pools()))
    # Again until it takes: a cancellation can be lost on its way (an error raised by the cleanup
    # it triggered, then caught by a retry loop), and the drain it was to end waited forever.
    # Once it reaches this TaskGroup, the group cancels this task too.
    while main is not None and not main.done():
        main.cancel()
        await asyncio.sleep(DEADLINE_CANCEL_AGAIN_S)
