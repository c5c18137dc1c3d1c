"""RFC 8058 one-click unsubscribe through the real routes, writer and database."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hmac
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd import campaigns, erasure, http, segments, unsubscribe
from mailerd import config as config_mod
from mailerd import events as events_mod
from mailerd.db import leads as leads_db
from mailerd.models import Event, EventKind
from mailerd.relay import position
from mailerd.relay.reader import Reader
from mailerd.writer import Writer
from tests import relay_schemas
from tests.integration.helpers import ApiTestServer, add_leads, new_campaign
from tests.integration.test_erasure import _text_hits

SECRET = "unsubscribe-test-secret-0123456789"
ERASURE_KEY = "erasure-key-for-tests-0123456789"
EVENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def _config() -> config_mod.Config:
    return config_mod.from_mapping(
        {
            "providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}},
            "writer": {"flush_interval_ms": 10},
        },
        env={
            "MAILERD_UNSUBSCRIBE__SECRET": SECRET,
            "MAILERD_ADMIN_TOKEN": "admin",
            "MAILERD_PRIVACY__ERASURE_KEY": ERASURE_KEY,
        },
    )


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    config = _config()
    writer = Writer(pool, config.writer, config.webhooks, privacy=config.privacy)
    task = asyncio.create_task(writer.run())
    app = http.build_app(http.Services(pool, config, http.Health(started=True), writer=writer))
    try:
        async with TestClient(ApiTestServer(app)) as test_client:
            yield test_client
    finally:
        writer.close()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def lead(conn: asyncpg.Connection) -> tuple[int, int, int, str]:
    """``(account_id, campaign_id, lead_id, email)`` of a lead of a campaign."""
    await add_leads(conn, 5, 3)
    campaign_id = await campaigns.create(conn, new_campaign(account_id=5, start=False), _config())
    row = await conn.fetchrow("SELECT id, email FROM leads WHERE account_id = 5 ORDER BY id LIMIT 1")
    assert row is not None
    return 5, campaign_id, row["id"], row["email"]


def _path(account_id: int, campaign_id: int, lead_id: int, email: str | None = None) -> str:
    return "/u/" + unsubscribe.make_token(SECRET.encode(), account_id, campaign_id, lead_id, email)


async def _state(conn: asyncpg.Connection, campaign_id: int) -> tuple[Any, ...]:
    return (
        [tuple(r) for r in await conn.fetch("SELECT account_id, email, reason, source FROM suppressions")],
        [
            tuple(r)
            for r in await conn.fetch(
                "SELECT account_id, campaign_id, lead_id, email, kind, provider FROM email_events"
            )
        ],
        await conn.fetchval("SELECT unsubscribed FROM campaign_stats WHERE campaign_id = $1", campaign_id),
        await conn.fetchval("SELECT count(*) FROM suppression_audit"),
    )


async def test_get_shows_a_button_and_changes_nothing(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    account_id, campaign_id, lead_id, _ = lead
    before = await _state(conn, campaign_id)
    for _ in range(3):  # scanners prefetch, sometimes repeatedly
        answer = await client.get(_path(account_id, campaign_id, lead_id), allow_redirects=False)
        assert answer.status == 200
        assert answer.content_type == "text/html"
        page = await answer.text()
        assert '<form method="post">' in page
        assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert await _state(conn, campaign_id) == before
    assert before[0] == [] and before[1] == []


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_one_click_post_unsubscribes_once(
    client: TestClient[Any, Any],
    conn: asyncpg.Connection,
    lead: tuple[int, int, int, str],
    encoding: str,
    gzipped: bool,
) -> None:
    account_id, campaign_id, lead_id, email = lead
    path = _path(account_id, campaign_id, lead_id)
    for _ in range(2):
        headers: dict[str, str] = {}
        if encoding == "urlencoded":
            body: Any = {"List-Unsubscribe": "One-Click"}
            if gzipped:  # the server leaves bodies compressed: mailerd decodes the form
                body = gzip.compress(b"List-Unsubscribe=One-Click")
                headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"}
        elif gzipped:
            body = gzip.compress(MULTIPART_ONE_CLICK)
            headers = {"Content-Type": MULTIPART, "Content-Encoding": "gzip"}
        else:
            body = aiohttp.FormData({"List-Unsubscribe": "One-Click"}, default_to_multipart=True)
        answer = await client.post(path, data=body, headers=headers, allow_redirects=False)
        assert answer.status == 200
        assert answer.content_type == "text/html"
        assert "Location" not in answer.headers
        assert "unsubscribed" in await answer.text()
    suppressed, events, unsubscribed, audited = await _state(conn, campaign_id)
    assert suppressed == [(account_id, email.lower(), "unsubscribe", "list-unsubscribe")]
    assert events == [(account_id, campaign_id, lead_id, email.lower(), "unsubscribe", "list-unsubscribe")]
    assert unsubscribed == 1
    assert audited == 1


async def test_the_page_button_works(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    """What a browser does with the page's form: POST the hidden field to the same URL."""
    account_id, campaign_id, lead_id, email = lead
    path = _path(account_id, campaign_id, lead_id)
    assert 'method="post"' in await (await client.get(path)).text()
    answer = await client.post(
        path,
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status == 200
    assert await conn.fetchval("SELECT count(*) FROM suppressions WHERE email = $1", email.lower()) == 1


async def test_every_page_refuses_to_be_framed(
    client: TestClient[Any, Any], lead: tuple[int, int, int, str]
) -> None:
    """A site that framed the page could trick its reader into clicking the button
    (clickjacking): every page forbids framing, in both headers browsers know, and its CSP
    allows nothing but the page's own inline style and its form posting back to it."""
    path = _path(*lead[:3])
    answers = [
        await client.get(path),
        await client.post(path, data={"List-Unsubscribe": "One-Click"}),
        await client.post(path, data={"List-Unsubscribe": "yes"}),
        await client.get("/u/garbage"),
    ]
    assert [answer.status for answer in answers] == [200, 200, 400, 400]
    for answer in answers:
        assert answer.content_type == "text/html"
        assert answer.headers["X-Frame-Options"] == "DENY"
        policy = dict(
            directive.split(" ", 1) for directive in answer.headers["Content-Security-Policy"].split("; ")
        )
        assert policy == {
            "default-src": "'none'",
            "style-src": "'unsafe-inline'",  # the page's <style>; no other source
            "form-action": "'self'",
            "frame-ancestors": "'none'",
            "base-uri": "'none'",
        }
        page = await answer.text()
        assert "<style>" in page and "<script" not in page and "src=" not in page


async def test_forged_altered_and_garbage_tokens_get_400(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    account_id, campaign_id, lead_id, _ = lead
    good = unsubscribe.make_token(SECRET.encode(), account_id, campaign_id, lead_id)
    altered = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
    forged = unsubscribe.make_token(b"guessed-secret", account_id, campaign_id, lead_id)
    before = await _state(conn, campaign_id)
    for token in (altered, forged, "garbage", good + "A"):
        for method in ("GET", "POST"):
            answer = await client.request(
                method, f"/u/{token}", data={"List-Unsubscribe": "One-Click"}, allow_redirects=False
            )
            assert answer.status == 400, (method, token)
            assert answer.content_type == "text/html"
    assert await _state(conn, campaign_id) == before


async def test_post_without_the_one_click_field_changes_nothing(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    account_id, campaign_id, lead_id, _ = lead
    path = _path(account_id, campaign_id, lead_id)
    before = await _state(conn, campaign_id)
    for data in (None, {"List-Unsubscribe": "yes"}, b'{"List-Unsubscribe": "One-Click"}'):
        answer = await client.post(path, data=data)
        assert answer.status == 400
    assert await _state(conn, campaign_id) == before


async def test_routes_are_off_without_a_secret(pool: asyncpg.Pool) -> None:
    config = config_mod.from_mapping({}, env={})
    app = http.build_app(http.Services(pool, config, http.Health(started=True)))
    token = unsubscribe.make_token(SECRET.encode(), 1, 2, 3)
    async with TestClient(ApiTestServer(app)) as client:
        assert (await client.get(f"/u/{token}")).status == 404
        assert (await client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})).status == 404


MULTIPART = "multipart/form-data; boundary=x"
MULTIPART_ONE_CLICK = (
    b'--x\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--x--\r\n'
)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\nno colon in this header line\r\n\r\nOne-Click\r\n--x--\r\n", MULTIPART),
        (
            b'--x\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n'
            b"Content-Transfer-Encoding: bogus\r\n\r\nOne-Click\r\n--x--\r\n",
            MULTIPART,
        ),
        (
            b'--x\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n'
            b"Content-Type: text/plain; charset=bogus\r\n\r\nOne-Click\r\n--x--\r\n",
            MULTIPART,
        ),
        (b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded; charset=bogus"),
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
async def test_a_malformed_form_gets_400_and_changes_nothing(
    client: TestClient[Any, Any],
    conn: asyncpg.Connection,
    lead: tuple[int, int, int, str],
    body: bytes,
    content_type: str,
    gzipped: bool,
) -> None:
    account_id, campaign_id, lead_id, _ = lead
    before = await _state(conn, campaign_id)
    headers = {"Content-Type": content_type}
    if gzipped:  # decoded by mailerd and read by the standard library: as strict
        body, headers = gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
    answer = await client.post(_path(account_id, campaign_id, lead_id), data=body, headers=headers)
    assert answer.status == 400
    assert await _state(conn, campaign_id) == before


LARGE_FORM = b"List-Unsubscribe=One-Click&x=" + b"a" * 1_100_000


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"List-Unsubscribe=One-Click", {"Content-Encoding": "br"}, 415),
        (LARGE_FORM, {}, 413),  # past max_body_bytes (1 MiB)
        (gzip.compress(LARGE_FORM), {"Content-Encoding": "gzip"}, 413),  # once decoded
    ],
)
async def test_a_refused_body_is_answered_with_a_page_not_json(
    client: TestClient[Any, Any],
    conn: asyncpg.Connection,
    lead: tuple[int, int, int, str],
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    # a mail client's user sees this route's answers: they were JSON error objects
    account_id, campaign_id, lead_id, _ = lead
    before = await _state(conn, campaign_id)
    answer = await client.post(
        _path(account_id, campaign_id, lead_id),
        data=io.BytesIO(body),  # (aiohttp warns about a large bytes body)
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    assert (answer.status, answer.content_type) == (status, "text/html")
    assert await _state(conn, campaign_id) == before


async def _one_click(client: TestClient[Any, Any], path: str) -> None:
    answer = await client.post(path, data={"List-Unsubscribe": "One-Click"}, allow_redirects=False)
    assert answer.status == 200
    assert "unsubscribed" in await answer.text()


async def test_a_one_click_unsubscribe_is_published_with_a_documented_provider(
    client: TestClient[Any, Any], pool: asyncpg.Pool, lead: tuple[int, int, int, str]
) -> None:
    # docs/events.md named the provider of these records `unsubscribe`: they carry
    # `list-unsubscribe`, and a consumer that matched on the documented value missed them all
    account_id, campaign_id, lead_id, _ = lead
    await _one_click(client, _path(account_id, campaign_id, lead_id))
    batch = await Reader(pool, {"event"}, limit=100).read(position.earliest())
    relay_schemas.check(orjson.loads(record.value) for record in batch.records)
    [record] = [r.fields for r in batch.records]
    row = next(
        line
        for line in EVENTS_DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `provider` | string |")
    )
    assert (record["type"], record["provider"]) == ("unsubscribe", "list-unsubscribe")
    assert f"`{record['provider']}`" in row
    assert record["id"] == f"event:list-unsubscribe:{campaign_id}:{lead_id}"
    assert "`{campaign_id}:{lead_id}`" in row


async def test_a_lead_deleted_since_is_unsubscribed_by_the_address_its_email_went_to(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    # answered "unsubscribed" and suppressed nothing: the lead, the only place of its address,
    # was gone; imported again, the person was mailed
    account_id, campaign_id, lead_id, email = lead
    sent_with = email.upper()  # as the lead was written when the email went out
    await conn.execute("DELETE FROM leads WHERE id = $1", lead_id)
    await _one_click(client, _path(account_id, campaign_id, lead_id, sent_with))
    suppressed, events, unsubscribed, audited = await _state(conn, campaign_id)
    assert suppressed == [(account_id, email.lower(), "unsubscribe", "list-unsubscribe")]
    assert events == [(account_id, campaign_id, lead_id, email.lower(), "unsubscribe", "list-unsubscribe")]
    assert (unsubscribed, audited) == (1, 1)


async def _audited(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT account_id, email, action, reason, source FROM suppression_audit")
    return sorted(tuple(r) for r in rows)


async def _held(pool: asyncpg.Pool, account_id: int, campaign_id: int) -> dict[str, bool]:
    """Each lead's address of the account -> whether the lead windows hold it back."""
    window = await leads_db.read_window(
        pool,
        account_id=account_id,
        campaign_id=campaign_id,
        segment=segments.parse({"all": []}),
        start=0,
        end=2**62,
        skip_logged=False,
        erased_pads=erasure.key_pads(ERASURE_KEY.encode()),
    )
    return {r["email"]: r["suppressed"] for r in window}


async def _moved(conn: asyncpg.Connection, lead_id: int, old: str) -> tuple[str, int]:
    """The host changed the lead's address after the email went out, and another lead of the
    account now has the old one (imported since): the new address, and that other lead's id."""
    new = old.replace("@", ".moved@")
    await conn.execute("UPDATE leads SET email = $1 WHERE id = $2", new, lead_id)
    other: int = await conn.fetchval(
        "INSERT INTO leads (account_id, email) SELECT account_id, $1 FROM leads WHERE id = $2 RETURNING id",
        old,
        lead_id,
    )
    return new, other


async def test_a_lead_whose_address_changed_is_unsubscribed_at_the_address_mailed_and_its_new_one(
    client: TestClient[Any, Any],
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    lead: tuple[int, int, int, str],
) -> None:
    # Only the lead's address at the time of the click was suppressed: the address the email
    # went to, the one that clicked, kept being mailed through every other lead that had it
    account_id, campaign_id, lead_id, email = lead
    path = _path(account_id, campaign_id, lead_id, email)  # the link as the email carried it
    new, _ = await _moved(conn, lead_id, email)
    for _ in range(2):  # a repeat records nothing new
        await _one_click(client, path)
        suppressed, events, unsubscribed, _ = await _state(conn, campaign_id)
        assert sorted(suppressed) == sorted(
            [
                (account_id, email, "unsubscribe", "list-unsubscribe"),
                (account_id, new, "unsubscribe", "list-unsubscribe"),
            ]
        )
        # one event, about the address the email went to; counted once
        assert events == [(account_id, campaign_id, lead_id, email, "unsubscribe", "list-unsubscribe")]
        assert unsubscribed == 1
        assert await _audited(conn) == sorted(
            [
                (account_id, email, "added", "unsubscribe", "list-unsubscribe"),
                (account_id, new, "added", "unsubscribe", "list-unsubscribe"),
            ]
        )
    held = await _held(pool, account_id, campaign_id)
    assert held[email] is True and held[new] is True
    assert sum(held.values()) == 2  # the account's other leads are still mailed


async def test_a_version_1_link_unsubscribes_the_address_its_emails_events_reported(
    client: TestClient[Any, Any],
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    lead: tuple[int, int, int, str],
) -> None:
    """A version 1 token carries no address: the one the email went to is known from the
    provider's events about that email (its delivery), when they are kept."""
    account_id, campaign_id, lead_id, email = lead
    delivered = Event(
        provider="ses",
        kind=EventKind.DELIVERED,
        occurred_at=dt.datetime.now(dt.UTC),
        email=email,
        receipt="sns-delivery-1",
        campaign_id=campaign_id,
        lead_id=lead_id,
        account_id=account_id,
    )
    async with conn.transaction():
        await events_mod.record(conn, [delivered], soft_bounce_limit=3, soft_bounce_window_s=3600)
    new, _ = await _moved(conn, lead_id, email)
    await _one_click(client, _path(account_id, campaign_id, lead_id))
    suppressed, events, unsubscribed, _ = await _state(conn, campaign_id)
    assert sorted(suppressed) == sorted(
        [
            (account_id, email, "unsubscribe", "list-unsubscribe"),
            (account_id, new, "unsubscribe", "list-unsubscribe"),
        ]
    )
    assert (account_id, campaign_id, lead_id, email, "unsubscribe", "list-unsubscribe") in events
    assert unsubscribed == 1
    held = await _held(pool, account_id, campaign_id)
    assert held[email] is True and held[new] is True


async def test_a_version_1_link_with_no_event_kept_unsubscribes_the_lead_as_it_is_now(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    account_id, campaign_id, lead_id, email = lead
    new, _ = await _moved(conn, lead_id, email)
    await _one_click(client, _path(account_id, campaign_id, lead_id))
    suppressed, events, _, audited = await _state(conn, campaign_id)
    assert suppressed == [(account_id, new, "unsubscribe", "list-unsubscribe")]
    assert events == [(account_id, campaign_id, lead_id, new, "unsubscribe", "list-unsubscribe")]
    assert audited == 1


async def test_an_erased_address_mailed_stays_a_keyed_hash_and_the_leads_new_one_is_suppressed(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    # The lead moved to a new address, then the person of the old one asked to be erased
    account_id, campaign_id, lead_id, email = lead
    new = email.replace("@", ".moved@")
    await conn.execute("UPDATE leads SET email = $1 WHERE id = $2", new, lead_id)
    done = await erasure.erase(
        conn, account_id=account_id, key=ERASURE_KEY.encode(), by="test", emails=[email]
    )
    await _one_click(client, _path(account_id, campaign_id, lead_id, email))
    assert await _text_hits(conn, email) == []
    hashed = await conn.fetch("SELECT account_id, email_hash, reason, erasure_id FROM erased_suppressions")
    key = hmac.digest(ERASURE_KEY.encode(), email.lower().encode(), "sha256")
    assert [tuple(r) for r in hashed] == [(account_id, key, "unsubscribe", done.id)]
    suppressed, events, unsubscribed, _ = await _state(conn, campaign_id)
    assert suppressed == [(account_id, new, "unsubscribe", "list-unsubscribe")]
    assert events == [(account_id, campaign_id, lead_id, None, "unsubscribe", "list-unsubscribe")]
    assert unsubscribed == 1


async def test_an_erased_lead_is_unsubscribed_as_a_keyed_hash_never_by_its_address(
    client: TestClient[Any, Any],
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    lead: tuple[int, int, int, str],
) -> None:
    account_id, campaign_id, lead_id, email = lead
    done = await erasure.erase(
        conn, account_id=account_id, key=ERASURE_KEY.encode(), by="test", lead_id=lead_id
    )
    await _one_click(client, _path(account_id, campaign_id, lead_id, email))
    assert await _text_hits(conn, email) == []
    hashed = await conn.fetch("SELECT account_id, email_hash, reason, erasure_id FROM erased_suppressions")
    key = hmac.digest(ERASURE_KEY.encode(), email.lower().encode(), "sha256")
    assert [tuple(r) for r in hashed] == [(account_id, key, "unsubscribe", done.id)]
    suppressed, events, unsubscribed, _ = await _state(conn, campaign_id)
    assert suppressed == []
    assert events == [(account_id, campaign_id, lead_id, None, "unsubscribe", "list-unsubscribe")]
    assert unsubscribed == 1
    # The person imported again is suppressed: the hash holds in the lead windows.
    again = await conn.fetchval(
        "INSERT INTO leads (account_id, email, attributes) VALUES ($1, $2, $3) RETURNING id",
        account_id,
        email,
        {"plan": "pro"},
    )
    window = await leads_db.read_window(
        pool,
        account_id=account_id,
        campaign_id=campaign_id,
        segment=segments.parse({"field": "attributes.plan", "op": "eq", "value": "pro"}),
        start=again - 1,
        end=again,
        skip_logged=False,
        erased_pads=erasure.key_pads(ERASURE_KEY.encode()),
    )
    assert [(r["id"], r["suppressed"]) for r in window] == [(again, True)]


async def test_a_link_without_the_address_for_a_lead_deleted_since_suppresses_nothing(
    client: TestClient[Any, Any], conn: asyncpg.Connection, lead: tuple[int, int, int, str]
) -> None:
    """A version 1 token (an address too long to carry, an email sent before version 2)."""
    account_id, campaign_id, lead_id, _ = lead
    await conn.execute("DELETE FROM leads WHERE id = $1", lead_id)
    await _one_click(client, _path(account_id, campaign_id, lead_id))
    suppressed, events, unsubscribed, _ = await _state(conn, campaign_id)
    assert suppressed == [] and unsubscribed == 1
    assert events == [(account_id, campaign_id, lead_id, None, "unsubscribe", "list-unsubscribe")]
