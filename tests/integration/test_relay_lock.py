"""The relay lock's connection as the server sees it: a node that vanishes without closing it
(power loss, a partition) is noticed within seconds, not after the kernel's two-hour keepalive
(found by a review: takeover then waited hours, where the docs promise seconds)."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from mailerd import config
from mailerd.config import CallbackConfig, Secret
from mailerd.relay import operations
from mailerd.relay.callbacks import CallbackDestination
from mailerd.relay.leader import RELAY_LOCK_KEY, Relay
from tests.callback_receiver import SECRET, Receiver


async def _lock_client(conn: asyncpg.Connection) -> tuple[int, int] | None:
    """The server's port and the client's port of the session holding the relay lock."""
    row = await conn.fetchrow(
        """SELECT inet_server_port() AS server, a.client_port AS client
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((l.classid::bigint << 32) | l.objid::bigint) = $1""",
        RELAY_LOCK_KEY,
    )
    return None if row is None else (row["server"], row["client"])


def _keepalive_s(server_port: int, client_port: int) -> float | None:
    """The server socket's keepalive timer (seconds to its next probe), from /proc/net/tcp; None
    while another timer runs (an answer not acknowledged yet)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, timer = fields[1], fields[2], fields[5]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                kind, when = timer.split(":")
                return int(when, 16) / ticks if kind == "02" else None
    raise AssertionError(f"no socket 127.0.0.1:{server_port} <- :{client_port}")


async def test_the_server_probes_the_lock_connection_within_seconds(
    dsn: str, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    destination = CallbackDestination(
        CallbackConfig(name="locked", url=receiver.url, secret=Secret(SECRET), timeout_s=5.0)
    )
    stop = asyncio.Event()
    relay = Relay(
        config=config.from_mapping({"relay": {"lock_retry_s": 0.05}}),
        dsn=dsn, stop=stop, destinations=lambda: [destination], node="test",
    )  # fmt: skip
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(10):
            while (ports := await _lock_client(conn)) is None:
                await asyncio.sleep(0.02)
            while (keepalive := _keepalive_s(*ports)) is None:
                await asyncio.sleep(0.01)
        assert keepalive <= 5  # the kernel's default: 7200 s
    finally:
        stop.set()
        await task


async def test_status_names_the_node_holding_the_lock(
    dsn: str, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    # it printed " (pid 1234)": the session's application_name, which only a DSN that sets one has
    destination = CallbackDestination(
        CallbackConfig(name="named", url=receiver.url, secret=Secret(SECRET), timeout_s=5.0)
    )
    configured = config.from_mapping(
        {"relay": {"lock_retry_s": 0.05}, "callbacks": {"named": {"url": receiver.url}}},
        env={"MAILERD_CALLBACKS__NAMED__SECRET": SECRET},
    )
    stop = asyncio.Event()
    relay = Relay(config=configured, dsn=dsn, stop=stop, destinations=lambda: [destination], node="node-7")
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(10):
            while (entry := (await operations.status(conn, configured, dsn))[0]).get("owner") is None:
                await asyncio.sleep(0.02)  # the positions are taken just after the lock
    finally:
        stop.set()
        await task
    assert entry["owner"] == "node-7"
    assert entry["relay"].startswith("node-7 (pid "), entry["relay"]
