"""Per-domain pace: token buckets per group of recipient domains (``[pace.NAME]``), on top of the
provider's own rate and the campaign's cap.

One bucket per group per node, shared by every provider lane the group applies to. The wait
belongs to the group's recipients, not to the lane: a shard puts each group's recipients of a
window in batches of their own (:meth:`LanePace.plan`) and waits for a paced batch's tokens
before the batch joins the lane's queue (:meth:`LanePace.acquire`), as it does for its
campaign's cap. Waited out in the lane's sender workers (as it was), a campaign of one slow
group left every worker asleep and the other campaigns on the provider stopped. The sender
takes the provider's tokens later, just before the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from mailerd import aio, idn, metrics
from mailerd.config import PaceConfig
from mailerd.models import Lead
from mailerd.ratelimit import Clock, StoppableSleep, TokenBucket

DomainBuckets = Mapping[str, TokenBucket]  # recipient domain -> its group's bucket
# A batch as a shard dispatches it: its leads, its group's bucket (None: unpaced), its upto.
PlannedBatch = tuple[list[Lead], TokenBucket | None, int]


class DomainPace:
    """The buckets of every ``[pace.NAME]`` group of a node."""

    def __init__(self, groups: Mapping[str, PaceConfig], clock: Clock = time.monotonic) -> None:
        self.groups = dict(groups)
        self.buckets = {
            name: TokenBucket(group.rate_per_s, group.burst or None, clock=clock)
            for name, group in groups.items()
        }

    def for_provider(self, provider: str) -> dict[str, TokenBucket]:
        """Domain -> bucket for the groups that apply to ``provider`` (empty: nothing paced)."""
        return {
            domain: self.buckets[name]
            for name, group in self.groups.items()
            if group.applies_to(provider)
            for domain in group.domains
        }


class LanePace:
    """The groups that apply to one provider lane, as its shards split and wait for them."""

    def __init__(
        self, buckets: DomainBuckets, provider: str, sleep: StoppableSleep = aio.sleep_unless
    ) -> None:
        self.buckets = dict(buckets)
        self._sleep = sleep
        self._waits = metrics.RATE_LIMIT_WAIT.labels(provider)

    def plan(self, leads: list[Lead], batch_size: int, end: int, hold: int) -> list[PlannedBatch]:
        """The batches of a window's ``leads`` (id order, the window ending at ``end``), in the
        order to dispatch them: each group's recipients in batches of their own, the others in
        batches without a group. A batch is planned once full, except that a group's full
        batches are held back, so that the unpaced batches after them go first, until they
        hold ``hold`` recipients (the lane's reservation step); the rest at the end of the
        window, the unpaced first. The shard waits for a paced batch's tokens before it
        dispatches anything after it.

        Held back, a group's recipients may lie below what the unpaced batches after them
        reserved: a crash then logs them ``unknown`` unsent, as it does a batch queued in the
        lane. ``hold`` keeps those within a reservation step (plus a partly filled batch per
        group), as a crash's ``unknown`` leads are.

        A batch's ``upto`` is the id just below the lowest lead not in it or an earlier batch
        (``end`` once none is left): the checkpoint never passes a lead dispatched later.
        """
        filling: dict[TokenBucket | None, list[int]] = {None: []}
        order: list[tuple[list[int], TokenBucket | None]] = []
        held: list[tuple[list[int], TokenBucket | None]] = []
        holding = 0  # recipients in the held batches
        buckets = self.buckets
        for position, lead in enumerate(leads):
            bucket = buckets.get(domain_of(lead.email))
            chunk = filling.get(bucket)
            if chunk is None:
                chunk = filling[bucket] = []
            chunk.append(position)
            if len(chunk) < batch_size:
                continue
            filling[bucket] = []
            if bucket is None:
                order.append((chunk, None))
                continue
            held.append((chunk, bucket))
            holding += len(chunk)
            if holding >= hold:
                order += held
                held, holding = [], 0
        if filling[None]:
            order.append((filling.pop(None), None))
        order += held
        order.extend((chunk, bucket) for bucket, chunk in filling.items() if chunk)
        planned: list[PlannedBatch] = []
        taken = [False] * len(leads)
        lowest = 0  # position of the lowest lead not in a planned batch yet
        for positions, bucket in order:
            for position in positions:
                taken[position] = True
            while lowest < len(leads) and taken[lowest]:
                lowest += 1
            upto = leads[lowest].id - 1 if lowest < len(leads) else end
            planned.append(([leads[position] for position in positions], bucket, upto))
        return planned

    async def acquire(self, bucket: TokenBucket, count: int, stopped: asyncio.Event) -> bool:
        """Wait until ``count`` recipients of the group may go; False, with the tokens given
        back, when ``stopped`` is set first."""
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

    def refund(self, addresses: Iterable[str]) -> None:
        """Give back the group tokens of recipients dispatched and then not sent (erased while
        their batch waited for the provider): the group's next batch need not wait for them."""
        buckets = self.buckets
        for address in addresses:
            bucket = buckets.get(domain_of(address))
            if bucket is not None:
                bucket.refund(1)


def domain_of(address: str) -> str:
    """The part of an address after its last ``@``, lower-cased, in IDNA A-labels as the
    configured domains are (an IDN is configured in its xn-- form; a lead keeps the Unicode
    form it was typed in, ``bücher.de``)."""
    if not address.isascii():
        address = idn.a_label_address(address)
    return address.rpartition("@")[2].lower()
