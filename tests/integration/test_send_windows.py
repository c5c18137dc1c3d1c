"""Send windows end to end with an injected clock: a window defers exactly the leads outside it,
a window closing mid-shard releases it cleanly, and the campaign finishes once the last zone's
window has passed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import structlog.testing

from mailerd import campaigns, segments, splitting
from mailerd import config as config_mod
from mailerd.db import campaigns as campaign_rows
from mailerd.db import leads as leads_db
from mailerd.db import partitions
from mailerd.db import shards as shards_db
from mailerd.emulator import sink
from mailerd.models import LogStatus
from tests.integration.helpers import (
    daemon_config,
    new_campaign,
    read_record,
    running_daemon,
    wait_for_status,
)

WINDOW = campaigns.SendWindowBody(
    days=["mon", "tue", "wed", "thu", "fri"], start="09:00", end="17:00", default_timezone="America/New_York"
)
TOKYO, NEW_YORK = "Asia/Tokyo", "America/New_York"


class Clock:
    """The scheduler's time, moved by the test."""

    def __init__(self, now: str) -> None:
        self.now = dt.datetime.fromisoformat(now)

    def set(self, now: str) -> None:
        self.now = dt.datetime.fromisoformat(now)

    def __call__(self) -> dt.datetime:
        return self.now


async def _leads(conn: asyncpg.Connection, count: int) -> dict[str, set[int]]:
    """``count`` leads: a third in Tokyo or Seoul, a third in New York, the rest with no zone or
    an invalid one (the default zone, New York). Returns the lead ids per zone."""

    def attributes(n: int) -> dict[str, Any]:
        if n % 3 == 0:  # Seoul's clock is Tokyo's: they share shards
            return {"n": n, "timezone": TOKYO if n % 2 else "Asia/Seoul"}
        if n % 3 == 1:
            return {"n": n, "timezone": NEW_YORK}
        return {"n": n} if n % 2 else {"n": n, "timezone": "Mars/Olympus"}

    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@example.com", attributes(n)) for n in range(count)],
        columns=("account_id", "email", "attributes"),
    )
    rows = await conn.fetch("SELECT id, attributes->>'timezone' AS tz FROM leads WHERE account_id = 1")
    zones: dict[str, set[int]] = {TOKYO: set(), NEW_YORK: set()}
    for row in rows:
        zones[TOKYO if row["tz"] in (TOKYO, "Asia/Seoul") else NEW_YORK].add(row["id"])
    return zones


async def _logged(conn: asyncpg.Connection, campaign_id: int) -> collections.Counter[int]:
    rows = await conn.fetch("SELECT lead_id FROM email_log WHERE campaign_id = $1", campaign_id)
    return collections.Counter(r["lead_id"] for r in rows)


async def _assert_both_zones_sent_once(
    conn: asyncpg.Connection, campaign_id: int, zones: dict[str, set[int]], info: dict[str, Any], record: Path
) -> None:
    """Every lead of both zones logged once and sent once, none ``unknown``."""
    logged = await _logged(conn, campaign_id)
    assert set(logged) == zones[TOKYO] | zones[NEW_YORK]
    assert max(logged.values()) == 1
    assert info["sent"] == len(zones[TOKYO] | zones[NEW_YORK]) and info["unknown"] == 0
    sent = collections.Counter(int(line["lead_id"]) for line in read_record(record))
    assert set(sent) == set(logged) and max(sent.values()) == 1


async def _wait(conn: asyncpg.Connection, sql: str, *args: Any, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await conn.fetchval(sql, *args):
            await asyncio.sleep(0.05)


async def _move(conn: asyncpg.Connection, lead_id: int, zone: str) -> None:
    """The lead's time zone attribute changes (its user updated their profile)."""
    await conn.execute(
        "UPDATE leads SET attributes = jsonb_set(attributes, '{timezone}', to_jsonb($2::text)) WHERE id = $1",
        lead_id,
        zone,
    )


@contextlib.asynccontextmanager
async def _windowed(
    conn: asyncpg.Connection, tmp_path: Path
) -> AsyncIterator[tuple[config_mod.Config, int, sink.Sink, Path]]:
    """A sink recording what it is sent, and a campaign over every lead with :data:`WINDOW`
    (shards of 100): the config, the campaign's id, the sink and its record file."""
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record, seed=1)
    port = await emulator.start()
    try:
        config = daemon_config(port, scheduler={"shard_size": 100})
        campaign_id = await campaigns.create(
            conn, new_campaign(segment={"all": []}, send_window=WINDOW), config
        )
        yield config, campaign_id, emulator, record
    finally:
        await emulator.close()


ZONE_DONE = """SELECT bool_and(state = 'done') FROM campaign_shards
               WHERE campaign_id = $1 AND $2 = ANY(zone_names)"""


async def test_a_window_defers_exactly_the_leads_outside_it(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    zones = await _leads(conn, 600)
    # Wednesday 01:00 UTC: 10:00 in Tokyo (open), Tuesday 20:00 in New York (closed).
    clock = Clock("2026-01-07T01:00:00+00:00")
    async with _windowed(conn, tmp_path) as (config, campaign_id, emulator, record):
        async with running_daemon(config, dsn, clock=clock):
            await _wait(conn, ZONE_DONE, campaign_id, TOKYO)
            logged = await _logged(conn, campaign_id)
            assert set(logged) == zones[TOKYO]  # only the open zone's leads, each once
            assert max(logged.values()) == 1
            waiting = await conn.fetch(
                """SELECT DISTINCT zone, not_before FROM campaign_shards
                   WHERE campaign_id = $1 AND state = 'pending'""",
                campaign_id,
            )
            assert [(r["zone"], r["not_before"]) for r in waiting] == [
                (NEW_YORK, dt.datetime.fromisoformat("2026-01-07T14:00:00+00:00"))
            ]
            shard_zones = await conn.fetch(
                "SELECT DISTINCT zone, zone_names FROM campaign_shards WHERE campaign_id = $1", campaign_id
            )
            assert {r["zone"]: r["zone_names"] for r in shard_zones} == {
                "Asia/Seoul": ["Asia/Seoul", TOKYO],  # one clock: one set of shards
                NEW_YORK: [NEW_YORK],
            }
            info = await campaigns.show(conn, campaign_id)
            assert info is not None and info["status"] == "running"
            assert info["send_window"]["default_timezone"] == NEW_YORK
            pending = await conn.fetchval(
                "SELECT count(*) FROM campaign_shards WHERE campaign_id = $1 AND state = 'pending'",
                campaign_id,
            )
            assert info["shards_waiting"] == pending > 0
            assert info["waiting_until"] == dt.datetime.fromisoformat("2026-01-07T14:00:00+00:00")

            clock.set("2026-01-07T14:30:00+00:00")  # 09:30 in New York, 23:30 in Tokyo
            info = await wait_for_status(conn, campaign_id)
        await emulator.flush()
    await _assert_both_zones_sent_once(conn, campaign_id, zones, info, record)


async def test_a_window_closing_mid_shard_releases_it_cleanly_until_the_next_opening(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    zones = await _leads(conn, 600)
    clock = Clock("2026-01-07T01:00:00+00:00")  # Tokyo open, New York closed
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record, seed=2)
    port = await emulator.start()
    try:
        config = daemon_config(port, provider={"batch_size": 10})
        new = new_campaign(segment={"all": []}, rate_per_s=60, send_window=WINDOW)
        campaign_id = await campaigns.create(conn, new, config)
        async with running_daemon(config, dsn, clock=clock):
            await _wait(conn, "SELECT count(*) >= 20 FROM email_log WHERE campaign_id = $1", campaign_id)
            clock.set("2026-01-07T08:30:00+00:00")  # 17:30 in Tokyo: closed; New York still closed
            await _wait(
                conn,
                """SELECT bool_and(owner IS NULL AND not_before IS NOT NULL) FROM campaign_shards
                   WHERE campaign_id = $1 AND state = 'pending'""",
                campaign_id,
            )
            tokyo = await conn.fetchrow(
                "SELECT * FROM campaign_shards WHERE campaign_id = $1 AND $2 = ANY(zone_names)",
                campaign_id,
                TOKYO,
            )
            assert tokyo["state"] == "pending" and tokyo["released_clean"]
            assert tokyo["not_before"] == dt.datetime.fromisoformat("2026-01-08T00:00:00+00:00")
            statuses = await conn.fetch(
                "SELECT DISTINCT status FROM email_log WHERE campaign_id = $1", campaign_id
            )
            assert [r["status"] for r in statuses] == [LogStatus.SENT]  # nothing left unknown
            logged = await _logged(conn, campaign_id)
            assert set(logged) < zones[TOKYO]  # stopped part way, no other zone touched

            clock.set("2026-01-08T00:30:00+00:00")  # Thursday 09:30 in Tokyo
            await _wait(conn, ZONE_DONE, campaign_id, TOKYO)
            clock.set("2026-01-08T14:30:00+00:00")  # Thursday 09:30 in New York
            info = await wait_for_status(conn, campaign_id, timeout=60)
        await emulator.flush()
    finally:
        await emulator.close()
    await _assert_both_zones_sent_once(conn, campaign_id, zones, info, record)


async def test_crash_recovery_of_a_zone_shard_touches_only_its_zone(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """A node died holding the Tokyo shard with every lead reserved: the next claim logs only
    Tokyo's leads ``unknown``; New York's, in the same id range, are sent in their window."""
    zones = await _leads(conn, 300)
    clock = Clock("2026-01-07T01:00:00+00:00")  # Tokyo open, New York closed
    emulator = sink.Sink(record=tmp_path / "record.jsonl", seed=3)
    port = await emulator.start()
    try:
        config = daemon_config(port)
        campaign_id = await campaigns.create(
            conn, new_campaign(segment={"all": []}, send_window=WINDOW), config
        )
        assert await campaign_rows.sweep(conn, "due", cause="test") == [campaign_id]
        await splitting.split_campaign(conn, campaign_id, 1000, now=clock())
        await conn.execute(
            """UPDATE campaign_shards SET reserved_upto = lead_id_to, released_clean = false, epoch = 1,
                                          owner = 'dead-node'
               WHERE campaign_id = $1 AND $2 = ANY(zone_names)""",
            campaign_id,
            TOKYO,
        )
        async with running_daemon(config, dsn, clock=clock):
            await _wait(conn, ZONE_DONE, campaign_id, TOKYO)
            rows = await conn.fetch(
                "SELECT lead_id, status FROM email_log WHERE campaign_id = $1", campaign_id
            )
            assert {r["lead_id"] for r in rows} == zones[TOKYO]
            assert {r["status"] for r in rows} == {LogStatus.UNKNOWN}
            clock.set("2026-01-07T14:30:00+00:00")  # New York opens
            info = await wait_for_status(conn, campaign_id)
    finally:
        await emulator.close()
    rows = await conn.fetch("SELECT lead_id, status FROM email_log WHERE campaign_id = $1", campaign_id)
    status = {r["lead_id"]: r["status"] for r in rows}
    assert len(rows) == len(status) == 300
    assert {lead for lead, s in status.items() if s == LogStatus.SENT} == zones[NEW_YORK]
    assert info["unknown"] == len(zones[TOKYO]) and info["sent"] == len(zones[NEW_YORK])


async def test_retention_keeps_the_rows_of_a_campaign_still_sending(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """A zone's shards skip the leads the campaign has logged. The New York leads wait for their
    window past the retention period; a Tokyo lead sent then moves to New York. Retention (run
    at the daemon's start) dropped the running campaign's rows, and the lead was emailed again."""
    await conn.copy_records_to_table(
        "leads",
        records=[(1, f"user{n}@example.com", {"timezone": TOKYO if n < 30 else NEW_YORK}) for n in range(60)],
        columns=("account_id", "email", "attributes"),
    )
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record, seed=1)
    port = await emulator.start()
    try:
        config = daemon_config(port, scheduler={"shard_size": 100}, retention={"days": 7})
        campaign_id = await campaigns.create(
            conn, new_campaign(segment={"all": []}, send_window=WINDOW), config
        )
        clock = Clock("2026-01-07T01:00:00+00:00")  # Tokyo open, New York closed
        async with running_daemon(config, dsn, clock=clock):
            await _wait(conn, ZONE_DONE, campaign_id, TOKYO)
        # Ten days pass (the database's days: retention counts them), the campaign running.
        today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
        await partitions.create_day(conn, "email_log", today - dt.timedelta(days=10))
        await conn.execute(
            "UPDATE email_log SET sent_at = sent_at - interval '10 days' WHERE campaign_id = $1", campaign_id
        )
        moved = await conn.fetchval("SELECT min(id) FROM leads WHERE attributes->>'timezone' = $1", TOKYO)
        await conn.execute(
            """UPDATE leads SET attributes = jsonb_set(attributes, '{timezone}', to_jsonb($2::text))
               WHERE id = $1""",
            moved,
            NEW_YORK,
        )
        clock.set("2026-01-07T14:30:00+00:00")  # New York open
        async with running_daemon(config, dsn, clock=clock):
            info = await wait_for_status(conn, campaign_id, timeout=60)
        await emulator.flush()
    finally:
        await emulator.close()
    sent = collections.Counter(int(line["lead_id"]) for line in read_record(record))
    assert sent[moved] == 1
    assert set(sent.values()) == {1} and len(sent) == 60
    assert info["sent"] == 60
    assert await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id) == 60


async def test_a_lead_moving_to_a_zone_already_done_is_sent_in_its_new_zones_window(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """A New York lead waiting for its window moves to Tokyo, whose shards are done: New York's
    shards no longer take it and Tokyo's are past it. Once every shard is done the campaign finds
    it unsent and gives it a shard of Tokyo's, sent in Tokyo's next window; only then does the
    campaign finish (it finished with the lead never sent)."""
    zones = await _leads(conn, 300)
    clock = Clock("2026-01-07T01:00:00+00:00")  # 10:00 in Tokyo (open), 20:00 in New York (closed)
    async with _windowed(conn, tmp_path) as (config, campaign_id, emulator, record):
        async with running_daemon(config, dsn, clock=clock):
            await _wait(conn, ZONE_DONE, campaign_id, TOKYO)
            mover = min(zones[NEW_YORK] - set(await _logged(conn, campaign_id)))
            await _move(conn, mover, TOKYO)
            clock.set("2026-01-07T14:30:00+00:00")  # 09:30 in New York, 23:30 in Tokyo
            await _wait(conn, ZONE_DONE, campaign_id, NEW_YORK, timeout=60)
            # Every shard done, the mover unsent: a shard of Tokyo's waits for Tokyo's window.
            await _wait(
                conn,
                """SELECT count(*) = 1 FROM campaign_shards
                   WHERE campaign_id = $1 AND state = 'pending' AND $2 = ANY(zone_names)
                     AND not_before = '2026-01-08T00:00:00+00:00'""",
                campaign_id,
                TOKYO,
            )
            info = await campaigns.show(conn, campaign_id)
            assert info is not None and info["status"] == "running"
            assert mover not in await _logged(conn, campaign_id)
            clock.set("2026-01-08T00:30:00+00:00")  # Thursday 09:30 in Tokyo
            info = await wait_for_status(conn, campaign_id, timeout=60)
        await emulator.flush()
    await _assert_both_zones_sent_once(conn, campaign_id, zones, info, record)


async def test_a_lead_moving_from_a_zone_done_to_one_not_yet_open_is_sent_once(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """A Tokyo lead already sent moves to New York before New York's window opens: New York's
    shards skip it (it has its row), and the check that finds unsent leads does not count it."""
    zones = await _leads(conn, 300)
    clock = Clock("2026-01-07T01:00:00+00:00")  # Tokyo open, New York closed
    async with _windowed(conn, tmp_path) as (config, campaign_id, emulator, record):
        async with running_daemon(config, dsn, clock=clock):
            await _wait(conn, ZONE_DONE, campaign_id, TOKYO)
            mover = min(zones[TOKYO])
            await _move(conn, mover, NEW_YORK)
            clock.set("2026-01-07T14:30:00+00:00")  # New York open
            info = await wait_for_status(conn, campaign_id, timeout=60)
        await emulator.flush()
        shards = await conn.fetchval(
            "SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id
        )
    await _assert_both_zones_sent_once(conn, campaign_id, zones, info, record)
    assert shards == 3  # the split's (two of New York, one of Tokyo's group): no lead was left over


async def test_unsent_leads_get_shards_of_the_zone_they_are_in_now(conn: asyncpg.Connection) -> None:
    """The check at the end: each unsent lead goes to the group whose condition takes it now (a
    zone no lead had at the split goes to the default zone's), one shard per group over just the
    unsent ids, waiting for a closed window; the campaign finishes when nothing is left."""
    zones = await _leads(conn, 300)
    now = dt.datetime.fromisoformat("2026-01-07T01:00:00+00:00")  # Tokyo open, New York closed
    config = daemon_config(0)
    campaign_id = await campaigns.create(conn, new_campaign(segment={"all": []}, send_window=WINDOW), config)
    assert await campaign_rows.sweep(conn, "due", cause="test") == [campaign_id]
    assert await splitting.split_campaign(conn, campaign_id, 100, now=now) == 3
    to_tokyo, to_berlin, *_ = sorted(zones[NEW_YORK])
    await _move(conn, to_tokyo, TOKYO)
    await _move(conn, to_berlin, "Europe/Berlin")
    await conn.execute(
        """INSERT INTO email_log (sent_at, campaign_id, lead_id, status)
           SELECT now(), $1, id, 1 FROM leads WHERE account_id = 1 AND id <> ALL($2::bigint[])""",
        campaign_id,
        [to_tokyo, to_berlin],
    )
    await conn.execute(
        "UPDATE campaign_shards SET state = 'done', checkpoint = lead_id_to, reserved_upto = lead_id_to"
    )
    # The writer's sweep leaves a windowed campaign to this check.
    assert await campaign_rows.sweep(conn, "done", cause="test", ids=[campaign_id]) == []

    assert not await splitting.finish_windowed(conn, campaign_id, 100, now=now)
    added = await conn.fetch(
        """SELECT shard_no, zone, zone_names, lead_id_from, lead_id_to, checkpoint, not_before, unsent_round
           FROM campaign_shards WHERE campaign_id = $1 AND state = 'pending' ORDER BY shard_no""",
        campaign_id,
    )
    assert [tuple(r) for r in added] == [
        (3, NEW_YORK, [NEW_YORK], to_berlin - 1, to_berlin, to_berlin - 1, now.replace(hour=14), 1),
        (4, "Asia/Seoul", ["Asia/Seoul", TOKYO], to_tokyo - 1, to_tokyo, to_tokyo - 1, None, 1),
    ]
    assert not await splitting.finish_windowed(conn, campaign_id, 100, now=now)  # not done yet
    assert (
        await conn.fetchval("SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id) == 5
    )

    await conn.execute(
        """INSERT INTO email_log (sent_at, campaign_id, lead_id, status)
           SELECT now(), $1, unnest($2::bigint[]), 1""",
        campaign_id,
        [to_tokyo, to_berlin],
    )
    await conn.execute(
        "UPDATE campaign_shards SET state = 'done', checkpoint = lead_id_to, reserved_upto = lead_id_to"
    )
    assert await campaign_rows.windowed_done(conn) == [campaign_id]
    assert await splitting.finish_windowed(conn, campaign_id, 100, now=now)
    assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id) == "finished"
    assert await campaign_rows.windowed_done(conn) == []


async def test_the_check_for_unsent_leads_gives_up_after_a_few_rounds(conn: asyncpg.Connection) -> None:
    """A lead left unsent round after round (it keeps moving, or it newly matches the segment as
    fast as the rounds end) stops keeping the campaign running after UNSENT_ROUNDS checks."""
    await conn.execute("INSERT INTO leads (account_id, email, attributes) VALUES (1, 'a@example.com', '{}')")
    now = dt.datetime.fromisoformat("2026-01-07T15:00:00+00:00")  # New York, the default, open
    campaign_id = await campaigns.create(
        conn, new_campaign(segment={"all": []}, send_window=WINDOW), daemon_config(0)
    )
    assert await campaign_rows.sweep(conn, "due", cause="test") == [campaign_id]
    await splitting.split_campaign(conn, campaign_id, 100, now=now)
    done = "UPDATE campaign_shards SET state = 'done', checkpoint = lead_id_to, reserved_upto = lead_id_to"
    for _ in range(splitting.UNSENT_ROUNDS):
        await conn.execute(done)  # done, the lead unsent (its zone changed under every round)
        assert not await splitting.finish_windowed(conn, campaign_id, 100, now=now)
    await conn.execute(done)
    with structlog.testing.capture_logs() as logs:
        assert await splitting.finish_windowed(conn, campaign_id, 100, now=now)
    assert [(e["event"], e["leads"], e["rounds"]) for e in logs] == [
        ("campaign_finished_with_unsent_leads", 1, splitting.UNSENT_ROUNDS)
    ]
    rounds = await conn.fetch(
        "SELECT unsent_round, count(*) FROM campaign_shards WHERE campaign_id = $1 GROUP BY 1 ORDER BY 1",
        campaign_id,
    )
    assert [tuple(r) for r in rounds] == [(n, 1) for n in range(splitting.UNSENT_ROUNDS + 1)]


async def test_a_zone_path_never_reads_into_an_array(conn: asyncpg.Connection) -> None:
    """A zone attribute path is read as segments read one (arrays are never traversed): the
    split's ``#>`` found ``Asia/Tokyo`` at ``tz.0`` of ``{"tz": ["Asia/Tokyo"]}`` and gave it to
    Tokyo's shards, whose condition ``attributes.tz.0 in [...]`` never matches it: the lead was
    sent in the default zone's window instead, and counted in a zone it is not in."""
    await conn.execute(
        """INSERT INTO leads (account_id, email, attributes) VALUES
           (1, 'array@example.com', '{"tz": ["Asia/Tokyo"]}'),
           (1, 'object@example.com', '{"tz": {"0": "Asia/Tokyo"}}')"""
    )
    ids = {r["email"]: r["id"] for r in await conn.fetch("SELECT id, email FROM leads")}
    everyone = segments.parse({"all": []})
    found = await shards_db.zone_boundaries(conn, 1, everyone, ("tz", "0"), 1)
    assert found == {None: [ids["array@example.com"]], TOKYO: [ids["object@example.com"]]}
    unsent = await shards_db.unsent_zones(conn, 1, 0, everyone, ("tz", "0"), max(ids.values()), 1)
    assert {zone: (u.first, u.count) for zone, u in unsent.items()} == {
        None: (ids["array@example.com"], 1),
        TOKYO: (ids["object@example.com"], 1),
    }
    tokyo = segments.parse({"field": "attributes.tz.0", "op": "in", "value": [TOKYO]})
    assert await leads_db.count_segment(conn, 1, tokyo) == 1  # the object's lead, as split
