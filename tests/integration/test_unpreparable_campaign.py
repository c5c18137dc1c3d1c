"""A campaign its provider can never prepare (a template stored before today's checks, which the
client now refuses) is failed with the reason; it was tried again at every poll, for ever, while
its status said running."""

from __future__ import annotations

import asyncpg

from mailerd import campaigns
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
