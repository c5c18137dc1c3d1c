"""The relay inside a running daemon, against a real broker (tansu) and a real callback endpoint:
every email and provider event arrives at least once, valid against its schema, whatever the
destinations do meanwhile; sending never waits for them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg

from mailerd import campaigns
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks
from tests import relay_schemas
from tests.callback_receiver import Receiver
from tests.integration.helpers import add_leads, daemon_config, new_campaign, running_daemon, wait_for_status
from tests.kafka_broker import Consumer, Tansu, kafka_section, topic_names

FAST_RELAY = {
    "poll_interval_ms": 50,
    "batch_records": 400,
    "lock_retry_s": 0.2,
    "retry_base_s": 0.05,
    "retry_max_s": 1.0,
}


async def expected_ids(conn: asyncpg.Connection, campaign_id: int) -> set[str]:
    """What the outbox holds for the campaign: the ids every destination must end up with."""
    emails = await conn.fetch("SELECT lead_id FROM email_log WHERE campaign_id = $1", campaign_id)
    events = await conn.fetch("SELECT provider, provider_event_id FROM email_events")
    changes = await conn.fetch("SELECT generation FROM campaign_changes WHERE campaign_id = $1", campaign_id)
    return (
        {f"email:{campaign_id}:{r['lead_id']}" for r in emails}
        | {f"event:{r['provider']}:{r['provider_event_id']}" for r in events}
        | {f"campaign:{campaign_id}:{r['generation']}" for r in changes}
    )


async def wait_for(condition: Any, within: float) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.05)


async def test_every_email_and_event_reaches_kafka_and_the_callback(
    conn: asyncpg.Connection, dsn: str, broker: Tansu, receiver: Receiver, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 600)
    topics = topic_names()
    await broker.create_topics(topics.values())
    poster = emulator_webhooks.WebhookPoster(
        "http://127.0.0.1:1", "ses", bounce_rate=0.1, complaint_rate=0.05, seed=4
    )
    emulator = sink.Sink(seed=4, webhooks=poster)
    port = await emulator.start()
    config = daemon_config(
        port,
        relay=FAST_RELAY,
        kafka=kafka_section(broker, topics),
        callbacks={
            "app": {"url": receiver.url, "max_records": 50, "secret_file": receiver.secret_file(tmp_path)}
        },
        webhooks={"ses": poster.signer.daemon_settings(tmp_path)},
    )
    try:
        async with running_daemon(config, dsn) as daemon, Consumer(broker, topics.values()) as consumer:
            poster.url = f"http://127.0.0.1:{daemon.port}/webhooks/ses"
            campaign_id = await campaigns.create(conn, new_campaign(), config)
            await wait_for_status(conn, campaign_id)
            await wait_for(lambda: poster.pending == 0 and poster.counters.posted > 0, 30)
            want = await expected_ids(conn, campaign_id)
            assert any(i.startswith("event:") for i in want) and any(i.startswith("campaign:") for i in want)
            await consumer.until(lambda c: want <= c.ids(), 30)
            await wait_for(lambda: want <= receiver.ids(), 30)
    finally:
        await emulator.close()
    assert relay_schemas.check(consumer.records()) >= len(want)
    assert relay_schemas.check(receiver.records) >= len(want)
    assert receiver.bad_signatures == 0
    partitions: dict[bytes, set[tuple[str, int]]] = {}
    for topic, partition, key, record in consumer.messages:
        assert topic == topics[record["kind"]]
        if record["kind"] == "campaign":
            assert key == str(record["campaign_id"]).encode()
            continue
        assert key == f"{record['account_id']}:{record['lead_id']}".encode()
        partitions.setdefault(key, set()).add((topic, partition))
    assert all(len({p for t, p in places if t == topics["email"]}) == 1 for places in partitions.values())
    rows = await conn.fetch("SELECT destination, published FROM relay_positions ORDER BY destination")
    assert [r["destination"] for r in rows] == ["callbacks.app", "kafka"]
    assert all(r["published"] >= len(want) for r in rows)


async def test_a_failing_callback_endpoint_gets_everything_once_it_recovers(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, tmp_path: Path
) -> None:
    """500s, then 429 with Retry-After, then a 400 for one request (dead-lettered, replayed)."""
    await add_leads(conn, 1, 900)
    refused: set[str] = set()
    requests = 0

    def answer(records: list[dict[str, Any]]) -> int:
        # By request count, not by time: on a busy machine the first request may come late.
        nonlocal requests
        requests += 1
        if requests <= 4:
            return 500
        if requests <= 6:
            return 429
        if not refused:
            refused.update(r["id"] for r in records)
            return 400
        return 200

    receiver.answer = answer
    receiver.retry_after = "0.2"
    emulator = sink.Sink(seed=2)
    port = await emulator.start()
    endpoint = {
        "url": receiver.url,
        "max_records": 40,
        "kinds": ["email"],
        "secret_file": receiver.secret_file(tmp_path),
    }
    config = daemon_config(port, relay=FAST_RELAY, callbacks={"app": endpoint})
    try:
        async with running_daemon(config, dsn):
            campaign_id = await campaigns.create(conn, new_campaign(), config)
            await wait_for_status(conn, campaign_id)
            want = {i for i in await expected_ids(conn, campaign_id) if i.startswith("email:")}
            await wait_for(lambda: want - refused <= receiver.ids(), 30)
    finally:
        await emulator.close()
    assert 500 in receiver.statuses and 429 in receiver.statuses and 400 in receiver.statuses
    letters = await conn.fetch("SELECT record_id FROM relay_dead_letters WHERE destination = 'callbacks.app'")
    assert {r["record_id"] for r in letters} == refused
    status = await conn.fetchrow("SELECT last_error FROM relay_positions WHERE destination = 'callbacks.app'")
    assert status is not None and status["last_error"] is None  # cleared by the next commit


async def test_a_frozen_broker_does_not_slow_sending_and_loses_nothing(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """The broker hangs (SIGSTOP) for the whole middle of a rate-limited campaign: the campaign
    keeps its rate, and every record reaches Kafka once the broker is back."""
    frozen = Tansu()
    frozen.start()
    try:
        await add_leads(conn, 1, 3000)
        topics = topic_names()
        await frozen.create_topics(topics.values())
        emulator = sink.Sink(seed=3)
        port = await emulator.start()
        config = daemon_config(
            port, relay=FAST_RELAY, kafka=kafka_section(frozen, topics, request_timeout_ms=2000)
        )
        try:
            async with running_daemon(config, dsn):
                campaign_id = await campaigns.create(conn, new_campaign(rate_per_s=250.0), config)
                started = time.monotonic()
                await wait_for(lambda: emulator.counters.accepted >= 100, 20)
                frozen.freeze()
                accepted_before_freeze = emulator.counters.accepted
                await wait_for_status(conn, campaign_id, timeout=30)
                elapsed = time.monotonic() - started
                sent_while_frozen = emulator.counters.accepted - accepted_before_freeze
                frozen.thaw()
                want = await expected_ids(conn, campaign_id)
                async with Consumer(frozen, topics.values()) as consumer:
                    await consumer.until(lambda c: want <= c.ids(), 30)
        finally:
            frozen.thaw()
            await emulator.close()
    finally:
        frozen.stop()
    # 1000 leads at 250/s: 4 s of sending, most of it with the broker frozen (counted in emails,
    # not seconds: on a busy machine the freeze may come a little later than the 100th email).
    assert sent_while_frozen >= 500, sent_while_frozen
    assert elapsed < 4.0 * 1.5, elapsed
    assert relay_schemas.check(consumer.records()) >= len(want)
