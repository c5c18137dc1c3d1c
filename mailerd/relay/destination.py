"""What a destination is to the relay: something that acknowledges records, or says why not.

Each destination gets its own loop and its own position (:mod:`mailerd.relay.stream`): read
after the position, :meth:`Destination.deliver`, then commit the position. A destination that is
down stops only its own position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import asyncpg

from mailerd import backoff
from mailerd.relay.records import Record

MAX_RETRY_AFTER_S = 3600.0  # the longest wait a destination's Retry-After gets


class DestinationUnavailable(Exception):
    """Try again later (with backoff): the destination is down, slow, throttling or refusing for a
    reason that may pass. The first ``acknowledged`` records of the call were acknowledged;
    ``retry_after`` (seconds) is the destination's own floor for the next attempt."""

    def __init__(self, reason: str, *, acknowledged: int = 0, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.acknowledged = acknowledged
        self.retry_after = backoff.capped_retry_after(retry_after, MAX_RETRY_AFTER_S)


class DeliveryRefused(Exception):
    """The destination will never take these records (a callback answering 400, a record too
    large for the broker). The first ``acknowledged`` records of the call were acknowledged, the
    ``refused`` after them (all the others when None) are settled: the relay keeps them in
    ``relay_dead_letters`` (only ``kept`` of them, when given: a destination that skips some
    records it does not want, or that took the others, names the ones it refused) and moves on."""

    def __init__(
        self,
        reason: str,
        *,
        acknowledged: int = 0,
        refused: int | None = None,
        kept: Sequence[Record] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.acknowledged = acknowledged
        self.refused = refused
        self.kept = kept


class Destination(Protocol):
    """One place records go (Kafka, one callback endpoint, the reports database)."""

    # Unique and stable: the key of its position (``kafka``, ``callbacks.NAME``, ``reports``).
    name: str
    # The record kinds it takes (``email``, ``event``, ``campaign``, ``erasure``): the relay reads
    # only those tables for it. A finer filter (event types) is the destination's own business.
    kinds: frozenset[str]

    async def deliver(self, records: Sequence[Record]) -> None:
        """Return once every record is acknowledged; else raise :class:`DestinationUnavailable` or
        :class:`DeliveryRefused`. Records come in commit-safe order, and are not empty."""

    async def close(self) -> None:
        """Release connections; the relay calls it when it stops leading."""


@runtime_checkable
class HoldsPools(Protocol):
    """A destination with database connections of its own (the reports database's loader): the
    drain deadline cuts them off with the relay's, or a load on a server that stopped answering
    held the stop, waiting inside asyncpg for its cancel request."""

    def pools(self) -> list[asyncpg.Pool]:
        """The pools open now (none before the first delivery or after the close)."""
