"""SIGTERM mid-campaign: the node drains (``/readyz`` 503 while ``/healthz`` and ``/metrics``
answer), exits 0 within ``shutdown_grace_s`` and releases its shards cleanly, so a restart
finishes the campaign with no duplicate and nothing ``unknown``. A second SIGTERM exits at once
and is still safe. SIGHUP (a closed terminal, a reload reflex) drains the same way."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import asyncpg
import pytest

from mailerd import campaigns
from mailerd.emulator.base import Emulator
from tests.e2e import procs, scenarios

pytestmark = pytest.mark.timeout(60)

SLOW_MS = 800.0  # sink latency during the drain, so in-flight batches outlast a few polls


async def _start_campaign(
    conn: asyncpg.Connection, dsn: str, sink: Emulator, tmp_path: Path
) -> tuple[procs.Daemon, int, set[int]]:
    matched = await procs.add_leads(conn, 9000)
    campaign_id = await campaigns.create(
        conn, scenarios.new_campaign(rate_per_s=800.0), scenarios.campaign_config(sink.port)
    )
    daemon = procs.Daemon(
        dsn=dsn,
        sink_port=sink.port,
        name="node-0",
        workdir=tmp_path,
        options=procs.DaemonOptions(shutdown_grace_s=10.0),
    )
    await daemon.start()
    target = len(matched) // 4

    async def under_way() -> bool:
        return sink.counters.accepted >= target

    await procs.wait_until(under_way, 20)
    return daemon, campaign_id, matched


async def _slow_in_flight(sink: Emulator) -> None:
    """Make the next calls slow and wait until one is in flight."""
    sink.latency_ms = SLOW_MS
    slowed_at = time.monotonic()

    async def slow_call_arrived() -> bool:
        return sink.arrivals_since(slowed_at) > 0

    await procs.wait_until(slow_call_arrived, 10, interval=0.005)


async def _finish_after_restart(
    conn: asyncpg.Connection, daemon: procs.Daemon, sink: Emulator, campaign_id: int, matched: set[int]
) -> procs.Audit:
    sink.latency_ms = 5.0
    await daemon.start()
    await procs.wait_for_status(conn, campaign_id, ("finished",), 40)
    await daemon.shutdown()
    await sink.flush()
    assert sink.record is not None
    return await procs.audit(conn, campaign_id, matched, sink.record)


async def test_sigterm_drains_cleanly_and_a_restart_finishes(
    conn: asyncpg.Connection, dsn: str, sink: Emulator, tmp_path: Path
) -> None:
    daemon, campaign_id, matched = await _start_campaign(conn, dsn, sink, tmp_path)
    await _slow_in_flight(sink)
    term_at = time.monotonic()
    daemon.signal(signal.SIGTERM)

    async def draining() -> bool:
        return await daemon.status("/readyz") == 503

    await procs.wait_until(draining, 5, interval=0.01)
    assert await daemon.status("/healthz") == 200
    assert await daemon.status("/metrics") == 200
    code = await daemon.wait(daemon.options.shutdown_grace_s + 5)
    assert code == 0, daemon.log_tail()
    assert time.monotonic() - term_at < daemon.options.shutdown_grace_s
    # A drain releases its shards cleanly: nothing is reserved-but-uncertain.
    rows = await conn.fetch(
        "SELECT released_clean, owner FROM campaign_shards WHERE campaign_id = $1 AND state = 'pending'",
        campaign_id,
    )
    assert all(r["released_clean"] and r["owner"] is None for r in rows), [dict(r) for r in rows]
    assert await procs.claims_held(conn, campaign_id) == 0

    audit = await _finish_after_restart(conn, daemon, sink, campaign_id, matched)
    figures = audit.summary()
    assert audit.duplicates == 0, figures
    assert audit.unknown == 0, figures
    assert audit.multi_rows == 0, figures
    assert audit.missing_rows == 0, figures
    assert audit.losses == 0, figures


async def test_second_sigterm_exits_at_once_and_stays_safe(
    conn: asyncpg.Connection, dsn: str, sink: Emulator, tmp_path: Path
) -> None:
    daemon, campaign_id, matched = await _start_campaign(conn, dsn, sink, tmp_path)
    await _slow_in_flight(sink)
    daemon.signal(signal.SIGTERM)

    async def draining() -> bool:
        return await daemon.status("/readyz") == 503

    await procs.wait_until(draining, 5, interval=0.01)
    second_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = await daemon.wait(5)
    assert time.monotonic() - second_at < 2.0, daemon.log_tail()
    assert code != 0 or "daemon_stopped" in daemon.log_tail()

    audit = await _finish_after_restart(conn, daemon, sink, campaign_id, matched)
    figures = audit.summary()
    assert audit.duplicates == 0, figures
    assert audit.multi_rows == 0, figures
    assert audit.missing_rows == 0, figures
    assert audit.emailed_not_accounted == 0, figures
    assert audit.logged_sent_not_emailed == 0, figures


async def test_sighup_drains_like_sigterm(
    conn: asyncpg.Connection, dsn: str, sink: Emulator, tmp_path: Path
) -> None:
    """mailerd has no reload: SIGHUP's default action killed the process mid-campaign, with no
    drain (its in-flight leads logged ``unknown``, never re-sent)."""
    daemon, campaign_id, matched = await _start_campaign(conn, dsn, sink, tmp_path)
    await _slow_in_flight(sink)
    daemon.signal(signal.SIGHUP)
    code = await daemon.wait(daemon.options.shutdown_grace_s + 5)
    assert code == 0, daemon.log_tail()
    assert daemon.log_events("daemon_stopped"), daemon.log_tail()
    rows = await conn.fetch(
        "SELECT released_clean, owner FROM campaign_shards WHERE campaign_id = $1 AND state = 'pending'",
        campaign_id,
    )
    assert all(r["released_clean"] and r["owner"] is None for r in rows), [dict(r) for r in rows]
    assert await procs.claims_held(conn, campaign_id) == 0

    audit = await _finish_after_restart(conn, daemon, sink, campaign_id, matched)
    figures = audit.summary()
    assert audit.duplicates == 0, figures
    assert audit.unknown == 0, figures
    assert audit.losses == 0, figures
