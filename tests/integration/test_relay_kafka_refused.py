"""A record Kafka will never take refuses only itself: the batch's other records are published
and are not dead letters (the whole relay batch was dead-lettered, acknowledged records too,
and the records sent before the refused one were left unawaited)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from mailerd.config import KafkaConfig
from mailerd.db import relay as relay_db
from mailerd.relay import operations, records
from mailerd.relay.destination import DeliveryRefused
from mailerd.relay.kafka import KafkaDestination
from tests.integration.relay_rows import email_record
from tests.kafka_broker import Consumer, Tansu, topic_names


def _destination(broker: Tansu, topics: dict[str, str]) -> KafkaDestination:
    return KafkaDestination(
        KafkaConfig(
            bootstrap_servers=(broker.bootstrap,),
            email_topic=topics["email"],
            event_topic=topics["event"],
            campaign_topic=topics["campaign"],
            erasure_topic=topics["erasure"],
            linger_ms=2,
            max_batch_bytes=2048,
            request_timeout_ms=5000,
        )
    )


def _batch() -> tuple[list[records.Record], records.Record]:
    """More than one batch per partition, and one record over the 1 MiB request limit."""
    batch = [email_record(lead) for lead in range(1, 41)]
    too_large = email_record(41, "x" * 1_100_000 + "@example.com")
    batch.insert(17, too_large)
    return batch, too_large


async def test_only_the_record_too_large_is_refused(broker: Tansu) -> None:
    topics = topic_names()
    await broker.create_topics(topics.values())
    destination = _destination(broker, topics)
    batch, too_large = _batch()
    try:
        with pytest.raises(DeliveryRefused) as caught:
            await destination.deliver(batch)
    finally:
        await destination.close()
    assert caught.value.kept == [too_large]
    assert "larger than max_request_size" in caught.value.reason
    published = {record.id for record in batch if record is not too_large}
    async with Consumer(broker, [topics["email"]]) as consumer:
        await consumer.until(lambda c: c.ids() >= published, within=30)
    assert too_large.id not in consumer.ids()


async def test_a_replay_leaves_only_the_record_too_large(conn: asyncpg.Connection, broker: Tansu) -> None:
    # the replay took a refusal as the whole batch's: none was marked replayed, each replay
    # re-sent them all
    topics = topic_names()
    await broker.create_topics(topics.values())
    batch, _ = _batch()
    await relay_db.add_dead_letters(conn, "kafka", batch, "refused")
    destination = _destination(broker, topics)
    try:
        first = await operations.replay_dead_letters(conn, destination, batch=100)
    finally:
        await destination.close()
    assert (first.delivered, first.refused) == (40, 1)
    pending: Any = await conn.fetchval("SELECT count(*) FROM relay_dead_letters WHERE replayed_at IS NULL")
    assert pending == 1
