"""Per-domain pace: token buckets per group of recipient domains (``[pace.NAME]``), taken by the
sender on top of the provider's own rate and the campaign's cap. Pure bookkeeping, no I/O.

One bucket per group per node, shared by every provider lane the group applies to. A batch
takes, from each group's bucket, as many tokens as it has recipients of that group, and waits
for the slowest of its groups (see :func:`mailerd.ratelimit.reserve_each`): a batch is one
provider call, so the recipients of other domains in the same batch wait with it. The sender
takes the provider's tokens after that wait, not with it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Mapping

from mailerd.config import PaceConfig
from mailerd.ratelimit import Clock, TokenBucket

DomainBuckets = Mapping[str, TokenBucket]  # recipient domain -> its group's bucket


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


def domain_of(address: str) -> str:
    """The part of an address after its last ``@``, lower-cased (ASCII folding is enough:
    the configured domains are ASCII, an IDN is configured in its xn-- form)."""
    return address.rpartition("@")[2].lower()


def count_by_bucket(buckets: DomainBuckets, addresses: Iterable[str]) -> dict[TokenBucket, int]:
    """How many of ``addresses`` fall in each paced group (unpaced domains are not counted)."""
    counts: collections.Counter[TokenBucket] = collections.Counter()
    for address in addresses:
        bucket = buckets.get(domain_of(address))
        if bucket is not None:
            counts[bucket] += 1
    return dict(counts)
