"""Fixtures of the integration tests beyond the shared ones: the Kafka broker for the relay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
