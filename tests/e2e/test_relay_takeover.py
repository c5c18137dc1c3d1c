"""Two daemons as real processes, the relay running on one of them: SIGKILL whichever runs the
relay, several times, mid-campaign; another takes over within seconds and nothing is missing
from Kafka (every email row and every provider event, valid against its schema)."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from mailerd import campaigns
from mailerd.db import connect as db_connect
from mailerd.relay.leader import RELAY_LOCK_KEY
from tests import relay_schemas
from tests.e2e import procs, scenarios
from tests.kafka_broker import Consumer, Tansu, topic_names

KILLS = 3


class RelayDaemon(procs.Daemon):
    """A node whose configuration also has ``[relay]`` and ``[kafka]``."""

    def __init__(self, *, broker: Tansu, topics: dict[str, str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        servers = f'["{broker.bootstrap}"]'
        extra = f"""[relay]
poll_interval_ms = 100
lock_retry_s = 0.5
retry_base_s = 0.1
retry_max_s = 1.0
[kafka]
bootstrap_servers = {servers}
email_topic = "{topics["email"]}"
event_topic = "{topics["event"]}"
campaign_topic = "{topics["campaign"]}"
erasure_topic = "{topics["erasure"]}"
request_timeout_ms = 5000
"""
        with self.config_path.open("a", encoding="utf-8") as config:
            config.write(extra)


@pytest.fixture
def broker() -> Iterator[Tansu]:
    server = Tansu()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def relay_owner(conn: asyncpg.Connection) -> str | None:
    """The application name (node) of the session holding the relay lock."""
    return await conn.fetchval(
        """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((l.classid::bigint << 32) | l.objid::bigint) = $1""",
        RELAY_LOCK_KEY,
    )


async def add_events(conn: asyncpg.Connection, campaign_id: int, round_no: int) -> None:
    """A webhook flush's worth of provider events for leads already logged (its own transaction)."""
    await conn.execute(
        """INSERT INTO email_events (occurred_at, account_id, campaign_id, lead_id, email, kind, provider,
                                     provider_event_id)
           SELECT now(), 1, campaign_id, lead_id, 'user' || lead_id || '@example.com', 'delivered', 'ses',
                  'evt-' || $2::int || '-' || lead_id
           FROM email_log WHERE campaign_id = $1 ORDER BY lead_id DESC LIMIT 20""",
        campaign_id,
        round_no,
    )


async def test_relay_takeover_after_sigkill_loses_nothing(tmp_path: Path, dsn: str, broker: Tansu) -> None:
    topics = topic_names()
    await broker.create_topics(topics.values())
    conn = await db_connect.connect(dsn)
    sink_ = procs.timed_emulator("ses", record=tmp_path / "record.jsonl", latency_ms=10.0, seed=9)
    port = await sink_.start()
    options = procs.DaemonOptions(shard_size=1000, max_shards_per_node=8)
    nodes = [
        RelayDaemon(
            broker=broker,
            topics=topics,
            dsn=dsn,
            sink_port=port,
            name=f"node-{i}",
            workdir=tmp_path,
            options=options,
        )
        for i in range(2)
    ]
    takeovers: list[float] = []
    try:
        matched = await procs.add_leads(conn, 4500)
        campaign_id = await campaigns.create(
            conn, scenarios.new_campaign(rate_per_s=600.0), scenarios.campaign_config(port)
        )
        await asyncio.gather(*(node.start() for node in nodes))
        for round_no in range(KILLS):
            await procs.wait_until(lambda: _has_owner(conn), 15)
            await add_events(conn, campaign_id, round_no)
            owner = await relay_owner(conn)
            victim = next(node for node in nodes if node.name == owner)
            killed_at = time.monotonic()
            await victim.kill_and_reap()
            await scenarios.backends_gone(conn, victim.name)

            async def taken_over(victim_name: str = victim.name) -> bool:
                return await relay_owner(conn) not in (None, victim_name)

            await procs.wait_until(taken_over, 15)
            takeovers.append(time.monotonic() - killed_at)
            await victim.start()
        await procs.wait_for_status(conn, campaign_id, ("finished",), 60)
        await add_events(conn, campaign_id, KILLS)
        emails = {
            r["lead_id"]
            for r in await conn.fetch("SELECT lead_id FROM email_log WHERE campaign_id = $1", campaign_id)
        }
        assert emails == matched
        events = await conn.fetch("SELECT provider, provider_event_id FROM email_events")
        want = {f"email:{campaign_id}:{lead}" for lead in emails} | {
            f"event:{r['provider']}:{r['provider_event_id']}" for r in events
        }
        async with Consumer(broker, topics.values()) as consumer:
            await consumer.until(lambda c: want <= c.ids(), 30)
    finally:
        for node in nodes:
            node.signal(signal.SIGTERM)
        await asyncio.gather(*(node.shutdown() for node in nodes))
        await sink_.close()
        await conn.close()
    assert len(takeovers) == KILLS
    assert max(takeovers) < 5.0, takeovers
    assert relay_schemas.check(consumer.records()) >= len(want)
    duplicates = len(consumer.messages) - len(consumer.ids())
    print(f"takeover {takeovers}, {len(want)} records, {duplicates} delivered twice", dt.datetime.now(dt.UTC))


async def _has_owner(conn: asyncpg.Connection) -> bool:
    return await relay_owner(conn) is not None
