"""Fixtures of the fault-injection suite: daemons as real processes, a private Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mailerd.emulator.base import Emulator
from tests.e2e import procs


@pytest.fixture
def private_postgres() -> Iterator[procs.PrivatePostgres]:
    """A cluster of this test's own, started, that the test may stop and start again."""
    server = procs.PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[Emulator]:
    """The loopback provider in this process, recording to ``tmp_path/record.jsonl``."""
    emulator = procs.timed_emulator("ses", record=tmp_path / "record.jsonl", latency_ms=10.0, seed=7)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.close()
