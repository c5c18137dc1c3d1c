"""A campaign's own cap (its ``rate``, recipients per second, per node): one token bucket per
campaign, taken by the campaign's shards before each batch joins the provider lane's queue.

The wait belongs to the campaign, not to the provider: a batch is dispatched only once its
campaign's tokens are due, so a low ``rate`` holds back that campaign alone. Waited out in the
lane's sender workers (as it was), every worker ended asleep on one campaign's growing debt
(49 s, 99 s, ... at 1/s and batches of 50) and the other campaigns on the provider stopped. The
provider's own tokens are taken later, by the worker that sends the batch, so the provider never
gets a batch on top of a burst that refilled while the batch waited here.

Each recipient is counted once, when its batch is dispatched: a retry takes the provider's
tokens again, not the campaign's. A lead dropped after the wait (deleted meanwhile) gives its
tokens back (:meth:`CampaignCaps.refund`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Any

from mailerd import aio, metrics, ratelimit
from mailerd.models import Campaign
from mailerd.ratelimit import StoppableSleep, TokenBucket


class _Cap:
    """One campaign's bucket, and its shards' batches waiting their turn, lowest shard first."""

    __slots__ = ("bucket", "busy", "waiting")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # (shard, ticket, turn)
        self.busy = False  # a batch holds the turn (it is waiting for its tokens)

    def next_turn(self) -> None:
        while not self.busy and self.waiting:
            _, _, turn = heapq.heappop(self.waiting)
            if not turn.done():
                self.busy = True
                turn.set_result(None)


class CampaignCaps:
    """The caps of one provider lane's campaigns on this node, shared by their shards.

    One batch of a campaign waits for its tokens at a time, its lowest-numbered shard first, so
    the node's shards of a capped campaign finish one after another. Each shard taking its turn
    in rotation made them all finish together, at the end: a node at ``max_shards_per_node``
    then had no room for a dead node's shards until then (a takeover of 7.5 s, not 0.5 s).
    """

    def __init__(
        self,
        provider: str,
        *,
        clock: ratelimit.Clock = time.monotonic,
        sleep: StoppableSleep = aio.sleep_unless,
    ) -> None:
        self._caps: dict[int, _Cap] = {}
        self._tickets = itertools.count()
        self._clock = clock
        self._sleep = sleep
        self._waits = metrics.RATE_LIMIT_WAIT.labels(provider)

    async def acquire(
        self, campaign: Campaign, count: int, stopped: asyncio.Event, shard_no: int = 0
    ) -> bool:
        """Wait until ``count`` recipients of ``campaign`` may be dispatched; False, with the
        tokens given back, when ``stopped`` is set first. A campaign without ``rate`` never
        waits (and this never yields)."""
        rate = campaign.rate_per_s
        if not rate:
            return True
        cap = self._caps.get(campaign.id)
        if cap is None:
            cap = self._caps[campaign.id] = _Cap(TokenBucket(rate, clock=self._clock))
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(cap.waiting, (shard_no, next(self._tickets), turn))
        cap.next_turn()
        try:
            if not turn.done() and not await _first(turn, stopped):
                return False
            wait = cap.bucket.reserve(count)
            if wait > 0:
                self._waits.inc(wait)
                try:
                    await self._sleep(wait, stopped)
                except asyncio.CancelledError:
                    cap.bucket.refund(count)
                    raise
            if stopped.is_set():
                cap.bucket.refund(count)
                return False
            return True
        finally:
            if turn.done() and not turn.cancelled():
                # This batch had the turn. The next is chosen on the loop's next round, so the
                # shard can ask for its next batch first (dispatching this one does not wait):
                # chosen at once, the next shard won and the two took turns.
                cap.busy = False
                asyncio.get_running_loop().call_soon(cap.next_turn)
            else:
                turn.cancel()  # left in the heap, skipped when its turn would come
                cap.next_turn()

    def refund(self, campaign: Campaign, count: int) -> None:
        """Give back the tokens of ``count`` recipients :meth:`acquire` let through that will not
        be dispatched after all (leads deleted while their batch waited): the next batch of the
        campaign has them, up to the bucket's burst as any refund."""
        cap = self._caps.get(campaign.id)
        if cap is not None:
            cap.bucket.refund(count)

    def forget(self, campaign_id: int) -> None:
        """This node holds nothing of the campaign any more: drop its bucket."""
        self._caps.pop(campaign_id, None)


async def _first(turn: asyncio.Future[None], stopped: asyncio.Event) -> bool:
    """Wait for ``turn``; False when ``stopped`` is set first."""
    if stopped.is_set():
        return False
    stop: asyncio.Future[Any] = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait([turn, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    return turn.done() and not stopped.is_set()
