"""The report API on a running daemon whose relay loads a real reports database: the numbers equal
what the hot log and the events say (bounces and complaints from the emulator's webhooks), a
replay changes none of them, a lead's history is exactly its emails and events, and the error
answers (unknown ids, bad ranges, no [reports]), each with the node's time in ``Server-Timing``."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd import campaigns, http
from mailerd import config as config_mod
from mailerd.db import connect
from mailerd.emulator import sink
from mailerd.emulator import webhooks as emulator_webhooks
from mailerd.relay import operations
from tests.integration.helpers import (
    ApiTestServer,
    add_leads,
    daemon_config,
    new_campaign,
    running_daemon,
    wait_for_status,
)
from tests.integration.test_cli_basics import base_env, mailerd

TOKEN = "report-token"
SECRET = config_mod.Secret(TOKEN)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST_RELAY = {"poll_interval_ms": 50, "batch_records": 400, "retry_base_s": 0.05, "retry_max_s": 1.0}
STATUSES = {1: "sent", 2: "failed", 3: "unknown", 4: "suppressed"}
EVENT_COUNTERS = {
    "delivered": "delivered",
    "hard_bounce": "bounced_hard",
    "soft_bounce": "bounced_soft",
    "complaint": "complained",
    "unsubscribe": "unsubscribed",
}


async def expected_totals(conn: asyncpg.Connection, campaign_id: int) -> dict[str, int]:
    """The campaign's counts straight from the hot log and the events (what every report must say)."""
    totals = dict.fromkeys([*STATUSES.values(), *EVENT_COUNTERS.values()], 0)
    for row in await conn.fetch(
        "SELECT status, count(*) FROM email_log WHERE campaign_id = $1 GROUP BY 1", campaign_id
    ):
        totals[STATUSES[row[0]]] = row[1]
    for row in await conn.fetch(
        "SELECT kind, count(*) FROM email_events WHERE campaign_id = $1 GROUP BY 1", campaign_id
    ):
        totals[EVENT_COUNTERS[row[0]]] = row[1]
    return totals


async def get(session: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with session.get(url) as response:
        body = await response.json()
        assert response.status == status, body
        return body


async def test_reports_equal_the_log_and_events_and_a_replay_changes_nothing(
    conn: asyncpg.Connection, dsn: str, reports_dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 600)
    poster = emulator_webhooks.WebhookPoster(
        "http://127.0.0.1:1", "ses", bounce_rate=0.15, complaint_rate=0.08, seed=7
    )
    emulator = sink.Sink(seed=7, webhooks=poster)
    port = await emulator.start()
    config = daemon_config(
        port,
        relay=FAST_RELAY,
        reports={"dsn": reports_dsn},
        webhooks={"ses": poster.signer.daemon_settings(tmp_path)},
    )
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, admin_tokens=(SECRET,)))
    try:
        async with running_daemon(config, dsn) as daemon, aiohttp.ClientSession(headers=AUTH) as session:
            api = f"http://127.0.0.1:{daemon.port}/api"
            poster.url = f"http://127.0.0.1:{daemon.port}/webhooks/ses"
            campaign_id = await campaigns.create(conn, new_campaign(), config)
            await wait_for_status(conn, campaign_id)
            # Every bounce and complaint the emulator drew has been answered (pending counts only
            # the queued ones, not those being posted).
            counters = poster.counters
            async with asyncio.timeout(60):
                while (
                    counters.posted == 0
                    or counters.posted + counters.failed < counters.bounces + counters.complaints
                ):
                    await asyncio.sleep(0.05)
            want = await expected_totals(conn, campaign_id)
            assert want["sent"] == 200 and want["bounced_hard"] > 0 and want["complained"] > 0
            async with asyncio.timeout(60):
                while (report := await get(session, f"{api}/campaigns/{campaign_id}/report"))[
                    "totals"
                ] != want:
                    await asyncio.sleep(0.1)
            await _check_report(report, want)
            await _check_lists(conn, session, api, campaign_id, want)
            await _check_errors(session, api)
            await _check_cli(f"http://127.0.0.1:{daemon.port}", campaign_id, want)
            # Every record again through the destination (as after a crash or `relay replay`).
            destination = operations.configured(config, "reports", dsn)
            try:
                result = await operations.replay_range(
                    conn, destination, start=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
                    end=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1), campaign_id=None, batch=500,
                )  # fmt: skip
            finally:
                await destination.close()
            assert result.delivered >= 200
            again = await get(session, f"{api}/campaigns/{campaign_id}/report")
            assert {k: v for k, v in again.items() if k != "as_of"} == {
                k: v for k, v in report.items() if k != "as_of"
            }
    finally:
        await emulator.close()


async def _check_report(report: dict[str, Any], want: dict[str, int]) -> None:
    assert report["status"] == "finished" and report["granularity"] == "hour"
    assert report["as_of"] is not None
    sent = want["sent"]
    assert report["rates"]["hard_bounce"] == round(want["bounced_hard"] / sent, 6)
    assert report["rates"]["complaint"] == round(want["complained"] / sent, 6)
    series = {key: sum(point["counts"][key] for point in report["series"]) for key in want}
    assert series == want
    assert [d["domain"] for d in report["top_domains"]] == ["example.com"]
    assert report["top_domains"][0]["counts"] == want
    reasons = report["top_bounce_reasons"]
    assert sum(r["count"] for r in reasons if r["bounce"] == "hard") == want["bounced_hard"]
    assert all("@" not in r["reason"] for r in reasons)


async def _check_lists(
    conn: asyncpg.Connection, session: aiohttp.ClientSession, api: str, campaign_id: int, want: dict[str, int]
) -> None:
    # Keyset pages of the sent emails: every one exactly once.
    seen: list[int] = []
    after = 0
    while after is not None:
        page = await get(session, f"{api}/campaigns/{campaign_id}/emails?status=SENT&limit=64&after={after}")
        seen += [email["lead_id"] for email in page["emails"]]
        after = page["next_after"]
    assert seen == sorted(seen) and len(set(seen)) == want["sent"]
    bounced_list = await get(session, f"{api}/campaigns/{campaign_id}/emails?event=hard_bounce&limit=10000")
    hard = await conn.fetchval(
        "SELECT count(DISTINCT lead_id) FROM email_events WHERE campaign_id = $1 AND kind = 'hard_bounce'",
        campaign_id,
    )
    assert len(bounced_list["emails"]) == hard > 0
    async with session.get(f"{api}/campaigns/{campaign_id}/emails.csv") as response:
        assert response.status == 200 and response.content_type == "text/csv"
        lines = (await response.text()).splitlines()
    assert lines[0] == "lead_id,address,status,sent_at,provider_message_id,reason" and len(lines) == 201
    # One bounced lead: its history is exactly its email and its events, newest first.
    bounced = await conn.fetchrow(
        "SELECT lead_id, email FROM email_events WHERE campaign_id = $1 AND kind = 'hard_bounce' LIMIT 1",
        campaign_id,
    )
    events = await conn.fetch(
        "SELECT provider, provider_event_id FROM email_events WHERE lead_id = $1", bounced[0]
    )
    expected = {f"email:{campaign_id}:{bounced[0]}"} | {f"event:{e[0]}:{e[1]}" for e in events}
    history = await get(session, f"{api}/leads/{bounced[0]}/history?account_id=1&limit=1")
    items = history["items"]
    while history["next_before"] is not None:
        history = await get(
            session, f"{api}/leads/{bounced[0]}/history?account_id=1&limit=1&before={history['next_before']}"
        )
        items += history["items"]
    assert [i["id"] for i in items if i["id"] in expected] == [i["id"] for i in items]
    assert {i["id"] for i in items} == expected and len(items) == len(expected)
    assert [i["at"] for i in items] == sorted((i["at"] for i in items), reverse=True)
    by_address = await get(session, f"{api}/leads/history?account_id=1&email={bounced[1].upper()}")
    assert {i["id"] for i in by_address["items"]} == expected
    message_id = next(i["provider_message_id"] for i in items if i["kind"] == "email")
    message = await get(session, f"{api}/emails/{message_id}")
    assert message["lead_id"] == bounced[0] and "hard_bounce" in [e["type"] for e in message["events"]]
    today = dt.datetime.now(dt.UTC).date()
    usage = await get(session, f"{api}/accounts/1/usage?from={today - dt.timedelta(days=2)}&to={today}")
    assert usage["totals"] == want  # the only campaign of account 1


async def _check_cli(url: str, campaign_id: int, want: dict[str, int]) -> None:
    """``mailerd report ...`` (three processes at once): tables, and --json as the API says."""
    api = ["--url", url, "--token", TOKEN]
    env = base_env()
    table, usage, lead = await asyncio.gather(
        mailerd("report", "campaign", str(campaign_id), *api, env=env),
        mailerd("report", "usage", "--account", "1", "--json", *api, env=env),
        mailerd("report", "lead", "--account", "1", "--email", "nobody@example.org", *api, env=env),
    )
    assert table.returncode == 0, table.stderr
    assert "top bounce reasons:" in table.stdout and "5.1.1" in table.stdout
    counts = table.stdout.split("\n")[4].split()
    assert counts[0] == str(want["sent"]) and counts[5] == str(want["bounced_hard"]), table.stdout
    assert usage.returncode == 0 and orjson.loads(usage.stdout)["totals"] == want
    assert lead.returncode == 0 and "kind" in lead.stdout and "email:" not in lead.stdout


async def _check_errors(session: aiohttp.ClientSession, api: str) -> None:
    for path in (
        "campaigns/999/report",
        "campaigns/999/emails",
        "campaigns/999/emails.csv",
        "emails/no-such",
    ):
        body = await get(session, f"{api}/{path}", 404)
        assert body["error"]["code"] == "not_found"
    for path, field in (
        ("accounts/1/usage?from=2026-02-01&to=2026-01-01", "from"),
        ("accounts/1/usage?from=2000-01-01&to=2026-01-01", "to"),
        ("accounts/1/usage?from=yesterday", "from"),
        ("accounts/1/usage?from=2026-01-01T00:00:00Z", "from"),  # a day is asked for, not a time
        ("leads/1/history?account_id=1&before=bm90LWEtY3Vyc29y", "before"),
        ("leads/1/history", "account_id"),
        ("campaigns/1/emails?status=bounced", "status"),
        ("campaigns/1/emails?status=sent&event=complaint", "status"),
    ):
        body = await get(session, f"{api}/{path}", 422)
        assert body["error"]["field"] == field, path
        if "T00" in path:
            assert "expected a day, YYYY-MM-DD" in body["error"]["message"], body
    # account 0 is an account (a 404 for a while: ids are checked by one helper now)
    zero = await get(session, f"{api}/accounts/0/usage", 200)
    assert zero["account_id"] == 0, zero
    # `to` in the first days of year 1: the default `from` stops at the first day (a 500 before)
    early = await get(session, f"{api}/accounts/1/usage?to=0001-01-05", 200)
    assert (early["start"], early["end"]) == ("0001-01-01", "0001-01-05"), early


def _api(pool: asyncpg.Pool, reports: asyncpg.Pool | None = None) -> TestClient[Any, Any]:
    """A node's admin API in the test process (with ``reports`` as its reports database)."""
    config = config_mod.from_mapping({}, env={"MAILERD_ADMIN_TOKEN": TOKEN})
    return TestClient(
        ApiTestServer(
            http.build_app(http.Services(pool, config, http.Health(started=True), reports_pool=reports))
        )
    )


@pytest.fixture
async def client_without_reports(pool: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    async with _api(pool) as test_client:
        yield test_client


@pytest.fixture
async def reports(reports_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool to the test's reports database."""
    found = await connect.create_pool(reports_dsn, min_size=1, max_size=2)
    try:
        yield found
    finally:
        await found.close()


@pytest.fixture
async def client_with_reports(
    pool: asyncpg.Pool, reports: asyncpg.Pool
) -> AsyncIterator[TestClient[Any, Any]]:
    async with _api(pool, reports) as test_client:
        yield test_client


async def test_without_reports_the_endpoints_say_so_and_totals_stay(
    client_without_reports: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    config = daemon_config(1)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), config)
    for path in (
        f"/api/campaigns/{campaign_id}/report",
        f"/api/campaigns/{campaign_id}/emails",
        f"/api/campaigns/{campaign_id}/emails.csv",
        "/api/leads/1/history?account_id=1",
        "/api/leads/history?account_id=1&email=a@b.c",
        "/api/accounts/1/usage",
        "/api/emails/m-1",
    ):
        response = await client_without_reports.get(path, headers=AUTH)
        assert response.status == 503, path
        error = (await response.json())["error"]
        assert error["code"] == "reports_unavailable" and "[reports]" in error["message"]
        assert re.fullmatch(r"app;dur=\d+\.\d\d", response.headers["Server-Timing"]), path
    response = await client_without_reports.get(f"/api/campaigns/{campaign_id}", headers=AUTH)
    assert response.status == 200 and (await response.json())["status"] == "draft"
    assert re.fullmatch(r"app;dur=\d+\.\d\d", response.headers["Server-Timing"])


async def test_a_csv_export_of_100000_emails_streams_in_flat_memory(
    client_with_reports: TestClient[Any, Any], reports: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await reports.execute(
        """INSERT INTO report_emails (campaign_id, lead_id, sent_at, account_id, address, domain,
                                      provider, provider_message_id, status)
           SELECT $1, n, '2026-03-04T05:06:07Z', 1, 'someone' || n || '@example.com', 'example.com',
                  'sink', 'message-id-' || n, 'sent'
           FROM generate_series(1, 100000) n""",
        campaign_id,
    )
    tracemalloc.start()
    try:
        response = await client_with_reports.get(f"/api/campaigns/{campaign_id}/emails.csv", headers=AUTH)
        assert response.status == 200
        assert "Server-Timing" not in response.headers  # streamed: sent before it is known
        size = lines = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            lines += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == 100_001
    assert size > 7_000_000
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte export"


async def test_head_of_the_csv_export_answers_its_headers_without_running_it(
    client_with_reports: TestClient[Any, Any], reports: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """HEAD is a probe: the GET's status and headers, after the same checks, and no export (it
    ran the whole COPY before and threw the rows away). The table the export reads is locked
    meanwhile: a HEAD that ran the export would wait for the lock, and the next request on its
    connection (kept alive, as curl or a load balancer keeps it) would get no answer."""
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    path = f"/api/campaigns/{campaign_id}/emails.csv"
    want = f'attachment; filename="campaign-{campaign_id}-emails.csv"'
    server = client_with_reports.server
    head = f"HEAD {path} HTTP/1.1\r\nHost: mailerd\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    async with reports.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE report_emails IN ACCESS EXCLUSIVE MODE")
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(head + head)
            async with asyncio.timeout(10):
                answers = [await reader.readuntil(b"\r\n\r\n") for _ in range(2)]
                unknown = await client_with_reports.head("/api/campaigns/999999/emails.csv", headers=AUTH)
                refused = await client_with_reports.head(path)
        finally:
            writer.close()
        for answer in answers:
            lines = answer.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            assert lines[0] == "HTTP/1.1 200 OK", answer
            assert headers["content-type"] == "text/csv; charset=utf-8", answer
            assert headers["content-disposition"] == want, answer
        assert (unknown.status, refused.status) == (404, 401)
        assert unknown.headers["Content-Type"].startswith("application/json")
    got = await client_with_reports.get(path, headers=AUTH)
    assert got.status == 200 and (await got.text()).startswith("lead_id,address,")
    assert got.headers["Content-Disposition"] == want


async def test_a_batchs_message_id_names_one_email_with_its_lead_id(
    client_with_reports: TestClient[Any, Any], reports: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """SendGrid and Mailgun answer one message id for a whole batch: the answer is the email of
    the lead asked for, with that lead's events only; without a lead, a 409 that says so."""
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await reports.execute(
        """INSERT INTO report_emails (campaign_id, lead_id, sent_at, account_id, address, domain,
                                      provider, provider_message_id, status)
           SELECT $1, n, '2026-03-04T05:06:07Z', 1, 'lead' || n || '@example.com', 'example.com',
                  'sendgrid', CASE WHEN n <= 3 THEN 'sg-batch' ELSE 'sg-alone' END, 'sent'
           FROM generate_series(1, 4) n""",
        campaign_id,
    )
    await reports.execute(
        """INSERT INTO report_events (provider, provider_event_id, received_at, type, account_id,
                                      campaign_id, lead_id, address, provider_message_id, occurred_at)
           VALUES ('sendgrid', 'e1', '2026-03-04T06:00:00Z', 'hard_bounce', 1, $1, 2,
                   'lead2@example.com', 'sg-batch', '2026-03-04T06:00:00Z'),
                  ('sendgrid', 'e2', '2026-03-04T06:00:01Z', 'delivered', 1, $1, 3,
                   'lead3@example.com', 'sg-batch', '2026-03-04T06:00:01Z'),
                  ('sendgrid', 'e3', '2026-03-04T06:00:02Z', 'delivered', NULL, NULL, NULL,
                   NULL, 'sg-batch', '2026-03-04T06:00:02Z'),
                  ('sendgrid', 'e4', '2026-03-04T06:00:03Z', 'delivered', NULL, NULL, NULL,
                   NULL, 'sg-alone', '2026-03-04T06:00:03Z')""",
        campaign_id,
    )
    shared = await client_with_reports.get("/api/emails/sg-batch", headers=AUTH)
    assert shared.status == 409
    error = (await shared.json())["error"]
    assert error["field"] == "lead_id" and error["message"].startswith("3 emails share")
    one = await client_with_reports.get("/api/emails/sg-batch?lead_id=2", headers=AUTH)
    assert one.status == 200
    body = await one.json()
    assert body["lead_id"] == 2 and [e["type"] for e in body["events"]] == ["hard_bounce"]
    alone = await (await client_with_reports.get("/api/emails/sg-alone", headers=AUTH)).json()
    assert alone["lead_id"] == 4 and [e["type"] for e in alone["events"]] == ["delivered"]
    other = await client_with_reports.get("/api/emails/sg-batch?lead_id=4", headers=AUTH)
    assert other.status == 404 and (await other.json())["error"]["field"] == "lead_id"
    unknown = await client_with_reports.get("/api/emails/sg-none?lead_id=4", headers=AUTH)
    assert unknown.status == 404 and (await unknown.json())["error"]["field"] == "provider_message_id"
    bad = await client_with_reports.get("/api/emails/sg-batch?lead_id=two", headers=AUTH)
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "lead_id"


@pytest.fixture
async def client_with_reports_down(pool: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    """A node whose reports database does not answer (nothing listens on its port)."""
    reports = await connect.create_pool("postgresql://postgres@127.0.0.1:9/reports", min_size=0, max_size=2)
    try:
        async with _api(pool, reports) as test_client:
            yield test_client
    finally:
        await reports.close()


async def test_with_the_reports_database_down_an_unknown_campaign_is_still_a_404(
    client_with_reports_down: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    config = daemon_config(1)
    campaign_id = await campaigns.create(conn, new_campaign(start=False), config)
    for path in ("report", "emails", "emails.csv"):
        response = await client_with_reports_down.get(f"/api/campaigns/999999/{path}", headers=AUTH)
        body = await response.json()
        assert response.status == 404 and body["error"]["code"] == "not_found", (path, body)
        response = await client_with_reports_down.get(f"/api/campaigns/{campaign_id}/{path}", headers=AUTH)
        body = await response.json()
        assert response.status == 503, (path, body)
        assert body["error"]["code"] == "unavailable", (path, body)
    head = await client_with_reports_down.head(f"/api/campaigns/{campaign_id}/emails.csv", headers=AUTH)
    assert head.status == 503  # as GET: HEAD runs no export, but needs the database too
