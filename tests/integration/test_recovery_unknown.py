"""Crash recovery logs every reserved lead without a row ``unknown``, also one whose address was
suppressed since: the node that died may have emailed it before the suppression came (a bounce
of another campaign), so ``suppressed`` (not sent) could be false. Found by bench/soak.py."""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import REGISTRY

from mailerd import campaigns, splitting
from mailerd.db import campaigns as campaigns_db
from mailerd.db import email_log
from mailerd.db import shards as shards_db
from mailerd.emulator import sink
from mailerd.models import LogStatus
from mailerd.scheduler import campaign_from_row
from tests.integration.helpers import add_leads, daemon_config, new_campaign, running_daemon, wait_for_status


async def test_a_lead_suppressed_after_the_crash_is_logged_unknown(conn: asyncpg.Connection) -> None:
    await add_leads(conn, 1, 6)  # user0..user5; "pro": user0 and user3
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    row = await campaigns_db.get(conn, campaign_id)
    assert row is not None
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason) VALUES (1, 'user3@example.com', 'bounce')"
    )
    upto = await conn.fetchval("SELECT max(id) FROM leads")
    assert await email_log.log_uncertain(conn, campaign_from_row(row), 0, upto) == 2
    logged = await conn.fetch("SELECT status, error FROM email_log WHERE campaign_id = $1", campaign_id)
    assert [(r["status"], r["error"]) for r in logged] == [(LogStatus.UNKNOWN, email_log.UNCERTAIN_ERROR)] * 2


async def test_a_claim_names_the_claim_it_replaces(conn: asyncpg.Connection) -> None:
    """A recovery says whose crash it accounts for: ``take`` returns the previous owner, and the
    recovered claim is the one of the epoch just below (bench/soak.py attributes ``unknown``
    rows to the crash that left them with these)."""
    await add_leads(conn, 1, 6)
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    await shards_db.create(conn, campaign_id, [await conn.fetchval("SELECT max(id) FROM leads")])
    first = await shards_db.take(conn, campaign_id, 0, "node-a")
    assert first is not None
    assert first["previous_owner"] is None
    second = await shards_db.take(conn, campaign_id, 0, "node-b")
    assert second is not None
    assert (second["previous_owner"], second["owner"]) == ("node-a", "node-b")
    assert second["epoch"] == first["epoch"] + 1
    await shards_db.release_clean(conn, campaign_id, 0, second["epoch"])
    third = await shards_db.take(conn, campaign_id, 0, "node-a")
    assert third is not None
    assert third["previous_owner"] is None  # released cleanly: nobody's crash to account for


def _unknown_counted() -> float:
    value = REGISTRY.get_sample_value("mailerd_emails_total", {"provider": "sink", "status": "unknown"})
    return value or 0.0


async def test_a_recovery_that_rolls_back_counts_no_unknown_emails(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """The claim that logs a crashed claim's reserved leads ``unknown`` counted them in
    ``mailerd_emails_total`` before its transaction committed: a claim that then failed (a
    timeout, a lost connection) rolled the rows back but kept the count, and every poll that
    tried again counted them again."""
    await add_leads(conn, 1, 30)  # 10 "pro"
    emulator = sink.Sink(seed=5)
    port = await emulator.start()
    try:
        config = daemon_config(port)
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        assert await campaigns_db.sweep(conn, "due", cause="test") == [campaign_id]
        await splitting.split_campaign(conn, campaign_id, 1000)
        await conn.execute(
            """UPDATE campaign_shards SET reserved_upto = lead_id_to, released_clean = false, epoch = 1,
                                          owner = 'dead-node'
               WHERE campaign_id = $1""",
            campaign_id,
        )
        # Every claim fails after logging the leads unknown (a sequence counts the attempts: it
        # does not roll back).
        await conn.execute(
            """CREATE SEQUENCE claim_attempts;
               CREATE FUNCTION fail_claim() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM nextval('claim_attempts'); RAISE EXCEPTION 'claim failed'; END $$;
               CREATE TRIGGER fail_claim BEFORE UPDATE ON campaign_shards FOR EACH ROW
                   WHEN (NEW.checkpoint IS DISTINCT FROM OLD.checkpoint) EXECUTE FUNCTION fail_claim();"""
        )
        before = _unknown_counted()
        async with running_daemon(config, dsn):
            async with asyncio.timeout(30):
                while (
                    await conn.fetchval("SELECT CASE WHEN is_called THEN last_value END FROM claim_attempts")
                    != 2
                ):
                    await asyncio.sleep(0.02)
            assert (
                await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id) == 0
            )
            assert _unknown_counted() == before
            await conn.execute("DROP TRIGGER fail_claim ON campaign_shards")
            info = await wait_for_status(conn, campaign_id)
    finally:
        await emulator.close()
    assert info["unknown"] == 10
    assert _unknown_counted() - before == 10
