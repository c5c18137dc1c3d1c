"""The joints between the pipeline's stages: what each stage sees of the others.

The scheduler claims shards (:mod:`mailerd.shard`) and puts their batches on a provider lane;
the sender's workers take them off, send, and hand rows to the writer; the writer commits them
and tells the shard. No stage imports another: each sees the others only through the protocols
here, so "no lead is emailed twice" can be checked in :mod:`mailerd.shard` (reservations, the
ledger, release) and :mod:`mailerd.writer` (the fenced checkpoint) alone.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol

from mailerd.models import Batch, Campaign, Event, Lead, LogRow
from mailerd.providers.base import Provider
from mailerd.ratelimit import TokenBucket

StatusCounts = tuple[int, int, int, int]  # sent, failed, unknown, suppressed


class ShardLostError(Exception):
    """The claim on a shard is gone (connection dropped or fenced out by a newer epoch)."""


class ShardHandle(Protocol):
    """What the writer needs of a claimed shard: who it is, and how to tell it rows committed."""

    campaign_id: int
    shard_no: int
    epoch: int
    provider_name: str

    def checkpoint_if_logged(self, complete: set[int]) -> tuple[int, bool]:
        """The checkpoint (and whether the shard would be done) if ``complete`` were logged now."""

    def on_logged(self, seqs: set[int], complete: set[int]) -> None:
        """The rows of ``seqs`` committed; those not in ``complete`` were only partly sent."""

    def on_lost(self) -> None:
        """The shard's epoch no longer matches: another claim owns it now."""


class SendingShard(Protocol):
    """What a sender worker needs of the shard a batch came from."""

    campaign_id: int
    stopped: asyncio.Event
    log: Any  # a structlog logger bound to the shard

    @property
    def stopping(self) -> bool:
        """Dispatch nothing more: paused, cancelled, halted, lost or draining."""

    async def ensure_reserved(self, batch: Batch) -> None:
        """Raise the committed reservation past this batch; :class:`ShardLostError` if gone."""

    def discard(self, seq: int) -> None:
        """The batch was not (fully) sent: it must not count as logged."""

    def give_back(self, leads: list[Lead]) -> None:
        """What ``leads`` took before their batch was dispatched (the quota share, the
        campaign's and the group's tokens) back: they were not sent."""


class ClaimedShard(ShardHandle, SendingShard, Protocol):
    """A shard as it travels with its batches: seen by the sender, then by the writer."""


class RowSink(Protocol):
    """What the shard and the sender need of the writer."""

    async def submit(
        self,
        shard: ShardHandle | None,
        seq: int,
        rows: list[LogRow],
        *,
        retried: int = 0,
        complete: bool = True,
        counts: StatusCounts | None = None,
        events: list[Event] | None = None,
    ) -> asyncio.Future[None]:
        """Queue rows (and the events of their synchronous rejections, recorded in the same
        flush); wait only for buffer space; the future resolves at their commit."""

    def flush_soon(self) -> None:
        """Somebody waits for a commit: flush now instead of at the next interval."""


class QuotaTaker(Protocol):
    """A provider's daily quota (:class:`mailerd.quota_gate.QuotaGate`): the shard takes a
    batch's share before dispatching it, the sender gives back what it did not send."""

    async def acquire(self, count: int, stopped: asyncio.Event) -> bool:
        """Take ``count``, waiting while the limits are used up; False when ``stopped`` first."""

    def refund(self, count: int) -> None:
        """Give back what a batch took and did not send."""


class CapTaker(Protocol):
    """The campaigns' own caps (``rate``, :mod:`mailerd.campaign_caps`): a shard waits for a
    batch's tokens before dispatching it, so the wait holds back that campaign only."""

    async def acquire(
        self, campaign: Campaign, count: int, stopped: asyncio.Event, shard_no: int = 0
    ) -> bool:
        """Wait until ``count`` recipients may be dispatched (the campaign's lowest shard
        first); False when ``stopped`` first."""

    def refund(self, campaign: Campaign, count: int) -> None:
        """Give back the tokens of recipients let through and not dispatched after all."""

    def forget(self, campaign_id: int) -> None:
        """This node holds nothing of the campaign any more."""


# A batch as a shard dispatches it: its leads, its [pace] group's bucket (None: unpaced), its upto.
PlannedBatch = tuple[list[Lead], TokenBucket | None, int]


class PaceTaker(Protocol):
    """The ``[pace.NAME]`` groups that apply to a lane (:class:`mailerd.pace.LanePace`): a shard
    puts each group's recipients in batches of their own and waits for a paced batch's tokens
    before dispatching it, so the wait holds back that group's recipients only."""

    def plan(self, leads: list[Lead], batch_size: int, end: int, hold: int) -> list[PlannedBatch]:
        """A window's batches in dispatch order: (leads, their group's bucket or None, upto);
        a group's full batches held back behind the unpaced up to ``hold`` recipients."""

    async def acquire(self, bucket: TokenBucket, count: int, stopped: asyncio.Event) -> bool:
        """Wait until ``count`` recipients of the group may go; False when ``stopped`` first."""

    def refund(self, addresses: Iterable[str]) -> None:
        """Give back the group tokens of recipients dispatched and then not sent."""


QueueItem = tuple[ClaimedShard, Batch] | None  # None: end marker, one per sender worker


class LaneQueue(asyncio.Queue[QueueItem]):
    """A provider lane's bounded queue, from which a stopped shard takes its own batches back."""

    def take_out(self, owner: ClaimedShard) -> list[Batch]:
        """Remove ``owner``'s queued batches and return them. A paused shard waited for the
        workers to reach each (25 s behind other campaigns' calls), holding its claim and its
        place meanwhile. (asyncio.Queue keeps its items in ``_queue`` and its blocked putters
        in ``_putters``: one freed slot wakes one putter, as ``get`` does.)"""
        items: collections.deque[QueueItem] = self._queue  # type: ignore[attr-defined]
        taken = [item[1] for item in items if item is not None and item[0] is owner]
        if taken:
            kept = [item for item in items if item is None or item[0] is not owner]
            items.clear()
            items.extend(kept)
            for _ in taken:
                self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return taken


@dataclasses.dataclass(slots=True)
class ProviderLane:
    """A provider with its bounded batch queue; shared by every campaign using it.

    The scheduler's shards put batches on ``queue``; the provider's sender workers take them.
    """

    name: str
    provider: Provider
    queue: LaneQueue
    batch_size: int
    workers: int
    reservation_step: int
    caps: CapTaker  # the campaigns' own rate caps, waited for before a batch joins ``queue``
    quota: QuotaTaker | None = None  # the provider's daily quota and warm-up (None: no limit)
    pace: PaceTaker | None = None  # the [pace.NAME] groups that apply here (None: none does)

    @property
    def batches_ahead(self) -> int:
        """How many batches one reservation covers (and flow control lets be uncommitted)."""
        return max(1, self.reservation_step // max(1, self.batch_size))
