"""A lead's end closes its destinations at once, under one CLOSE_S: in turn, three destinations
whose close hangs (a frozen broker's flush) took three times as long, past what the drain
deadline allows after it (drain.EXIT_AFTER_DEADLINE_S, told to systemd)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from mailerd.relay import leader
from mailerd.relay.records import Record
from tests.integration.helpers import leading_relay

CLOSE_S = 1.0


class HangingClose:
    kinds = frozenset({"email"})

    def __init__(self, name: str) -> None:
        self.name = name
        self.closing = asyncio.Event()

    async def deliver(self, records: Sequence[Record]) -> None:
        return None

    async def close(self) -> None:
        self.closing.set()
        await asyncio.Event().wait()  # never, until the relay's bound cancels it


async def test_the_destinations_close_together_within_one_bound(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leader, "CLOSE_S", CLOSE_S)
    destinations = [HangingClose(f"callbacks.h{n}") for n in range(3)]
    async with leading_relay(dsn, destinations) as (_, stop, task):
        stop.set()
        started = time.monotonic()
        async with asyncio.timeout(10):
            await task
        took = time.monotonic() - started
    assert all(d.closing.is_set() for d in destinations)
    assert took < 2.5 * CLOSE_S, took  # in turn: at least 3 x CLOSE_S
