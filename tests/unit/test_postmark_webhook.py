"""Postmark webhooks: documented samples, bounce types, basic auth, the IP allow-list, bad input."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from mailerd import config as config_mod
from mailerd.emulator import postmark_webhooks
from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import postmark_webhook as postmark
from mailerd.providers.webhooks import WebhookError, WebhookRequest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks" / "postmark"
USER, PASSWORD = "postmark-hooks", "c0rrect-h0rse"


def _basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _handler(
    *, password: str | None = PASSWORD, now: float = 0.0, **settings: Any
) -> postmark.PostmarkWebhook:
    secret = config_mod.Secret(password) if password is not None else None
    settings.setdefault("username", USER)
    config = config_mod.PostmarkWebhookConfig(password=secret, **settings)
    return postmark.PostmarkWebhook(config, clock=lambda: now)


def _sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def _request(
    body: dict[str, Any] | bytes, authorization: str | None = None, remote: str | None = "3.134.147.250"
) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = CIMultiDict({"Content-Type": "application/json"})
    headers["Authorization"] = _basic() if authorization is None else authorization
    return WebhookRequest(raw, headers, remote, "application/json")


async def test_documented_bounce() -> None:
    (event,) = await _handler().parse(_request(_sample("bounce")))
    assert event.kind is EventKind.HARD_BOUNCE
    assert event.suppress is True  # "Inactive": true
    # Shared with the SubscriptionChange Postmark posts for it (test_a_bounce_and_its_...).
    assert event.receipt == "hard_bounce:883953f4-6105-42a2-a16a-77a8eac79483:john@example.com"
    (soft,) = postmark.parse_record(_sample("bounce") | {"Type": "SoftBounce"})
    assert soft.receipt == "4323372036854775807:john@example.com"  # ID beyond 2**53 kept exact
    assert event.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert event.provider_type == "HardBounce"
    assert event.reason == "Test bounce details"
    assert event.occurred_at == dt.datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=dt.UTC)
    assert (event.campaign_id, event.lead_id) == (None, None)  # metadata without our keys


async def test_documented_spam_complaint_delivery_and_subscription_change() -> None:
    handler = _handler()
    (complaint,) = await handler.parse(_request(_sample("spam_complaint")))
    assert (complaint.kind, complaint.receipt, complaint.suppress) == (
        EventKind.COMPLAINT,
        "complaint:00000000-0000-0000-0000-000000000000:john@example.com",
        True,
    )
    (delivery,) = await handler.parse(_request(_sample("delivery")))
    assert delivery.kind is EventKind.DELIVERED
    assert (delivery.campaign_id, delivery.lead_id) == (12, 34)
    assert delivery.receipt == (
        "Delivery:00000000-0000-0000-0000-000000000000:2019-11-05T16:33:54.9070259Z:john@example.com"
    )
    (change,) = await handler.parse(_request(_sample("subscription_change")))
    assert (change.kind, change.suppress, change.email) == (
        EventKind.HARD_BOUNCE,
        True,
        "bounced-address@wildbit.com",
    )
    assert change.provider_type == "SubscriptionChange/HardBounce"
    assert change.receipt == "hard_bounce:00000000-0000-0000-0000-000000000000:bounced-address@wildbit.com"
    manual = _sample("subscription_change") | {"SuppressionReason": "ManualSuppression"}
    (unsubscribe,) = postmark.parse_record(manual)
    assert unsubscribe.receipt.startswith("SubscriptionChange:00000000-0000-0000-0000-000000000000:")
    assert await handler.parse(_request(_sample("open"))) == []


async def test_unsubscribe_request_without_email_maps_through_the_message_id() -> None:
    """A real record with neither Email nor BouncedAt (anymail issue 447): no address, the
    provider message id for the resolver, the time of receipt."""
    received = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    (event,) = await _handler(now=received.timestamp()).parse(_request(_sample("bounce_unsubscribe_request")))
    assert (event.kind, event.email, event.provider_message_id) == (
        EventKind.UNSUBSCRIBE,
        None,
        "5555555-5555555-5555-5555555",
    )
    assert event.occurred_at == received
    assert event.receipt == "555555555"
    assert event.provider_type == "Unsubscribe"
    assert event.reason == "Unsubscribe or Remove request."


def test_a_bounce_without_email_needs_a_message_id() -> None:
    record = _sample("bounce_unsubscribe_request")
    del record["MessageID"]
    with pytest.raises(WebhookError) as caught:
        postmark.parse_record(record)
    assert caught.value.status == 400
    assert "Email" in caught.value.message


async def test_records_without_record_type_are_inferred_from_their_fields() -> None:
    handler = _handler()
    (bounce,) = await handler.parse(_request(_sample("bounce_without_record_type")))
    assert (bounce.kind, bounce.email, bounce.suppress) == (EventKind.HARD_BOUNCE, "john@example.com", True)
    assert bounce.receipt == f"hard_bounce:{bounce.provider_message_id}:john@example.com"
    assert bounce.occurred_at == dt.datetime(2014, 8, 1, 17, 28, 10, 273539, tzinfo=dt.UTC)
    (delivery,) = await handler.parse(_request(_sample("delivery_without_record_type")))
    assert (delivery.kind, delivery.email, delivery.provider_message_id) == (
        EventKind.DELIVERED,
        "recipeint@example.com",
        "a94dfe84-8ab9-43cf-8a1c-ac234c296e25",
    )
    # The older spam complaint came through the bounce hook with Type SpamComplaint.
    (complaint,) = await handler.parse(
        _request(_sample("bounce_without_record_type") | {"Type": "SpamComplaint", "TypeCode": 512})
    )
    assert complaint.kind is EventKind.COMPLAINT
    # Opens and clicks (constructed from the current samples without RecordType) record nothing.
    opened = {k: v for k, v in _sample("open").items() if k != "RecordType"}
    assert await handler.parse(_request(opened)) == []
    clicked = {"OriginalLink": "https://example.com/", "MessageID": "m", "ReceivedAt": "2017-10-25T15:21:11Z"}
    assert await handler.parse(_request(clicked)) == []


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("Unsubscribe", EventKind.UNSUBSCRIBE),
        ("ManualSuppression", EventKind.UNSUBSCRIBE),
        ("SpamComplaint", EventKind.COMPLAINT),
        ("HardBounce", EventKind.HARD_BOUNCE),
    ],
)
def test_subscription_changes(reason: str, kind: EventKind) -> None:
    (event,) = postmark.parse_record(_sample("subscription_change") | {"SuppressionReason": reason})
    assert (event.kind, event.suppress) == (kind, True)


def test_a_reactivation_gives_no_event() -> None:
    assert postmark.parse_record(_sample("subscription_change") | {"SuppressSending": False}) == []


@pytest.mark.parametrize(
    ("bounce_type", "inactive", "kind"),
    [
        ("HardBounce", True, EventKind.HARD_BOUNCE),
        ("BadEmailAddress", True, EventKind.HARD_BOUNCE),
        ("ManuallyDeactivated", True, EventKind.HARD_BOUNCE),
        ("Unsubscribe", True, EventKind.UNSUBSCRIBE),
        ("SpamComplaint", True, EventKind.COMPLAINT),
        ("Transient", False, EventKind.SOFT_BOUNCE),
        ("SoftBounce", False, EventKind.SOFT_BOUNCE),
        ("DnsError", False, EventKind.SOFT_BOUNCE),
        ("SpamNotification", False, EventKind.SOFT_BOUNCE),
        ("Blocked", False, EventKind.SOFT_BOUNCE),
        ("DMARCPolicy", False, EventKind.SOFT_BOUNCE),
        ("SomethingNew", False, EventKind.SOFT_BOUNCE),
        ("AutoResponder", False, None),
        ("ChallengeVerification", False, None),
        ("AutoResponder", True, EventKind.SOFT_BOUNCE),  # deactivated: never dropped
    ],
)
def test_bounce_types(bounce_type: str, inactive: bool, kind: EventKind | None) -> None:
    events = postmark.parse_record(_sample("bounce") | {"Type": bounce_type, "Inactive": inactive})
    assert [e.kind for e in events] == ([kind] if kind else [])
    assert all(e.suppress is inactive for e in events)


def test_bounce_without_id_and_our_metadata() -> None:
    record = _sample("bounce") | {
        "Metadata": {"mailerd_campaign": "5", "mailerd_lead": 6},
        "Details": "smtp;550 5.1.1 user unknown",
    }
    del record["ID"]
    (event,) = postmark.parse_record(record)
    assert (event.campaign_id, event.lead_id, event.smtp_status) == (5, 6, "5.1.1")
    assert event.receipt == "hard_bounce:883953f4-6105-42a2-a16a-77a8eac79483:john@example.com"
    (event,) = postmark.parse_record(record | {"Type": "SoftBounce"})
    assert event.receipt == (
        "Bounce:883953f4-6105-42a2-a16a-77a8eac79483:2019-11-05T16:33:54.9070259Z:john@example.com"
    )


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        _basic(password=PASSWORD[:-1] + "X"),
        _basic(user=USER[:-1] + "X"),
        _basic(password=""),
        "Bearer " + PASSWORD,
        "Basic %%%",
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ],
)
async def test_wrong_or_missing_credentials_are_401(authorization: str) -> None:
    with pytest.raises(WebhookError) as caught:
        await _handler().parse(_request(_sample("bounce"), authorization))
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("3.134.147.250", True),
        ("50.31.156.6", True),
        ("50.31.156.77", True),
        ("::ffff:3.134.147.250", True),
        ("2001:db8::1", True),
        ("50.31.157.1", False),
        ("10.0.0.1", False),
        (None, False),
        ("not-an-ip", False),
    ],
)
async def test_ip_allow_list(remote: str | None, allowed: bool) -> None:
    handler = _handler(allowed_ips=("3.134.147.250", "50.31.156.0/24", "2001:db8::/32"))
    request = _request(_sample("bounce"), remote=remote)
    if allowed:
        assert len(await handler.parse(request)) == 1
    else:
        with pytest.raises(WebhookError) as caught:
            await handler.parse(request)
        assert (caught.value.status, caught.value.code) == (403, "source_not_allowed")


async def test_allow_list_alone_needs_no_credentials_and_nothing_configured_is_403() -> None:
    alone = _handler(password=None, allowed_ips=("127.0.0.1",))
    assert len(await alone.parse(_request(_sample("bounce"), "", remote="127.0.0.1"))) == 1
    with pytest.raises(WebhookError) as caught:
        await _handler(password=None).parse(_request(_sample("bounce")))
    assert caught.value.status == 403
    unverified = _handler(password=None, verify_signatures=False)
    assert len(await unverified.parse(_request(_sample("bounce"), ""))) == 1


def test_bad_allowed_ips_is_a_config_error() -> None:
    with pytest.raises(config_mod.ConfigError, match="allowed_ips"):
        _handler(allowed_ips=("300.1.1.1",))


async def test_freshness_window_on_the_record_time() -> None:
    bounced_at = dt.datetime(2019, 11, 5, 16, 33, 54, tzinfo=dt.UTC).timestamp()
    fresh = _handler(now=bounced_at + 60, max_age_s=3600)
    assert len(await fresh.parse(_request(_sample("bounce")))) == 1
    with pytest.raises(WebhookError) as caught:
        await _handler(now=bounced_at + 7200, max_age_s=3600).parse(_request(_sample("bounce")))
    assert (caught.value.status, caught.value.code) == (401, "stale_timestamp")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"RecordType=Bounce", "not JSON"),
        (b"[]", "expected an object"),
        (b'{"Type": "HardBounce"}', "RecordType"),
        (b'{"RecordType": "Bounce", "Email": "a@b.c", "BouncedAt": "2019-11-05T16:33:54Z"}', "Type"),
        (b'{"RecordType": "Bounce", "Type": "HardBounce", "BouncedAt": "2019-11-05T16:33:54Z"}', "Email"),
        (b'{"RecordType": "Bounce", "Type": "HardBounce", "Email": "a@b.c"}', "BouncedAt"),
        (b'{"RecordType": "Bounce", "Type": "HardBounce", "Email": "a@b.c", "BouncedAt": "x"}', "BouncedAt"),
        (b'{"RecordType": "Delivery", "Recipient": "a@b.c"}', "DeliveredAt"),
        (
            b'{"RecordType": "SubscriptionChange", "Recipient": "a@b.c", '
            b'"ChangedAt": "2020-02-01T10:53:34Z"}',
            "SuppressSending",
        ),
    ],
)
async def test_malformed_bodies_are_400(body: bytes, fragment: str) -> None:
    with pytest.raises(WebhookError) as caught:
        await _handler().parse(_request(body))
    assert caught.value.status == 400
    assert fragment in caught.value.message


async def test_credentials_are_checked_before_the_body_is_read() -> None:
    with pytest.raises(WebhookError) as caught:
        await _handler().parse(_request(b"not json", _basic(password="wrong")))
    assert caught.value.status == 401


@pytest.mark.parametrize("kind", list(EventKind))
async def test_emulator_requests_authenticate_and_round_trip(kind: EventKind, tmp_path: Path) -> None:
    signer = postmark_webhooks.PostmarkEmulatorSigner()
    settings = signer.daemon_settings(tmp_path)
    config = config_mod.from_mapping({"webhooks": {"postmark": settings}}, env={})
    handler = postmark.PostmarkWebhook(config.webhooks.postmark)
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=dt.UTC)
    headers, body = signer.request(
        kind,
        SentEmail(
            email="Lead@Example.com",
            campaign_id=7,
            lead_id=9,
            message_id="m-1",
            occurred_at=when,
        ),
    )
    (event,) = await handler.parse(WebhookRequest(body, CIMultiDict(headers), "127.0.0.1"))
    assert (event.kind, event.email, event.campaign_id, event.lead_id) == (kind, "Lead@Example.com", 7, 9)
    assert (event.provider_message_id, event.occurred_at) == ("m-1", when)
    headers["Authorization"] = _basic(signer.username, "guess")
    with pytest.raises(WebhookError):
        await handler.parse(WebhookRequest(body, CIMultiDict(headers), "127.0.0.1"))


def test_emulator_secret_file_is_private(tmp_path: Path) -> None:
    settings = postmark_webhooks.PostmarkEmulatorSigner().daemon_settings(tmp_path)
    assert (Path(settings["password_file"]).stat().st_mode & 0o777) == 0o600
