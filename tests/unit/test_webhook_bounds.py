"""Every stored field of a webhook event is bounded at the edge (issue 9).

Addresses: one syntactically valid address of at most 254 bytes; ids: at most 255 bytes; both
refused with a 400 naming the field. Free texts (reason, provider type, SMTP status) are clipped
at a UTF-8 character boundary, never refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from mailerd.config import MailgunWebhookConfig, Secret
from mailerd.models import Event, EventKind
from mailerd.providers import mailgun_webhook as mailgun
from mailerd.providers import postmark_webhook as postmark
from mailerd.providers import sendgrid_webhook as sendgrid
from mailerd.providers import ses_webhook, sns
from mailerd.providers import webhook_auth as mailerd_auth
from mailerd.providers.webhooks import WebhookError, WebhookRequest, scrub

AT = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HUGE = "a" * 3000 + "@example.com"  # the ~3 KB address that used to wedge the writer
HUGE_ID = "e" * 3000


def address_of(size: int) -> str:
    """A valid address of exactly ``size`` bytes (64-byte local part, labels of at most 63)."""
    local = "a" * 64
    last = size - len(local) - 1 - 128
    return f"{local}@{'x' * 63}.{'y' * 63}.{'z' * last}"


def refused(call: Any, *args: Any) -> WebhookError:
    with pytest.raises(WebhookError) as caught:
        call(*args)
    assert caught.value.status == 400
    return caught.value


def sendgrid_body(**fields: Any) -> bytes:
    item = {
        "email": "jane@example.com",
        "timestamp": 1513299569,
        "event": "bounce",
        "type": "bounce",
        "sg_event_id": "sg-event-1",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "reason": "500 unknown recipient",
        "status": "5.0.0",
        **fields,
    }
    return orjson.dumps([item])


# --- addresses -----------------------------------------------------------------------------------


def test_an_address_of_254_bytes_is_accepted_and_255_refused_naming_the_field() -> None:
    assert len(address_of(254)) == 254
    (event,) = sendgrid.parse_events(sendgrid_body(email=address_of(254)))
    assert event.email == address_of(254)
    error = refused(sendgrid.parse_events, sendgrid_body(email=address_of(255)))
    assert (error.code, error.field) == ("too_long", "events[0].email")
    assert "254 bytes" in error.message


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    ok = f"{'é' * 32}@{'x' * 63}.{'y' * 63}.{'z' * 61}"  # 222 characters, 254 bytes
    assert len(ok.encode()) == 254
    assert sendgrid.parse_events(sendgrid_body(email=ok))[0].email == ok
    error = refused(sendgrid.parse_events, sendgrid_body(email=ok + "z"))
    assert error.field == "events[0].email"


@pytest.mark.parametrize(
    "value",
    [
        "a@b.c, d@e.f",  # two addresses
        "a@b.c; d@e.f",
        "Jane Doe <jane@example.com>",  # a display name
        "<jane@example.com>",
        "jane@",
        "@example.com",
        "jane.example.com",
        "a@b@example.com",
        "jane doe@example.com",
        "jane@exa mple.com",
        "jane@example.com\r\nBcc: x@y.z",
        "jane\x00@example.com",
        "jane@example..com",
        "jane@.example.com",
        "a" * 65 + "@example.com",  # a local part above 64 bytes
    ],
)
def test_anything_but_one_address_is_refused(value: str) -> None:
    error = refused(sendgrid.parse_events, sendgrid_body(email=value))
    assert error.field == "events[0].email"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("  Jane.Doe+tag@Example.COM ", "Jane.Doe+tag@Example.COM"),  # the database lower-cases it
        ('"john doe"@example.com', '"john doe"@example.com'),
        ("用户@例子.广告", "用户@例子.广告"),
        ("user@[192.0.2.1]", "user@[192.0.2.1]"),
        ("o'brien@example.ie", "o'brien@example.ie"),
    ],
)
def test_real_addresses_are_accepted(value: str, stored: str) -> None:
    assert sendgrid.parse_events(sendgrid_body(email=value))[0].email == stored


# --- ids -------------------------------------------------------------------------------------------


def test_sendgrid_ids_are_bounded() -> None:
    assert sendgrid.parse_events(sendgrid_body(sg_event_id="e" * 255))[0].receipt.startswith("e" * 255)
    error = refused(sendgrid.parse_events, sendgrid_body(sg_event_id=HUGE_ID))
    assert (error.code, error.field) == ("too_long", "events[0].sg_event_id")
    error = refused(sendgrid.parse_events, sendgrid_body(sg_message_id="m" * 256))
    assert error.field == "events[0].sg_message_id"
    error = refused(sendgrid.parse_events, sendgrid_body(email=HUGE))
    assert error.field == "events[0].email"


def mailgun_data(**fields: Any) -> dict[str, Any]:
    return {
        "event": "failed",
        "severity": "permanent",
        "reason": "bounce",
        "id": "mg-event-1",
        "timestamp": 1521233195.375624,
        "recipient": "jane@example.com",
        "message": {"headers": {"message-id": "20180316204635.1.A7B7@example.com"}},
        "delivery-status": {"code": 550, "message": "5.1.1 no such user", "description": ""},
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"recipient": HUGE}, "event-data.recipient"),
        ({"recipient": "a@b.c, d@e.f"}, "event-data.recipient"),
        ({"id": HUGE_ID}, "event-data.id"),
        ({"message": {"headers": {"message-id": HUGE_ID}}}, "event-data.message.headers.message-id"),
    ],
)
def test_mailgun_fields_are_bounded(fields: dict[str, Any], field: str) -> None:
    error = refused(mailgun.parse_event, mailgun_data(**fields))
    assert error.field == field


async def test_mailgun_signature_token_is_bounded() -> None:
    handler = mailgun.MailgunWebhook(MailgunWebhookConfig(verify_signatures=False))
    body = {
        "signature": {"timestamp": "1", "token": "t" * 256, "signature": "x"},
        "event-data": mailgun_data(),
    }
    with pytest.raises(WebhookError) as caught:
        await handler.parse(WebhookRequest(orjson.dumps(body), {}, None, "application/json"))
    assert (caught.value.status, caught.value.field) == (400, "signature.token")


def postmark_record(**fields: Any) -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Email": "john@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "Details": "Test bounce details",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"Email": HUGE}, "record.Email"),
        ({"Email": "john@example.com, jane@example.com"}, "record.Email"),
        ({"ID": 10**300}, "record.ID"),
        ({"MessageID": HUGE_ID}, "record.MessageID"),
        (
            {"RecordType": "Delivery", "Recipient": HUGE, "DeliveredAt": "2019-11-05T16:33:54Z"},
            "record.Recipient",
        ),
    ],
)
def test_postmark_fields_are_bounded(fields: dict[str, Any], field: str) -> None:
    error = refused(postmark.parse_record, postmark_record(**fields))
    assert error.field == field


def ses_bounce(**recipient: Any) -> dict[str, Any]:
    return {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "jane@example.com", "status": "5.1.1", **recipient}],
            "timestamp": "2017-08-05T00:41:02.669Z",
        },
        "mail": {"timestamp": "2017-08-05T00:40:02.012Z", "messageId": "0100015dab", "destination": []},
    }


def test_ses_fields_are_bounded() -> None:
    sns_time = AT
    error = refused(ses_webhook.parse_ses_message, ses_bounce(emailAddress=HUGE), "sns-1", sns_time)
    assert error.field == "Message.bounce.bouncedRecipients[0].emailAddress"
    message = ses_bounce()
    message["mail"]["messageId"] = HUGE_ID
    error = refused(ses_webhook.parse_ses_message, message, "sns-1", sns_time)
    assert error.field == "Message.mail.messageId"
    delivery = {
        "eventType": "Delivery",
        "mail": {"messageId": "0100015dab"},
        "delivery": {"recipients": ["ok@example.com", HUGE]},
    }
    error = refused(ses_webhook.parse_ses_message, delivery, "sns-1", sns_time)
    assert error.field == "Message.delivery.recipients[1]"


def test_sns_message_id_is_bounded() -> None:
    envelope = {
        "Type": "Notification",
        "MessageId": HUGE_ID,
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "Message": "{}",
        "Timestamp": "2026-03-01T12:00:00.000Z",
        "SignatureVersion": "2",
        "Signature": "c2ln",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    }
    error = refused(sns.parse_envelope, orjson.dumps(envelope))
    assert error.field == "MessageId"


# --- free texts: clipped, never refused -----------------------------------------------------------


def test_a_long_reason_is_clipped_at_a_character_boundary() -> None:
    (event,) = sendgrid.parse_events(sendgrid_body(reason="é" * 3000))
    assert event.reason == "é" * 500  # 1000 bytes
    (event,) = scrub(mailgun.parse_event(mailgun_data(**{"delivery-status": {"message": "x" * 5000}})))
    assert event.reason == "x" * 1000


def test_provider_type_and_smtp_status_are_clipped() -> None:
    (event,) = scrub(mailgun.parse_event(mailgun_data(reason="r" * 5000)))
    assert event.provider_type == "permanent/" + "r" * 90  # 100 bytes
    (event,) = scrub(sendgrid.parse_events(sendgrid_body(status="5" * 500)))
    assert event.smtp_status == "5" * 32


def test_scrub_refuses_an_oversized_key_that_reached_it_naming_the_event_field() -> None:
    """The last line of defence: whatever built the event, nothing too big for an index goes on."""
    long_address = Event("sendgrid", EventKind.HARD_BOUNCE, AT, address_of(255), "id:a")
    with pytest.raises(WebhookError) as caught:
        scrub([long_address])
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "too_long", "email")
    for name, value in (("receipt", "r" * 1025), ("provider_message_id", "m" * 256), ("guard", "g" * 1025)):
        event = Event("sendgrid", EventKind.HARD_BOUNCE, AT, "a@example.com", "id:a")
        with pytest.raises(WebhookError) as caught:
            scrub([dataclasses.replace(event, **{name: value})])
        assert caught.value.field == name


# --- values of the wrong JSON type or size, in signed bodies (a 500, or read as something else) ---


@pytest.mark.parametrize("value", ["1" * 5000, ["1" * 5000], "0" * 30 + "7", 2**63, "-5", True])
def test_a_metadata_id_no_id_can_be_is_none(value: Any) -> None:
    # int() refuses 4,300 digits with a ValueError: it was a 500 on every provider
    assert mailerd_auth.metadata_id(value) == (7 if value == "0" * 30 + "7" else None)


@pytest.mark.parametrize("value", ["9" * 400, "9" * 21, 1e300])
def test_a_signed_timestamp_beyond_the_years_is_a_401_not_a_500(value: Any) -> None:
    with pytest.raises(WebhookError) as caught:
        mailerd_auth.check_fresh(mailerd_auth.unix_time(value, "t"), 1e9, 300, "t")
    assert (caught.value.status, caught.value.code) == (401, "invalid_timestamp")


@pytest.mark.parametrize("event_type", [["Bounce"], {"a": 1}, 5])
def test_an_ses_event_type_that_is_not_text_is_ignored(event_type: Any) -> None:
    # `not in SES_EVENT_TYPES` raised TypeError (unhashable) for a list or an object: a 500
    assert ses_webhook.parse_ses_message({"eventType": event_type, "mail": {}}, "sns-1", AT) == []
    assert ses_webhook.parse_ses_message({"notificationType": event_type, "mail": {}}, "sns-1", AT) == []


@pytest.mark.parametrize(
    ("key", "value"), [("type", ["blocked"]), ("type", {"a": 1}), ("type", 5), ("reason", [])]
)
def test_a_sendgrid_field_that_classifies_the_event_must_be_text(key: str, value: Any) -> None:
    # a list in `type` was a hard bounce, and suppressed the address
    error = refused(sendgrid.parse_events, sendgrid_body(**{key: value}))
    assert error.field == f"events[0].{key}"


def test_mailgun_reason_and_postmark_fields_of_the_wrong_type_are_refused() -> None:
    assert "reason" in refused(mailgun.parse_event, mailgun_data(reason={"code": 1})).message
    assert refused(postmark.parse_record, postmark_record(ID=[1])).field == "ID"
    error = refused(postmark.parse_record, postmark_record(Type="HardBounce", Inactive="true"))
    assert error.field == "Inactive" and "expected true or false" in error.message


async def test_mailgun_event_data_nested_past_what_orjson_writes_is_a_400() -> None:
    deep = b'{"event": "delivered", "x": ' * 300 + b"{}" + b"}" * 300  # orjson reads it, cannot write it
    handler = mailgun.MailgunWebhook(MailgunWebhookConfig(verify_signatures=True, signing_key=Secret("k")))
    token, timestamp = "t" * 50, str(int(time.time()))
    block = {"timestamp": timestamp, "token": token, "signature": mailgun.signature_of("k", timestamp, token)}
    body = b'{"signature": ' + orjson.dumps(block) + b', "event-data": ' + deep + b"}"
    request = WebhookRequest(body, CIMultiDict({"Content-Type": "application/json"}), "127.0.0.1")
    with pytest.raises(WebhookError) as caught:
        await handler.parse(request)
    assert (caught.value.status, caught.value.field) == (400, "event-data")
