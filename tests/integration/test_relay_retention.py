"""Retention waits for the relay: a partition past retention whose rows a destination has not
passed is kept (and counted), then dropped once the relay has passed it; and for the campaigns
not finished, whose rows keep their leads from being emailed twice."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
from structlog.testing import capture_logs

from mailerd import config as config_mod
from mailerd import metrics
from mailerd.db import partitions
from mailerd.db import relay as relay_db
from mailerd.relay import outbox, retention
from mailerd.relay import position as position_mod
from tests.integration.relay_rows import make_campaign

TODAY = dt.date(2026, 3, 1)
OLD = dt.datetime(2025, 11, 1, 12, tzinfo=dt.UTC)


async def finished_campaign(conn: asyncpg.Connection, leads: int) -> tuple[int, list[int]]:
    """A campaign done with (the rows of one not finished are kept whatever the relay did)."""
    campaign_id, ids = await make_campaign(conn, leads)
    await conn.execute("UPDATE campaigns SET status = 'finished' WHERE id = $1", campaign_id)
    return campaign_id, ids


async def test_a_partition_the_relay_has_not_passed_is_kept(conn: asyncpg.Connection) -> None:
    config = config_mod.from_mapping({"kafka": {"bootstrap_servers": ["127.0.0.1:1"]}}, env={})
    campaign_id, leads = await finished_campaign(conn, 5)
    await partitions.create_day(conn, "email_log", OLD.date())
    await conn.copy_records_to_table(
        "email_log",
        records=[(OLD, campaign_id, lead, 1, None, None) for lead in leads],
        columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
    )
    name = partitions.partition_name("email_log", OLD.date())

    # No position yet, start "earliest": the relay will need these rows.
    actions = await retention.maintain(conn, config, ahead_days=1, today=TODAY)
    assert [str(a) for a in actions if a.verb == "kept"] == [
        f"kept email_log {name}: rows the relay has not passed"
    ]
    assert metrics.PARTITIONS_KEPT_FOR_RELAY.labels("email_log")._value.get() == 1
    assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)

    taken = await relay_db.take_positions(conn, ["kafka"], position_mod.earliest(), "test")
    snapshot, _ = await outbox.snapshot(conn)
    assert await relay_db.commit_position(
        conn, "kafka", taken["kafka"].epoch, snapshot, as_of=dt.datetime.now(dt.UTC), published=5
    )
    actions = await retention.maintain(conn, config, ahead_days=1, today=TODAY)
    assert f"dropped email_log {name}" in [str(a) for a in actions]
    assert metrics.PARTITIONS_KEPT_FOR_RELAY.labels("email_log")._value.get() == 0


async def test_without_destinations_retention_is_as_before(conn: asyncpg.Connection) -> None:
    config = config_mod.from_mapping({}, env={})
    campaign_id, leads = await finished_campaign(conn, 2)
    await partitions.create_day(conn, "email_log", OLD.date())
    await conn.copy_records_to_table(
        "email_log",
        records=[(OLD, campaign_id, lead, 1, None, None) for lead in leads],
        columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
    )
    actions = await retention.maintain(conn, config, ahead_days=1, today=TODAY)
    assert not [a for a in actions if a.verb == "kept"]
    assert f"dropped email_log {partitions.partition_name('email_log', OLD.date())}" in [
        str(a) for a in actions
    ]


async def test_a_partition_holding_rows_of_a_campaign_not_finished_is_kept(conn: asyncpg.Connection) -> None:
    """A send window's shard skips the leads the campaign already logged, and crash recovery
    logs unknown only the reserved leads without a row: dropping a running or paused
    campaign's rows let it email those leads again. They are kept (and counted) until it ends."""
    config = config_mod.from_mapping({}, env={})
    running, leads = await make_campaign(conn, 3)
    done, _ = await finished_campaign(conn, 0)
    older = OLD - dt.timedelta(days=1)
    for day in (older, OLD):
        await partitions.create_day(conn, "email_log", day.date())
    rows = [(OLD, running, lead, 1, None, None) for lead in leads[:2]]
    rows += [(older, done, 1, 1, None, None), (OLD - dt.timedelta(days=30), running, leads[2], 1, None, None)]
    await conn.copy_records_to_table(
        "email_log",
        records=rows,
        columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
    )  # the last row, of a day without a partition, is in the default partition
    name = partitions.partition_name("email_log", OLD.date())

    for status in ("running", "paused", "scheduled"):
        await conn.execute("UPDATE campaigns SET status = $2 WHERE id = $1", running, status)
        with capture_logs() as logs:
            actions = [str(a) for a in await retention.maintain(conn, config, ahead_days=1, today=TODAY)]
        assert f"kept email_log {name}: rows of campaigns not finished" in actions
        assert not [a for a in actions if a.startswith("purged email_log")]
        assert metrics.PARTITIONS_KEPT_FOR_CAMPAIGNS.labels("email_log")._value.get() == 1
        assert metrics.PARTITIONS_KEPT_FOR_RELAY.labels("email_log")._value.get() == 0
        assert [entry["detail"] for entry in logs if entry["event"] == "partition_kept_for_campaign"] == [
            f"{name}: rows of campaigns not finished"
        ]
        assert await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", running) == 3
    # The day holding only the finished campaign's row went at the first round.
    assert await partitions.existing_days(conn, "email_log") == [OLD.date(), TODAY]

    await conn.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", running)
    actions = [str(a) for a in await retention.maintain(conn, config, ahead_days=1, today=TODAY)]
    assert f"dropped email_log {name}" in actions
    assert "purged email_log 1 rows older than 2025-12-01 from email_log_default" in actions
    assert metrics.PARTITIONS_KEPT_FOR_CAMPAIGNS.labels("email_log")._value.get() == 0
    assert await conn.fetchval("SELECT count(*) FROM email_log") == 0


async def test_events_of_a_campaign_not_finished_are_kept_and_the_relay_still_holds_them(
    conn: asyncpg.Connection,
) -> None:
    """A running or paused campaign's events went at retention while its log rows stayed: its
    record came apart (the bounce classes an operator reads before resuming a guard's pause, a
    lead's history). They are kept as its log rows are, and a campaign that ends no longer
    keeps them, but the relay's rule still does while a destination has not passed them."""
    config = config_mod.from_mapping({"kafka": {"bootstrap_servers": ["127.0.0.1:1"]}}, env={})
    running, leads = await make_campaign(conn, 3)
    done, _ = await finished_campaign(conn, 0)
    older = OLD - dt.timedelta(days=1)
    for day in (older, OLD):
        await partitions.create_day(conn, "email_events", day.date())

    async def add_events(rows: list[tuple[dt.datetime, int | None, int | None]]) -> None:
        await conn.copy_records_to_table(
            "email_events",
            records=[
                (at, at, 1, campaign, lead, "user@example.com", "soft_bounce", "sink")
                for at, campaign, lead in rows
            ],
            columns=(
                "received_at",
                "occurred_at",
                "account_id",
                "campaign_id",
                "lead_id",
                "email",
                "kind",
                "provider",
            ),
        )

    month_before = OLD - dt.timedelta(days=30)  # a day without a partition: the default partition
    await add_events(
        [
            (OLD, running, leads[0]),
            (older, done, 1),
            (month_before, running, leads[1]),
            (month_before, None, None),
        ]
    )
    taken = await relay_db.take_positions(conn, ["kafka"], position_mod.earliest(), "test")

    async def relay_passes_everything() -> None:
        snapshot, _ = await outbox.snapshot(conn)
        assert await relay_db.commit_position(
            conn, "kafka", taken["kafka"].epoch, snapshot, as_of=dt.datetime.now(dt.UTC), published=1
        )

    await relay_passes_everything()
    name = partitions.partition_name("email_events", OLD.date())
    for status in ("running", "paused", "scheduled"):
        await conn.execute("UPDATE campaigns SET status = $2 WHERE id = $1", running, status)
        with capture_logs() as logs:
            actions = [str(a) for a in await retention.maintain(conn, config, ahead_days=1, today=TODAY)]
        assert f"kept email_events {name}: rows of campaigns not finished" in actions
        assert metrics.PARTITIONS_KEPT_FOR_CAMPAIGNS.labels("email_events")._value.get() == 1
        assert metrics.PARTITIONS_KEPT_FOR_RELAY.labels("email_events")._value.get() == 0
        assert [
            (entry["table"], entry["detail"])
            for entry in logs
            if entry["event"] == "partition_kept_for_campaign"
        ] == [("email_events", f"{name}: rows of campaigns not finished")]
        assert await conn.fetchval("SELECT count(*) FROM email_events WHERE campaign_id = $1", running) == 2
    # The finished campaign's day and the unmatched event (no campaign) went at the first round.
    assert await partitions.existing_days(conn, "email_events") == [OLD.date(), TODAY]
    assert await conn.fetchval("SELECT count(*) FROM email_events WHERE campaign_id IS NULL") == 0

    # A row the relay has not passed (it fell behind): the campaign's end does not drop it.
    await add_events([(OLD, running, leads[2])])
    await conn.execute("UPDATE campaigns SET status = 'finished' WHERE id = $1", running)
    actions = [str(a) for a in await retention.maintain(conn, config, ahead_days=1, today=TODAY)]
    assert f"kept email_events {name}: rows the relay has not passed" in actions
    assert "purged email_events 1 rows older than 2025-12-01 from email_events_default" in actions
    assert metrics.PARTITIONS_KEPT_FOR_CAMPAIGNS.labels("email_events")._value.get() == 0
    assert metrics.PARTITIONS_KEPT_FOR_RELAY.labels("email_events")._value.get() == 1

    await relay_passes_everything()
    actions = [str(a) for a in await retention.maintain(conn, config, ahead_days=1, today=TODAY)]
    assert f"dropped email_events {name}" in actions
    assert await conn.fetchval("SELECT count(*) FROM email_events") == 0


async def test_a_row_committed_while_its_partition_waits_to_be_dropped_keeps_it(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """The checks ran before the drop's lock: a transaction writing a running campaign's row into
    an expired day (rows buffered through a long outage, a node whose clock is behind) that
    committed while the drop waited for its lock was dropped with the day, unchecked. They run
    under the lock now."""
    config = config_mod.from_mapping({}, env={})
    campaign_id, leads = await make_campaign(conn, 1)
    await conn.execute("UPDATE campaigns SET status = 'running' WHERE id = $1", campaign_id)
    await partitions.create_day(conn, "email_log", OLD.date())
    name = partitions.partition_name("email_log", OLD.date())
    writer, maintainer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        async with writer.transaction():
            await writer.execute(
                "INSERT INTO email_log (sent_at, campaign_id, lead_id, status) VALUES ($1, $2, $3, 1)",
                OLD,
                campaign_id,
                leads[0],
            )
            job = asyncio.create_task(retention.maintain(maintainer, config, ahead_days=1, today=TODAY))
            async with asyncio.timeout(10):
                while not job.done() and not await conn.fetchval(
                    "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND relation = $1::regclass)", name
                ):
                    await asyncio.sleep(0.005)
        actions = [str(a) for a in await asyncio.wait_for(job, 10)]
    finally:
        await writer.close()
        await maintainer.close()
    assert f"kept email_log {name}: rows of campaigns not finished" in actions
    assert await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id) == 1
