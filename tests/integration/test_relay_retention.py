"""Retention waits for the relay: a partition past retention whose rows a destination has not
passed is kept (and counted), then dropped once the relay has passed it."""

from __future__ import annotations

import datetime as dt

import asyncpg

from mailerd import config as config_mod
from mailerd import metrics
from mailerd.db import partitions
from mailerd.db import relay as relay_db
from mailerd.relay import outbox, retention
from mailerd.relay import position as position_mod
from tests.integration.relay_rows import make_campaign

TODAY = dt.date(2026, 3, 1)
OLD = dt.datetime(2025, 11, 1, 12, tzinfo=dt.UTC)


async def test_a_partition_the_relay_has_not_passed_is_kept(conn: asyncpg.Connection) -> None:
    config = config_mod.from_mapping({"kafka": {"bootstrap_servers": ["127.0.0.1:1"]}}, env={})
    campaign_id, leads = await make_campaign(conn, 5)
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
    campaign_id, leads = await make_campaign(conn, 2)
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
