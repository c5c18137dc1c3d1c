"""SendGrid Signed Event Webhook: SDK vectors, a real signed post, every event kind, bad input."""

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
from mailerd.emulator import sendgrid_webhooks
from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import sendgrid_webhook as sendgrid
from mailerd.providers.webhooks import WebhookError, WebhookRequest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks" / "sendgrid"
SDK = json.loads((FIXTURES / "sdk_vector.json").read_text())
SIGNED = json.loads((FIXTURES / "signed_dropped.json").read_text())


def _handler(now: float, **settings: Any) -> sendgrid.SendgridWebhook:
    config = config_mod.from_mapping({"webhooks": {"sendgrid": settings}}, env={})
    return sendgrid.SendgridWebhook(config.webhooks.sendgrid, clock=lambda: now)


def _request(body: bytes, headers: dict[str, str]) -> WebhookRequest:
    return WebhookRequest(body, CIMultiDict(headers), "127.0.0.1", "application/json")


def _flip(text: str, index: int) -> str:
    """``text`` with one character changed (a one-byte alteration)."""
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


# --- the SDKs' published vectors ---------------------------------------------------------------


def test_sdk_vector_verifies() -> None:
    key = sendgrid.load_public_key(SDK["public_key"])
    assert sendgrid.verify_signature(key, SDK["payload"].encode(), SDK["signature"], SDK["timestamp"])


@pytest.mark.parametrize(
    ("key", "payload", "signature", "timestamp"),
    [
        (SDK["other_public_key"], SDK["payload"], SDK["signature"], SDK["timestamp"]),
        (SDK["public_key"], "payload", SDK["signature"], SDK["timestamp"]),
        (SDK["public_key"], SDK["payload"], SDK["bad_signature"], SDK["timestamp"]),
        (SDK["public_key"], SDK["payload"], SDK["signature"], "timestamp"),
        (SDK["public_key"], SDK["payload"], SDK["signature"], "1588788368"),
        (SDK["public_key"], SDK["payload"][:-1] + " ", SDK["signature"], SDK["timestamp"]),
        (SDK["public_key"], SDK["payload"], "not base64!", SDK["timestamp"]),
    ],
    ids=[
        "other-key",
        "other-payload",
        "sdk-bad-signature",
        "bad-timestamp",
        "timestamp+1",
        "byte",
        "garbage",
    ],
)
def test_sdk_vector_rejections(key: str, payload: str, signature: str, timestamp: str) -> None:
    public = sendgrid.load_public_key(key)
    assert not sendgrid.verify_signature(public, payload.encode(), signature, timestamp)


async def test_sdk_vector_through_the_handler_is_verified_then_refused_as_not_an_array() -> None:
    handler = _handler(float(SDK["timestamp"]) + 5, public_key=SDK["public_key"])
    headers = {sendgrid.SIGNATURE_HEADER: SDK["signature"], sendgrid.TIMESTAMP_HEADER: SDK["timestamp"]}
    with pytest.raises(WebhookError) as caught:
        await handler.parse(_request(SDK["payload"].encode(), headers))
    assert (caught.value.status, caught.value.code) == (400, "invalid_body")


# --- a real signed post --------------------------------------------------------------------------


def _signed_headers(
    signature: str = SIGNED["signature"], timestamp: str = SIGNED["timestamp"]
) -> dict[str, str]:
    return {sendgrid.SIGNATURE_HEADER: signature, sendgrid.TIMESTAMP_HEADER: timestamp}


async def test_real_signed_post_parses() -> None:
    handler = _handler(float(SIGNED["timestamp"]) + 30, public_key=SIGNED["public_key"])
    events = await handler.parse(_request(SIGNED["body"].encode(), _signed_headers()))
    assert len(events) == 1
    event = events[0]
    assert event.kind is EventKind.HARD_BOUNCE  # dropped: "Bounced Address"
    assert event.provider_type == "dropped"
    assert event.email == "hello@world.com"
    assert event.receipt == "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA:hello@world.com"
    assert event.provider_message_id == "LRzXl_NHStOGhQ4kofSm_A"
    assert event.occurred_at == dt.datetime.fromtimestamp(1600112492, dt.UTC)
    assert event.reason == "Bounced Address"


@pytest.mark.parametrize("position", [0, 10, 100, -4])
async def test_real_signed_post_altered_by_one_byte_is_refused(position: int) -> None:
    handler = _handler(float(SIGNED["timestamp"]) + 30, public_key=SIGNED["public_key"])
    body = bytearray(SIGNED["body"].encode())
    body[position] ^= 0x01
    with pytest.raises(WebhookError) as caught:
        await handler.parse(_request(bytes(body), _signed_headers()))
    assert (caught.value.status, caught.value.code) == (401, "bad_signature")


async def test_altered_signature_or_timestamp_is_refused() -> None:
    handler = _handler(float(SIGNED["timestamp"]) + 30, public_key=SIGNED["public_key"])
    body = SIGNED["body"].encode()
    raw = bytearray(base64.b64decode(SIGNED["signature"]))
    raw[-3] ^= 0x01
    for headers in (
        _signed_headers(signature=base64.b64encode(bytes(raw)).decode()),
        _signed_headers(timestamp=str(int(SIGNED["timestamp"]) + 1)),
    ):
        with pytest.raises(WebhookError) as caught:
            await handler.parse(_request(body, headers))
        assert caught.value.status == 401


async def test_freshness_window() -> None:
    body, headers = SIGNED["body"].encode(), _signed_headers()
    stale = _handler(float(SIGNED["timestamp"]) + 601, public_key=SIGNED["public_key"], max_age_s=600)
    with pytest.raises(WebhookError) as caught:
        await stale.parse(_request(body, headers))
    assert (caught.value.status, caught.value.code) == (401, "stale_timestamp")
    future = _handler(float(SIGNED["timestamp"]) - 601, public_key=SIGNED["public_key"], max_age_s=600)
    with pytest.raises(WebhookError):
        await future.parse(_request(body, headers))
    unlimited = _handler(2e9, public_key=SIGNED["public_key"], max_age_s=0)
    assert len(await unlimited.parse(_request(body, headers))) == 1


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_signature"),
        ({sendgrid.SIGNATURE_HEADER: SIGNED["signature"]}, "missing_signature"),
        ({sendgrid.TIMESTAMP_HEADER: SIGNED["timestamp"]}, "missing_signature"),
        (_signed_headers(timestamp="yesterday"), "invalid_timestamp"),
        (_signed_headers(signature="%%%"), "bad_signature"),
    ],
)
async def test_missing_or_garbled_credentials_are_401(headers: dict[str, str], code: str) -> None:
    handler = _handler(float(SIGNED["timestamp"]), public_key=SIGNED["public_key"])
    with pytest.raises(WebhookError) as caught:
        await handler.parse(_request(SIGNED["body"].encode(), headers))
    assert (caught.value.status, caught.value.code) == (401, code)


async def test_no_key_configured_is_403_and_verification_can_be_turned_off() -> None:
    with pytest.raises(WebhookError) as caught:
        await _handler(0).parse(_request(SIGNED["body"].encode(), _signed_headers()))
    assert caught.value.status == 403
    unverified = _handler(0, verify_signatures=False)
    assert len(await unverified.parse(_request(SIGNED["body"].encode(), {}))) == 1


def test_a_bad_public_key_is_a_config_error() -> None:
    with pytest.raises(config_mod.ConfigError, match="public_key"):
        _handler(0, public_key="bm90IGEga2V5")


# --- SendGrid's documented event samples -------------------------------------------------------


def test_documented_events_map_to_kinds() -> None:
    events = sendgrid.parse_events((FIXTURES / "events.json").read_bytes())
    got = [(e.provider_type, e.kind, e.reason) for e in events]
    assert got == [
        ("delivered", EventKind.DELIVERED, "250 OK"),
        ("bounce", EventKind.HARD_BOUNCE, "500 unknown recipient"),
        (
            "blocked",
            EventKind.SOFT_BOUNCE,
            "550 5.7.1 Service unavailable; client blocked using Spamhaus",
        ),
        ("dropped", EventKind.HARD_BOUNCE, "Bounced Address"),
        ("dropped", EventKind.UNSUBSCRIBE, "Unsubscribed Address"),
        ("dropped", EventKind.COMPLAINT, "Spam Reporting Address"),
        ("dropped", EventKind.SOFT_BOUNCE, "Invalid SMTPAPI header"),
        ("spamreport", EventKind.COMPLAINT, None),
        ("unsubscribe", EventKind.UNSUBSCRIBE, None),
        ("group_unsubscribe", EventKind.UNSUBSCRIBE, None),
        (
            "bounce",
            EventKind.HARD_BOUNCE,
            "550 5.1.1 The email account that you tried to reach does not exist.",
        ),
    ]  # processed, deferred, open, click and group_resubscribe give no event
    first = events[0]
    assert first.email == "example@test.com"
    assert first.receipt == "rWVYmVk90MjZJ9iohOBa3w==:example@test.com"
    assert first.provider_message_id == "14c5d75ce93.dfd.64b469"  # the smtp-id's local part
    assert first.occurred_at == dt.datetime(2017, 12, 15, 0, 59, 29, tzinfo=dt.UTC)
    assert (first.campaign_id, first.lead_id) == (None, None)
    assert events[1].smtp_status == "5.0.0"
    ours = events[-1]
    assert (ours.campaign_id, ours.lead_id) == (12, 34)
    assert ours.email == "Lead.Seven@Example.com"  # the database lower-cases it (events.resolve)
    assert ours.receipt.endswith(":lead.seven@example.com")
    assert (ours.smtp_status, ours.provider_message_id) == ("5.1.1", "LRzXl_NHStOGhQ4kofSm_B")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"not json", "not JSON"),
        (b'{"event": "bounce"}', "array"),
        (b"[1]", "events[0]: expected an object"),
        (b'[{"email": "a@b.c"}]', "events[0].event"),
        (b'[{"event": "bounce", "sg_event_id": "x", "timestamp": 1}]', "events[0].email"),
        (b'[{"event": "bounce", "email": "nobody", "sg_event_id": "x", "timestamp": 1}]', "email address"),
        (b'[{"event": "spamreport", "email": "a@b.c", "timestamp": 1}]', "sg_event_id"),
        (b'[{"event": "delivered", "email": "a@b.c", "sg_event_id": "x"}]', "timestamp: missing"),
        (b'[{"event": "delivered", "email": "a@b.c", "sg_event_id": "x", "timestamp": "soon"}]', "timestamp"),
    ],
)
def test_malformed_bodies_are_400(body: bytes, fragment: str) -> None:
    with pytest.raises(WebhookError) as caught:
        sendgrid.parse_events(body)
    assert caught.value.status == 400
    assert fragment in caught.value.message


def test_base_message_id() -> None:
    assert sendgrid.base_message_id("abc.filterdrecv-p3-1") == "abc"
    assert sendgrid.base_message_id("14c5d75ce93.dfd.64b469.filter0001.16648") == "14c5d75ce93.dfd.64b469"
    assert sendgrid.base_message_id("abc.recvd-x") == "abc"
    assert sendgrid.base_message_id("abc") == "abc"
    assert sendgrid.base_message_id(None) is None


# --- the emulator signer -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EventKind))
async def test_emulator_requests_verify_and_round_trip(kind: EventKind, tmp_path: Path) -> None:
    now = 1_700_000_000.0
    signer = sendgrid_webhooks.SendgridEmulatorSigner(clock=lambda: now)
    handler = _handler(now + 1, **signer.daemon_settings(tmp_path))
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
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
    (event,) = await handler.parse(_request(body, headers))
    assert (event.kind, event.email, event.campaign_id, event.lead_id) == (kind, "Lead@Example.com", 7, 9)
    assert (event.provider_message_id, event.occurred_at) == ("m-1", when)
    assert isinstance(orjson.loads(body), list)
    tampered = body.replace(b"Lead@", b"Leaf@")
    with pytest.raises(WebhookError):
        await handler.parse(_request(tampered, headers))
