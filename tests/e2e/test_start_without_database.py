"""A node started while its database does not answer yet (a server restarting with the host, a
network not up) waits for it instead of exiting: exiting 1 over and over let systemd's start
limit (``StartLimitBurst=10`` in ``StartLimitIntervalSec=300``, ``RestartSec=2``) give up on the
unit for good within a minute, and the node stayed down after the database came back."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from mailerd import campaigns
from mailerd.db import connect as db_connect
from mailerd.db import migrate
from mailerd.emulator.base import Emulator
from tests.e2e import procs, scenarios

pytestmark = pytest.mark.timeout(90)


async def _waiting_daemon(
    server: procs.PrivatePostgres, sink: Emulator, tmp_path: Path
) -> tuple[procs.Daemon, asyncio.Task[None]]:
    """A daemon started with the server stopped, once it said it waits for the database."""
    await asyncio.to_thread(server.stop)
    daemon = procs.Daemon(
        dsn=server.dsn(), sink_port=sink.port, name="node-0", workdir=tmp_path, options=procs.DaemonOptions()
    )
    starting = asyncio.create_task(daemon.start(within=60))

    async def waiting() -> bool:
        if starting.done():
            starting.result()  # the start failed: its error says why
        if not daemon.log_path.exists():
            return False
        return len(daemon.log_events("database_unavailable_at_start")) >= 2

    try:
        await procs.wait_until(waiting, 20, interval=0.05)
        assert daemon.running, daemon.log_tail()
    except BaseException:
        starting.cancel()
        await daemon.shutdown()
        raise
    return daemon, starting


async def test_a_node_started_before_its_database_waits_and_then_sends(
    private_postgres: procs.PrivatePostgres, sink: Emulator, tmp_path: Path
) -> None:
    conn = await db_connect.connect(private_postgres.dsn())
    try:
        await migrate.migrate(conn)
        matched = await procs.add_leads(conn, 300)
        campaign_id = await campaigns.create(
            conn, scenarios.new_campaign(rate_per_s=None), scenarios.campaign_config(sink.port)
        )
    finally:
        await conn.close()
    daemon, starting = await _waiting_daemon(private_postgres, sink, tmp_path)
    try:
        await asyncio.to_thread(private_postgres.start)
        await starting  # /healthz answers: the node started once the database came back
        conn = await db_connect.connect(private_postgres.dsn())
        try:
            await procs.wait_for_status(conn, campaign_id, ("finished",), 30)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(15) == 0, daemon.log_tail()
            await sink.flush()
            assert sink.record is not None
            audit = await procs.audit(conn, campaign_id, matched, sink.record)
            assert audit.losses == 0 and audit.duplicates == 0, audit.summary()
        finally:
            await conn.close()
    finally:
        starting.cancel()
        await daemon.shutdown()


async def test_sigterm_while_waiting_for_the_database_exits_at_once(
    private_postgres: procs.PrivatePostgres, sink: Emulator, tmp_path: Path
) -> None:
    conn = await db_connect.connect(private_postgres.dsn())
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    daemon, starting = await _waiting_daemon(private_postgres, sink, tmp_path)
    try:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait(5) == 0, daemon.log_tail()
    finally:
        starting.cancel()
        await daemon.shutdown()
