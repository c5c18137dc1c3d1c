"""Deliverability guards (issue 15): a campaign pauses itself when its complaint, hard-bounce or
blocked rate passes the threshold, within one flush of the event that crossed it; an operator's
resume overrides the guard, which then judges only what is sent from then on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from mailerd import campaigns
from mailerd import config as config_mod
from mailerd.db import email_log as email_log_db
from mailerd.db import provider_usage
from mailerd.db import stats as stats_db
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks
from mailerd.models import Event, EventKind, LogStatus
from mailerd.writer import Writer
from tests.integration.helpers import add_leads, daemon_config, new_campaign, running_daemon, wait_for_status

FLUSH_MS = 200
GUARDS = {"min_sample": 100, "max_complaint_rate": 0.01}


async def test_complaints_from_the_emulator_pause_the_campaign_within_one_flush(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 1800)  # 600 match the campaign's segment
    poster = emulator_webhooks.WebhookPoster(
        "http://127.0.0.1:1", "ses", bounce_rate=0.0, complaint_rate=0.05, seed=15
    )
    emulator = sink.Sink(seed=15, webhooks=poster)
    port = await emulator.start()
    config = daemon_config(
        port,
        provider={"rate_per_s": 200},  # three seconds of sending: the guard acts well before the end
        writer={"flush_interval_ms": FLUSH_MS},
        guards=GUARDS,
        webhooks={"ses": poster.signer.daemon_settings(tmp_path)},
    )
    try:
        async with running_daemon(config, dsn) as daemon:
            poster.url = f"http://127.0.0.1:{daemon.port}/webhooks/ses"
            campaign_id = await campaigns.create(conn, new_campaign(), config)
            info = await wait_for_status(conn, campaign_id, ("paused", "finished"))
    finally:
        await emulator.close()
    assert info["status"] == "paused", info
    reason = info["reason"]
    assert reason.startswith("guard: campaign complaint rate "), reason
    assert "exceeds max_complaint_rate 1%" in reason and " sent)" in reason
    pause = await conn.fetchrow(
        "SELECT at, cause FROM campaign_changes WHERE campaign_id = $1 AND status = 'paused'", campaign_id
    )
    assert pause["cause"] == "guard"
    # The crossing event is the last one committed before the pause.
    crossing = await conn.fetchval(
        "SELECT max(received_at) FROM email_events WHERE campaign_id = $1 AND received_at <= $2",
        campaign_id,
        pause["at"],
    )
    assert pause["at"] - crossing < dt.timedelta(milliseconds=FLUSH_MS)
    assert info["sent"] < 600


async def _running_campaign(conn: asyncpg.Connection, sent: int) -> int:
    campaign_id = await campaigns.create(conn, new_campaign(), daemon_config(1))
    await campaigns.transition(conn, campaign_id, "run", cause="test")
    await conn.execute("UPDATE campaign_stats SET sent = $2 WHERE campaign_id = $1", campaign_id, sent)
    return campaign_id


def _events(campaign_id: int, kind: EventKind, count: int, start: int, **fields: str) -> list[Event]:
    now = dt.datetime.now(dt.UTC)
    return [
        Event(
            provider="ses",
            kind=kind,
            occurred_at=now,
            email=f"lead{n}@example.com",
            receipt=f"r{n}",
            campaign_id=campaign_id,
            lead_id=n,
            account_id=1,
            **fields,  # type: ignore[arg-type]
        )
        for n in range(start, start + count)
    ]


@contextlib.asynccontextmanager
async def _guarding_writer(pool: asyncpg.Pool, guards: config_mod.GuardsConfig) -> AsyncIterator[Writer]:
    """The daemon's writer judging with ``guards``, running until the block ends."""
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=20), guard_config=guards)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        writer.close()
        await asyncio.wait_for(task, 10)


async def _log_sent(writer: Writer, campaign_id: int, leads: range) -> None:
    """Log the leads sent (and count them), as the sender's batches do; return once committed."""
    now = dt.datetime.now(dt.UTC)
    rows = [(now, campaign_id, n, LogStatus.SENT, f"m{n}", None) for n in leads]
    await (await writer.submit(None, 0, rows))  # type: ignore[arg-type]


async def _log_rejected(writer: Writer, campaign_id: int, leads: range, **fields: str) -> None:
    """Log the leads failed on an SMTP rejection, each with its bounce event in the same flush,
    as the sender submits them; return once committed."""
    now = dt.datetime.now(dt.UTC)
    rows = [(now, campaign_id, n, LogStatus.FAILED, None, "550 5.1.1 no such user") for n in leads]
    events = _events(campaign_id, EventKind.HARD_BOUNCE, len(leads), leads.start, **fields)
    events = [dataclasses.replace(e, receipt=f"smtp:{campaign_id}:{e.lead_id}") for e in events]
    await (await writer.submit(None, 0, rows, events=events))  # type: ignore[arg-type]


async def _judged(writer: Writer, campaign_id: int) -> None:
    """Return once the guards have judged every flush before: the writer judges after each flush,
    before it takes the next one, so one more flush committed is enough."""
    await (await writer.submit_events(_events(campaign_id, EventKind.DELIVERED, 1, 900_000)))


async def test_blocks_pause_and_an_operator_resume_overrides_the_guard(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    campaign_id = await _running_campaign(conn, sent=1000)
    guards = config_mod.GuardsConfig(min_sample=1000, max_blocked_rate=0.03)
    block = {
        "provider_type": "Permanent/General",
        "smtp_status": "5.7.1",
        "reason": "smtp; 554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
        "zen.spamhaus.org",
    }
    async with _guarding_writer(pool, guards) as writer:
        # 30 blocks of 1000: 3 %, not above the threshold; the 31st passes it.
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 30, 0, **block)))
        assert (await campaigns.show(conn, campaign_id) or {})["status"] == "running"
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 1, 30, **block)))
        info = await wait_for_status(conn, campaign_id, ("paused",), timeout=10)
        assert info["reason"] == (
            "guard: campaign blocked rate 3.1% (31 of 1000 sent) exceeds max_blocked_rate 3%"
        )
        assert (info["blocked"], info["hard_bounced"]) == (31, 0)
        assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0  # blocks suppress nobody

        await campaigns.transition(conn, campaign_id, "resume", "checked with the ISP: listing removed")
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 5, 100, **block)))
        await (await writer.submit_events(_events(campaign_id, EventKind.COMPLAINT, 1, 200)))
        info = await campaigns.show(conn, campaign_id) or {}
        assert info["status"] == "running"  # judged again only after min_sample new emails
        changes = await conn.fetch(
            "SELECT status, cause, reason FROM campaign_changes WHERE campaign_id = $1 ORDER BY generation",
            campaign_id,
        )
        assert [(r["status"], r["cause"]) for r in changes][-2:] == [("paused", "guard"), ("running", "api")]
        assert changes[-1]["reason"] == "checked with the ISP: listing removed"


async def test_late_bounces_of_emails_sent_before_a_resume_do_not_count_after_it(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """Webhooks lag: bounces of the emails sent before a guard pause keep arriving after the
    operator's resume. They were counted against the emails sent after it (1,100 bounces "of"
    1,000 clean sends: paused again at 110 %); the guard now counts only the bounces of emails
    logged after the resume."""
    campaign_id = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(min_sample=1000, max_bounce_rate=0.04, provider_min_sample=10**8)
    async with _guarding_writer(pool, guards) as writer:
        await _log_sent(writer, campaign_id, range(10_000))
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 401, 0)))
        info = await wait_for_status(conn, campaign_id, ("paused",), timeout=10)
        assert info["reason"] == (
            "guard: campaign hard-bounce rate 4.01% (401 of 10000 sent) exceeds max_bounce_rate 4%"
        )
        await campaigns.transition(conn, campaign_id, "resume", "list cleaned, ticket 9")

        # 1,100 more bounces of the 10,000 emails sent before the pause, then 1,000 new emails.
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 1100, 1000)))
        await _log_sent(writer, campaign_id, range(20_000, 21_000))
        # 40 of the new emails bounce (4 %, not above the maximum), among 50 more late bounces.
        mixed = _events(campaign_id, EventKind.HARD_BOUNCE, 40, 20_000)
        mixed += _events(campaign_id, EventKind.HARD_BOUNCE, 50, 5000)
        await (await writer.submit_events(mixed))
        await _judged(writer, campaign_id)
        info = await campaigns.show(conn, campaign_id) or {}
        assert info["status"] == "running", info["reason"]
        assert info["hard_bounced"] == 401 + 1100 + 40 + 50  # the counters count every bounce
        (judged,) = await stats_db.guard_counts(conn, [campaign_id], 0)
        assert (judged["sent"], judged["hard_bounced"]) == (1000, 40)

        # The 41st bounce passes the maximum: the guard still acts after a resume. It is an SMTP
        # rejection, recorded in the flush that logs its email (failed, not sent: in the sample
        # as rejected).
        failed = [(dt.datetime.now(dt.UTC), campaign_id, 21_000, LogStatus.FAILED, None, "550 5.1.1")]
        rejection = _events(campaign_id, EventKind.HARD_BOUNCE, 1, 21_000)
        await (await writer.submit(None, 0, failed, events=rejection))  # type: ignore[arg-type]
        info = await wait_for_status(conn, campaign_id, ("paused",), timeout=10)
        assert info["reason"] == (
            "guard: campaign hard-bounce rate 4.1% (41 of 1001 emails: 1000 sent, 1 rejected in SMTP) "
            "exceeds max_bounce_rate 4%"
        )


async def test_smtp_rejections_are_in_the_sample_so_no_rate_passes_100_percent(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """An email an SMTP server refuses is logged failed and its rejection counts as a bounce (or
    a block): the guard divided by the emails sent alone, so 1,100 rejections beside 1,000 sent
    paused at "110% (1100 of 1000 sent)", and a campaign whose every recipient was refused was
    never judged (0 sent). The sample is now every email a receiver answered for."""
    refused = await _running_campaign(conn, sent=0)
    mixed = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(min_sample=1000, max_bounce_rate=0.04, provider_min_sample=10**8)
    async with _guarding_writer(pool, guards) as writer:
        await _log_sent(writer, mixed, range(1000))
        await _log_rejected(writer, mixed, range(1000, 2100))
        info = await wait_for_status(conn, mixed, ("paused",), timeout=10)
        assert info["reason"] == (
            "guard: campaign hard-bounce rate 52.4% (1100 of 2100 emails: 1000 sent, "
            "1100 rejected in SMTP) exceeds max_bounce_rate 4%"
        )
        assert (info["sent"], info["failed"], info["hard_bounced"]) == (1000, 1100, 1100)

        await _log_rejected(writer, refused, range(999))
        await _judged(writer, refused)
        assert (await campaigns.show(conn, refused) or {})["status"] == "running"  # 999: no sample yet
        await _log_rejected(writer, refused, range(999, 1000))
        info = await wait_for_status(conn, refused, ("paused",), timeout=10)
        assert info["reason"] == (
            "guard: campaign hard-bounce rate 100% (1000 of 1000 emails: 0 sent, "
            "1000 rejected in SMTP) exceeds max_bounce_rate 4%"
        )


async def _lock_waited(conn: asyncpg.Connection, done: asyncio.Future[None] | None = None) -> None:
    """Return once a backend of this database waits for a lock (or ``done`` completed: the
    transaction that would wait did not)."""
    async with asyncio.timeout(10):
        while not (done is not None and done.done()):
            if await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            ):
                return
            await asyncio.sleep(0.01)


async def test_a_bounce_flushed_before_its_email_is_logged_counts_after_a_resume(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A webhook can be flushed (another node, or the 20 ms event flush) before the flush that logs
    its email commits. After a resume, an event whose email had no committed log row was taken
    for one of an email sent before the resume: left out, so the guard missed bounces of new
    emails. A row not committed yet can only be committed after the resume's snapshot."""
    campaign_id = await _running_campaign(conn, sent=0)
    await stats_db.reset_guard_baseline(conn, campaign_id)  # what a resume after a guard pause does
    guards = config_mod.GuardsConfig(min_sample=10**8, provider_min_sample=10**8)
    async with _guarding_writer(pool, guards) as writer:
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 10, 0)))
        await _log_sent(writer, campaign_id, range(100))
        (judged,) = await stats_db.guard_counts(conn, [campaign_id], 0)
        assert (judged["sent"], judged["hard_bounced"]) == (100, 10)


async def test_a_resume_during_a_flush_takes_its_emails_and_their_bounces_on_the_same_side(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    """A resume's baseline (counters and txid snapshot) waited for a flush's lock on the counters
    and then read the flush's emails into its counters while its snapshot, taken before the
    wait, still had the flush running: the emails were before the baseline by the counters and
    after it by the snapshot, so their bounces counted against no email (1 bounce "of" 0 sent)."""
    campaign_id = await _running_campaign(conn, sent=0)
    flush = await asyncpg.connect(dsn)
    resume = await asyncpg.connect(dsn)
    try:
        transaction = flush.transaction()
        await transaction.start()
        now = dt.datetime.now(dt.UTC)
        await email_log_db.copy_rows(
            flush, [(now, campaign_id, n, LogStatus.SENT, f"m{n}", None) for n in range(50)]
        )
        await stats_db.add_outcomes(flush, {campaign_id: (50, 0, 0, 0, 0)})
        resumed = asyncio.create_task(stats_db.reset_guard_baseline(resume, campaign_id))
        await _lock_waited(conn)
        await transaction.commit()
        await asyncio.wait_for(resumed, 10)
    finally:
        await flush.close()
        await resume.close()
    guards = config_mod.GuardsConfig(min_sample=10**8, provider_min_sample=10**8)
    async with _guarding_writer(pool, guards) as writer:
        await (await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 1, 7)))
        (judged,) = await stats_db.guard_counts(conn, [campaign_id], 0)
        assert (judged["sent"], judged["hard_bounced"]) == (0, 0)


async def test_a_flush_that_straddles_a_resume_leaves_its_late_bounces_out(
    conn: asyncpg.Connection, pool: asyncpg.Pool, dsn: str
) -> None:
    """A flush read the baselines before a resume committed and added its bounces after it: a
    late bounce (its email sent before the resume) then counted against the new baseline. The
    flush now locks the counters it judges before it reads the baselines."""
    campaign_id = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(min_sample=10**8, provider_min_sample=10**8)
    writer = Writer(pool, config_mod.WriterConfig(flush_interval_ms=20), guard_config=guards)
    task = asyncio.create_task(writer.run())
    resume = await asyncpg.connect(dsn)
    try:
        await _log_sent(writer, campaign_id, range(100))
        transaction = resume.transaction()
        await transaction.start()
        await stats_db.reset_guard_baseline(resume, campaign_id)
        done = await writer.submit_events(_events(campaign_id, EventKind.HARD_BOUNCE, 1, 7))
        await _lock_waited(conn, done)
        await transaction.commit()
        await asyncio.wait_for(done, 10)
        (judged,) = await stats_db.guard_counts(conn, [campaign_id], 0)
        assert (judged["sent"], judged["hard_bounced"]) == (0, 0)
    finally:
        await resume.close()
        writer.close()
        await asyncio.wait_for(task, 10)


async def test_an_email_counts_once_per_signal_however_many_events_repeat_it(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """A provider reports a temporary failure at every delivery attempt (Mailgun's failed /
    temporary, one event id each): each was counted as one more block, so one email blocked
    three times counted three, and the blocked rate of 400 such emails of 1,000 read 120 %.
    A guard counts an email once per signal (the counters still count every event)."""
    campaign_id = await _running_campaign(conn, sent=0)
    guards = config_mod.GuardsConfig(min_sample=1000, max_blocked_rate=0.03, provider_min_sample=10**8)
    block = {
        "provider_type": "temporary",
        "smtp_status": "4.7.0",
        "reason": "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
        "volume or user complaints",
    }
    async with _guarding_writer(pool, guards) as writer:
        await _log_sent(writer, campaign_id, range(1000))
        for attempt in range(3):  # 20 emails blocked at three attempts: two flushes, then one with repeats
            events = _events(campaign_id, EventKind.SOFT_BOUNCE, 20, 0, **block)
            events = [dataclasses.replace(e, receipt=f"attempt{attempt}:{e.receipt}") for e in events]
            if attempt == 2:
                events += [dataclasses.replace(e, receipt=f"again:{e.receipt}") for e in events]
            await (await writer.submit_events(events))
        await _judged(writer, campaign_id)
        info = await campaigns.show(conn, campaign_id) or {}
        assert info["status"] == "running", info["reason"]  # 20 of 1000 (2 %), not 80 (8 %)
        assert info["blocked"] == 80  # every event counted
        (judged,) = await stats_db.guard_counts(conn, [campaign_id], 0)
        assert (judged["sent"], judged["blocked"]) == (1000, 20)
        (usage,) = await provider_usage.usage(conn, ["sink"])
        assert (usage.sent, usage.blocked) == (1000, 20)

        # Ten more emails blocked once each: 30 (3 %), at the maximum; the 31st passes it.
        await (await writer.submit_events(_events(campaign_id, EventKind.SOFT_BOUNCE, 10, 20, **block)))
        await _judged(writer, campaign_id)
        assert (await campaigns.show(conn, campaign_id) or {})["status"] == "running"
        await (await writer.submit_events(_events(campaign_id, EventKind.SOFT_BOUNCE, 1, 30, **block)))
        info = await wait_for_status(conn, campaign_id, ("paused",), timeout=10)
        assert info["reason"] == (
            "guard: campaign blocked rate 3.1% (31 of 1000 sent) exceeds max_blocked_rate 3%"
        )
