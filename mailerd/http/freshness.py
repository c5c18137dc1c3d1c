"""``as_of`` for report answers: the reports destination's position time, read at most every
:data:`MAX_AGE_S` and shared by the requests in between.

Correct as long as it is read before an answer's rows (everything committed before it is in the
reports database, so in rows read after it); a value up to :data:`MAX_AGE_S` old is still read
before. Sharing it takes a round trip to the main database (and the pool's reset after it) off
every report request: at 50 requests/s on a busy node each round trip is a wait for a CPU.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable

MAX_AGE_S = 0.25

Read = Callable[[], Awaitable[dt.datetime | None]]


class Freshness:
    """The last ``as_of`` read, and the read under way (one at a time, whoever asks)."""

    def __init__(self, max_age_s: float = MAX_AGE_S) -> None:
        self._max_age_s = max_age_s
        self._value: dt.datetime | None = None
        self._read_at: float | None = None  # monotonic time the stored value's read started
        self._reading: asyncio.Task[dt.datetime | None] | None = None

    async def as_of(self, read: Read) -> dt.datetime | None:
        """The stored value while it is younger than the maximum age, else what ``read`` returns
        (None: the relay has not delivered to the reports database yet)."""
        if self._read_at is not None and time.monotonic() - self._read_at < self._max_age_s:
            return self._value
        if self._reading is None:
            self._reading = asyncio.create_task(self._read(read))
            self._reading.add_done_callback(_retrieved)
        # Shielded: one caller going away (a client disconnecting) does not cancel the others' read.
        return await asyncio.shield(self._reading)

    async def close(self) -> None:
        """Cancel a read under way (at shutdown, before the pool it reads from closes)."""
        reading, self._reading = self._reading, None
        if reading is not None and not reading.done():
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _read(self, read: Read) -> dt.datetime | None:
        started = time.monotonic()
        try:
            value = await read()
        finally:
            self._reading = None
        self._value, self._read_at = value, started
        return value


def _retrieved(task: asyncio.Task[dt.datetime | None]) -> None:
    """Mark a failed read's error seen (its callers got it; if they all left, nobody needs it)."""
    if not task.cancelled():
        task.exception()
