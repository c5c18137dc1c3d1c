"""The reports destination against a real reports database: rows and rollups from records, a
record delivered twice changes nothing, an erasure removes the address everywhere (counts stay),
retention drops whole months."""

from __future__ import annotations

import asyncio
import datetime as dt
import types
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from structlog.testing import capture_logs

from mailerd import config as config_mod
from mailerd.db import connect, reports_load, reports_read, reports_schema
from mailerd.erasure import key_pads
from mailerd.relay import records
from mailerd.relay.destination import DestinationUnavailable, HoldsPools
from mailerd.relay.records import Record
from mailerd.relay.reports import MIN_PART, RETRY_DEFERRED_S, ReportsDestination, split
from tests.integration.helpers import leading_relay

AT = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
KEY = "erasure-key-for-tests"


def email(lead: int, status: int = 1, *, campaign: int = 7, at: dt.datetime = AT) -> Record:
    return records.email(
        tx=lead, campaign_id=campaign, lead_id=lead, status=status, provider_message_id=f"m-{lead}",
        error=None if status == 1 else "refused", sent_at=at, account_id=3, provider="sink",
        address=f"Lead{lead}@Example.COM" if lead % 2 else f"lead{lead}@other.org",
    )  # fmt: skip


def event(lead: int, kind: str, *, reason: str | None = None, campaign: int = 7) -> Record:
    return records.event(
        {
            "tx": 1000 + lead, "kind": kind, "account_id": 3, "campaign_id": campaign, "lead_id": lead,
            "email": f"lead{lead}@example.com" if lead % 2 else f"lead{lead}@other.org", "provider": "ses",
            "provider_event_id": f"ev-{kind}-{lead}:lead{lead}@example.com",
            "provider_message_id": f"m-{lead}",
            "provider_type": None, "reason": reason, "smtp_status": "5.1.1" if "bounce" in kind else None,
            "bounce_class": "invalid_recipient" if kind == "hard_bounce" else None,
            "occurred_at": AT + dt.timedelta(minutes=2), "received_at": AT + dt.timedelta(minutes=2),
        }
    )  # fmt: skip


def batch() -> list[Record]:
    """Ten emails (one failed, one unknown), two hard bounces, a soft one, a complaint, deliveries."""
    out = [email(n) for n in range(1, 9)] + [email(9, 2), email(10, 3)]
    out += [event(n, "delivered") for n in range(3, 9)]
    out += [event(1, "hard_bounce", reason="550 5.1.1 <lead1@example.com>: no such user")]
    out += [event(2, "hard_bounce", reason="550 5.1.1 <lead2@other.org>: no such user")]
    out += [event(3, "soft_bounce", reason="452 mailbox full"), event(4, "complaint")]
    return records.merged(out)


@pytest.fixture
async def reports(reports_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect.connect(reports_dsn)
    try:
        yield conn
    finally:
        await conn.close()


def destination(
    reports_dsn: str,
    *,
    load_connections: int = 2,
    retention_days: int = 400,
    now: Callable[[], dt.datetime] = lambda: AT + dt.timedelta(days=1),  # the records' time, not the clock's
    clock: Callable[[], float] = lambda: 0.0,
) -> ReportsDestination:
    privacy = config_mod.PrivacyConfig(erasure_key=config_mod.Secret(KEY))
    config = config_mod.ReportsConfig(load_connections=load_connections, retention_days=retention_days)
    return ReportsDestination(config, reports_dsn, privacy, now=now, clock=clock)


async def totals(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    sums = ", ".join(f"coalesce(sum({c}), 0)::bigint AS {c}" for c in reports_load.COUNTERS)
    return dict(await conn.fetchrow(f"SELECT {sums} FROM {table}"))


async def snapshot(conn: asyncpg.Connection) -> list[object]:
    return [
        await totals(conn, "report_campaign_minutes"),
        await totals(conn, "report_campaign_domains"),
        await totals(conn, "report_account_days"),
        await conn.fetch("SELECT * FROM report_bounce_reasons ORDER BY 1, 2, 3, 4"),
        await conn.fetchval("SELECT count(*) FROM report_emails"),
        await conn.fetchval("SELECT count(*) FROM report_events"),
    ]


async def test_records_load_rows_and_rollups_and_twice_changes_nothing(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    target = destination(reports_dsn)
    try:
        await target.deliver(batch())
        first = await snapshot(reports)
        # Delivered again (a crash before the position's commit), and again split otherwise.
        await target.deliver(batch())
        await target.deliver(batch()[3:9])
    finally:
        await target.close()
    assert await snapshot(reports) == first
    want = {
        "sent": 8, "failed": 1, "unknown": 1, "suppressed": 0, "delivered": 6, "bounced_hard": 2,
        "bounced_soft": 1, "complained": 1, "unsubscribed": 0,
    }  # fmt: skip
    assert first[0] == first[1] == first[2] == want
    domains = await reports.fetch(
        "SELECT domain, sent, bounced_hard FROM report_campaign_domains WHERE campaign_id = 7 ORDER BY domain"
    )
    assert [tuple(r) for r in domains] == [("example.com", 4, 1), ("other.org", 4, 1)]
    reasons = await reports.fetch("SELECT bounce, smtp_status, reason, count FROM report_bounce_reasons")
    assert sorted(tuple(r) for r in reasons) == [
        ("hard", "5.1.1", "550 5.1.1 <<address>>: no such user", 2),
        ("soft", "5.1.1", "452 mailbox full", 1),
    ]
    address = await reports.fetchval("SELECT address FROM report_emails WHERE lead_id = 1")
    assert address == "lead1@example.com"  # stored lower-cased
    assert await reports.fetchval("SELECT count(*) FROM report_emails_p202603") == 10


async def test_one_statement_reads_the_whole_campaign_report(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    """Totals, both series (latest buckets, oldest first), top domains and reasons, as the
    separate reads of each rollup would give them; a campaign with nothing loaded reads zeros."""
    minutes = [AT + dt.timedelta(minutes=m) for m in (0, 1, 1, 70, 70, 70)]  # two hours, three minutes
    extra = [email(20 + n, campaign=7, at=at) for n, at in enumerate(minutes)]
    target = destination(reports_dsn)
    try:
        await target.deliver(records.merged(batch() + extra))
    finally:
        await target.close()
    rows = await reports_read.campaign_report(reports, 7, points=2, top=1)
    assert rows.totals == await totals(reports, "report_campaign_minutes")
    per_minute = [(r["at"], r["sent"] + r["failed"] + r["unknown"]) for r in rows.series["minute"]]
    mark = AT.replace(second=0, microsecond=0)
    # The latest two minutes: the events' minute (no emails) and the last emails'.
    assert per_minute == [(mark + dt.timedelta(minutes=2), 0), (mark + dt.timedelta(minutes=70), 3)]
    per_hour = [(r["at"], r["sent"] + r["failed"] + r["unknown"]) for r in rows.series["hour"]]
    hour = AT.replace(minute=0, second=0, microsecond=0)
    assert per_hour == [(hour, 13), (hour + dt.timedelta(hours=1), 3)]
    assert sum(r["bounced_hard"] for r in rows.series["hour"]) == rows.totals["bounced_hard"] == 2
    # The top domain by emails (example.com: the odd leads of batch() and of the extras).
    assert [(d["domain"], d["sent"]) for d in rows.domains] == [("example.com", 7)]
    assert [(r["bounce"], r["count"]) for r in rows.reasons] == [("hard", 2)]
    empty = await reports_read.campaign_report(reports, 8, points=10, top=10)
    assert set(empty.totals.values()) == {0}
    assert empty.series == {"minute": [], "hour": []} and empty.domains == [] == empty.reasons
    message = await reports_read.message(reports, "m-1")
    assert message is not None and message["lead_id"] == 1
    assert [e["type"] for e in message["events"]] == ["hard_bounce"]
    assert await reports_read.message(reports, "m-none") is None


async def test_an_erasure_removes_the_address_from_every_table_and_counts_stay(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    ipad, opad = key_pads(KEY.encode())
    # An event that matched no lead but names the address: found by its keyed hash.
    stray = records.event(
        {
            "tx": 5000, "kind": "complaint", "account_id": None, "campaign_id": None, "lead_id": None,
            "email": "lead1@example.com", "provider": "ses", "provider_event_id": "stray:lead1@example.com",
            "provider_message_id": None, "provider_type": "abuse LEAD1@example.com",
            "reason": "from Lead1@Example.COM",
            "smtp_status": None, "bounce_class": None, "occurred_at": AT, "received_at": AT,
        }
    )  # fmt: skip
    # A provider's diagnostic quotes the address in its own case (the erasure missed it).
    refused = records.email(
        tx=5001, campaign_id=8, lead_id=1, status=2, provider_message_id="m-8-1",
        error="550 5.1.1 <LEAD1@Example.com>: user unknown", sent_at=AT, account_id=3, provider="sink",
        address="Lead1@Example.COM",
    )  # fmt: skip
    hashed = await reports.fetchval(
        "SELECT sha256($2::bytea || sha256($1::bytea || convert_to('lead1@example.com', 'UTF8')))", ipad, opad
    )
    erasure = records.erasure(
        {"tx": 6000, "id": 1, "account_id": 3, "email_hashes": [hashed], "lead_ids": [1], "at": AT}
    )
    target = destination(reports_dsn)
    try:
        await target.deliver([*batch(), stray, refused])
        before = await snapshot(reports)
        await target.deliver([erasure])
        await target.deliver([erasure])  # twice: applied once
    finally:
        await target.close()
    for table in ("report_emails", "report_events"):
        found = await reports.fetchval(
            f"SELECT count(*) FROM {table} "
            "WHERE address = 'lead1@example.com' OR lead_id = 1 AND address IS NOT NULL"
        )
        assert found == 0, table
        text = await reports.fetchval(f"SELECT string_agg(t::text, ' ') FROM {table} t")
        assert "lead1@" not in text.lower(), table
    assert await reports.fetchval("SELECT count(*) FROM report_emails WHERE address IS NULL") == 2
    assert await reports.fetchval("SELECT count(*) FROM report_events WHERE address IS NULL") == 2
    assert (
        await reports.fetchval("SELECT count(*) FROM report_events WHERE address = 'lead3@example.com'") == 2
    )
    after = await snapshot(reports)
    assert after[:4] == before[:4]  # counts stay
    assert await reports.fetchval("SELECT count(*) FROM report_erasures") == 1


def broken(record: Record) -> Record:
    """The record with a status the table refuses (NOT NULL): its transaction fails."""
    value = record.value.replace(b'"status":"sent"', b'"status":null')
    return records.from_database(record.kind, record.tx, record.at, record.key, value)


async def test_a_batch_split_across_connections_counts_each_record_once_even_retried_after_a_failed_part(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    leads = range(1, 2 * MIN_PART + 201)
    good = records.merged([email(n) for n in leads] + [event(n, "delivered") for n in leads])
    emails = [r for r in good if r.kind == "email"]
    # The last email's part fails; the other parts may have committed or been cancelled.
    bad = [broken(r) if r is emails[-1] else r for r in good]
    target = destination(reports_dsn, load_connections=2)
    try:
        assert [len(p) for p in split(emails, 2, MIN_PART)] == [600, 600]
        with pytest.raises(DestinationUnavailable, match="NotNullViolation"):
            await target.deliver(bad)
        loaded = await reports.fetchval("SELECT count(*) FROM report_emails")
        assert loaded in (0, 600)  # a part is all or nothing
        assert (await totals(reports, "report_campaign_minutes"))["sent"] == loaded
        # The relay retries the whole batch: what was committed before conflicts, counts nothing.
        await target.deliver(good)
        await target.deliver(good)
    finally:
        await target.close()
    want = dict.fromkeys(reports_load.COUNTERS, 0) | {"sent": len(leads), "delivered": len(leads)}
    first = await snapshot(reports)
    assert first[0] == first[1] == first[2] == want
    assert first[4:] == [len(leads), len(leads)]


async def test_an_erasure_in_a_split_batch_erases_what_came_before_it_and_nothing_after(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    later = AT + dt.timedelta(hours=1)
    before = [email(n) for n in range(1, 2 * MIN_PART + 1)]
    erasure = records.erasure(
        {"tx": 9000, "id": 2, "account_id": 3, "email_hashes": [], "lead_ids": [1, 2], "at": AT}
    )
    # The same leads again after it (a lead created again with the address, a new campaign).
    after = [email(n, campaign=8, at=later) for n in range(1, 2 * MIN_PART + 1)]
    target = destination(reports_dsn, load_connections=2)
    try:
        await target.deliver([*before, erasure, *after])
    finally:
        await target.close()
    rows = await reports.fetch(
        "SELECT campaign_id, lead_id, address FROM report_emails WHERE lead_id IN (1, 2) ORDER BY 1, 2"
    )
    assert [tuple(r) for r in rows] == [
        (7, 1, None), (7, 2, None), (8, 1, "lead1@example.com"), (8, 2, "lead2@other.org"),
    ]  # fmt: skip
    assert await reports.fetchval("SELECT count(*) FROM report_emails WHERE address IS NULL") == 2


def test_split_keeps_order_and_short_lists_whole() -> None:
    assert split([], 2, 3) == []
    assert split([1, 2, 3, 4, 5], 2, 3) == [[1, 2, 3, 4, 5]]
    assert split(list(range(7)), 2, 3) == [[0, 1, 2], [3, 4, 5, 6]]
    assert split(list(range(10)), 4, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]  # none under 3
    assert split(list(range(9)), 1, 3) == [list(range(9))]


async def test_retention_drops_whole_months_only(reports: asyncpg.Connection, reports_dsn: str) -> None:
    old = dt.datetime(2025, 1, 15, tzinfo=dt.UTC)
    target = destination(reports_dsn, retention_days=36_500)
    try:
        await target.deliver([email(1, at=old), email(2, at=AT)])
    finally:
        await target.close()
    for lead, at in (
        (3, dt.datetime(2024, 12, 31, tzinfo=dt.UTC)),
        (4, dt.datetime(2026, 1, 31, tzinfo=dt.UTC)),
    ):
        await reports.execute(
            """INSERT INTO report_emails_default (campaign_id, lead_id, sent_at, account_id, status)
               VALUES (7, $1, $2, 3, 'sent')""",
            lead,
            at,
        )  # rows of months without a partition: the older one is past retention, the other not
    dropped = await reports_schema.maintain(reports, 30, now=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert dropped == ["report_emails_p202501", "report_events_p202501"]
    assert await reports.fetchval("SELECT lead_id FROM report_emails_default") == 4
    assert await reports.fetchval("SELECT count(*) FROM report_emails") == 2
    assert await reports.fetchval("SELECT count(*) FROM report_account_days") == 1
    assert await reports.fetchval("SELECT to_regclass('report_emails_p202604') IS NOT NULL")


async def test_a_record_of_a_month_retention_may_have_dropped_is_not_loaded(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    """The relay loaded January 2025 while it was current and remembered its partitions; the
    daemon's maintenance (another process, perhaps) dropped the month 400 days on. A record of it
    coming late (a replay) is left out: loaded, it would land in the default partition (the month
    remembered), or bring the month back holding only its own counts and count a second time in
    the campaign's lifetime rollups."""
    old = dt.datetime(2025, 1, 15, tzinfo=dt.UTC)
    clock = [dt.datetime(2025, 1, 20, tzinfo=dt.UTC)]
    target = destination(reports_dsn, now=lambda: clock[0])
    try:
        await target.deliver([email(1, at=old), email(2, at=AT)])
        clock[0] = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
        dropped = await reports_schema.maintain(reports, 400, now=clock[0])
        assert dropped == ["report_emails_p202501", "report_events_p202501"]
        await target.deliver([email(3, at=old), email(4, at=AT)])  # the same destination, late
    finally:
        await target.close()
    assert await reports.fetchval("SELECT count(*) FROM report_emails_default") == 0
    assert not await reports.fetchval("SELECT to_regclass('report_emails_p202501') IS NOT NULL")
    assert await reports.fetchval("SELECT count(*) FROM report_emails_p202603") == 2
    domains = await totals(reports, "report_campaign_domains")
    assert domains["sent"] == 3  # leads 1, 2 and 4: lead 3 counted nowhere
    assert await reports.fetchval("SELECT min(day) FROM report_account_days") == AT.date()


@pytest.mark.parametrize(
    ("retention_days", "now"),
    [
        (1, dt.datetime(2026, 3, 31, 12, tzinfo=dt.UTC)),  # the first kept month was April
        (1, dt.datetime(2026, 4, 1, 0, 0, 30, tzinfo=dt.UTC)),  # a relay a minute behind at midnight
        (2, dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC)),
    ],
)
async def test_with_the_shortest_retention_the_last_day_of_a_month_still_loads(
    reports: asyncpg.Connection, reports_dsn: str, retention_days: int, now: dt.datetime
) -> None:
    """A record sent an hour before the end of March, well within retention_days of ``now``,
    and March's partition kept by retention all that time: the margin for a clock ahead (two
    days) put the first kept month in April, and the record was left out as past retention."""
    sent = dt.datetime(2026, 3, 31, 23, tzinfo=dt.UTC)
    target = destination(reports_dsn, retention_days=retention_days, now=lambda: now)
    try:
        await target.deliver([email(1, at=sent)])
    finally:
        await target.close()
    assert reports_load.month_of(now - dt.timedelta(days=retention_days)) < dt.date(2026, 4, 1)
    assert await reports_schema.maintain(reports, retention_days, now=now) == []  # March is kept
    assert await reports.fetchval("SELECT count(*) FROM report_emails_p202603") == 1
    assert (await totals(reports, "report_account_days"))["sent"] == 1


async def test_rows_in_the_default_partition_move_into_their_month_when_it_is_created(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    """Postgres refuses a partition whose range the default one holds rows of: without the move,
    a row that landed there would stop its month from ever loading again."""
    old = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
    await reports.execute(
        """INSERT INTO report_emails_default (campaign_id, lead_id, sent_at, account_id, status)
           VALUES (7, 1, $1, 3, 'sent')""",
        old,
    )
    target = destination(reports_dsn, retention_days=36_500)
    try:
        await target.deliver([email(1, at=old), email(2, at=old)])  # lead 1 again: a duplicate
    finally:
        await target.close()
    assert await reports.fetchval("SELECT count(*) FROM report_emails_default") == 0
    assert await reports.fetchval("SELECT count(*) FROM report_emails_p202405") == 2
    assert await reports.fetchval("SELECT count(*) FROM report_events_p202405") == 0
    assert (await totals(reports, "report_campaign_minutes"))["sent"] == 1  # lead 1 was there already
    again = await reports_load.ensure_partitions(reports, [reports_load.month_of(old)])
    assert again == reports_load.Ensured([], set())


async def test_two_creators_of_a_month_with_rows_in_the_default_partition_move_them_once(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    """The relay's loader and the daemon's maintenance (or two nodes' maintenance) creating the
    same month at once: one moves the rows, the other finds the partition made."""
    month = dt.date(2024, 5, 1)
    for lead in range(1, 4):
        await reports.execute(
            """INSERT INTO report_emails_default (campaign_id, lead_id, sent_at, account_id, status)
               VALUES (7, $1, '2024-05-06 00:00:00+00', 3, 'sent')""",
            lead,
        )
    other = await connect.connect(reports_dsn)
    try:
        results = await asyncio.gather(
            reports_load.ensure_partitions(reports, [month]), reports_load.ensure_partitions(other, [month])
        )
    finally:
        await other.close()
    assert sorted(line for result in results for line in result.moved) == [
        "moved 3 rows from report_emails_default to report_emails_p202405"
    ]
    assert await reports.fetchval("SELECT count(*) FROM report_emails_p202405") == 3
    assert await reports.fetchval("SELECT count(*) FROM report_emails_default") == 0


async def test_a_campaigns_totals_outlive_retention_and_a_late_record_adds_to_its_minute(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    # the totals were the sum of the per-minute series, which retention trimmed by the day while
    # partitions go by the month: totals 2 of 5 emails (domains and the list said 5), and a late
    # record of the kept month brought back its minute holding only itself
    jan = dt.datetime(2025, 1, 10, 12, tzinfo=dt.UTC)
    mar = dt.datetime(2025, 3, 10, 12, tzinfo=dt.UTC)
    target = destination(reports_dsn, now=lambda: mar)
    try:
        await target.deliver([email(n, at=jan) for n in (1, 2, 3)] + [email(n, at=mar) for n in (4, 5)])
        assert await reports_schema.maintain(reports, 400, now=dt.datetime(2026, 2, 20, tzinfo=dt.UTC)) == []
        target_late = destination(reports_dsn, now=lambda: dt.datetime(2026, 2, 20, tzinfo=dt.UTC))
        try:
            await target_late.deliver([email(6, at=jan)])  # January is kept: its late record loads
        finally:
            await target_late.close()
    finally:
        await target.close()
    rows = await reports_read.campaign_report(reports, 7, points=100, top=10)
    assert rows.totals["sent"] == 6 == sum(d["sent"] for d in rows.domains)
    by_minute = {point["at"]: point["sent"] for point in rows.series["minute"]}
    assert by_minute[jan] == 4


async def test_retention_behind_a_long_report_never_holds_up_loads(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    """A report's transaction holds its lock on report_emails until it ends: a DROP (or CREATE
    ... PARTITION OF) queued behind it for ACCESS EXCLUSIVE on the table made the relay's loads
    queue behind the DDL. Now the DDL waits its lock timeout at most and is left for later."""
    old = dt.datetime(2025, 1, 15, tzinfo=dt.UTC)
    target = destination(reports_dsn, retention_days=36_500)
    report, maintainer = await connect.connect(reports_dsn), await connect.connect(reports_dsn)
    try:
        await target.deliver([email(1, at=old), email(2, at=AT)])
        async with report.transaction():
            await report.fetchval("SELECT count(*) FROM report_emails")
            with capture_logs() as logs:
                job = asyncio.create_task(
                    reports_schema.maintain(maintainer, 30, now=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
                )
                try:
                    async with asyncio.timeout(10):
                        while not job.done() and not await reports.fetchval(
                            "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted)"
                        ):
                            await asyncio.sleep(0.01)
                    async with asyncio.timeout(5):
                        await target.deliver([email(3, at=AT)])
                finally:
                    async with asyncio.timeout(10):
                        dropped = await job
        assert dropped == ["report_events_p202501"]
        assert [
            (e["operation"], e["partition"]) for e in logs if e["event"] == "reports_partition_deferred"
        ] == [
            ("create", "report_emails_p202604"),
            ("drop", "report_emails_p202501"),
        ]
        assert await reports.fetchval("SELECT count(*) FROM report_emails") == 3
        # The report is over: the next round does it.
        dropped = await reports_schema.maintain(maintainer, 30, now=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
        assert dropped == ["report_emails_p202501"]
        assert await reports.fetchval("SELECT to_regclass('report_emails_p202604') IS NOT NULL")
    finally:
        await target.close()
        await report.close()
        await maintainer.close()


async def test_a_month_deferred_behind_a_report_is_created_once_the_lock_is_free(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    """A month whose creation gave way to a long report was remembered as made: its rows stayed
    in the default partition (and the later ones went there too) until the relay restarted.
    It is tried again a while later, by the next batch even without records of that month."""
    old = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)  # a month the hourly maintenance does not make
    clock = [0.0]
    target = destination(reports_dsn, retention_days=36_500, clock=lambda: clock[0])
    report = await connect.connect(reports_dsn)
    try:
        await target.deliver([email(1, at=AT)])
        async with report.transaction():
            await report.fetchval("SELECT count(*) FROM report_emails")  # holds every partition's lock
            with capture_logs() as logs:
                async with asyncio.timeout(5):
                    await target.deliver([email(2, at=old)])
        assert [
            (e["operation"], e["partition"]) for e in logs if e["event"] == "reports_partition_deferred"
        ] == [("create", "report_emails_p202405")]
        assert await reports.fetchval("SELECT count(*) FROM report_emails_default") == 1

        # The report is over, but the retry waits its time: no wait on a lock at every batch.
        await target.deliver([email(3, at=old)])
        assert not await reports.fetchval("SELECT to_regclass('report_emails_p202405') IS NOT NULL")
        assert await reports.fetchval("SELECT count(*) FROM report_emails_default") == 2

        clock[0] += RETRY_DEFERRED_S
        with capture_logs() as logs:
            await target.deliver([email(4, at=AT)])  # nothing of May 2024 in this batch
        assert [e["detail"] for e in logs if e["event"] == "reports_partition_rows_moved"] == [
            "moved 2 rows from report_emails_default to report_emails_p202405"
        ]
        assert await reports.fetchval("SELECT count(*) FROM report_emails_default") == 0
        assert await reports.fetchval("SELECT count(*) FROM report_emails_p202405") == 2
        await target.deliver([email(5, at=old)])
        assert await reports.fetchval("SELECT count(*) FROM report_emails_p202405") == 3
        assert (await totals(reports, "report_campaign_totals"))["sent"] == 5
    finally:
        await target.close()
        await report.close()


async def test_a_table_in_use_is_waited_for_once_per_call(
    reports: asyncpg.Connection, reports_dsn: str
) -> None:
    """A batch of a replay spanning many months waited the lock timeout for each of them while
    the report ran; the table's later months are now deferred with the first."""
    months = [dt.date(2024, 5, 1), dt.date(2024, 6, 1), dt.date(2024, 7, 1)]
    report = await connect.connect(reports_dsn)
    try:
        async with report.transaction():
            await report.fetchval("SELECT count(*) FROM report_emails")
            with capture_logs() as logs:
                ensured = await reports_load.ensure_partitions(reports, months)
    finally:
        await report.close()
    assert ensured == reports_load.Ensured([], set(months))
    assert [e["partition"] for e in logs if e["event"] == "reports_partition_deferred"] == [
        "report_emails_p202405"
    ]
    for month in months:  # the other table was free
        assert await reports.fetchval("SELECT to_regclass($1) IS NOT NULL", f"report_events_p{month:%Y%m}")


async def test_retention_counts_months_by_the_database_s_clock(
    reports: asyncpg.Connection, reports_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock ran 40 days ahead dropped, with a retention of one day, the month
    being loaded into."""
    now = await reports.fetchval("SELECT now()")
    target = destination(reports_dsn, now=lambda: now)
    try:
        await target.deliver([email(1, at=now)])
    finally:
        await target.close()

    class AheadClock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> AheadClock:
            return cls.fromtimestamp((dt.datetime.now(tz) + dt.timedelta(days=40)).timestamp(), tz)

    monkeypatch.setattr(reports_schema, "dt", types.SimpleNamespace(**{**vars(dt), "datetime": AheadClock}))
    assert await reports_schema.maintain(reports, 1) == []
    assert await reports.fetchval("SELECT count(*) FROM report_emails") == 1


async def test_the_loader_s_queries_end_at_the_command_timeout_and_its_pool_is_offered_for_the_cut_off(
    reports_dsn: str,
) -> None:
    """The loader's pool had no command timeout, and the drain deadline did not cut it off: a
    load on a reports database that stopped answering held the relay's stop."""
    privacy = config_mod.PrivacyConfig(erasure_key=config_mod.Secret(KEY))
    loader = ReportsDestination(
        config_mod.ReportsConfig(), reports_dsn, privacy, now=lambda: AT, command_timeout_s=0.2
    )
    assert isinstance(loader, HoldsPools) and loader.pools() == []
    try:
        await loader.deliver(batch())
        (pool,) = loader.pools()
        with pytest.raises(TimeoutError):
            await pool.fetchval("SELECT pg_sleep(5)")
    finally:
        await loader.close()
    assert loader.pools() == []


async def test_the_relay_offers_the_loader_s_pool_to_the_drain_deadline(dsn: str, reports_dsn: str) -> None:
    loader = destination(reports_dsn)
    await loader.deliver(batch())  # its pool is open from now on
    async with leading_relay(dsn, [loader]) as (relay, _, _):
        pools = relay.pools()
        assert len(pools) == 2 and loader.pools()[0] in pools
    assert relay.pools() == [] and loader.pools() == []
