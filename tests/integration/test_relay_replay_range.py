"""``mailerd relay replay --from`` through a callback endpoint: what a mistaken range says, and
what a receiver de-duplicating on ``webhook-id`` makes of a replay."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from mailerd import config as config_mod
from mailerd.config import CallbackConfig, Secret
from mailerd.relay import operations
from mailerd.relay.callbacks import CallbackDestination
from tests.callback_receiver import SECRET, Receiver
from tests.integration.relay_rows import NOW, log_rows, make_campaign


async def test_a_replay_of_an_unknown_campaign_says_so(conn: asyncpg.Connection, receiver: Receiver) -> None:
    # a mistyped --campaign replayed nothing and succeeded ("replayed 0 records")
    campaign_id, leads = await make_campaign(conn, 3)
    await log_rows(conn, campaign_id, leads)
    destination = CallbackDestination(CallbackConfig(name="app", url=receiver.url, secret=Secret(SECRET)))
    start, end = NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1)
    try:
        with pytest.raises(operations.OperationError, match=f"unknown campaign {campaign_id + 1}"):
            await operations.replay_range(
                conn, destination, start=start, end=end, campaign_id=campaign_id + 1, batch=10
            )
        found = await operations.replay_range(
            conn, destination, start=start, end=end, campaign_id=campaign_id, batch=10
        )
        # a campaign that exists, with nothing in the range: nothing to say
        empty = await operations.replay_range(
            conn, destination, start=end, end=end + dt.timedelta(days=1), campaign_id=campaign_id, batch=10
        )
    finally:
        await destination.close()
    assert found.delivered >= 3
    assert (empty.delivered, empty.refused) == (0, 0)
    assert {f"email:{campaign_id}:{lead}" for lead in leads} <= receiver.ids()


async def test_a_replay_is_sent_under_new_webhook_ids(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver
) -> None:
    # a replay sent the same records in the same request under the same webhook-id as the live
    # stream had: a receiver de-duplicating on it, as Standard Webhooks recommends, took the
    # replay for a retry already processed and dropped it
    campaign_id, leads = await make_campaign(conn, 3)
    await log_rows(conn, campaign_id, leads)
    endpoint = {"url": receiver.url, "kinds": ["email"]}
    config = config_mod.from_mapping(
        {"database": {"dsn": dsn}, "callbacks": {"app": endpoint}},
        env={"MAILERD_CALLBACKS__APP__SECRET": receiver.secret},
    )
    start, end = NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1)
    live = CallbackDestination(config.callbacks["app"])
    replays = [operations.configured(config, "callbacks.app", dsn) for _ in range(2)]
    try:
        await operations.replay_range(conn, live, start=start, end=end, campaign_id=None, batch=10)
        for replay in replays:
            await operations.replay_range(conn, replay, start=start, end=end, campaign_id=None, batch=10)
    finally:
        for destination in (live, *replays):
            await destination.close()
    assert len(receiver.message_ids) == 3  # one request each: the same records every time
    assert len(set(receiver.message_ids)) == 3
    assert len(receiver.records) == 9
