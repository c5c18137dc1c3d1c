"""Synchronous SMTP rejections as bounce events (mailerd.rejections): which final outcomes become
events, hard or soft, and the class real receivers' replies get."""

from __future__ import annotations

import datetime as dt

import pytest

from mailerd import bounces, rejections
from mailerd.models import Campaign, CampaignStatus, EventKind, Lead, Outcome, RecipientResult
from mailerd.providers import smtp
from tests import smtp_replies

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CAMPAIGN = Campaign(7, 3, "c", CampaignStatus.RUNNING, None, "news@example.com", "s", "h", "t", "relay")


def _leads(count: int) -> list[Lead]:
    return [Lead(100 + n, f"lead{n}@example.com", {}) for n in range(count)]


def _reply(text: str) -> RecipientResult:
    code, _, message = text.partition(" ")
    return smtp.classify_reply(int(code), message)


@pytest.mark.parametrize("name", sorted(smtp_replies.REPLIES))
def test_real_replies_are_classified(name: str) -> None:
    text, expected = smtp_replies.REPLIES[name]
    leads = _leads(1)
    answer = _reply(smtp_replies.reply(name, leads[0].email))
    assert answer.outcome is (Outcome.FAILED if text.startswith("5") else Outcome.RETRY)
    # A 4xx fails only once the retries ran out; the event then carries the last reply.
    final = answer if answer.outcome is Outcome.FAILED else RecipientResult(Outcome.FAILED, error="gave up")
    deferred = {} if answer.outcome is Outcome.FAILED else {0: answer}
    [event] = rejections.events("relay", CAMPAIGN, leads, [final], deferred, NOW)
    assert event.kind is (EventKind.HARD_BOUNCE if text.startswith("5") else EventKind.SOFT_BOUNCE)
    assert (event.campaign_id, event.lead_id, event.account_id) == (7, 100, 3)
    assert event.receipt == "smtp:7:100" and event.provider_type == "smtp"
    assert event.smtp_status == text.split(" ")[1]
    bounce_class = bounces.classify(
        event.provider, event.kind, event.provider_type, event.smtp_status, event.reason
    )
    assert str(bounce_class) == expected
    suppresses = bounces.suppresses(event.kind, bounce_class)
    assert suppresses is (expected == "invalid_recipient")


def test_only_final_smtp_rejections_become_events() -> None:
    leads = _leads(5)
    deferred = {1: _reply("451 4.7.1 try later"), 2: _reply("451 4.7.1 try later")}
    results = [
        RecipientResult(Outcome.SENT, message_id="m0"),  # maybe deferred before: no bounce
        RecipientResult(Outcome.SENT, message_id="m1"),
        RecipientResult(Outcome.FAILED, error="gave up after 3 attempts: 451 4.7.1 try later"),
        RecipientResult(Outcome.FAILED, error="message refused: header too long"),  # no reply
        None,  # not sent (the shard stopped)
    ]
    [event] = rejections.events("relay", CAMPAIGN, leads, results, deferred, NOW)
    assert (event.lead_id, event.kind, event.reason) == (102, EventKind.SOFT_BOUNCE, "451 4.7.1 try later")


def test_the_reply_is_scrubbed_and_keeps_its_basic_code_without_an_enhanced_one() -> None:
    leads = _leads(1)
    answer = _reply(f"550 <{leads[0].email}> no such user here")
    [event] = rejections.events(
        "relay",
        CAMPAIGN,
        leads,
        [answer],
        {},
        NOW,
        lambda text, address: (text or "").replace(address, "<r>"),
    )
    assert (event.reason, event.smtp_status) == ("550 <<r>> no such user here", "550")
