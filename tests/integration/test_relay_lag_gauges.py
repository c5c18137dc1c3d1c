"""The relay's lag gauges while a destination is down: they grow (found by a review: they were
set only after a batch was delivered, so they held their last value for the whole outage and an
alert on ``mailerd_relay_lag_seconds`` never fired)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
from prometheus_client import REGISTRY

from mailerd import config
from mailerd.config import CallbackConfig, Secret
from mailerd.db import relay as relay_db
from mailerd.relay import position as position_mod
from mailerd.relay.callbacks import CallbackDestination
from mailerd.relay.leader import Relay
from mailerd.relay.stream import Stream
from tests.callback_receiver import SECRET, Receiver
from tests.integration.relay_rows import log_rows, make_campaign


def _gauge(gauge: str, name: str) -> float | None:
    return REGISTRY.get_sample_value(gauge, {"destination": name})


async def test_the_lag_grows_while_a_destination_is_down(pool: asyncpg.Pool, receiver: Receiver) -> None:
    receiver.answer = lambda batch: 500
    destination = CallbackDestination(
        CallbackConfig(name="lagging", url=receiver.url, secret=Secret(SECRET), timeout_s=5.0)
    )
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 5)
        await log_rows(conn, campaign_id, leads)
        taken = await relay_db.take_positions(conn, [destination.name], position_mod.earliest(), "test")
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    stop = asyncio.Event()
    stream = Stream(
        destination, pool, config.RelayConfig(poll_interval_ms=10, retry_base_s=0.01, retry_max_s=0.05),
        epoch=taken[destination.name].epoch, position=position_mod.earliest(), as_of=an_hour_ago, stop=stop,
    )  # fmt: skip
    task = asyncio.create_task(stream.run())
    try:
        async with asyncio.timeout(10):
            while len(receiver.statuses) < 3:
                await asyncio.sleep(0.02)
        lag = _gauge("mailerd_relay_lag_seconds", destination.name)
        age = _gauge("mailerd_relay_position_age_seconds", destination.name)
    finally:
        stop.set()
        await task
        await destination.close()
    assert receiver.records == []  # still down: nothing was delivered
    assert lag is not None and lag >= 3600  # everything since an hour ago is still to deliver
    assert age is not None and age > 0


async def test_a_node_that_stops_leading_exports_no_lag(
    dsn: str, pool: asyncpg.Pool, receiver: Receiver
) -> None:
    # its last values stayed, frozen, and max over the nodes alerted on them after the lead moved
    destination = CallbackDestination(
        CallbackConfig(name="handed", url=receiver.url, secret=Secret(SECRET), timeout_s=5.0)
    )
    async with pool.acquire() as conn:
        campaign_id, leads = await make_campaign(conn, 5)
        await log_rows(conn, campaign_id, leads)
    stop = asyncio.Event()
    relay = Relay(
        config=config.from_mapping({"relay": {"poll_interval_ms": 10, "lock_retry_s": 0.05}}),
        dsn=dsn, stop=stop, destinations=lambda: [destination], node="test",
    )  # fmt: skip
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(10):
            while len(receiver.records) < 5 or _gauge("mailerd_relay_lag_records", destination.name) is None:
                await asyncio.sleep(0.02)
        assert _gauge("mailerd_relay_lag_seconds", destination.name) is not None
    finally:
        stop.set()
        await task
    assert not relay.leading
    for name in (
        "mailerd_relay_lag_seconds",
        "mailerd_relay_position_age_seconds",
        "mailerd_relay_lag_records",
    ):
        assert _gauge(name, destination.name) is None, name
