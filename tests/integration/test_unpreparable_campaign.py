"""A campaign its provider can never prepare (a template stored before today's checks, which the
client now refuses) is failed with the reason; it was tried again at every poll, for ever, while
its status said running."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from mailerd import campaigns, scheduler
from mailerd.db import connect as db_connect
from mailerd.emulator import sink
from tests.integration.helpers import add_leads, daemon_config, new_campaign, running_daemon, wait_for_status


async def test_a_campaign_the_provider_cannot_prepare_is_failed_with_the_reason(
    conn: asyncpg.Connection, dsn: str
) -> None:
    await add_leads(conn, 1, 30)
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = daemon_config(port)
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        await conn.execute("UPDATE campaigns SET subject = '{{ unclosed' WHERE id = $1", campaign_id)
        async with running_daemon(config, dsn):
            info = await wait_for_status(conn, campaign_id, ("failed",))
    finally:
        await emulator.close()
    assert info["reason"].startswith("the provider cannot send it: template error")
    assert info["sent"] == 0


async def test_a_preparation_that_keeps_failing_is_tried_again_less_and_less_often(
    conn: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SES answering the template calls 503: every pending shard tried them at every poll (ten
    shards, a poll every 0.05 s: about 200 calls a second against a provider already failing);
    now the campaign waits a poll interval, doubling, and is sent once the provider is back."""
    await add_leads(conn, 1, 300)
    emulator = sink.Sink()
    emulator.template_error = (503, "ServiceUnavailableException", "Service unavailable.")
    claims = 0  # the claim connections the scheduler opened (a connection and a lock per shard)
    real_connect = db_connect.connect

    async def counted(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        nonlocal claims
        claims += "command_timeout" in kwargs
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(db_connect, "connect", counted)
    port = await emulator.start()
    try:
        config = daemon_config(port, scheduler={"shard_size": 30, "window_size": 30, "poll_interval_s": 0.05})
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            async with asyncio.timeout(30):
                while emulator.template_calls < 1:
                    await asyncio.sleep(0.01)
                first = time.monotonic()
                while emulator.template_calls < 5:
                    await asyncio.sleep(0.01)
                # Four waits between five tries: 0.05 + 0.1 + 0.2 + 0.4 s at the least.
                assert time.monotonic() - first >= 0.7
                claimed_before = claims
                while emulator.template_calls < 6:
                    await asyncio.sleep(0.01)
            # 0.8 s, 16 polls, to the sixth try: the shards were not tried meanwhile (each poll
            # opened a connection and took a lock for each it may claim), only at the try itself.
            assert claims - claimed_before <= 10, claims - claimed_before
            emulator.template_error = None
            info = await wait_for_status(conn, campaign_id)
    finally:
        await emulator.close()
    assert info["sent"] == 100  # the segment: every third lead


def test_the_wait_doubles_from_the_poll_interval_up_to_a_minute() -> None:
    assert [scheduler.prepare_retry_s(n, 0.5) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert scheduler.prepare_retry_s(10, 0.5) == scheduler.PREPARE_RETRY_MAX_S == 60.0
    assert scheduler.prepare_retry_s(10**6, 1.0) == 60.0
