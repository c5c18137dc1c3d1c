"""A campaign's own cap (its ``rate``, recipients per second, per node): one token bucket per
campaign, taken by the campaign's shards before each batch joins the provider lane's queue.

The wait belongs to the campaign, not to the provider: a batch is dispatched only once its
campaign's tokens are due, so a low ``rate`` holds back that campaign alone. Waited out in the
lane's sender workers (as it was), every worker ended asleep on one campaign's growing debt
(49 s, 99 s, ... at 1/s and batches of 50) and the other campaigns on the provider stopped. The
provider's own tokens are taken later, by the worker that sends the batch, so the provider never
gets a batch on top of a burst that refilled while the batch waited here.

Each recipient is counted once, when its batch is dispatched: a retry takes the provider's
tokens again, not the campaign's.
"""

from __future__ import annotations

import asyncio
import time

from mailerd import aio, metrics, ratelimit
from mailerd.models import Campaign
from mailerd.ratelimit import StoppableSleep, TokenBucket


class CampaignCaps:
    """The caps of one provider lane's campaigns on this node, shared by their shards."""

    def __init__(
        self,
        provider: str,
        *,
        clock: ratelimit.Clock = time.monotonic,
        sleep: StoppableSleep = aio.sleep_unless,
    ) -> None:
        self._buckets: dict[int, TokenBucket] = {}
        self._clock = clock
        self._sleep = sleep
        self._waits = metrics.RATE_LIMIT_WAIT.labels(provider)

    async def acquire(self, campaign: Campaign, count: int, stopped: asyncio.Event) -> bool:
        """Wait until ``count`` recipients of ``campaign`` may be dispatched; False, with the
        tokens given back, when ``stopped`` is set first. A campaign without ``rate`` never
        waits (and this never yields)."""
        rate = campaign.rate_per_s
        if not rate:
            return True
        bucket = self._buckets.get(campaign.id)
        if bucket is None:
            bucket = self._buckets[campaign.id] = TokenBucket(rate, clock=self._clock)
        wait = bucket.reserve(count)
        if wait > 0:
            self._waits.inc(wait)
            try:
                await self._sleep(wait, stopped)
            except asyncio.CancelledError:
                bucket.refund(count)
                raise
        if stopped.is_set():
            bucket.refund(count)
            return False
        return True

    def forget(self, campaign_id: int) -> None:
        """This node holds nothing of the campaign any more: drop its bucket."""
        self._buckets.pop(campaign_id, None)
