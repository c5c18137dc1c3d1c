"""An event that arrives after its recipient was erased (a complaint or a bounce for an email sent
before) is stored as the erasure scrubbed the others: it put the address back in plain text in
email_events, suppressions and suppression_audit, for the relay to publish after the erasure."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from mailerd import app, campaigns, erasure, events, segments
from mailerd import config as config_mod
from mailerd.db import erasure as erasure_db
from mailerd.db import leads as leads_db
from mailerd.emulator import sink
from mailerd.models import Event, EventKind, LogStatus
from mailerd.writer import EventsRefused, Writer
from tests.integration.helpers import (
    VirtualTime,
    daemon_config,
    new_campaign,
    read_record,
    recording_emulator,
    running_daemon,
    wait_for_logged,
    wait_for_status,
)
from tests.integration.test_erasure import ADDRESS, KEY, LOWER, _event, _lead, _text_hits

PADS = erasure.key_pads(KEY)
HASH = hmac.digest(KEY, LOWER.encode(), "sha256")


@pytest.fixture
async def writer(pool: asyncpg.Pool) -> AsyncIterator[Writer]:
    """The daemon's writer, with the erasure key as `[privacy] erasure_key` gives it."""
    privacy = config_mod.PrivacyConfig(erasure_key=config_mod.Secret(KEY.decode()))
    running = Writer(pool, config_mod.WriterConfig(flush_interval_ms=10), privacy=privacy)
    task = asyncio.create_task(running.run())
    yield running
    running.close()
    await asyncio.wait_for(task, 10)


async def _sent_then_erased(
    conn: asyncpg.Connection, address: str = ADDRESS, message_id: str = "m-erin"
) -> tuple[int, int, int]:
    """A lead sent to (message id ``message_id``), then erased: (campaign, lead, erasure) ids."""
    lead_id = await _lead(conn, 1, address)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await conn.execute(
        """INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id)
           VALUES (now(), $1, $2, $3, $4)""",
        campaign_id,
        lead_id,
        int(LogStatus.SENT),
        message_id,
    )
    done = await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=lead_id)
    return campaign_id, lead_id, done.id


def _late(kind: EventKind, receipt: str, **fields: object) -> Event:
    """The provider's event, as it quotes the address (a receipt and a diagnostic that hold it)."""
    quoting: dict[str, object] = {
        "reason": f"550 5.1.1 <{ADDRESS.upper()}>: Recipient address rejected",
        "provider_type": f"feedback for {ADDRESS}",
    }
    return _event(kind, f"{receipt}:{ADDRESS}", **(quoting | fields))


async def _record(conn: asyncpg.Connection, writer: Writer, batch: list[Event]) -> None:
    """As the webhook handler does: resolve, then wait for the writer's commit."""
    resolved = await events.resolve(conn, batch, provider_kinds={})
    async with asyncio.timeout(20):
        await (await writer.submit_events(resolved))


async def _stats(conn: asyncpg.Connection, campaign_id: int) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT bounced, complained FROM campaign_stats WHERE campaign_id = $1", campaign_id
    )
    return (row["bounced"], row["complained"]) if row else (0, 0)


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        # The metadata names the deleted lead: the campaign's account, the lead id as given.
        (
            EventKind.COMPLAINT,
            {"campaign_id": "campaign", "lead_id": "lead", "provider_message_id": "m-erin"},
        ),
        (EventKind.HARD_BOUNCE, {"provider_message_id": "m-erin", "bounce_class": "invalid_recipient"}),
        (EventKind.UNSUBSCRIBE, {"provider_message_id": "m-erin"}),
    ],
)
async def test_a_late_event_about_an_erased_lead_holds_no_address_and_suppresses_by_hash(
    conn: asyncpg.Connection, pool: asyncpg.Pool, writer: Writer, kind: EventKind, fields: dict[str, str]
) -> None:
    campaign_id, lead_id, erasure_id = await _sent_then_erased(conn)
    ids = {"campaign": campaign_id, "lead": lead_id}
    late = _late(kind, "late-1", **{k: ids.get(v, v) for k, v in fields.items()})
    await _record(conn, writer, [late])

    assert await _text_hits(conn, ADDRESS) == []
    row = await conn.fetchrow("SELECT * FROM email_events")
    assert (row["account_id"], row["campaign_id"], row["lead_id"], row["kind"]) == (
        1,
        campaign_id,
        lead_id,
        str(kind),
    )
    assert row["email"] is None
    assert row["provider_event_id"] == hashlib.sha256(late.receipt.encode()).hexdigest()
    assert row["reason"] == "550 5.1.1 <<erased>>: Recipient address rejected"
    assert row["provider_type"] == "feedback for <erased>"
    # Suppressed as the erasure keeps it: by the keyed hash, audited without the address.
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0
    hashed = await conn.fetch("SELECT account_id, email_hash, reason, erasure_id FROM erased_suppressions")
    assert [tuple(r) for r in hashed] == [(1, HASH, str(kind), erasure_id)]
    audit = await conn.fetch("SELECT email, action, reason, source FROM suppression_audit")
    assert [tuple(r) for r in audit] == [(f"<erased> (erasure {erasure_id})", "added", str(kind), "sendgrid")]
    # Counted as before.
    expected = {EventKind.COMPLAINT: (0, 1), EventKind.HARD_BOUNCE: (1, 0), EventKind.UNSUBSCRIBE: (0, 0)}
    assert await _stats(conn, campaign_id) == expected[kind]
    # The suppression holds: the person imported again is suppressed in the lead windows.
    again = await _lead(conn, 1, ADDRESS)
    window = await leads_db.read_window(
        pool,
        account_id=1,
        campaign_id=campaign_id,
        segment=segments.parse({"field": "attributes.plan", "op": "eq", "value": "pro"}),
        start=0,
        end=again,
        skip_logged=False,
        erased_pads=PADS,
    )
    assert [(r["id"], r["suppressed"]) for r in window] == [(again, True)]
    # A redelivery of the same event is recognised (its receipt is kept as a hash): nothing more.
    await _record(conn, writer, [late])
    assert await conn.fetchval("SELECT count(*) FROM email_events") == 1


async def test_a_late_event_matched_to_no_account_is_scrubbed_too(
    conn: asyncpg.Connection, writer: Writer
) -> None:
    """No metadata and no message id to find it by, and the address is no lead (erased): the event
    matches no account (suppressing nothing), and is scrubbed, as an erasure scrubs unmatched
    events. (Metadata naming the erased lead maps it to the campaign's account, above.)"""
    await _sent_then_erased(conn)
    kept = await _lead(conn, 1, "kept@example.com")
    late = _late(EventKind.HARD_BOUNCE, "late-2")
    other = dataclasses.replace(
        late,
        email="kept@example.com",
        receipt="kept-1",
        lead_id=kept,
        reason=None,
        provider_type=None,
        bounce_class="invalid_recipient",
    )
    await _record(conn, writer, [other, late])  # in one flush, the other lead's event first
    assert await _text_hits(conn, ADDRESS) == []
    rows = await conn.fetch("SELECT account_id, email, reason FROM email_events ORDER BY account_id")
    assert [tuple(r) for r in rows] == [
        (1, "kept@example.com", None),
        (None, None, "550 5.1.1 <<erased>>: Recipient address rejected"),
    ]
    assert await conn.fetchval("SELECT count(*) FROM erased_suppressions") == 0
    assert await conn.fetchval("SELECT email FROM suppressions") == "kept@example.com"


async def test_events_of_a_person_not_erased_there_keep_the_address(
    conn: asyncpg.Connection, writer: Writer
) -> None:
    """Only the erasing account forgets: another account's lead with the same address, and the
    person imported again into the erasing account, keep their events and suppressions as ever."""
    campaign_id, _, _ = await _sent_then_erased(conn)
    other = await _lead(conn, 2, ADDRESS)
    other_campaign = await campaigns.create(conn, new_campaign(start=False, account_id=2), daemon_config(1))
    await _record(
        conn,
        writer,
        [_late(EventKind.HARD_BOUNCE, "other", campaign_id=other_campaign, lead_id=other)],
    )
    again = await _lead(conn, 1, ADDRESS)
    await _record(conn, writer, [_late(EventKind.COMPLAINT, "again", campaign_id=campaign_id, lead_id=again)])
    rows = await conn.fetch("SELECT account_id, email FROM email_events ORDER BY account_id")
    assert [tuple(r) for r in rows] == [(1, LOWER), (2, LOWER)]
    listed = await conn.fetch("SELECT account_id, email FROM suppressions ORDER BY account_id")
    assert [tuple(r) for r in listed] == [(1, LOWER), (2, LOWER)]
    assert await conn.fetchval("SELECT count(*) FROM erased_suppressions") == 0


async def test_the_lookup_uses_the_index_on_the_erasure_hashes(conn: asyncpg.Connection) -> None:
    await conn.execute("SET enable_seqscan = off")
    plan = await conn.fetch("EXPLAIN SELECT 1 FROM erasures WHERE email_hashes @> ARRAY[$1::bytea]", HASH)
    assert "Bitmap Index Scan on erasures_email_hashes_idx" in "\n".join(r[0] for r in plan)


@pytest.mark.parametrize(
    ("campaign_rate", "provider"),
    [(50.0, {}), (None, {"rate_per_s": 50.0, "burst": 50})],
    ids=["waits-for-its-campaign-rate", "waits-for-the-provider-rate"],
)
async def test_a_lead_erased_while_its_batch_waits_is_not_sent(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path, campaign_rate: float | None, provider: dict[str, Any]
) -> None:
    # its window had been read: the batch was sent 7 s after the erasure returned (and, checked
    # only once before the provider's wait, again after a first fix)
    ids = [
        await conn.fetchval(
            "INSERT INTO leads (account_id, email, attributes) VALUES (1, $1, $2) RETURNING id",
            f"person{n}@example.com",
            {"plan": "pro"},
        )
        for n in range(200)
    ]
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record)
    port = await emulator.start()
    try:
        config = dataclasses.replace(
            daemon_config(port, provider=provider),
            privacy=config_mod.PrivacyConfig(erasure_key=config_mod.Secret(KEY.decode())),
        )
        campaign_id = await campaigns.create(conn, new_campaign(rate_per_s=campaign_rate), config)
        async with running_daemon(config, dsn):
            await wait_for_logged(conn, campaign_id)
            await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=ids[-1])
            info = await wait_for_status(conn, campaign_id, timeout=60)
        await emulator.flush()
    finally:
        await emulator.close()
    assert "person199@example.com" not in {line["email"] for line in read_record(record)}
    row = await conn.fetchrow("SELECT status, error FROM email_log WHERE lead_id = $1", ids[-1])
    assert (row["status"], row["error"]) == (LogStatus.SUPPRESSED, "erased")
    assert (info["sent"], info["suppressed"]) == (199, 1)


async def test_an_erasure_that_commits_after_a_later_one_is_still_seen(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # read by id, the later erasure moved the reader past the earlier one, never seen after
    recent = erasure.RecentErasures()
    slow = await asyncpg.connect(dsn)
    try:
        async with slow.transaction():
            await erasure_db.record(slow, 1, [], [101], "test")  # takes its id first
            await erasure_db.record(conn, 1, [], [202], "test")  # commits first
            await recent.refresh(conn)
            assert recent.erased(1, 202) and not recent.erased(1, 101)
        await recent.refresh(conn)
    finally:
        await slow.close()
    assert recent.erased(1, 101) and recent.erased(1, 202)


async def test_a_late_event_postgres_refuses_is_dead_lettered_without_the_address(
    conn: asyncpg.Connection, writer: Writer
) -> None:
    # the writer kept the refused event in dead_letters as it came: the address in its email,
    # its receipt and its reason, after the erasure had scrubbed every copy
    campaign_id, _, _ = await _sent_then_erased(conn)
    kept = await _lead(conn, 1, "kept@example.com")
    refused = dataclasses.replace(
        _late(EventKind.HARD_BOUNCE, "late-3", provider_message_id="m-erin"),
        reason=f"550 <{ADDRESS}>\x00 refused",  # a NUL: Postgres refuses the text
    )
    other = _event(
        EventKind.HARD_BOUNCE, "kept-2", email="kept@example.com", campaign_id=campaign_id, lead_id=kept
    )
    other = dataclasses.replace(other, reason="550 <kept@example.com>\x00 refused")
    # an address no text column can hold (nobody's) beside it: looked past, not a failure
    unstorable = dataclasses.replace(other, email="x\ud800@example.com", receipt="x-1", reason=None)
    for batch in ([refused], [other]):
        with pytest.raises(EventsRefused):
            await _record(conn, writer, batch)
    with capture_logs() as logged, pytest.raises(EventsRefused):  # (resolve cannot look it up)
        await (
            await writer.submit_events(
                [unstorable, *await events.resolve(conn, [refused], provider_kinds={})]
            )
        )
    # asyncpg's error quotes the arguments: kept in the letter's error, and logged
    [line] = [e for e in logged if e["event"] == "entry_dead_lettered"]
    assert "['<erased>', " in line["error"] and LOWER not in line["error"].lower()
    assert await _text_hits(conn, ADDRESS) == []
    letters = await conn.fetch("SELECT kind, entries, payload FROM dead_letters ORDER BY id")
    assert [(r["kind"], r["entries"]) for r in letters] == [("events", 1), ("events", 1), ("events", 2)]
    assert "<erased>" in letters[0]["payload"] and "refused" in letters[0]["payload"]
    assert "<erased>" in letters[2]["payload"] and "x\\ud800@example.com" in letters[2]["payload"]
    # Someone not erased is kept as ever, for the operator to see.
    assert "kept@example.com" in letters[1]["payload"]


async def test_a_dead_lettered_unsubscribe_keeps_no_erased_address_it_also_suppresses(
    conn: asyncpg.Connection, writer: Writer
) -> None:
    # a one-click whose lead's address now (also_suppresses) belongs to someone erased between
    # the click and the flush: refused by Postgres, its letter kept that address in plain text
    campaign_id, _, _ = await _sent_then_erased(conn)
    kept = await _lead(conn, 1, "kept@example.com")
    click = _event(
        EventKind.UNSUBSCRIBE, f"{campaign_id}:{kept}", email="kept@example.com",
        campaign_id=campaign_id, lead_id=kept, also_suppresses=(ADDRESS,),
        reason="one-click\x00",  # a NUL: Postgres refuses the text
    )  # fmt: skip
    with pytest.raises(EventsRefused):
        await _record(conn, writer, [click])
    assert await _text_hits(conn, ADDRESS) == []
    payload = await conn.fetchval("SELECT payload FROM dead_letters")
    assert "<erased>" in payload and "kept@example.com" in payload


IDN_LEAD = "erin@bücher.de"
IDN_SENT = "erin@xn--bcher-kva.de"  # as SES and SMTP servers were sent it, and quote it


async def test_a_late_event_about_an_erased_idn_lead_quotes_neither_spelling(
    conn: asyncpg.Connection, writer: Writer
) -> None:
    # the event's address is read back in the lead's Unicode spelling, and only that spelling
    # was cut out of its texts: the diagnostic kept <erin@xn--bcher-kva.de>, in email_events
    # and in the dead letter of an event Postgres refused
    await _sent_then_erased(conn, IDN_LEAD, "m-idn")
    assert await _text_hits(conn, "erin@") == []
    quoted = f"smtp; 550 5.1.1 <{IDN_SENT.upper()}>: Recipient address rejected"
    late = _event(
        EventKind.HARD_BOUNCE,
        f"late-idn:{IDN_SENT}",
        email=IDN_SENT,
        provider_message_id="m-idn",
        bounce_class="invalid_recipient",
        reason=quoted,
    )
    await _record(conn, writer, [late])
    refused = dataclasses.replace(late, receipt=f"late-idn-2:{IDN_SENT}", reason=quoted + "\x00")
    with pytest.raises(EventsRefused):
        await _record(conn, writer, [refused])
    assert await conn.fetchval("SELECT count(*) FROM email_events WHERE reason LIKE '%<erased>%'") == 1
    assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 1
    assert await _text_hits(conn, "erin@") == []


async def test_leads_dropped_as_erased_after_the_wait_give_back_their_tokens(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # the provider's tokens of the dropped leads were spent: the next batch waited for them
    # (10 s at 1/s), as if they had been sent. (A [pace] group's are taken by the shard at
    # dispatch, before the sender drops anyone: tests/unit/test_pace.py covers their refund.)
    ids = [
        await _lead(conn, 1, f"person{n}@example.com") for n in range(30)
    ]  # three batches of 10; the first batch's leads erased (the erasure record only: the
    # window still reads them, as one read before the erasure)
    await erasure_db.record(conn, 1, [], ids[:10], "test")
    time = VirtualTime()
    arrivals: list[tuple[float, str]] = []
    emulator = recording_emulator("ses", time, arrivals, seed=1)
    port = await emulator.start()
    try:
        config = daemon_config(
            port,
            provider={"concurrency": 1, "batch_size": 10, "rate_per_s": 1, "burst": 10},
        )
        timing = app.SenderTiming(clock=time.clock, sleep=time.sleep)
        async with running_daemon(config, dsn, sender_timing=timing):
            campaign_id = await campaigns.create(conn, new_campaign(), config)
            info = await wait_for_status(conn, campaign_id)
    finally:
        await emulator.close()
    erased = await conn.fetch("SELECT lead_id FROM email_log WHERE error = 'erased' ORDER BY lead_id")
    assert [r["lead_id"] for r in erased] == ids[:10]
    assert (info["sent"], info["suppressed"]) == (20, 10)
    # the second batch went at once on the tokens the first gave back, the third 10 s later
    assert sorted(collections.Counter(at for at, _ in arrivals).items()) == [(0.0, 10), (10.0, 10)]
