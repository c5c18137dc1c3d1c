"""Fixtures of the integration tests beyond the shared ones: the Kafka broker and the callback
receiver for the relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.callback_receiver import Receiver
from tests.kafka_broker import Tansu


@pytest.fixture(scope="session")
def broker() -> Iterator[Tansu]:
    """One tansu broker for the session (tests use topics of their own)."""
    server = Tansu()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A callback endpoint that verifies Standard Webhooks signatures (tests/callback_receiver.py)."""
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
