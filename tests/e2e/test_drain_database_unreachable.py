"""SIGTERM while the database does not answer at all (a network partition: packets dropped, no
connection refused): the drain cannot finish, so the drain deadline must end the process, and
soon enough for systemd's ``TimeoutStopSec`` not to have to kill it."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from mailerd import campaigns
from mailerd.emulator.base import Emulator
from tests.e2e import procs, scenarios
from tests.e2e.blackhole import Blackhole

pytestmark = pytest.mark.timeout(120)

GRACE_S = 3.0
# What the exit may take past the deadline: the cancelled tasks' bounded closes (the pools' cut-off
# 3 s, a shard's claim connection 5 s, the HTTP server 3 s), with room for a busy machine. The
# writer cancelled in its flush's query waited, inside asyncpg, up to the command timeout (15 s)
# for the cancel request, and retried the TimeoutError it got in place of the cancellation.
EXIT_AFTER_DEADLINE_S = 15.0


async def test_drain_ends_at_the_deadline_when_the_database_does_not_answer(
    conn: asyncpg.Connection, dsn: str, sink: Emulator, tmp_path: Path
) -> None:
    hole = Blackhole(dsn)
    await hole.start()
    daemon = procs.Daemon(
        dsn=hole.dsn,
        sink_port=sink.port,
        name="node-0",
        workdir=tmp_path,
        options=procs.DaemonOptions(shutdown_grace_s=GRACE_S),
    )
    try:
        await procs.add_leads(conn, 9000)
        await campaigns.create(
            conn, scenarios.new_campaign(rate_per_s=600.0), scenarios.campaign_config(sink.port)
        )
        await daemon.start()

        async def under_way() -> bool:
            return sink.counters.accepted >= 300

        await procs.wait_until(under_way, 20)
        hole.dropping = True
        await daemon.assert_stop_ends_at_the_deadline(GRACE_S, EXIT_AFTER_DEADLINE_S)
    finally:
        if daemon.running:
            await daemon.kill_and_reap()
        await hole.close()
