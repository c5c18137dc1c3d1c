"""A capped campaign's batches wait their turn lowest shard first, one at a time: the node's
shards of the campaign then finish one after another (taking turns in rotation, they all
finished together at the end, and a node at max_shards_per_node took a dead node's shards only
then)."""

from __future__ import annotations

import asyncio
import dataclasses

from mailerd.campaign_caps import CampaignCaps
from tests.integration import providers_env as env


async def test_the_lowest_shard_goes_first_and_a_stopped_wait_gives_its_turn_away() -> None:
    granted: list[int] = []
    slept: list[float] = []

    async def sleep(seconds: float, stopped: asyncio.Event) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    caps = CampaignCaps("sink", clock=lambda: 0.0, sleep=sleep)
    campaign = dataclasses.replace(env.campaign(), rate_per_s=100.0)
    stop_four = asyncio.Event()

    async def batch(shard_no: int, stopped: asyncio.Event | None = None) -> None:
        if await caps.acquire(campaign, 200, stopped or asyncio.Event(), shard_no):
            granted.append(shard_no)

    tasks = [asyncio.create_task(batch(n, stop_four if n == 4 else None)) for n in (5, 9, 4, 7, 2)]
    await asyncio.sleep(0)
    stop_four.set()
    await asyncio.gather(*tasks)
    # 5 asked first and found nobody waiting (it waits out its tokens while the others come);
    # then the lowest shard each time, one at a time; 4 was stopped while it waited its turn
    assert granted == [5, 2, 7, 9]
    assert slept == [1.0, 3.0, 5.0, 7.0]  # the clock stands still: each waits for all before it


async def test_a_shard_keeps_the_turn_for_its_next_batches() -> None:
    # the turn went to the next shard as soon as a batch got its tokens, before its shard asked
    # again: shards 0 and 1 took turns, and the first finished twice as late
    granted: list[int] = []

    async def sleep(seconds: float, stopped: asyncio.Event) -> None:
        await asyncio.sleep(0)

    caps = CampaignCaps("sink", clock=lambda: 0.0, sleep=sleep)
    campaign = dataclasses.replace(env.campaign(), rate_per_s=100.0)

    async def shard(shard_no: int) -> None:
        for _ in range(3):
            if await caps.acquire(campaign, 200, asyncio.Event(), shard_no):
                granted.append(shard_no)

    await asyncio.gather(*(shard(n) for n in range(3)))
    assert granted == [0, 0, 0, 1, 1, 1, 2, 2, 2]
