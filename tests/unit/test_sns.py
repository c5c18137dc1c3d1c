"""SNS verification and SES event parsing, from published vectors and the SES docs' samples."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from structlog.testing import capture_logs

from mailerd.config import SesWebhookConfig
from mailerd.emulator import ses_webhooks
from mailerd.emulator.signer import SentEmail
from mailerd.models import Event, EventKind
from mailerd.providers import ses_webhook, sns
from mailerd.providers.webhooks import WebhookError, WebhookRequest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks" / "ses"
SES_DOCS = FIXTURES / "ses-docs"
JAVA_V1 = "aws-sdk-java-v2-sample-message.json"
RUBY_V1 = "aws-sdk-ruby-sha1-notification.json"
RUBY_V2 = "aws-sdk-ruby-sha256-notification.json"
# A moment inside each published certificate's validity, near its message's Timestamp.
VECTOR_NOW = {
    JAVA_V1: dt.datetime(2015, 9, 20, 1, 25, tzinfo=dt.UTC),
    RUBY_V1: dt.datetime(2022, 7, 28, 21, 30, tzinfo=dt.UTC),
    RUBY_V2: dt.datetime(2022, 7, 28, 21, 30, tzinfo=dt.UTC),
}
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class Fetcher:
    """The injected ``fetch``: records URLs, answers from a dict, never touches the network."""

    def __init__(self, answers: dict[str, bytes] | None = None, fail: bool = False) -> None:
        self.answers = answers or {}
        self.fail = fail
        self.urls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if self.fail or url not in self.answers:
            raise sns.FetchError("HTTP 404")
        return self.answers[url]


def clock(when: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: when


def request(body: bytes | dict[str, Any], **headers: str) -> WebhookRequest:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return WebhookRequest(raw, CIMultiDict(headers), "127.0.0.1", "text/plain")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / name).read_bytes())
    return data


def hook(
    now: dt.datetime = NOW, fetch: Fetcher | None = None, **settings: Any
) -> tuple[ses_webhook.SnsWebhook, Fetcher]:
    fetch = fetch or Fetcher()
    # The published vectors come from several topics: their tests are about signatures.
    topics = {} if "topic_arns" in settings else {"accept_any_topic": True}
    config = SesWebhookConfig(**{"cert_dir": str(FIXTURES), **topics, **settings})
    return ses_webhook.SnsWebhook(config, fetch=fetch, clock=clock(now)), fetch


async def refused(
    webhook: ses_webhook.SnsWebhook, body: bytes | dict[str, Any], **headers: str
) -> WebhookError:
    with pytest.raises(WebhookError) as caught:
        await webhook.parse(request(body, **headers))
    return caught.value


@pytest.fixture(scope="module")
def signer() -> ses_webhooks.SnsEmulatorSigner:
    return ses_webhooks.SnsEmulatorSigner(clock=clock(NOW))


@pytest.fixture
def own(
    signer: ses_webhooks.SnsEmulatorSigner, tmp_path: Path
) -> Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]:
    """A webhook that trusts ``signer``'s certificate through ``cert_dir`` (no network)."""
    settings = signer.daemon_settings(tmp_path)

    def make(now: dt.datetime = NOW, **overrides: Any) -> tuple[ses_webhook.SnsWebhook, Fetcher]:
        return hook(now, **{**settings, **overrides})

    return make


# --- published signature vectors -----------------------------------------------------------


@pytest.mark.parametrize("name", [JAVA_V1, RUBY_V1, RUBY_V2])
async def test_published_vectors_verify_with_their_certificate(name: str) -> None:
    webhook, fetch = hook(VECTOR_NOW[name])
    with capture_logs() as logs:
        # Verified, but "boo"/"Hello world" is no SES event: answered 2xx with no events.
        assert await webhook.parse(request(load(name))) == []
    assert fetch.urls == []  # the certificate came from cert_dir
    assert any(entry["event"] == "sns_notification_ignored" for entry in logs)


@pytest.mark.parametrize("name", [JAVA_V1, RUBY_V1, RUBY_V2])
def test_published_vectors_canonical_string(name: str) -> None:
    message = load(name)
    envelope = sns.parse_envelope(orjson.dumps(message))
    certificate = sns.load_certificate(
        (FIXTURES / sns.cert_file_name(message["SigningCertURL"])).read_bytes()
    )
    sns.verify_signature(envelope.fields, certificate, VECTOR_NOW[name])
    expected = (
        f"Message\n{message['Message']}\nMessageId\n{message['MessageId']}\n"
        + (f"Subject\n{message['Subject']}\n" if "Subject" in message else "")
        + f"Timestamp\n{message['Timestamp']}\nTopicArn\n{message['TopicArn']}\nType\nNotification\n"
    )
    assert sns.canonical_string(envelope.fields) == expected.encode()


@pytest.mark.parametrize("name", [JAVA_V1, RUBY_V1, RUBY_V2])
async def test_expired_certificate_is_refused_at_todays_date(name: str) -> None:
    webhook, _ = hook(dt.datetime.now(dt.UTC), max_age_s=0)
    error = await refused(webhook, load(name))
    assert (error.status, error.code) == (401, "bad_certificate")


@pytest.mark.parametrize("name", [JAVA_V1, RUBY_V1, RUBY_V2])
@pytest.mark.parametrize("field", ["Message", "MessageId", "Subject", "Timestamp", "TopicArn"])
async def test_one_altered_byte_fails(name: str, field: str) -> None:
    message = load(name)
    if field not in message:
        message[field] = "x"  # adding a Subject changes the canonical string too
    else:
        value = message[field]
        message[field] = value[:-1] + ("0" if value[-1] != "0" else "1")
    webhook, _ = hook(VECTOR_NOW[name], max_age_s=0)
    error = await refused(webhook, message)
    assert (error.status, error.code) == (401, "bad_signature")


@pytest.mark.parametrize("name", [RUBY_V1, RUBY_V2])
async def test_altered_signature_or_swapped_version_fails(name: str) -> None:
    webhook, _ = hook(VECTOR_NOW[name])
    message = load(name)
    signature = bytearray(message["Signature"].encode())
    signature[10] = ord("A") if signature[10] != ord("A") else ord("B")
    for altered in (
        {**message, "Signature": signature.decode()},
        {**message, "SignatureVersion": "2" if message["SignatureVersion"] == "1" else "1"},
        {**message, "Signature": "not base64!"},
    ):
        error = await refused(webhook, altered)
        assert (error.status, error.code) == (401, "bad_signature")


async def test_unknown_signature_version_is_refused_before_any_fetch() -> None:
    webhook, fetch = hook(VECTOR_NOW[RUBY_V1], cert_dir="")
    for version in ("3", "0", ""):
        error = await refused(webhook, {**load(RUBY_V1), "SignatureVersion": version})
        assert (error.status, error.code) == (401, "bad_signature")
    assert fetch.urls == []


# --- our own keys: v1 and v2 ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
async def test_own_signed_v1_and_v2_messages(
    version: str,
    signer: ses_webhooks.SnsEmulatorSigner,
    own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]],
) -> None:
    record = orjson.dumps(orjson.loads((SES_DOCS / "event-bounce.json").read_bytes())).decode()
    message = signer.envelope(record, version=version, Subject="Amazon SES Email Event Notification")
    webhook, fetch = own()
    events = await webhook.parse(request(message, **{"x-amz-sns-message-type": "Notification"}))
    assert [(e.kind, e.email) for e in events] == [(EventKind.HARD_BOUNCE, "recipient@example.com")]
    assert fetch.urls == []
    tampered = {**message, "Message": record.replace("5.1.1", "5.1.2", 1)}
    assert (await refused(webhook, tampered)).status == 401


# --- certificate URLs and fetching -----------------------------------------------------------

GOOD_URLS = [
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.eu-west-3.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.cn-northwest-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.eu-west-2.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.ap-southeast-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.il-central-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://SNS.US-EAST-1.AMAZONAWS.COM/SimpleNotificationService-abc.pem",  # hosts are case-blind
]
BAD_URLS = [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.evil.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.key",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=.key",
    "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com@evil.com/x.pem",
    "https://user@sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com:8443/x.pem",
    "https://sns.us-east-1.amazonaws.com:notaport/x.pem",
    "https://ns.us-east-1.amazonaws.com/x.pem",
    "https://sns.amazonaws.com/x.pem",
    "//sns.us-east-1.amazonaws.com/x.pem",
    "",
    # S3 addresses of a bucket named "sns" (path-style and legacy regional): its owner serves them.
    "https://sns.s3.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.s3-us-west-2.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.s3.us-west-2.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.s3-website-us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
    "https://sns.mybucket.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.xx-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1a.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-abc.pem",
    # The partitions do not mix: China regions are only under .amazonaws.com.cn, others never.
    "https://sns.us-east-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.cn-north-1.amazonaws.com/SimpleNotificationService-abc.pem",
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_cert_urls(url: str) -> None:
    sns.check_sns_url(url, "SigningCertURL", pem=True)


@pytest.mark.parametrize("url", BAD_URLS)
async def test_bad_cert_urls_are_refused_without_fetching(url: str) -> None:
    with pytest.raises(WebhookError) as caught:
        sns.check_sns_url(url, "SigningCertURL", pem=True)
    assert caught.value.status == 401
    webhook, fetch = hook(VECTOR_NOW[RUBY_V2])
    error = await refused(webhook, {**load(RUBY_V2), "SigningCertURL": url})
    assert (error.status, error.code) == (401, "bad_url")
    assert fetch.urls == []


async def test_certificates_are_fetched_once_and_cached() -> None:
    message = load(RUBY_V2)
    url = message["SigningCertURL"]
    fetch = Fetcher({url: (FIXTURES / sns.cert_file_name(url)).read_bytes()})
    webhook, _ = hook(VECTOR_NOW[RUBY_V2], fetch, cert_dir="")
    assert await webhook.parse(request(message)) == []
    assert await webhook.parse(request(load(RUBY_V1))) == []
    assert fetch.urls == [url]


async def test_certificate_cache_is_bounded() -> None:
    pem = (FIXTURES / "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem").read_bytes()
    urls = [f"https://sns.us-east-1.amazonaws.com/c{n}.pem" for n in range(3)]
    fetch = Fetcher(dict.fromkeys(urls, pem))
    store = sns.CertificateStore("", fetch, max_entries=2)
    for url in [*urls, urls[2], urls[0]]:
        await store.get(url)
    assert fetch.urls == [*urls, urls[0]]  # c0 was evicted by c2, fetched again


async def test_unfetchable_certificate_is_503_and_garbage_is_401() -> None:
    message = load(RUBY_V2)
    webhook, _ = hook(VECTOR_NOW[RUBY_V2], Fetcher(fail=True), cert_dir="")
    assert (await refused(webhook, message)).status == 503
    garbage = Fetcher({message["SigningCertURL"]: b"<html>not a certificate</html>"})
    webhook, _ = hook(VECTOR_NOW[RUBY_V2], garbage, cert_dir="")
    error = await refused(webhook, message)
    assert (error.status, error.code) == (401, "bad_certificate")


# --- subscription and unsubscribe confirmations ---------------------------------------------

SUBSCRIBE_URL = (
    "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
    "&TopicArn=arn:aws:sns:us-east-1:000000000000:mailerd-sink&Token=2336412f37fb687f5d51e6e2425"
)


def confirmation(
    signer: ses_webhooks.SnsEmulatorSigner, kind: str, url: str = SUBSCRIBE_URL
) -> dict[str, str]:
    return signer.envelope(
        f"You have chosen to subscribe to the topic {signer.topic_arn}.",
        type=kind,
        SubscribeURL=url,
        Token="2336412f37fb687f5d51e6e2425",
    )


async def test_subscription_confirmation_is_confirmed(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    webhook, fetch = own(fetch=Fetcher({SUBSCRIBE_URL: b"<ConfirmSubscriptionResponse/>"}))
    message = confirmation(signer, sns.SUBSCRIPTION_CONFIRMATION)
    with capture_logs() as logs:
        assert await webhook.parse(request(message, **{"x-amz-sns-message-type": message["Type"]})) == []
    assert fetch.urls == [SUBSCRIBE_URL]
    assert [e["event"] for e in logs if e["event"].startswith("sns_subscription")] == [
        "sns_subscription_confirmed"
    ]


async def test_subscription_confirmation_log_only(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    webhook, fetch = own(confirm_subscriptions=False)
    with capture_logs() as logs:
        assert await webhook.parse(request(confirmation(signer, sns.SUBSCRIPTION_CONFIRMATION))) == []
    assert fetch.urls == []
    assert any(e["event"] == "sns_subscription_not_confirmed" for e in logs)


async def test_subscription_confirmation_checks_url_signature_and_fetch(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    webhook, fetch = own(fetch=Fetcher(fail=True))
    evil = confirmation(
        signer, sns.SUBSCRIPTION_CONFIRMATION, "https://sns.us-east-1.amazonaws.com.evil.com/?x"
    )
    assert (await refused(webhook, evil)).status == 401
    forged = {**confirmation(signer, sns.SUBSCRIPTION_CONFIRMATION), "SubscribeURL": SUBSCRIBE_URL + "0"}
    assert (await refused(webhook, forged)).code == "bad_signature"
    assert fetch.urls == []
    error = await refused(webhook, confirmation(signer, sns.SUBSCRIPTION_CONFIRMATION))
    assert (error.status, error.code) == (503, "confirm_failed")  # SNS retries later


async def test_unsubscribe_confirmation_never_resubscribes(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    webhook, fetch = own()
    with capture_logs() as logs:
        assert await webhook.parse(request(confirmation(signer, sns.UNSUBSCRIBE_CONFIRMATION))) == []
    assert fetch.urls == []
    assert any(e["event"] == "sns_unsubscribe_confirmation_received" for e in logs)


# --- topics, freshness, verification off ------------------------------------------------------


async def test_topic_arns_restrict(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    message = signer.envelope("{}")
    webhook, _ = own(topic_arns=("arn:aws:sns:us-east-1:000000000000:other",))
    error = await refused(webhook, message)
    assert (error.status, error.code) == (403, "topic_not_allowed")
    webhook, _ = own(topic_arns=(signer.topic_arn,))
    assert await webhook.parse(request(message)) == []


async def test_no_topic_configured_accepts_none(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    """SNS signs every account's topics alike: with no topic_arns (the default) a signed message
    could come from anybody's topic, so none is confirmed or believed without the opt-out."""
    confirms = {SUBSCRIBE_URL: b"<ConfirmSubscriptionResponse/>"}
    webhook, fetch = own(topic_arns=(), fetch=Fetcher(confirms))
    for message in (confirmation(signer, sns.SUBSCRIPTION_CONFIRMATION), signer.envelope("{}")):
        error = await refused(webhook, message)
        assert (error.status, error.code) == (403, "not_configured")
    assert fetch.urls == []
    webhook, fetch = own(topic_arns=(), accept_any_topic=True, fetch=Fetcher(confirms))
    assert await webhook.parse(request(confirmation(signer, sns.SUBSCRIPTION_CONFIRMATION))) == []
    assert await webhook.parse(request(signer.envelope("{}", topic_arn="arn:aws:sns:us-east-1:9:any"))) == []
    assert fetch.urls == [SUBSCRIBE_URL]


@pytest.mark.parametrize(
    ("settings", "warned"),
    [({"accept_any_topic": True}, True), ({"topic_arns": ["arn:aws:sns:us-east-1:1:t"]}, False), ({}, False)],
)
def test_accepting_any_topic_is_warned_at_start(settings: dict[str, Any], warned: bool) -> None:
    from mailerd import app
    from mailerd import config as config_mod

    loaded = config_mod.from_mapping({"webhooks": {"ses": settings}}, env={})
    with capture_logs() as logs:
        app._warn_unverified(loaded)
    assert any(e["event"] == "sns_any_topic_accepted" for e in logs) == warned


async def test_freshness_window(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    message = signer.envelope("{}", timestamp=NOW - dt.timedelta(minutes=2))
    webhook, _ = own(max_age_s=60)
    error = await refused(webhook, message)
    assert (error.status, error.code) == (401, "stale_timestamp")
    webhook, _ = own(max_age_s=0)
    assert await webhook.parse(request(message)) == []
    webhook, _ = own(now=NOW - dt.timedelta(minutes=1, seconds=30), max_age_s=60)
    assert await webhook.parse(request(message)) == []


async def test_verify_signatures_off_accepts_unsigned() -> None:
    message = {**load(RUBY_V2), "Signature": "bogus", "SigningCertURL": "http://example.com/x"}
    webhook, fetch = hook(VECTOR_NOW[RUBY_V2], verify_signatures=False)
    assert await webhook.parse(request(message)) == []
    assert fetch.urls == []


# --- envelopes that are not SNS: 400 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        (b"", "invalid_json", "JSON"),
        (b"Type=Notification", "invalid_json", "JSON"),
        (b"[1, 2]", "not_sns", "object"),
        (b'{"Message": "x"}', "not_sns", "Type"),
        (b'{"Type": "Ping"}', "not_sns", "Type"),
    ],
)
async def test_not_an_envelope(body: bytes, code: str, named: str) -> None:
    webhook, _ = hook()
    error = await refused(webhook, body)
    assert (error.status, error.code) == (400, code)
    assert named in error.message


@pytest.mark.parametrize(
    "field",
    ["Message", "MessageId", "Timestamp", "TopicArn", "SignatureVersion", "Signature", "SigningCertURL"],
)
async def test_missing_or_mistyped_field_is_named(field: str) -> None:
    webhook, _ = hook(VECTOR_NOW[RUBY_V2])
    for message in ({k: v for k, v in load(RUBY_V2).items() if k != field}, {**load(RUBY_V2), field: 12}):
        error = await refused(webhook, message)
        assert (error.status, error.code) == (400, "missing_field")
        assert field in error.message


async def test_confirmation_without_token_and_bad_timestamp_and_header_mismatch(
    signer: ses_webhooks.SnsEmulatorSigner,
) -> None:
    webhook, _ = hook()
    message = confirmation(signer, sns.SUBSCRIPTION_CONFIRMATION)
    del message["Token"]
    assert "Token" in (await refused(webhook, message)).message
    error = await refused(webhook, {**load(RUBY_V2), "Timestamp": "yesterday"})
    assert (error.status, error.code) == (400, "invalid_timestamp")
    error = await refused(webhook, load(RUBY_V2), **{"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert (error.status, error.code) == (400, "not_sns")


# --- the SES message inside ------------------------------------------------------------------

SNS_ID = "7e3a1b2c-0000-5000-8000-000000000001"
SNS_TIME = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def parse_sample(name: str, **changes: Any) -> list[Event]:
    message: dict[str, Any] = orjson.loads((SES_DOCS / name).read_bytes())
    message.update(changes)
    return ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_identity_bounce_with_dsn() -> None:
    assert parse_sample("identity-bounce-with-dsn.json") == [
        Event(
            provider="ses",
            kind=EventKind.HARD_BOUNCE,
            occurred_at=at("2016-01-27T14:59:38.237Z"),
            email="jane@example.com",
            receipt=f"{SNS_ID}:jane@example.com",
            provider_message_id="00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            provider_type="Permanent/General",
            reason="smtp; 550 5.1.1 <jane@example.com>... User",
            smtp_status="5.1.1",
        )
    ]


def test_identity_bounce_counts_every_recipient() -> None:
    events = parse_sample("identity-bounce-no-dsn.json")
    assert [(e.email, e.receipt) for e in events] == [
        ("jane@example.com", f"{SNS_ID}:jane@example.com"),
        ("richard@example.com", f"{SNS_ID}:richard@example.com"),
    ]
    assert {(e.kind, e.provider_type, e.reason, e.smtp_status, e.campaign_id) for e in events} == {
        (EventKind.HARD_BOUNCE, "Permanent/General", None, None, None)
    }


@pytest.mark.parametrize(
    ("name", "email", "feedback"),
    [
        ("identity-complaint-with-feedback.json", "richard@example.com", "abuse"),
        ("identity-complaint-no-feedback.json", "richard@example.com", None),
        ("event-complaint.json", "recipient@example.com", "abuse"),
    ],
)
def test_complaints(name: str, email: str, feedback: str | None) -> None:
    (event,) = parse_sample(name)
    assert (event.kind, event.email, event.provider_type) == (EventKind.COMPLAINT, email, feedback)
    assert event.occurred_at.tzinfo is not None


@pytest.mark.parametrize("feedback", ["not-spam", "Not-Spam"])
def test_a_not_spam_feedback_is_no_complaint(feedback: str) -> None:
    # RFC 5965 "not-spam": the reporter does not consider the message spam (AWS documents it
    # among SES's complaintFeedbackType values); recorded as a complaint, it suppressed the address
    message = orjson.loads((SES_DOCS / "identity-complaint-with-feedback.json").read_bytes())
    message["complaint"]["complaintFeedbackType"] = feedback
    with capture_logs() as logs:
        assert ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME) == []
    assert [(e["event"], e["reason"]) for e in logs] == [("ses_complaint_ignored", "not-spam")]


def test_a_complaint_ses_never_sent_is_typed_so_whatever_its_feedback_type() -> None:
    message = orjson.loads((SES_DOCS / "identity-complaint-with-feedback.json").read_bytes())
    message["complaint"]["complaintSubType"] = "OnAccountSuppressionList"
    (event,) = ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)
    assert (event.kind, event.provider_type) == (EventKind.COMPLAINT, "OnAccountSuppressionList")


@pytest.mark.parametrize(
    ("name", "email", "when", "response"),
    [
        (
            "identity-delivery.json",
            "jane@example.com",
            "2016-01-27T14:59:38.237Z",
            "250 ok:  Message 64111812 accepted",
        ),
        (
            "event-delivery.json",
            "recipient@example.com",
            "2016-10-19T23:21:04.133Z",
            "250 2.6.0 Message received",
        ),
    ],
)
def test_deliveries(name: str, email: str, when: str, response: str) -> None:
    (event,) = parse_sample(name)
    assert (event.kind, event.email, event.occurred_at, event.reason) == (
        EventKind.DELIVERED,
        email,
        at(when),
        response,
    )


def test_event_publishing_bounce() -> None:
    (event,) = parse_sample("event-bounce.json")
    assert (event.kind, event.email, event.smtp_status, event.reason) == (
        EventKind.HARD_BOUNCE,
        "recipient@example.com",
        "5.1.1",
        "smtp; 550 5.1.1 user unknown",
    )
    assert event.provider_message_id == "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"
    assert event.occurred_at == at("2017-08-05T00:41:02.669Z")
    assert (event.campaign_id, event.lead_id) == (None, None)  # no mailerd tags in the sample


@pytest.mark.parametrize(
    ("bounce_type", "kind"),
    [
        ("Transient", EventKind.SOFT_BOUNCE),
        ("Undetermined", EventKind.SOFT_BOUNCE),
        ("Permanent", EventKind.HARD_BOUNCE),
    ],
)
def test_bounce_classification(bounce_type: str, kind: EventKind) -> None:
    message = orjson.loads((SES_DOCS / "event-bounce.json").read_bytes())
    message["bounce"]["bounceType"] = bounce_type
    message["bounce"]["bounceSubType"] = "MailboxFull"
    (event,) = ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)
    assert (event.kind, event.provider_type) == (kind, f"{bounce_type}/MailboxFull")


def test_tags_carry_campaign_and_lead() -> None:
    message = orjson.loads((SES_DOCS / "event-delivery.json").read_bytes())
    message["mail"]["tags"].update({"mailerd_campaign": ["12"], "mailerd_lead": ["34"]})
    (event,) = ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)
    assert (event.campaign_id, event.lead_id) == (12, 34)
    message["mail"]["tags"]["mailerd_lead"] = ["not-a-number"]
    (event,) = ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)
    assert (event.campaign_id, event.lead_id) == (None, None)


@pytest.mark.parametrize("name", ["event-send.json", "event-delivery-delay.json"])
def test_other_event_types_are_ignored(name: str) -> None:
    with capture_logs() as logs:
        assert parse_sample(name) == []
    assert [e["event"] for e in logs] == ["ses_event_ignored"]


def test_unknown_and_non_ses_types_are_ignored() -> None:
    for event_type in ("Open", "Click", "Reject", "Rendering Failure", "AmazonSnsSubscriptionSucceeded"):
        assert ses_webhook.parse_ses_message({"eventType": event_type}, SNS_ID, SNS_TIME) == []


def test_subscription_unsubscribes_every_destination() -> None:
    message = orjson.loads((SES_DOCS / "event-delivery-delay.json").read_bytes())
    del message["deliveryDelay"]
    message["mail"]["destination"] = ["a@example.com", "B@Example.com"]
    subscription = {
        "contactList": "Newsletter",
        "timestamp": "2020-06-16T00:30:00.000Z",
        "source": "UnsubscribeHeader",
        "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": []},
        "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []},
    }
    message.update(eventType="Subscription", subscription=subscription)
    events = ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)
    assert [(e.kind, e.email, e.receipt) for e in events] == [
        (EventKind.UNSUBSCRIBE, "a@example.com", f"{SNS_ID}:a@example.com"),
        (EventKind.UNSUBSCRIBE, "B@Example.com", f"{SNS_ID}:b@example.com"),
    ]
    topic_out = {
        "unsubscribeAll": False,
        "topicSubscriptionStatus": [{"topicName": "news", "subscriptionStatus": "OptOut"}],
    }
    subscription["newTopicPreferences"] = topic_out
    assert len(ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)) == 2
    topic_out["topicSubscriptionStatus"][0]["subscriptionStatus"] = "OptIn"  # type: ignore[index]
    assert ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda m: m.pop("mail"), "Message.mail"),
        (lambda m: m.pop("bounce"), "Message.bounce"),
        (lambda m: m["bounce"].pop("bounceType"), "bounceType"),
        (lambda m: m["bounce"].pop("bouncedRecipients"), "bouncedRecipients"),
        (lambda m: m["bounce"].update(bouncedRecipients=[]), "bouncedRecipients"),
        (lambda m: m["bounce"].update(bouncedRecipients=["jane@example.com"]), "bouncedRecipients[0]"),
        (lambda m: m["bounce"]["bouncedRecipients"][0].pop("emailAddress"), "emailAddress"),
        (lambda m: m["bounce"]["bouncedRecipients"][0].update(emailAddress="nobody"), "emailAddress"),
        (lambda m: m["bounce"].update(timestamp="soon"), "bounce.timestamp"),
    ],
)
def test_malformed_ses_messages_are_400(change: Callable[[dict[str, Any]], Any], named: str) -> None:
    message = orjson.loads((SES_DOCS / "event-bounce.json").read_bytes())
    change(message)
    with pytest.raises(WebhookError) as caught:
        ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)
    assert caught.value.status == 400
    assert named in caught.value.message


def test_malformed_delivery_and_complaint_are_400() -> None:
    changes: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("event-delivery.json", lambda m: m["delivery"].update(recipients=[None])),
        ("event-delivery.json", lambda m: m.pop("delivery")),
        ("event-complaint.json", lambda m: m["complaint"].update(complainedRecipients=[{}])),
    ]
    for name, change in changes:
        message = orjson.loads((SES_DOCS / name).read_bytes())
        change(message)
        with pytest.raises(WebhookError) as caught:
            ses_webhook.parse_ses_message(message, SNS_ID, SNS_TIME)
        assert caught.value.status == 400


async def test_sns_message_that_is_not_json_or_not_ses_is_ignored(
    signer: ses_webhooks.SnsEmulatorSigner, own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]]
) -> None:
    webhook, _ = own()
    for text in ("plain text", "[1]", '{"hello": "world"}'):
        with capture_logs() as logs:
            assert await webhook.parse(request(signer.envelope(text))) == []
        assert [e["event"] for e in logs if "ignored" in e["event"]] == ["sns_notification_ignored"]


# --- the emulator -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EventKind))
async def test_emulator_requests_parse_back(
    kind: EventKind,
    signer: ses_webhooks.SnsEmulatorSigner,
    own: Callable[..., tuple[ses_webhook.SnsWebhook, Fetcher]],
) -> None:
    when = NOW - dt.timedelta(seconds=5)
    headers, body = signer.request(
        kind,
        SentEmail(
            email="Lead@Example.com", campaign_id=7, lead_id=99, message_id="sink-msg-1", occurred_at=when
        ),
    )
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert headers["x-amz-sns-message-type"] == "Notification"
    envelope = orjson.loads(body)
    assert envelope["SignatureVersion"] == "2"
    assert envelope["TopicArn"] == "arn:aws:sns:us-east-1:000000000000:mailerd-sink"
    assert envelope["SigningCertURL"] == (
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-mailerd-sink.pem"
    )
    assert orjson.loads(envelope["Message"])["mail"]["tags"]["mailerd_campaign"] == ["7"]
    webhook, fetch = own()
    (event,) = await webhook.parse(WebhookRequest(body, CIMultiDict(headers), None, "text/plain"))
    assert dataclasses.astuple(event)[:8] == (
        "ses",
        kind,
        when.replace(microsecond=0),
        "Lead@Example.com",  # lower-cased by the database, in resolve
        f"{headers['x-amz-sns-message-id']}:lead@example.com",  # a receipt as before
        "sink-msg-1",
        7,
        99,
    )
    assert fetch.urls == []


def test_emulator_daemon_settings(signer: ses_webhooks.SnsEmulatorSigner, tmp_path: Path) -> None:
    settings = signer.daemon_settings(tmp_path)
    assert settings == {"cert_dir": str(tmp_path), "topic_arns": [signer.topic_arn]}
    written = (tmp_path / "SimpleNotificationService-mailerd-sink.pem").read_bytes()
    assert sns.load_certificate(written) == signer.certificate


async def test_https_fetch_refuses_redirects_errors_and_large_answers() -> None:
    """The fetcher itself (the URL checks run before it); a local plain-HTTP server stands in."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=b"-----BEGIN CERTIFICATE-----")

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * (sns.MAX_FETCH_BYTES + 1))

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/big", big)
    app.router.add_get("/moved", moved)
    fetch = sns.HttpsFetch(timeout_s=5)
    async with TestServer(app) as server:
        try:
            assert await fetch(str(server.make_url("/ok"))) == b"-----BEGIN CERTIFICATE-----"
            for path, error in (("/big", "too large"), ("/moved", "HTTP 302"), ("/nope", "HTTP 404")):
                with pytest.raises(sns.FetchError, match=error):
                    await fetch(str(server.make_url(path)))
        finally:
            await fetch.close()
