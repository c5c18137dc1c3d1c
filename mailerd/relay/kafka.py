"""Kafka: records to one topic per kind, keyed so that one lead's records share a partition.

An aiokafka producer (``[kafka]``: acks, compression, linger, TLS, SASL). Records are packed
into one batch per partition (``create_batch``/``send_batch``: the records are already JSON,
so the per-message path of ``send`` is skipped) and :meth:`KafkaDestination.deliver` returns
when the broker acknowledged every batch (``acks = "all"`` by default). The partition is
Kafka's own default for the key (murmur2, as the Java client computes it), so other producers
keyed the same way land in the same partition.

Idempotence is off by default: delivery is at least once and records carry ids for
de-duplication (a broker without idempotent producers, such as tansu's memory storage, then
works too).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiokafka
import structlog
from aiokafka import errors as kafka_errors

from mailerd.config import KafkaConfig
from mailerd.relay.destination import DeliveryRefused, DestinationUnavailable
from mailerd.relay.partitioning import partition as partition_of
from mailerd.relay.records import Record

log = structlog.get_logger(__name__)

# Record-level failures: the same records would fail the same way on any retry.
_REFUSED = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.RecordTooLargeError,
    kafka_errors.InvalidTopicError,
)
# A record batch's header and one record's framing, at most (aiokafka's estimate, rounded up).
_RECORD_OVERHEAD = 128


def producer_options(config: KafkaConfig) -> dict[str, Any]:
    """aiokafka producer settings from ``[kafka]`` (the password stays a Secret until here)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(config.bootstrap_servers),
        "client_id": config.client_id,
        "acks": config.acks if config.acks == "all" else int(config.acks),
        "compression_type": None if config.compression == "none" else config.compression,
        "linger_ms": config.linger_ms,
        "max_batch_size": config.max_batch_bytes,
        "max_request_size": max(config.max_batch_bytes, 1_048_576),
        "request_timeout_ms": config.request_timeout_ms,
        "enable_idempotence": config.enable_idempotence,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        # "~/..." as the configuration's check of these paths reads them (it expands "~": the
        # producer did not, and the relay failed to start, retried forever)
        context = ssl.create_default_context(cafile=_path(config.ssl_cafile))
        if config.ssl_certfile:
            context.load_cert_chain(_path(config.ssl_certfile) or "", _path(config.ssl_keyfile))
        options["ssl_context"] = context
    if config.sasl_mechanism:
        assert config.sasl_password is not None, "validated by the configuration"
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = config.sasl_password.reveal()
    return options


def _path(path: str) -> str | None:
    return str(Path(path).expanduser()) if path else None


class KafkaDestination:
    """``[kafka]``: one producer, started on first use and again after it failed."""

    name = "kafka"

    def __init__(self, config: KafkaConfig) -> None:
        self.kinds = frozenset(config.kinds)
        self._config = config
        self._topics = {kind: config.topic(kind) for kind in self.kinds}
        self._producer: aiokafka.AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._max_request_bytes = producer_options(config)["max_request_size"]

    async def _started(self) -> aiokafka.AIOKafkaProducer:
        if self._producer is None:
            producer = aiokafka.AIOKafkaProducer(**producer_options(self._config))
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
            self._partitions = {}
        return self._producer

    async def _partitions_of(self, producer: aiokafka.AIOKafkaProducer, topic: str) -> list[int]:
        found = self._partitions.get(topic)
        if found is None:
            found = sorted(await producer.partitions_for(topic))
            if not found:
                raise DestinationUnavailable(f"topic {topic} has no partitions")
            self._partitions[topic] = found
        return found

    async def deliver(self, records: Sequence[Record]) -> None:
        """Send every record; return once the broker acknowledged all of them.

        A batch the broker refuses for good (too large, corrupt) refuses only its own records:
        the others were acknowledged, and only the refused go to the dead letters. Any other
        failure of any batch makes the whole call unavailable (resent later: at least once).
        """
        try:
            producer = await self._started()
            sent, refused = await self._send(producer, records)
            outcomes = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
        except (DestinationUnavailable, DeliveryRefused):
            raise
        except _REFUSED as exc:
            raise DeliveryRefused(f"{type(exc).__name__}: {exc}") from exc
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            await self._reset()
            raise DestinationUnavailable(f"{type(exc).__name__}: {exc}") from exc
        reasons = [f"record {records[index].id} is larger than max_request_size" for index in refused[:1]]
        for outcome, (_, indexes) in zip(outcomes, sent, strict=True):
            if isinstance(outcome, _REFUSED):
                refused.extend(indexes)
                reasons.append(f"{type(outcome).__name__}: {outcome}")
            elif isinstance(outcome, BaseException):
                await self._reset()
                raise DestinationUnavailable(f"{type(outcome).__name__}: {outcome}") from outcome
        if refused:
            raise DeliveryRefused("; ".join(reasons), kept=[records[index] for index in sorted(refused)])

    async def _send(
        self, producer: aiokafka.AIOKafkaProducer, records: Sequence[Record]
    ) -> tuple[list[tuple[Any, list[int]]], list[int]]:
        """One batch per (topic, partition), split when full: each batch's future with the
        indexes of its records, and the indexes of records too large for any batch."""
        open_batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        sent: list[tuple[Any, list[int]]] = []
        too_large: list[int] = []
        kinds = {record.kind for record in records}
        partitions_of = {kind: await self._partitions_of(producer, self._topics[kind]) for kind in kinds}
        for index, record in enumerate(records):
            if len(record.key) + len(record.value) + _RECORD_OVERHEAD > self._max_request_bytes:
                too_large.append(index)  # as aiokafka's own send refuses it: no broker takes it
                continue
            topic = self._topics[record.kind]
            partitions = partitions_of[record.kind]
            partition = partitions[partition_of(record.key, len(partitions))]
            slot = (topic, partition)
            entry = open_batches.get(slot)
            if entry is None:
                entry = open_batches[slot] = (producer.create_batch(), [])
            batch, indexes = entry
            timestamp = int(record.at.timestamp() * 1000)
            if batch.append(key=record.key, value=record.value, timestamp=timestamp) is None:
                if indexes:
                    sent.append((await producer.send_batch(batch, topic, partition=partition), indexes))
                    batch, indexes = open_batches[slot] = (producer.create_batch(), [])
                if batch.append(key=record.key, value=record.value, timestamp=timestamp) is None:
                    too_large.append(index)
                    continue
            indexes.append(index)
        for (topic, partition), (batch, indexes) in open_batches.items():
            if indexes:
                sent.append((await producer.send_batch(batch, topic, partition=partition), indexes))
        return sent, too_large

    async def _reset(self) -> None:
        """After a failure the producer may hold half-sent batches: start afresh next time."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:  # a broken producer may fail to stop: it is dropped anyway
                log.warning("kafka_producer_stop_failed", error=str(exc))

    async def close(self) -> None:
        await self._reset()
