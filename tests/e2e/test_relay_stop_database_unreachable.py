"""SIGTERM to ``mailerd relay run`` while the database does not answer at all (a network
partition: packets dropped, no connection refused). The relay's stop cannot finish (its reads,
its pool's close, wait for the server), so the drain deadline must end the process, as it ends
the daemon's, and soon enough for systemd's ``TimeoutStopSec`` not to have to kill it: the relay
process had no deadline, and its pool no command timeout, and it waited forever."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.callback_receiver import Receiver
from tests.e2e import procs
from tests.e2e.blackhole import Blackhole
from tests.integration.relay_rows import log_rows, make_campaign

pytestmark = pytest.mark.timeout(120)

GRACE_S = 3.0
# What the exit may take past the deadline: the pools' cut-off 3 s, the lock connection's close
# 2 s, the HTTP server's 3 s, with room for a busy machine.
EXIT_AFTER_DEADLINE_S = 15.0


async def test_relay_process_ends_at_the_deadline_when_the_database_does_not_answer(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    hole = Blackhole(dsn)
    await hole.start()
    receiver = Receiver()
    await receiver.start()
    relay = procs.RelayProcess(
        dsn=hole.dsn,
        callback_url=receiver.url,
        secret_file=receiver.secret_file(tmp_path),
        name="node-0",
        workdir=tmp_path,
        shutdown_grace_s=GRACE_S,
    )
    try:
        campaign_id, leads = await make_campaign(conn, 40)
        await log_rows(conn, campaign_id, leads)
        await relay.start()

        async def delivered() -> bool:  # leading: its streams read from the database
            return len(receiver.records) >= len(leads)

        await procs.wait_until(delivered, 30)
        hole.dropping = True
        await relay.assert_stop_ends_at_the_deadline(GRACE_S, EXIT_AFTER_DEADLINE_S)
    finally:
        if relay.running:
            await relay.kill_and_reap()
        await receiver.close()
        await hole.close()
