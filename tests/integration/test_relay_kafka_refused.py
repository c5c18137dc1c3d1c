"""A record Kafka will never take refuses only itself: the batch's other records are published
and are not dead letters (the whole relay batch was dead-lettered, acknowledged records too,
and the records sent before the refused one were left unawaited)."""

from __future__ import annotations

import pytest

from mailerd.config import KafkaConfig
from mailerd.relay import records
from mailerd.relay.destination import DeliveryRefused
from mailerd.relay.kafka import KafkaDestination
from tests.integration.relay_rows import NOW
from tests.kafka_broker import Consumer, Tansu, topic_names


def _email(lead: int, address: str) -> records.Record:
    return records.email(
        tx=0,
        campaign_id=1,
        lead_id=lead,
        status=1,
        provider_message_id="m",
        error=None,
        sent_at=NOW,
        account_id=1,
        provider="sink",
        address=address,
    )


async def test_only_the_record_too_large_is_refused(broker: Tansu) -> None:
    topics = topic_names()
    await broker.create_topics(topics.values())
    destination = KafkaDestination(
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
    # more than one batch per partition, and one record over the 1 MiB request limit
    batch = [_email(lead, f"user{lead}@example.com") for lead in range(1, 41)]
    big = _email(41, "x" * 1_100_000 + "@example.com")
    batch.insert(17, big)
    try:
        with pytest.raises(DeliveryRefused) as caught:
            await destination.deliver(batch)
    finally:
        await destination.close()
    assert caught.value.kept == [big]
    assert "larger than max_request_size" in caught.value.reason
    published = {record.id for record in batch if record is not big}
    async with Consumer(broker, [topics["email"]]) as consumer:
        await consumer.until(lambda c: c.ids() >= published, within=30)
    assert big.id not in consumer.ids()
