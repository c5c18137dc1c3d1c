"""``POST /webhooks/ses`` through the real route, writer and database: SNS-signed SES events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd import campaigns, http, segments
from mailerd import config as config_mod
from mailerd.db import leads as leads_db
from mailerd.emulator import ses_webhooks
from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import compose, ses_webhook, sns
from mailerd.writer import Writer
from tests.integration.helpers import ApiTestServer, add_leads, new_campaign

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks" / "ses"
SUBSCRIBE_URL = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=abc123"
TEXT = {"Content-Type": "text/plain; charset=UTF-8"}


class Fetcher:
    """Stands in for the TLS fetch: records the URL, never touches the network."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return b"<ConfirmSubscriptionResponse/>"


@dataclasses.dataclass
class Env:
    client: TestClient[Any, Any]
    signer: ses_webhooks.SnsEmulatorSigner
    fetch: Fetcher
    config: config_mod.Config


@pytest.fixture
async def env(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Env]:
    signer = ses_webhooks.SnsEmulatorSigner()
    async with serving(pool, signer, signer.daemon_settings(tmp_path)) as served:
        yield served


@pytest.fixture
async def no_topic_env(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Env]:
    """The endpoint with no topic_arns, the default (a daemon starts so only when the SES webhook
    is not in use: no provider of kind ses and no [webhooks.ses] key set)."""
    signer = ses_webhooks.SnsEmulatorSigner()
    async with serving(pool, signer, {"cert_dir": signer.daemon_settings(tmp_path)["cert_dir"]}) as served:
        yield served


@contextlib.asynccontextmanager
async def serving(
    pool: asyncpg.Pool, signer: ses_webhooks.SnsEmulatorSigner, settings: dict[str, Any]
) -> AsyncIterator[Env]:
    config = config_mod.from_mapping(
        {
            "providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}},
            "writer": {"flush_interval_ms": 10},
            "webhooks": {"ses": settings},
        },
        env={},
    )
    fetch = Fetcher()
    handler = ses_webhook.SnsWebhook(config.webhooks.ses, fetch=fetch)
    writer = Writer(pool, config.writer, config.webhooks)
    task = asyncio.create_task(writer.run(), name="writer")
    services = http.Services(
        pool, config, http.Health(started=True), writer=writer, webhooks={"ses": handler}
    )
    try:
        async with TestClient(ApiTestServer(http.build_app(services))) as client:
            yield Env(client, signer, fetch, config)
    finally:
        writer.close()
        async with asyncio.timeout(10):
            await task
        await handler.close()


async def post(
    env: Env, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = orjson.dumps(body) if isinstance(body, dict) else body
    response = await env.client.post("/webhooks/ses", data=data, headers=headers or TEXT)
    return response.status, await response.json()


async def counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM email_events) AS events,
                  (SELECT count(*) FROM webhook_receipts) AS receipts,
                  (SELECT count(*) FROM suppressions) AS suppressed"""
    )
    assert row is not None
    return row["events"], row["receipts"], row["suppressed"]


async def campaign_with_leads(conn: asyncpg.Connection, env: Env) -> tuple[int, dict[str, int]]:
    await add_leads(conn, 1, 6)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), env.config)
    rows = await conn.fetch("SELECT id, email FROM leads WHERE account_id = 1")
    return campaign_id, {r["email"]: r["id"] for r in rows}


async def test_a_foreign_topic_is_neither_confirmed_nor_believed_by_default(
    no_topic_env: Env, conn: asyncpg.Connection
) -> None:
    """Anyone with an AWS account can subscribe /webhooks/ses to a topic of theirs, and SNS signs
    their messages with the same certificates as ours: with no topic_arns, a node used to
    confirm that subscription and suppress the address of their made-up bounce in every account."""
    env = no_topic_env
    foreign = "arn:aws:sns:us-east-1:999999999999:not-yours"
    for account in (1, 2):
        await conn.execute("INSERT INTO leads (account_id, email) VALUES ($1, 'victim@example.com')", account)
    confirm = env.signer.envelope(
        "You have chosen to subscribe to the topic ...",
        type=sns.SUBSCRIPTION_CONFIRMATION,
        topic_arn=foreign,
        Token="tok",
        SubscribeURL="https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=tok",
    )
    status, answer = await post(env, confirm)
    assert (status, answer["error"]["code"]) == (403, "not_configured")
    forged = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "victim@example.com"}],
            "timestamp": "2026-01-01T00:00:00.000Z",
        },
        "mail": {
            "timestamp": "2026-01-01T00:00:00.000Z",
            "messageId": "x",
            "destination": ["victim@example.com"],
        },
    }
    status, answer = await post(env, env.signer.envelope(orjson.dumps(forged).decode(), topic_arn=foreign))
    assert (status, answer["error"]["code"]) == (403, "not_configured")
    assert env.fetch.urls == []
    assert await counts(conn) == (0, 0, 0)


async def test_bounce_is_recorded_once_suppressed_and_counted(env: Env, conn: asyncpg.Connection) -> None:
    campaign_id, leads = await campaign_with_leads(conn, env)
    headers, body = env.signer.request(
        EventKind.HARD_BOUNCE,
        SentEmail(
            email="user3@example.com",
            campaign_id=campaign_id,
            lead_id=leads["user3@example.com"],
            message_id="0100018f-sink-3",
            occurred_at=dt.datetime.now(dt.UTC),
        ),
    )
    for _ in range(2):  # the second POST is SNS redelivering the same message
        assert await post(env, body, headers) == (200, {"received": 1})
    rows = await conn.fetch("SELECT * FROM email_events")
    assert len(rows) == 1
    row = rows[0]
    assert (row["kind"], row["account_id"], row["campaign_id"], row["lead_id"]) == (
        "hard_bounce",
        1,
        campaign_id,
        leads["user3@example.com"],
    )
    assert (row["provider"], row["provider_type"], row["smtp_status"], row["provider_message_id"]) == (
        "ses",
        "Permanent/General",
        "5.1.1",
        "0100018f-sink-3",
    )
    assert row["provider_event_id"] == f"{headers['x-amz-sns-message-id']}:user3@example.com"
    assert await conn.fetchval("SELECT bounced FROM campaign_stats WHERE campaign_id = $1", campaign_id) == 1
    suppressed = await conn.fetch("SELECT account_id, email, reason FROM suppressions")
    assert [tuple(r) for r in suppressed] == [(1, "user3@example.com", "hard_bounce")]


async def test_every_kind_through_the_route(env: Env, conn: asyncpg.Connection) -> None:
    campaign_id, leads = await campaign_with_leads(conn, env)
    for number, kind in enumerate(EventKind):
        email = f"user{number}@example.com"
        headers, body = env.signer.request(
            kind,
            SentEmail(
                email=email,
                campaign_id=campaign_id,
                lead_id=leads[email],
                message_id=f"m-{number}",
                occurred_at=dt.datetime.now(dt.UTC),
            ),
        )
        assert await post(env, body, headers) == (200, {"received": 1})
    kinds = await conn.fetch("SELECT email, kind FROM email_events ORDER BY email")
    assert [(r["email"], r["kind"]) for r in kinds] == [
        (f"user{n}@example.com", str(kind)) for n, kind in enumerate(EventKind)
    ]
    stats = await conn.fetchrow(
        "SELECT delivered, bounced, complained, unsubscribed FROM campaign_stats WHERE campaign_id = $1",
        campaign_id,
    )
    assert tuple(stats or ()) == (1, 2, 1, 1)
    suppressed = await conn.fetch("SELECT email, reason FROM suppressions ORDER BY email")
    # delivered and one soft bounce suppress nobody; hard bounce, complaint, unsubscribe do.
    assert {r["reason"] for r in suppressed} == {"hard_bounce", "complaint", "unsubscribe"}


async def test_identity_notification_with_several_recipients(env: Env, conn: asyncpg.Connection) -> None:
    await conn.executemany(
        "INSERT INTO leads (account_id, email, attributes) VALUES ($1, $2, '{}')",
        [(1, "jane@example.com"), (1, "Richard@example.com"), (2, "jane@example.com")],
    )
    record = (FIXTURES / "ses-docs" / "identity-bounce-no-dsn.json").read_text()
    message = env.signer.envelope(record, version="1")  # SHA1withRSA through the route too
    assert await post(env, message) == (200, {"received": 3})  # jane in two accounts + richard
    rows = await conn.fetch("SELECT account_id, email FROM suppressions ORDER BY account_id, email")
    assert [tuple(r) for r in rows] == [
        (1, "jane@example.com"),
        (1, "richard@example.com"),
        (2, "jane@example.com"),
    ]
    assert await post(env, message) == (200, {"received": 3})
    assert await conn.fetchval("SELECT count(*) FROM email_events") == 3


async def test_malformed_and_forged_requests_store_nothing(env: Env, conn: asyncpg.Connection) -> None:
    signer = env.signer
    good = signer.envelope(
        (FIXTURES / "ses-docs" / "event-bounce.json").read_text(), Subject="Amazon SES Email Event"
    )
    no_recipients = orjson.loads((FIXTURES / "ses-docs" / "event-bounce.json").read_bytes())
    no_recipients["bounce"]["bouncedRecipients"] = []
    cases: list[tuple[str, bytes | dict[str, Any], dict[str, str] | None, int]] = [
        ("not JSON", b"hello", None, 400),
        ("empty", b"", None, 400),
        ("not an envelope", b'{"notificationType": "Bounce"}', None, 400),
        ("missing Signature", {k: v for k, v in good.items() if k != "Signature"}, None, 400),
        ("header mismatch", good, {**TEXT, "x-amz-sns-message-type": "UnsubscribeConfirmation"}, 400),
        ("one byte altered", {**good, "Message": good["Message"].replace("5.1.1", "5.1.2", 1)}, None, 401),
        ("subject altered", {**good, "Subject": "Amazon SES Email Event!"}, None, 401),
        ("version 3", {**good, "SignatureVersion": "3"}, None, 401),
        ("http cert", {**good, "SigningCertURL": good["SigningCertURL"].replace("https", "http")}, None, 401),
        (
            "lookalike host",
            {**good, "SigningCertURL": good["SigningCertURL"].replace(".com/", ".com.evil.com/")},
            None,
            401,
        ),
        (
            "stale",
            signer.envelope("{}", timestamp=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)),
            None,
            401,
        ),
        ("other topic", signer.envelope("{}", topic_arn="arn:aws:sns:us-east-1:000000000000:x"), None, 403),
        ("SES without recipients", signer.envelope(orjson.dumps(no_recipients).decode()), None, 400),
    ]
    for name, body, headers, status in cases:
        answer_status, answer = await post(env, body, headers)
        assert answer_status == status, name
        assert set(answer["error"]) >= {"code", "message"}, name
    assert await counts(conn) == (0, 0, 0)
    assert env.fetch.urls == []
    assert await post(env, good) == (200, {"received": 1})  # the unaltered message is fine


async def test_confirmations_over_http(env: Env, conn: asyncpg.Connection) -> None:
    for kind in (sns.SUBSCRIPTION_CONFIRMATION, sns.UNSUBSCRIBE_CONFIRMATION):
        message = env.signer.envelope(
            "You have chosen to subscribe.", type=kind, SubscribeURL=SUBSCRIBE_URL, Token="abc123"
        )
        headers = {**TEXT, "x-amz-sns-message-type": kind}
        assert await post(env, message, headers) == (200, {"received": 0})
    assert env.fetch.urls == [SUBSCRIBE_URL]  # confirmed once; the unsubscribe is only logged
    assert await counts(conn) == (0, 0, 0)


async def test_an_oversized_address_is_refused_naming_the_field_and_the_next_webhook_is_recorded(
    env: Env, conn: asyncpg.Connection
) -> None:
    campaign_id, leads = await campaign_with_leads(conn, env)
    lead_id = leads["user2@example.com"]
    # About 3 KB that do not compress: too large for a webhook_receipts index entry.
    huge = "".join(random.Random(9).choices(string.ascii_lowercase + string.digits, k=3000)) + "@example.com"
    now = dt.datetime.now(dt.UTC)
    headers, body = env.signer.request(
        EventKind.HARD_BOUNCE, SentEmail(huge, campaign_id, lead_id, "m-huge", now)
    )
    # Unbounded, the writer's flush failed and was retried forever: the answer never came.
    async with asyncio.timeout(15):
        status, answer = await post(env, body, headers)
    assert (status, answer["error"]["code"]) == (400, "too_long")
    assert answer["error"]["field"] == "Message.bounce.bouncedRecipients[0].emailAddress"
    assert await counts(conn) == (0, 0, 0)
    sent = SentEmail("user2@example.com", campaign_id, lead_id, "m-2", now)
    headers, body = env.signer.request(EventKind.HARD_BOUNCE, sent)
    async with asyncio.timeout(15):
        assert await post(env, body, headers) == (200, {"received": 1})
    assert await counts(conn) == (1, 1, 1)


PRO = segments.parse({"field": "attributes.plan", "op": "eq", "value": "pro"})


@pytest.mark.parametrize("kind", [EventKind.HARD_BOUNCE, EventKind.COMPLAINT, EventKind.UNSUBSCRIBE])
@pytest.mark.parametrize(
    ("lead_email", "suppressed"),
    [
        ("user@bücher.de", "user@bücher.de"),  # typed in Unicode: reported as user@xn--bcher-kva.de
        ("Ann@XN--Mnchen-3ya.de", "ann@xn--mnchen-3ya.de"),  # a lead stored in A-labels keeps them
        ("bob@straße.de", "bob@straße.de"),  # IDNA 2003 sends strasse.de: no xn-- label at all
    ],
)
async def test_an_event_about_an_idn_lead_suppresses_the_lead_in_its_spelling(
    env: Env, conn: asyncpg.Connection, kind: EventKind, lead_email: str, suppressed: str
) -> None:
    lead_id = await conn.fetchval(
        """INSERT INTO leads (account_id, email, attributes)
           VALUES (1, $1, '{"plan": "pro"}') RETURNING id""",
        lead_email,
    )
    campaign_id = await campaigns.create(conn, new_campaign(start=False), env.config)
    sent_to = compose.seven_bit_address(lead_email)  # what SES is given, and reports back
    assert sent_to.isascii()
    sent = SentEmail(sent_to, campaign_id, lead_id, "0100018f-idn-1", dt.datetime.now(dt.UTC))
    headers, body = env.signer.request(kind, sent)
    assert await post(env, body, headers) == (200, {"received": 1})
    stored = await conn.fetchrow("SELECT account_id, lead_id, email FROM email_events")
    assert tuple(stored or ()) == (1, lead_id, suppressed)
    rows = await conn.fetch("SELECT email FROM suppressions")
    assert [r["email"] for r in rows] == [suppressed]
    assert await leads_db.count_matching(conn, 1, PRO) == 0  # the next campaign leaves it out


async def test_an_identity_notification_without_tags_finds_an_idn_lead(
    env: Env, conn: asyncpg.Connection
) -> None:
    # Identity notifications carry no tags and the message id may be older than the log's
    # lookback: the lead is found by the address, in either spelling.
    await conn.executemany(
        "INSERT INTO leads (account_id, email) VALUES ($1, $2)",
        [(1, "jane@bücher.de"), (2, "Kim@xn--bcher-kva.de")],
    )
    bounce = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {"emailAddress": "jane@xn--bcher-kva.de", "status": "5.1.1"},
                {"emailAddress": "kim@xn--bcher-kva.de", "status": "5.1.1"},
            ],
            "timestamp": "2026-01-01T00:00:00.000Z",
        },
        "mail": {
            "timestamp": "2026-01-01T00:00:00.000Z",
            "messageId": "0100018f-old",
            "destination": ["jane@xn--bcher-kva.de", "kim@xn--bcher-kva.de"],
        },
    }
    assert await post(env, env.signer.envelope(orjson.dumps(bounce).decode())) == (200, {"received": 2})
    rows = await conn.fetch("SELECT account_id, email FROM suppressions ORDER BY account_id")
    assert [tuple(r) for r in rows] == [(1, "jane@bücher.de"), (2, "kim@xn--bcher-kva.de")]


@pytest.mark.parametrize("kind", [EventKind.HARD_BOUNCE, EventKind.COMPLAINT])
async def test_an_email_ses_never_sent_suppresses_but_counts_toward_no_guard(
    env: Env, conn: asyncpg.Connection, kind: EventKind
) -> None:
    # OnAccountSuppressionList: SES accepted the call but never sent the email, the address being
    # on the SES account's own list (an account shared with another application may have filled
    # it long ago). SES counts it toward neither its bounce nor its complaint rate; counted as a
    # hard bounce or a complaint, a few such addresses paused the campaign through its guards.
    campaign_id, leads = await campaign_with_leads(conn, env)
    sent = SentEmail(
        "user1@example.com", campaign_id, leads["user1@example.com"], "m-1", dt.datetime.now(dt.UTC)
    )
    record = ses_webhooks.ses_event_record(kind, sent)
    if kind is EventKind.HARD_BOUNCE:
        record["bounce"]["bounceSubType"] = "OnAccountSuppressionList"
        record["bounce"]["bouncedRecipients"][0].update(
            status="5.1.1",
            diagnosticCode="Amazon SES did not send the message to this address because it is on"
            " the suppression list for your account.",
        )
    else:
        del record["complaint"]["complaintFeedbackType"]
        record["complaint"]["complaintSubType"] = "OnAccountSuppressionList"
    assert await post(env, env.signer.envelope(orjson.dumps(record).decode())) == (200, {"received": 1})
    suppressed = await conn.fetch("SELECT email, reason FROM suppressions")
    assert [tuple(r) for r in suppressed] == [("user1@example.com", str(kind))]
    stats = await conn.fetchrow(
        "SELECT bounced, complained, hard_bounced, blocked FROM campaign_stats WHERE campaign_id = $1",
        campaign_id,
    )
    assert tuple(stats or ()) == (1, 0, 0, 0)  # not delivered; no guard counts it
