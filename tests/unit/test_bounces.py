"""Bounce classification on real bounce texts: the providers' own fixtures (as parsed by our
webhook parsers) and replies that Gmail, Outlook, Yahoo and others really send over SMTP."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from mailerd import bounces
from mailerd.bounces import BounceClass
from mailerd.models import Event, EventKind
from mailerd.providers import mailgun_webhook, postmark_webhook, sendgrid_webhook, ses_webhook

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _load(*parts: str) -> Any:
    return json.loads((FIXTURES.joinpath(*parts)).read_text())


def _classes(events: list[Event]) -> list[tuple[str, BounceClass | None]]:
    return [
        (str(e.kind), bounces.classify(e.provider, e.kind, e.provider_type, e.smtp_status, e.reason))
        for e in events
    ]


def test_ses_fixtures() -> None:
    bounce = ses_webhook.parse_ses_message(_load("ses", "ses-docs", "event-bounce.json"), "sns-1", NOW)
    assert _classes(bounce) == [("hard_bounce", BounceClass.INVALID_RECIPIENT)]
    for name in ("identity-bounce-no-dsn.json", "identity-bounce-with-dsn.json"):
        events = ses_webhook.parse_ses_message(_load("ses", "ses-docs", name), "sns-2", NOW)
        assert {c for _, c in _classes(events)} == {BounceClass.INVALID_RECIPIENT}, name
    complaint = ses_webhook.parse_ses_message(_load("ses", "ses-docs", "event-complaint.json"), "sns-3", NOW)
    assert _classes(complaint) == [("complaint", None)]


def test_sendgrid_fixture_events() -> None:
    items = _load("sendgrid", "events.json")
    found = {}
    for item in items:
        for event in sendgrid_webhook.parse_events(json.dumps([item]).encode()):
            found[(item["event"], item.get("type"), item.get("reason"))] = bounces.classify(
                event.provider, event.kind, event.provider_type, event.smtp_status, event.reason
            )
    bounce_classes = {key: value for key, value in found.items() if value is not None}
    assert bounce_classes == {
        ("bounce", "bounce", "500 unknown recipient"): BounceClass.INVALID_RECIPIENT,
        ("bounce", "bounce", "550 5.1.1 The email account that you tried to reach does not exist."): (
            BounceClass.INVALID_RECIPIENT
        ),
        ("bounce", "blocked", "550 5.7.1 Service unavailable; client blocked using Spamhaus"): (
            BounceClass.REPUTATION_BLOCK
        ),
        ("dropped", None, "Bounced Address"): BounceClass.INVALID_RECIPIENT,
        ("dropped", None, "Invalid SMTPAPI header"): BounceClass.UNKNOWN,
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("failed_permanent.json", BounceClass.INVALID_RECIPIENT),
        ("failed_suppress_bounce.json", BounceClass.INVALID_RECIPIENT),
    ],
)
def test_mailgun_fixtures(name: str, expected: BounceClass) -> None:
    events = mailgun_webhook.parse_event(_load("mailgun", name)["event-data"])
    assert [c for _, c in _classes(events)] == [expected]


def test_postmark_fixtures() -> None:
    bounce = postmark_webhook.parse_record(_load("postmark", "bounce.json"), NOW)
    assert _classes(bounce) == [("hard_bounce", BounceClass.INVALID_RECIPIENT)]
    complaint = postmark_webhook.parse_record(_load("postmark", "spam_complaint.json"), NOW)
    assert _classes(complaint) == [("complaint", None)]


# (provider, kind, provider_type, smtp_status, text) -> class. Texts as receivers send them.
REAL_TEXTS = [
    # Gmail
    (
        "smtp",
        "hard",
        None,
        None,
        "550-5.1.1 The email account that you tried to reach does not exist. "
        "Please try double-checking the recipient's email address for typos",
        "invalid_recipient",
    ),
    (
        "ses",
        "hard",
        "Permanent/General",
        "5.7.26",
        "smtp; 550-5.7.26 This mail is unauthenticated, which "
        "poses a security risk to the sender and Gmail users, and has been blocked. The sender must "
        "authenticate with at least one of SPF or DKIM.",
        "auth_failure",
    ),
    (
        "smtp",
        "hard",
        None,
        None,
        "550-5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",
        "auth_failure",
    ),
    (
        "sendgrid",
        "hard",
        "bounce",
        "4.7.28",
        "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your SPF domain.",
        "reputation_block",
    ),
    (
        "smtp",
        "soft",
        None,
        None,
        "421-4.7.0 Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address. To protect our users from spam, mail sent from your IP "
        "address has been temporarily rate limited.",
        "reputation_block",
    ),
    (
        "smtp",
        "hard",
        None,
        None,
        "550-5.7.1 Our system has detected that this message is likely "
        "unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
        "policy_block",
    ),
    (
        "mailgun",
        "soft",
        "temporary/generic",
        "4.2.2",
        "452-4.2.2 The email account that you tried to reach is over quota.",
        "mailbox_full",
    ),
    (
        "smtp",
        "hard",
        None,
        None,
        "550-5.2.1 The email account that you tried to reach is disabled.",
        "invalid_recipient",
    ),
    # Microsoft
    (
        "smtp",
        "hard",
        None,
        None,
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. "
        "Please contact your Internet service provider since part of their network is on our block "
        "list (S3140).",
        "reputation_block",
    ),
    (
        "ses",
        "hard",
        "Permanent/General",
        "5.5.0",
        "smtp; 550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).",
        "invalid_recipient",
    ),
    (
        "smtp",
        "hard",
        None,
        None,
        "550 5.7.515 Access denied, sending domain example.com does not meet "
        "the required authentication level.",
        "auth_failure",
    ),
    (
        "postmark",
        "hard",
        "HardBounce",
        None,
        "smtp;550 5.4.1 Recipient address rejected: Access denied.",
        "invalid_recipient",
    ),
    # Yahoo / AOL
    (
        "smtp",
        "soft",
        None,
        None,
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to "
        "unexpected volume or user complaints",
        "reputation_block",
    ),
    (
        "smtp",
        "hard",
        None,
        None,
        "554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
        "policy_block",
    ),
    (
        "smtp",
        "hard",
        None,
        None,
        "554 delivery error: dd This user doesn't have a yahoo.com account",
        "invalid_recipient",
    ),
    # Others
    (
        "smtp",
        "hard",
        None,
        None,
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        "reputation_block",
    ),
    ("smtp", "soft", None, None, "421 4.4.1 Unable to connect to remote host", "transient"),
    ("smtp", "hard", None, None, "552 5.3.4 Message size exceeds fixed limit", "policy_block"),
    (
        "smtp",
        "hard",
        None,
        None,
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        "invalid_recipient",
    ),
    (
        "ses",
        "hard",
        "Permanent/OnAccountSuppressionList",
        None,
        "Amazon SES did not send the message to "
        "this address because it is on the suppression list for your account.",
        "invalid_recipient",
    ),
    ("ses", "soft", "Transient/MailboxFull", None, None, "mailbox_full"),
    ("ses", "soft", "Undetermined", None, None, "transient"),
    ("ses", "hard", "Permanent/General", None, None, "invalid_recipient"),  # SES's bare verdict
    ("ses", "hard", "Permanent/General", None, "smtp; 550 Requested action not taken", "unknown"),
    ("postmark", "hard", "ManuallyDeactivated", None, None, "unknown"),
    ("mailgun", "hard", "permanent/espblock", None, "Mailgun blocked this address", "reputation_block"),
    ("mailgun", "hard", "permanent/old", None, "Too old", "transient"),
    ("postmark", "soft", "DMARCPolicy", None, "message rejected by DMARC", "auth_failure"),
    ("postmark", "soft", "Blocked", None, "ISP blocked the message", "reputation_block"),
    ("sendgrid", "soft", "blocked", None, "connection refused", "reputation_block"),
]


@pytest.mark.parametrize(("provider", "kind", "provider_type", "status", "text", "expected"), REAL_TEXTS)
def test_real_texts(
    provider: str, kind: str, provider_type: str | None, status: str | None, text: str | None, expected: str
) -> None:
    event_kind = EventKind.HARD_BOUNCE if kind == "hard" else EventKind.SOFT_BOUNCE
    assert bounces.classify(provider, event_kind, provider_type, status, text) == expected


def test_only_invalid_recipient_hard_bounces_suppress() -> None:
    assert bounces.suppresses(EventKind.HARD_BOUNCE, BounceClass.INVALID_RECIPIENT)
    assert not bounces.suppresses(EventKind.SOFT_BOUNCE, BounceClass.INVALID_RECIPIENT)
    for other in set(BounceClass) - {BounceClass.INVALID_RECIPIENT}:
        assert not bounces.suppresses(EventKind.HARD_BOUNCE, other)
    assert bounces.suppresses(EventKind.COMPLAINT, None)
    assert bounces.suppresses(EventKind.UNSUBSCRIBE, None)
    assert not bounces.suppresses(EventKind.DELIVERED, None)


def test_events_that_are_no_bounce_have_no_class() -> None:
    assert bounces.classify("ses", EventKind.DELIVERED, None, "2.0.0", "250 OK") is None


# RFC 3463 X.1.7 "bad sender's mailbox address syntax", X.1.8 "bad sender's system address": the
# sender is refused (a return-path domain that does not resolve), not the recipient.
SENDER_REFUSED = [
    ("ses", "Permanent/General", "5.1.8",
     "smtp; 550 5.1.8 <bounce@mail.example.com>: Sender address rejected: Domain not found"),
    ("ses", "Permanent/General", None,
     "smtp; 553 <bounce@mail.example.com>... Domain of sender address bounce@mail.example.com"
     " does not exist"),
    ("sendgrid", "bounce", "5.1.7", "553 5.1.7 The sender address <bounce@mail> is not valid"),
    ("mailgun", "permanent/bounce", "550", "550 5.1.8 Sender address rejected: Domain not found"),
    ("mailgun", "permanent/bounce", "550", "550 Sender address rejected: Domain not found"),
    ("postmark", "HardBounce", None, "550 Sender verify failed"),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "provider_type", "status", "text"), SENDER_REFUSED)
def test_a_refused_sender_is_an_auth_failure_and_does_not_suppress_the_recipient(
    provider: str, provider_type: str, status: str | None, text: str
) -> None:
    found = bounces.classify(provider, EventKind.HARD_BOUNCE, provider_type, status, text)
    assert found is BounceClass.AUTH_FAILURE  # a blocking class: counted in `blocked`
    assert not bounces.suppresses(EventKind.HARD_BOUNCE, found)


def test_a_refused_recipient_still_suppresses() -> None:
    text = "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown in virtual mailbox table"
    found = bounces.classify("mailgun", EventKind.HARD_BOUNCE, "permanent/bounce", "550", text)
    assert found is BounceClass.INVALID_RECIPIENT


@pytest.mark.parametrize(
    "text",
    [
        # An IPv4 address starting 2., 4. or 5. is no RFC 3463 code (4.7.1 would be a policy block).
        "550 No such user here (connecting host 4.7.1.9)",
        "550 Requested action not taken: mailbox unavailable. Your IP 4.2.2.1",
        "550 user unknown [5.7.1.20]",
    ],
)
def test_an_ip_address_in_the_text_is_no_status_code(text: str) -> None:
    assert bounces.enhanced_code(text) is None
    found = bounces.classify("mailgun", EventKind.HARD_BOUNCE, "permanent/bounce", "550", text)
    assert found is BounceClass.INVALID_RECIPIENT


def test_a_code_at_the_end_of_a_sentence_is_still_read() -> None:
    assert bounces.enhanced_code("Delivery failed with status 5.1.1.") == (5, 1, 1)
    assert bounces.enhanced_code("smtp; 550 5.1.10 null MX") == (5, 1, 10)
