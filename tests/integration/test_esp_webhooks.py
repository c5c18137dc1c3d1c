"""SendGrid, Mailgun and Postmark webhooks through the real HTTP route, writer and database."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import random
import string
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd import campaigns, http
from mailerd import config as config_mod
from mailerd.emulator import mailgun_webhooks, postmark_webhooks, sendgrid_webhooks
from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import mailgun_webhook as mailgun
from mailerd.providers import postmark_webhook as postmark
from mailerd.providers import sendgrid_webhook as sendgrid
from mailerd.providers.webhooks import WebhookHandler
from mailerd.writer import Writer
from tests.integration.helpers import ApiTestServer, add_leads, new_campaign

FIXTURES = Path(__file__).parent.parent / "fixtures" / "webhooks"
ACCOUNT = 3


class Signer(Protocol):
    def request(
        self,
        kind: EventKind,
        sent: SentEmail,
    ) -> tuple[dict[str, str], bytes]: ...


class Env:
    """A running route, its signers, and the campaign and leads the events are about."""

    def __init__(self, client: TestClient[Any, Any], signers: dict[str, Any], campaign_id: int) -> None:
        self.client = client
        self.signers = signers
        self.campaign_id = campaign_id

    async def post(self, provider: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        response = await self.client.post(f"/webhooks/{provider}", data=body, headers=headers)
        return response.status, await response.json()

    def signed(self, provider: str, kind: EventKind, lead: tuple[int, int]) -> tuple[dict[str, str], bytes]:
        """A signed post about lead ``(n, id)`` (address ``user<n>@example.com``)."""
        signer: Signer = self.signers[provider]
        return signer.request(
            kind,
            SentEmail(
                email=f"user{lead[0]}@example.com",
                campaign_id=self.campaign_id,
                lead_id=lead[1],
                message_id=f"msg-{provider}-{lead[1]}",
                occurred_at=dt.datetime.now(dt.UTC),
            ),
        )


@pytest.fixture
async def env(pool: asyncpg.Pool, conn: asyncpg.Connection, tmp_path: Path) -> AsyncIterator[Env]:
    signers: dict[str, Any] = {
        "sendgrid": sendgrid_webhooks.SendgridEmulatorSigner(),
        "mailgun": mailgun_webhooks.MailgunEmulatorSigner(),
        "postmark": postmark_webhooks.PostmarkEmulatorSigner(),
    }
    config = config_mod.from_mapping(
        {
            "providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}},
            "writer": {"flush_interval_ms": 20},
            "webhooks": {name: s.daemon_settings(tmp_path) for name, s in signers.items()},
        },
        env={},
    )
    await add_leads(conn, ACCOUNT, 10)
    campaign_id = await campaigns.create(conn, new_campaign(account_id=ACCOUNT, start=False), config)
    hooks = config.webhooks
    handlers: dict[str, WebhookHandler] = {
        "sendgrid": sendgrid.SendgridWebhook(hooks.sendgrid),
        "mailgun": mailgun.MailgunWebhook(hooks.mailgun),
        "postmark": postmark.PostmarkWebhook(hooks.postmark),
    }
    writer = Writer(pool, config.writer, config.webhooks)
    task = asyncio.create_task(writer.run(), name="writer")
    services = http.Services(pool, config, http.Health(started=True), writer=writer, webhooks=handlers)
    try:
        async with TestClient(ApiTestServer(http.build_app(services))) as client:
            yield Env(client, signers, campaign_id)
    finally:
        writer.close()
        async with asyncio.timeout(10):
            await task


async def _lead(conn: asyncpg.Connection, n: int) -> tuple[int, int]:
    lead_id: int = await conn.fetchval(
        "SELECT id FROM leads WHERE account_id = $1 AND email = $2", ACCOUNT, f"user{n}@example.com"
    )
    return n, lead_id


async def _stored(conn: asyncpg.Connection) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM email_events) AS events,
                  (SELECT count(*) FROM webhook_receipts) AS receipts,
                  (SELECT count(*) FROM suppressions) AS suppressions"""
    )
    assert row is not None
    return row["events"], row["receipts"], row["suppressions"]


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "postmark"])
async def test_signed_event_is_recorded_once_and_suppresses(
    env: Env, conn: asyncpg.Connection, provider: str
) -> None:
    lead = await _lead(conn, 4)
    headers, body = env.signed(provider, EventKind.HARD_BOUNCE, lead)
    assert await env.post(provider, headers, body) == (200, {"received": 1})
    # The same delivery again (a provider retry): answered 2xx, recorded once.
    assert (await env.post(provider, headers, body))[0] == 200
    rows = await conn.fetch(
        "SELECT account_id, campaign_id, lead_id, email, kind, provider, provider_message_id "
        "FROM email_events"
    )
    assert [tuple(r) for r in rows] == [
        (
            ACCOUNT,
            env.campaign_id,
            lead[1],
            "user4@example.com",
            "hard_bounce",
            provider,
            f"msg-{provider}-{lead[1]}",
        )
    ]
    suppressed = await conn.fetch("SELECT account_id, email FROM suppressions")
    assert [tuple(r) for r in suppressed] == [(ACCOUNT, rows[0]["email"])]
    stats = await conn.fetchrow("SELECT bounced FROM campaign_stats WHERE campaign_id = $1", env.campaign_id)
    assert stats is not None and stats["bounced"] == 1


async def test_every_kind_through_every_provider(env: Env, conn: asyncpg.Connection) -> None:
    lead = await _lead(conn, 1)
    for provider in ("sendgrid", "mailgun", "postmark"):
        for kind in EventKind:
            headers, body = env.signed(provider, kind, lead)
            assert await env.post(provider, headers, body) == (200, {"received": 1}), (provider, kind)
    rows = await conn.fetch("SELECT provider, kind, count(*) AS n FROM email_events GROUP BY 1, 2")
    assert {(r["provider"], r["kind"]): r["n"] for r in rows} == {
        (provider, str(kind)): 1 for provider in ("sendgrid", "mailgun", "postmark") for kind in EventKind
    }


async def test_sendgrid_batch_and_documented_samples(env: Env, conn: asyncpg.Connection) -> None:
    signer: sendgrid_webhooks.SendgridEmulatorSigner = env.signers["sendgrid"]
    samples = json.loads((FIXTURES / "sendgrid" / "events.json").read_text())
    headers, body = signer.signed(samples)
    assert await env.post("sendgrid", headers, body) == (200, {"received": 11})
    assert await env.post("sendgrid", headers, body) == (200, {"received": 11})
    assert (await _stored(conn))[:2] == (11, 11)


async def test_mailgun_token_reused_with_other_data_is_refused(env: Env, conn: asyncpg.Connection) -> None:
    lead = await _lead(conn, 2)
    headers, body = env.signed("mailgun", EventKind.DELIVERED, lead)
    assert (await env.post("mailgun", headers, body))[0] == 200
    forged = orjson.loads(body)
    forged["event-data"].update(event="complained", id="forged-event")
    status, answer = await env.post("mailgun", headers, orjson.dumps(forged))
    assert (status, answer["error"]["code"]) == (401, "replayed_token")
    # One event; two receipts: its event id and the signature token it came with.
    assert (await _stored(conn))[:2] == (1, 2)


def _broken_requests(env: Env, lead: tuple[int, int]) -> list[tuple[str, dict[str, str], bytes, int]]:
    """(provider, headers, body, expected status): one of each class of bad request."""
    cases: list[tuple[str, dict[str, str], bytes, int]] = []
    # What each provider authenticates, altered by one byte, and then left out.
    headers, body = env.signed("sendgrid", EventKind.HARD_BOUNCE, lead)
    altered = bytearray(body)
    altered[body.index(b"example.com")] ^= 0x01
    cases.append(("sendgrid", headers, bytes(altered), 401))
    cases.append(("sendgrid", {"Content-Type": "application/json"}, body, 401))
    headers, body = env.signed("mailgun", EventKind.HARD_BOUNCE, lead)
    data = orjson.loads(body)
    hexdigest = data["signature"]["signature"]
    data["signature"]["signature"] = hexdigest[:-1] + ("0" if hexdigest[-1] != "0" else "1")
    cases.append(("mailgun", headers, orjson.dumps(data), 401))
    del data["signature"]
    cases.append(("mailgun", headers, orjson.dumps(data), 401))
    headers, body = env.signed("postmark", EventKind.HARD_BOUNCE, lead)
    pm_signer: postmark_webhooks.PostmarkEmulatorSigner = env.signers["postmark"]
    wrong = pm_signer.password[:-1] + ("x" if pm_signer.password[-1] != "x" else "y")
    token = base64.b64encode(f"{pm_signer.username}:{wrong}".encode()).decode()
    cases.append(("postmark", {**headers, "Authorization": f"Basic {token}"}, body, 401))
    cases.append(("postmark", {"Content-Type": "application/json"}, body, 401))
    signer: sendgrid_webhooks.SendgridEmulatorSigner = env.signers["sendgrid"]
    for bad in (b"not json", b'{"event": "bounce"}', b'[{"event": "bounce"}]'):
        headers, body = signer.signed([])
        headers[sendgrid.SIGNATURE_HEADER] = signer.sign(bad, headers[sendgrid.TIMESTAMP_HEADER])
        cases.append(("sendgrid", headers, bad, 400))
    mg: mailgun_webhooks.MailgunEmulatorSigner = env.signers["mailgun"]
    cases.append(("mailgun", {}, b"not json", 400))
    headers, body = mg.signed({"event": "failed", "id": "x", "recipient": "a@b.c", "timestamp": 1})
    cases.append(("mailgun", headers, body, 400))
    pm: postmark_webhooks.PostmarkEmulatorSigner = env.signers["postmark"]
    cases.append(("postmark", pm.headers(), b"not json", 400))
    cases.append(("postmark", pm.headers(), b'{"RecordType": "Bounce", "Email": "a@b.c"}', 400))
    cases.append(("postmark", {**pm.headers(), "Authorization": "Basic bWU6eW91"}, b"{}", 401))
    return cases


async def test_bad_requests_are_4xx_and_store_nothing(env: Env, conn: asyncpg.Connection) -> None:
    lead = await _lead(conn, 5)
    for provider, headers, body, expected in _broken_requests(env, lead):
        status, answer = await env.post(provider, headers, body)
        assert status == expected, (provider, body[:60], answer)
        assert set(answer["error"]) >= {"code", "message"}
    # Nothing but the token of the Mailgun post refused after its signature verified (spent).
    assert await _stored(conn) == (0, 1, 0)


async def test_mailgun_token_replayed_on_another_node_is_not_recorded(
    env: Env, conn: asyncpg.Connection
) -> None:
    lead = await _lead(conn, 3)
    headers, body = env.signed("mailgun", EventKind.DELIVERED, lead)
    assert (await env.post("mailgun", headers, body))[0] == 200
    # Another node (or this one after a restart) has not seen the token in memory...
    services = env.client.app[http.SERVICES]  # type: ignore[index]
    services.webhooks["mailgun"] = mailgun.MailgunWebhook(services.config.webhooks.mailgun)
    forged = orjson.loads(body)
    forged["event-data"].update(event="complained", id="forged-on-node-b")
    status, _ = await env.post("mailgun", headers, orjson.dumps(forged))
    # ...but the database has: the forged event is not recorded, nothing is suppressed.
    assert status == 200
    kinds = await conn.fetch("SELECT kind FROM email_events WHERE provider = 'mailgun'")
    assert [r["kind"] for r in kinds] == ["delivered"]
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0


@pytest.mark.parametrize(
    ("event_data", "answer"),
    [
        ({"event": "opened", "id": "opened-1"}, (200, {"received": 0})),  # accepted, no event of ours
        ({"event": "failed", "id": "failed-1", "severity": "odd"}, (400, "invalid_body")),  # refused
    ],
)
async def test_mailgun_token_of_a_post_without_events_replayed_on_another_node_is_not_recorded(
    env: Env, conn: asyncpg.Connection, event_data: dict[str, Any], answer: tuple[int, Any]
) -> None:
    """The token was claimed in the database only with events: the signature of an opened
    post, or of one refused after it verified, could be replayed with a forged complaint about
    anybody on a node that had not seen it."""
    n, _ = await _lead(conn, 3)
    mg: mailgun_webhooks.MailgunEmulatorSigner = env.signers["mailgun"]
    data = {**event_data, "timestamp": time.time(), "recipient": f"user{n}@example.com"}
    headers, body = mg.signed(data)
    status, first = await env.post("mailgun", headers, body)
    assert (status, first if status == 200 else first["error"]["code"]) == answer
    services = env.client.app[http.SERVICES]  # type: ignore[index]
    services.webhooks["mailgun"] = mailgun.MailgunWebhook(services.config.webhooks.mailgun)
    forged = orjson.loads(body)
    forged["event-data"] = {**data, "event": "complained", "id": "forged", "recipient": "user5@example.com"}
    assert (await env.post("mailgun", headers, orjson.dumps(forged)))[0] == 200
    events, _, suppressed = await _stored(conn)
    assert (events, suppressed) == (0, 0)


async def test_mailgun_retry_of_a_post_answered_503_is_taken_hours_later(
    env: Env, conn: asyncpg.Connection
) -> None:
    """A retry carries the post's original token and timestamp; Mailgun retries for 8 hours.
    With max_age_s = 600 every retry after the first (at 5 minutes) was refused as stale, for
    good: an event first answered 503 (Postgres down a few minutes) was lost."""
    lead = await _lead(conn, 9)
    headers, body = env.signed("mailgun", EventKind.COMPLAINT, lead)
    services = env.client.app[http.SERVICES]  # type: ignore[index]
    for delay_s in (15 * 60, 4 * 3600):  # the 2nd retry, then one more (a commit answer was lost)
        services.webhooks["mailgun"] = mailgun.MailgunWebhook(
            services.config.webhooks.mailgun, clock=lambda d=delay_s: time.time() + d
        )
        assert await env.post("mailgun", headers, body) == (200, {"received": 1}), delay_s
    assert await _stored(conn) == (1, 2, 1)


@pytest.mark.parametrize(
    ("code", "message"),
    [(421, "4.4.2 Connection timed out"), (451, "4.7.1 Greylisted, please try again later")],
)
async def test_mailgun_temporary_failures_of_a_delivered_message_count_nothing(
    env: Env, conn: asyncpg.Connection, code: int, message: str
) -> None:
    """Mailgun posts failed/temporary for every attempt it retries: each was a soft bounce (a
    block for a greylisting), so three attempts suppressed the address (soft_bounce_limit 3)
    and fed the guards' blocked rate, though the message was delivered at the fourth."""
    n, lead_id = await _lead(conn, 7)
    mg: mailgun_webhooks.MailgunEmulatorSigner = env.signers["mailgun"]
    sent = SentEmail(f"user{n}@example.com", env.campaign_id, lead_id, "mg-msg-7@x", dt.datetime.now(dt.UTC))
    for attempt in (1, 2, 3):
        data = mg.event_data(EventKind.SOFT_BOUNCE, sent)
        data.update(severity="temporary", reason="generic")
        data["delivery-status"].update({"attempt-no": attempt, "code": code, "message": message})
        assert await env.post("mailgun", *mg.signed(data)) == (200, {"received": 0})
    assert await env.post("mailgun", *mg.signed(mg.event_data(EventKind.DELIVERED, sent))) == (
        200,
        {"received": 1},
    )
    row = await conn.fetchrow(
        "SELECT delivered, bounced, blocked FROM campaign_stats WHERE campaign_id = $1", env.campaign_id
    )
    assert row is not None and tuple(row) == (1, 0, 0)
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0


@pytest.mark.parametrize(
    ("kind", "reason", "column"),
    [
        (EventKind.HARD_BOUNCE, "HardBounce", "hard_bounced"),
        (EventKind.COMPLAINT, "SpamComplaint", "complained"),
    ],
)
@pytest.mark.parametrize("change_first", [False, True])
async def test_postmark_bounce_and_its_subscription_change_count_once(
    env: Env, conn: asyncpg.Connection, kind: EventKind, reason: str, column: str, change_first: bool
) -> None:
    """docs/webhooks.md has Bounce, Spam Complaint and Subscription Change enabled; Postmark
    posts a SubscriptionChange when a hard bounce or a complaint puts the address on its
    suppression list: one bounce came as two events, counted twice by the guards."""
    n, lead_id = await _lead(conn, 4)
    signer: postmark_webhooks.PostmarkEmulatorSigner = env.signers["postmark"]
    sent = SentEmail(f"user{n}@example.com", env.campaign_id, lead_id, "pm-msg-4", dt.datetime.now(dt.UTC))
    headers, bounce = signer.request(kind, sent)
    change = {
        "RecordType": "SubscriptionChange",
        "MessageID": "pm-msg-4",
        "ServerID": 1,
        "MessageStream": "broadcast",
        "ChangedAt": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "Recipient": f"user{n}@example.com",
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": reason,
        "Metadata": {"mailerd_campaign": str(env.campaign_id), "mailerd_lead": str(lead_id)},
    }
    posts = [bounce, orjson.dumps(change)]
    for body in reversed(posts) if change_first else posts:
        assert await env.post("postmark", headers, body) == (200, {"received": 1})
    counted = await conn.fetchval(
        f"SELECT {column} FROM campaign_stats WHERE campaign_id = $1", env.campaign_id
    )
    assert (counted, await conn.fetchval("SELECT count(*) FROM email_events")) == (1, 1)
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 1


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "postmark"])
async def test_complaint_about_a_deleted_lead_is_kept_in_the_campaigns_account(
    env: Env, conn: asyncpg.Connection, provider: str
) -> None:
    """The host deleted the contact after the send: the metadata was dropped, the complaint
    stored unmatched (no account, no campaign) and suppressed nothing, so the address, imported
    again, was mailed again."""
    n, lead_id = await _lead(conn, 6)
    await conn.execute("DELETE FROM leads WHERE id = $1", lead_id)
    headers, body = env.signed(provider, EventKind.COMPLAINT, (n, lead_id))
    assert await env.post(provider, headers, body) == (200, {"received": 1})
    row = await conn.fetchrow("SELECT account_id, campaign_id, lead_id FROM email_events")
    assert row is not None and tuple(row) == (ACCOUNT, env.campaign_id, lead_id)
    suppressed = await conn.fetch("SELECT account_id, email FROM suppressions")
    assert [tuple(r) for r in suppressed] == [(ACCOUNT, f"user{n}@example.com")]


# About 3 KB that do not compress: too large for a webhook_receipts index entry.
HUGE_ADDRESS = (
    "".join(random.Random(9).choices(string.ascii_lowercase + string.digits, k=3000)) + "@example.com"
)


async def _post_within(env: Env, provider: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
    # Unbounded, such a field made the writer's flush fail and retry forever: the answer never came.
    async with asyncio.timeout(15):
        return await env.post(provider, headers, body)


@pytest.mark.parametrize(
    ("provider", "field"),
    [("sendgrid", "events[0].email"), ("mailgun", "event-data.recipient"), ("postmark", "record.Email")],
)
async def test_an_oversized_address_is_refused_naming_the_field_and_the_next_webhook_is_recorded(
    env: Env, conn: asyncpg.Connection, provider: str, field: str
) -> None:
    lead = await _lead(conn, 6)
    signer: Signer = env.signers[provider]
    sent = SentEmail(HUGE_ADDRESS, env.campaign_id, lead[1], f"msg-{provider}-huge", dt.datetime.now(dt.UTC))
    headers, body = signer.request(EventKind.HARD_BOUNCE, sent)
    status, answer = await _post_within(env, provider, headers, body)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "too_long", field)
    assert await _stored(conn) == (0, int(provider == "mailgun"), 0)  # a verified token is spent
    headers, body = env.signed(provider, EventKind.HARD_BOUNCE, lead)
    assert await _post_within(env, provider, headers, body) == (200, {"received": 1})
    rows = await conn.fetch("SELECT email, kind FROM email_events")
    assert [tuple(r) for r in rows] == [("user6@example.com", "hard_bounce")]


async def test_an_oversized_event_id_is_refused_naming_the_field_and_the_next_webhook_is_recorded(
    env: Env, conn: asyncpg.Connection
) -> None:
    lead = await _lead(conn, 7)
    signer: sendgrid_webhooks.SendgridEmulatorSigner = env.signers["sendgrid"]
    sent = SentEmail("user7@example.com", env.campaign_id, lead[1], "msg-sg-7", dt.datetime.now(dt.UTC))
    item = {**signer.event(EventKind.HARD_BOUNCE, sent), "sg_event_id": HUGE_ADDRESS.replace("@", "-")}
    headers, body = signer.signed([item])
    status, answer = await _post_within(env, "sendgrid", headers, body)
    assert (status, answer["error"]["field"]) == (400, "events[0].sg_event_id")
    headers, body = signer.signed([signer.event(EventKind.HARD_BOUNCE, sent)])
    assert await _post_within(env, "sendgrid", headers, body) == (200, {"received": 1})
    assert (await _stored(conn))[:2] == (1, 1)


async def test_postmark_unsubscribe_request_without_address_maps_through_the_message_id(
    env: Env, conn: asyncpg.Connection
) -> None:
    """Postmark's "Unsubscribe request" bounce record carries neither Email nor BouncedAt."""
    lead = await _lead(conn, 8)
    record = json.loads((FIXTURES / "postmark" / "bounce_unsubscribe_request.json").read_text())
    await conn.execute(
        "INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id) "
        "VALUES (now(), $1, $2, 1, $3)",
        env.campaign_id,
        lead[1],
        record["MessageID"],
    )
    pm: postmark_webhooks.PostmarkEmulatorSigner = env.signers["postmark"]
    assert await _post_within(env, "postmark", pm.headers(), orjson.dumps(record)) == (200, {"received": 1})
    row = await conn.fetchrow("SELECT account_id, campaign_id, lead_id, email, kind FROM email_events")
    assert row is not None
    # Matched through the log, the event takes its lead's address and suppresses it.
    address = f"user{lead[0]}@example.com"
    assert tuple(row) == (ACCOUNT, env.campaign_id, lead[1], address, "unsubscribe")
    assert await conn.fetchval(
        "SELECT count(*) FROM suppressions WHERE account_id = $1 AND email = $2", ACCOUNT, address
    )
