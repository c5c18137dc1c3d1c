"""The soak, short: two nodes with the relay (Kafka and the reports database), webhooks flowing
back, two campaigns of 15,000 leads, the broker frozen while the first eighth is sent, four
SIGKILLs and a pause/resume at set points of the progress; then every check of bench/soak.py
(tests/e2e/soak_audit.py): no lead emailed twice, one row each, every ``unknown`` row attributed
to the SIGKILL that left it and within its bound, every row and event on the stream, the
reports database equal to the log. No Postgres restart here: the databases are the shared
server's (bench/soak.py restarts a private one)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.e2e import procs, soak_audit
from tests.e2e.soak_cluster import Cluster, SoakSetup, frozen, kill_round, logged_total, pause_round

pytestmark = pytest.mark.timeout(300)

SHORT = SoakSetup(
    nodes=2,
    leads=15_000,
    options=procs.DaemonOptions(
        concurrency=8,
        batch_size=50,
        shard_size=5_000,
        window_size=1_000,
        max_shards_per_node=4,
        poll_interval_s=0.2,
        flush_interval_ms=100,
    ),
    bounce_rate=0.02,
    complaint_rate=0.005,
    seed=5,
)
KILLS = 4


async def test_a_short_soak_keeps_every_guarantee(dsn: str, reports_dsn: str, tmp_path: Path) -> None:
    rng = random.Random(SHORT.seed)
    cluster = Cluster(SHORT, tmp_path, dsn, reports_dsn, rng)
    try:
        await cluster.start()
        assert cluster.broker is not None
        await cluster.top_up()
        total = SHORT.concurrent_campaigns * SHORT.leads

        async def logged(count: int) -> None:
            async def reached() -> bool:
                return await logged_total(cluster.conn) >= count

            await procs.wait_until(reached, 120, interval=0.05)

        # Sending does not wait for a hung broker.
        async with frozen(cluster.broker, cluster.faults):
            await logged(total // 8)
        for kill in range(KILLS):
            await logged((kill + 2) * total // (KILLS + 3))
            await kill_round(cluster.conn, cluster.daemons, cluster.restarting, rng, cluster.faults)
            if kill == 1:
                await pause_round(cluster.conn, rng, cluster.faults, within=60)
        rows, events = await cluster.settle(within=180)
        figures, checks = await soak_audit.audit_cluster(cluster, rows, events, within=120)
    finally:
        await cluster.close()
    failed = [name for name, ok in checks.items() if not ok]
    assert not failed, (failed, figures)
    assert len(cluster.faults.kills) == KILLS, figures
    assert cluster.faults.pauses == 1, figures
    assert figures["emails_logged"] == total, figures
    assert figures["reports_emails"] == total, figures
