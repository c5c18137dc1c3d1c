"""Synchronous SMTP rejections, end to end: a daemon sends through an SMTP provider to a real
aiosmtpd server that refuses chosen recipients with real receivers' replies. An invalid recipient
is suppressed, a block is not (it counts as ``blocked``), a 4xx is retried (a deferral that clears
leaves no bounce), a 5xx fails only its recipient, and a campaign whose SMTP block rate passes
``max_blocked_rate`` is paused by the campaign guard. A lead's address that cannot go on an SMTP
command line fails alone."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mailerd import campaigns, erasure
from mailerd.emulator.smtp_server import SmtpEmulator
from mailerd.models import LogStatus
from tests import smtp_replies
from tests.integration.helpers import (
    add_leads,
    daemon_config,
    new_campaign,
    read_record,
    running_daemon,
    wait_for_status,
)
from tests.integration.test_erasure import KEY, _text_hits


def _smtp(port: int, **provider: Any) -> dict[str, Any]:
    return {
        "kind": "smtp",
        "endpoint": f"127.0.0.1:{port}",
        "tls": "none",
        "connections": 4,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        **provider,
    }


# Matched leads (user{n} with n % 3 == 0, see add_leads) and how their receiver answers RCPT.
ALWAYS = {
    "user0@example.com": "gmail_no_such_user",
    "user3@example.com": "gmail_unauthenticated",
    "user6@example.com": "outlook_block_list",
    "user9@example.com": "outlook_authentication_level",
    "user12@example.com": "yahoo_spamhaus",
    "user15@example.com": "postfix_user_unknown",
    "user18@example.com": "postfix_mailbox_full",
    "user21@example.com": "yahoo_deferred",  # 4xx at every attempt: a soft bounce at the end
}
ONCE = {"user24@example.com": "postfix_greylisted", "user27@example.com": "gmail_unusual_rate"}


async def test_smtp_rejections_are_classified_suppressed_and_counted(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 90)  # 30 match
    asked: collections.Counter[str] = collections.Counter()

    def refuse(address: str) -> str | None:
        asked[address] += 1
        name = ALWAYS.get(address) or (ONCE.get(address) if asked[address] == 1 else None)
        return None if name is None else smtp_replies.reply(name, address)

    emulator = SmtpEmulator(record=tmp_path / "record.jsonl", seed=1)
    emulator.refuse = refuse
    async with emulator:
        config = daemon_config(emulator.port, provider=_smtp(emulator.port, max_attempts=3))
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            info = await wait_for_status(conn, campaign_id)
    assert (info["sent"], info["failed"]) == (22, 8)  # a 5xx fails only its recipient
    assert asked["user21@example.com"] == 3 and asked["user24@example.com"] == 2  # 4xx: retried
    assert asked["user0@example.com"] == 1  # 5xx: never retried
    stored = await conn.fetch(
        "SELECT email, kind, bounce_class, smtp_status, provider_type FROM email_events ORDER BY email"
    )
    expected = {address: smtp_replies.REPLIES[name] for address, name in ALWAYS.items()}
    assert {r["email"]: r["bounce_class"] for r in stored} == {a: c for a, (_, c) in expected.items()}
    assert {r["email"]: r["kind"] for r in stored} == {
        a: "soft_bounce" if text.startswith("4") else "hard_bounce" for a, (text, _) in expected.items()
    }
    assert {r["provider_type"] for r in stored} == {"smtp"}
    # Only the invalid recipients are suppressed; blocks and a full mailbox are not.
    suppressed = await conn.fetch("SELECT email, reason FROM suppressions ORDER BY email")
    assert [tuple(r) for r in suppressed] == [
        ("user0@example.com", "hard_bounce"),
        ("user15@example.com", "hard_bounce"),
    ]
    # The log rows keep their status and carry the reply (without the address).
    failed = await conn.fetch(
        """SELECT l.email, e.error FROM email_log e JOIN leads l ON l.id = e.lead_id
           WHERE e.campaign_id = $1 AND e.status = 2""",
        campaign_id,
    )
    errors = {r["email"]: r["error"] for r in failed}
    assert set(errors) == set(ALWAYS)
    assert errors["user15@example.com"].startswith("550 5.1.1 <<recipient>>: Recipient address rejected")
    assert errors["user21@example.com"].startswith("gave up after 3 attempts: 421 4.7.0 [TSS04]")
    stats = await conn.fetchrow(
        "SELECT bounced, hard_bounced, blocked FROM campaign_stats WHERE campaign_id = $1", campaign_id
    )
    # blocked: Gmail 5.7.26, Outlook S3140 and 5.7.515, Yahoo Spamhaus and TSS04; hard_bounced: the
    # two invalid recipients and the full mailbox.
    assert tuple(stats) == (8, 3, 5)


async def test_smtp_blocks_pause_the_campaign_through_the_guard(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 1800)  # 600 match; one in ten of them is blocked by its receiver

    def refuse(address: str) -> str | None:
        number = int(address.removeprefix("user").partition("@")[0])
        return smtp_replies.reply("gmail_unauthenticated", address) if number % 30 == 0 else None

    emulator = SmtpEmulator(record=tmp_path / "record.jsonl", seed=1)
    emulator.refuse = refuse
    async with emulator:
        config = daemon_config(
            emulator.port,
            provider=_smtp(emulator.port, rate_per_s=200),  # three seconds: the guard acts first
            guards={"min_sample": 100, "max_blocked_rate": 0.05},
        )
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            info = await wait_for_status(conn, campaign_id, ("paused", "finished"))
    assert info["status"] == "paused", info
    assert info["reason"].startswith("guard: campaign blocked rate "), info["reason"]
    assert "exceeds max_blocked_rate 5%" in info["reason"]
    assert info["sent"] < 540 and info["blocked"] > 0 and info["hard_bounced"] == 0
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0  # blocks suppress nobody
    classes = await conn.fetch(
        "SELECT DISTINCT bounce_class FROM email_events WHERE campaign_id = $1", campaign_id
    )
    assert [r["bounce_class"] for r in classes] == ["auth_failure"]


@pytest.mark.parametrize("resend_uncertain", [False, True])
async def test_smtp_an_address_with_a_space_fails_alone(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path, resend_uncertain: bool
) -> None:
    # aiosmtplib refused it after MAIL was accepted: the batch was logged unknown (with its
    # error, and so the bad address, on every row), the connection went back to the pool
    # mid-transaction and the next MAIL's "503 nested MAIL" paused the campaign as a refused sender
    # (with resend_uncertain: at every resume, emailing the others again)
    leads = ["user0@example.com", "user1@example.com", "bad user@example.com", "user3@example.com"]
    await conn.copy_records_to_table(
        "leads",
        records=[(1, email, {"plan": "pro"}) for email in leads],
        columns=("account_id", "email", "attributes"),
    )
    emulator = SmtpEmulator(record=tmp_path / "record.jsonl", seed=1)
    async with emulator:
        config = daemon_config(emulator.port, provider=_smtp(emulator.port, connections=1, concurrency=1))
        campaign_id = await campaigns.create(conn, new_campaign(resend_uncertain=resend_uncertain), config)
        async with running_daemon(config, dsn):
            info = await wait_for_status(conn, campaign_id, ("finished", "paused", "failed"))
        await emulator.flush()
    assert info["status"] == "finished", info["reason"]
    rows = await conn.fetch(
        "SELECT l.email, e.status, e.error FROM email_log e JOIN leads l ON l.id = e.lead_id"
        " WHERE e.campaign_id = $1 ORDER BY l.id",
        campaign_id,
    )
    assert [(r["email"], r["status"]) for r in rows] == [
        (email, LogStatus.FAILED if email.startswith("bad") else LogStatus.SENT) for email in leads
    ]
    assert all("bad user" not in (r["error"] or "") for r in rows)
    sent_to = sorted(line["email"] for line in read_record(tmp_path / "record.jsonl"))
    assert sent_to == ["user0@example.com", "user1@example.com", "user3@example.com"]  # each once


async def test_an_smtp_reply_quoting_an_idn_address_leaves_it_out_of_the_log(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    # email_log.error kept the reply with the address as it was sent (its A-labels): only the
    # lead's own spelling was cut out, and no erasure touches email_log
    lead_id = await conn.fetchval(
        "INSERT INTO leads (account_id, email, attributes) VALUES (1, $1, $2) RETURNING id",
        "erin@bücher.de",
        {"plan": "pro"},
    )
    emulator = SmtpEmulator(record=tmp_path / "record.jsonl", seed=1)
    emulator.refuse = lambda address: smtp_replies.reply("postfix_user_unknown", address)
    async with emulator:
        port = emulator.port
        config = daemon_config(port, provider=_smtp(port))
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            await wait_for_status(conn, campaign_id)
    error = await conn.fetchval("SELECT error FROM email_log WHERE lead_id = $1", lead_id)
    assert error.startswith("550 5.1.1 <<recipient>>: Recipient address rejected")
    # and no erasure has to touch the log: nothing of the address is left once the lead is erased
    await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=lead_id)
    assert await _text_hits(conn, "erin@") == []
