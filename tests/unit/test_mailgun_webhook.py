"""Mailgun webhooks: documented samples, HMAC signatures, freshness, replayed tokens, bad input."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from mailerd import config as config_mod
from mailerd.emulator import mailgun_webhooks
from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import mailgun_webhook as mailgun
from mailerd.providers.webhooks import WebhookError, WebhookRequest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks" / "mailgun"
KEY = "TEST_WEBHOOK_SIGNING_KEY"


def _handler(now: float, *, key: str | None = KEY, **settings: Any) -> mailgun.MailgunWebhook:
    secret = config_mod.Secret(key) if key is not None else None
    config = config_mod.MailgunWebhookConfig(signing_key=secret, **settings)
    return mailgun.MailgunWebhook(config, clock=lambda: now)


def _sample(name: str, key: str = KEY) -> dict[str, Any]:
    """A documented sample, signed as Mailgun signs (HMAC-SHA256 of timestamp + token)."""
    return _signed(json.loads((FIXTURES / f"{name}.json").read_text()), key)


def _signed(body: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    block = body["signature"]
    block["signature"] = hmac.new(
        key.encode(), (block["timestamp"] + block["token"]).encode(), hashlib.sha256
    ).hexdigest()
    return body


def _request(body: dict[str, Any] | bytes) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return WebhookRequest(raw, CIMultiDict({"Content-Type": "application/json"}), "127.0.0.1")


def _at(body: dict[str, Any]) -> float:
    return float(body["signature"]["timestamp"]) + 1


def test_signature_matches_mailguns_documented_recipe() -> None:
    # The recipe of Mailgun's "Securing Webhooks" page, computed independently.
    expected = hmac.new(b"key", b"1529006854token", hashlib.sha256).hexdigest()
    assert mailgun.signature_of("key", "1529006854", "token") == expected


@pytest.mark.parametrize(
    ("name", "kind", "provider_type", "email", "smtp_status"),
    [
        ("delivered", EventKind.DELIVERED, "delivered", "recipient@example.com", "250"),
        ("failed_permanent", EventKind.HARD_BOUNCE, "permanent/bounce", "invalid@example.com", "5.1.1"),
        (
            "failed_suppress_bounce",
            EventKind.HARD_BOUNCE,
            "permanent/suppress-bounce",
            "bounced@example.com",
            "605",
        ),
        ("complained", EventKind.COMPLAINT, "complained", "recipient@example.com", None),
        ("unsubscribed", EventKind.UNSUBSCRIBE, "unsubscribed", "recipient@example.com", None),
    ],
)
async def test_documented_samples(
    name: str, kind: EventKind, provider_type: str, email: str, smtp_status: str | None
) -> None:
    body = _sample(name)
    (event,) = await _handler(_at(body)).parse(_request(body))
    data = body["event-data"]
    assert (event.kind, event.provider_type, event.email, event.smtp_status) == (
        kind,
        provider_type,
        email,
        smtp_status,
    )
    assert event.receipt == f"{data['id']}:{email}"
    assert event.provider_message_id == data["message"]["headers"]["message-id"]
    assert event.occurred_at == dt.datetime.fromtimestamp(data["timestamp"], dt.UTC)
    assert event.provider == "mailgun"


async def test_failed_permanent_details() -> None:
    body = _sample("failed_permanent")
    (event,) = await _handler(_at(body)).parse(_request(body))
    assert (event.campaign_id, event.lead_id) == (12, 34)
    assert event.reason is not None and event.reason.startswith("5.1.1 The email account")


async def test_a_temporary_failure_is_no_event_and_the_give_up_one_soft_bounce() -> None:
    """Mailgun posts a temporary failure for every attempt it retries (greylisting, a full
    mailbox...): counted each, one delivered message made three soft bounces. Its outcome comes
    later: delivered, or a permanent failure, reason old (a soft bounce) when it gives up."""
    body = _sample("failed_temporary")
    handler = _handler(_at(body))
    assert await handler.parse(_request(body)) == []
    body["event-data"] |= {"severity": "permanent", "reason": "old", "id": "gave-up"}
    body["signature"]["token"] += "x"  # a post of its own: another token
    (event,) = await handler.parse(_request(_signed(body)))
    assert (event.kind, event.provider_type, event.reason) == (
        EventKind.SOFT_BOUNCE,
        "permanent/old",
        "No MX for nomx.example.com",
    )


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("suppress-unsubscribe", EventKind.UNSUBSCRIBE),
        ("suppress-complaint", EventKind.COMPLAINT),
        ("old", EventKind.SOFT_BOUNCE),
        ("espblock", EventKind.HARD_BOUNCE),
    ],
)
def test_permanent_failure_reasons(reason: str, kind: EventKind) -> None:
    data = _sample("failed_permanent")["event-data"] | {"reason": reason}
    (event,) = mailgun.parse_event(data)
    assert event.kind is kind


async def test_other_events_are_ignored() -> None:
    body = _sample("opened")
    assert await _handler(_at(body)).parse(_request(body)) == []


@pytest.mark.parametrize("field", ["signature", "timestamp", "token"])
async def test_one_byte_changed_in_the_signed_block_is_refused(field: str) -> None:
    body = _sample("delivered")
    value = body["signature"][field]
    body["signature"][field] = value[:-1] + ("0" if value[-1] != "0" else "1")
    with pytest.raises(WebhookError) as caught:
        await _handler(_at(body)).parse(_request(body))
    assert (caught.value.status, caught.value.code) == (401, "bad_signature")


async def test_the_api_key_or_another_key_does_not_verify() -> None:
    body = _sample("delivered", key="key-8221462f0c915af3f6f2e2df7aa5a493")
    with pytest.raises(WebhookError) as caught:
        await _handler(_at(body)).parse(_request(body))
    assert caught.value.status == 401


async def test_the_default_window_takes_mailguns_last_retry() -> None:
    """A retry carries the original token and timestamp; Mailgun retries for 8 hours (5, 10, 15
    minutes, 1, 2, 4 hours: the last 7.5 hours after the first post). With 600 s every retry
    after the first was refused as stale, for good."""
    body = _sample("delivered")
    signed = float(body["signature"]["timestamp"])
    assert config_mod.MailgunWebhookConfig().max_age_s == 8 * 3600
    assert len(await _handler(signed + 7.5 * 3600).parse(_request(body))) == 1


async def test_stale_and_future_timestamps_are_refused() -> None:
    body = _sample("delivered")
    signed = float(body["signature"]["timestamp"])
    for now in (signed + 601, signed - 601):
        with pytest.raises(WebhookError) as caught:
            await _handler(now, max_age_s=600).parse(_request(body))
        assert (caught.value.status, caught.value.code) == (401, "stale_timestamp")
    assert len(await _handler(signed + 10**8, max_age_s=0).parse(_request(body))) == 1


async def test_a_token_reused_with_other_event_data_is_refused() -> None:
    body = _sample("failed_permanent")
    handler = _handler(_at(body))
    assert len(await handler.parse(_request(body))) == 1
    forged = json.loads(json.dumps(body))
    forged["event-data"]["recipient"] = "someone-else@example.com"
    with pytest.raises(WebhookError) as caught:
        await handler.parse(_request(forged))
    assert (caught.value.status, caught.value.code) == (401, "replayed_token")


async def test_the_same_request_again_is_let_through_for_the_database_to_deduplicate() -> None:
    # Mailgun retries a post that was not answered 2xx; refusing it would lose the event.
    body = _sample("failed_permanent")
    handler = _handler(_at(body))
    first = await handler.parse(_request(body))
    again = await handler.parse(_request(orjson.dumps(body, option=orjson.OPT_INDENT_2)))
    assert [e.receipt for e in first] == [e.receipt for e in again]


def test_replay_guard_is_bounded_and_forgets_after_the_window() -> None:
    from mailerd.providers.webhook_auth import ReplayGuard

    guard = ReplayGuard(window_s=10, capacity=3)
    assert guard.check("a", b"1", now=0)
    assert not guard.check("a", b"2", now=5)
    assert guard.check("a", b"1", now=5)
    for token in "bcd":
        assert guard.check(token, b"x", now=6)
    assert len(guard) == 3  # "a" pushed out by capacity
    assert guard.check("b", b"x", now=7)
    assert guard.check("b", b"other", now=17)  # "b" expired after the window
    assert len(guard) <= 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "empty_body"),
        (b"token=abc&timestamp=1", 400, "invalid_json"),
        (b"[]", 400, "invalid_body"),
        (b'{"event-data": {"event": "delivered"}}', 401, "missing_signature"),
        (b'{"signature": {"timestamp": "1"}, "event-data": {}}', 401, "missing_signature"),
        (b'{"signature": "abc", "event-data": {}}', 401, "missing_signature"),
    ],
)
async def test_malformed_requests(body: bytes, status: int, code: str) -> None:
    with pytest.raises(WebhookError) as caught:
        await _handler(2).parse(_request(body))
    assert (caught.value.status, caught.value.code) == (status, code)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"event-data": None}, "event-data: expected an object"),
        ({"event-data": {"id": "x"}}, "event-data.event"),
        ({"event-data": {"event": "failed", "id": "x", "recipient": "a@b.c", "timestamp": 1}}, "severity"),
        ({"event-data": {"event": "delivered", "id": "x", "timestamp": 1}}, "recipient"),
        ({"event-data": {"event": "delivered", "recipient": "a@b.c", "timestamp": 1}}, "event-data.id"),
        ({"event-data": {"event": "delivered", "recipient": "a@b.c", "id": "x"}}, "timestamp"),
        ({"event-data": {"event": "complained", "recipient": "a", "id": "x", "timestamp": 1}}, "address"),
    ],
)
async def test_signed_but_malformed_event_data_is_400(change: dict[str, Any], fragment: str) -> None:
    body = _sample("delivered") | change
    with pytest.raises(WebhookError) as caught:
        await _handler(_at(body)).parse(_request(body))
    assert caught.value.status == 400
    assert fragment in caught.value.message


async def test_no_key_is_403_and_verification_can_be_turned_off() -> None:
    body = _sample("delivered")
    with pytest.raises(WebhookError) as caught:
        await _handler(_at(body), key=None).parse(_request(body))
    assert caught.value.status == 403
    body["signature"]["signature"] = "0" * 64
    unverified = _handler(_at(body), verify_signatures=False)
    assert len(await unverified.parse(_request(body))) == 1


@pytest.mark.parametrize("kind", list(EventKind))
async def test_emulator_requests_verify_and_round_trip(kind: EventKind, tmp_path: Path) -> None:
    now = 1_700_000_000.0
    signer = mailgun_webhooks.MailgunEmulatorSigner(clock=lambda: now)
    settings = signer.daemon_settings(tmp_path)
    config = config_mod.from_mapping({"webhooks": {"mailgun": settings}}, env={})
    handler = mailgun.MailgunWebhook(config.webhooks.mailgun, clock=lambda: now)
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=dt.UTC)
    headers, body = signer.request(
        kind,
        SentEmail(
            email="Lead@Example.com",
            campaign_id=7,
            lead_id=9,
            message_id="m-1@x",
            occurred_at=when,
        ),
    )
    request = WebhookRequest(body, CIMultiDict(headers), "127.0.0.1")
    (event,) = await handler.parse(request)
    assert (event.kind, event.email, event.campaign_id, event.lead_id) == (kind, "Lead@Example.com", 7, 9)
    assert (event.provider_message_id, event.occurred_at) == ("m-1@x", when)
    forged = orjson.loads(body)
    forged["event-data"]["user-variables"]["mailerd_lead"] = "10"
    with pytest.raises(WebhookError):
        await handler.parse(WebhookRequest(orjson.dumps(forged), CIMultiDict(headers)))


def test_emulator_secret_file_is_private(tmp_path: Path) -> None:
    settings = mailgun_webhooks.MailgunEmulatorSigner().daemon_settings(tmp_path)
    assert (Path(settings["signing_key_file"]).stat().st_mode & 0o777) == 0o600
