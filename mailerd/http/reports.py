"""The report API: every answer read from the reports database (``[reports]``), never the hot log.

Without ``[reports]`` these endpoints answer 503 ``reports_unavailable`` (a campaign's totals are
still ``GET /api/campaigns/{id}``, from ``campaign_stats``). Each answer carries ``as_of``, the
reports destination's position time on the main database: everything committed before it is in
the reports database.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import msgspec
import structlog
from aiohttp import hdrs, web

from mailerd.db import campaigns as campaign_rows
from mailerd.db import relay as relay_db
from mailerd.db import reports_read
from mailerd.db.reports_load import COUNTERS
from mailerd.http import parsing
from mailerd.http import report_bodies as bodies
from mailerd.http.bodies import PROVIDER_MESSAGE_ID, LogStatusName
from mailerd.http.errors import ApiError, json_response
from mailerd.http.services import SERVICES, pool
from mailerd.relay import reports as reports_destination

MAX_USAGE_DAYS = 3660
DEFAULT_USAGE_DAYS = 30
_T = typing.TypeVar("_T")
log = structlog.get_logger(__name__)
_SENDING = frozenset({"running", "paused", "scheduled"})


def reports_pool(request: web.Request) -> asyncpg.Pool:
    """The reports database's pool; 503 saying why when ``[reports]`` is not configured."""
    found = request.app[SERVICES].reports_pool
    if found is None:
        raise ApiError(
            503,
            "reports_unavailable",
            "reports need the reports database: configure [reports] dsn (campaign totals stay at "
            "GET /api/campaigns/{id})",
        )
    return found


async def _as_of(request: web.Request) -> dt.datetime | None:
    """The reports destination's position time (shared for a moment: :mod:`mailerd.http.freshness`).
    Read it before the answer's rows: read after, it could name records committed since the rows
    were read, which the answer does not hold."""
    main = pool(request)

    async def read() -> dt.datetime | None:
        async with main.acquire() as conn:
            found = await relay_db.positions(conn, [reports_destination.NAME])
        return found[0].as_of if found else None

    return await request.app[SERVICES].freshness.as_of(read)


def _counts(row: Mapping[str, Any]) -> bodies.Counts:
    return bodies.Counts(*(int(row[name]) for name in COUNTERS))


def _rates(counts: bodies.Counts) -> bodies.Rates:
    sent = counts.sent
    if sent == 0:
        return bodies.Rates(0.0, 0.0, 0.0, 0.0, 0.0)
    bounced = counts.bounced_hard + counts.bounced_soft

    def share(count: int) -> float:
        return round(count / sent, 6)

    return bodies.Rates(
        share(counts.delivered), share(bounced), share(counts.bounced_hard), share(counts.complained),
        share(counts.unsubscribed),
    )  # fmt: skip


async def _campaign(request: web.Request, campaign_id: int) -> asyncpg.Record:
    """The campaign's account and status from the main database (404 when there is none)."""
    async with pool(request).acquire() as conn:
        row = await campaign_rows.owner_and_status(conn, campaign_id)
    if row is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}", "id")
    return row


async def _with_campaign(
    request: web.Request, campaign_id: int, read: Callable[[], Awaitable[_T]]
) -> tuple[asyncpg.Record, _T]:
    """The campaign's row and ``read()`` at the same time (one wait instead of two). An unknown
    campaign is a 404 whatever the read does (the read is cancelled, its connection returned)."""
    rows = asyncio.ensure_future(read())
    try:
        info = await _campaign(request, campaign_id)
    except BaseException:
        rows.cancel()
        await asyncio.gather(rows, return_exceptions=True)
        raise
    return info, await rows


async def campaign_report(request: web.Request) -> web.Response:
    """GET /api/campaigns/{id}/report"""
    campaign_id = parsing.campaign_id(request)
    query = parsing.query(request, bodies.ReportQuery)
    reports = reports_pool(request)
    as_of = await _as_of(request)

    async def read() -> reports_read.CampaignRows:
        async with reports.acquire() as conn:
            return await reports_read.campaign_report(conn, campaign_id, points=query.points, top=query.top)

    info, rows = await _with_campaign(request, campaign_id, read)
    unit: typing.Literal["minute", "hour"] = "minute" if info["status"] in _SENDING else "hour"
    totals = _counts(rows.totals)
    report = bodies.CampaignReport(
        campaign_id=campaign_id,
        account_id=info["account_id"],
        status=info["status"],
        as_of=as_of,
        totals=totals,
        rates=_rates(totals),
        granularity=unit,
        series=[bodies.SeriesPoint(row["at"], _counts(row)) for row in rows.series[unit]],
        top_domains=[
            bodies.DomainReport(row["domain"], counts, _rates(counts))
            for row in rows.domains
            for counts in [_counts(row)]
        ],
        top_bounce_reasons=[msgspec.convert(row, bodies.BounceReason) for row in rows.reasons],
    )
    return json_response(report)


def _email(row: Mapping[str, Any]) -> bodies.ReportEmail:
    return bodies.ReportEmail(
        lead_id=row["lead_id"],
        address=row["address"],
        status=typing.cast(LogStatusName, row["status"]),
        sent_at=row["sent_at"],
        provider_message_id=row["provider_message_id"],
        error=row["reason"],
    )


async def campaign_emails(request: web.Request) -> web.Response:
    """GET /api/campaigns/{id}/emails?after=&limit=&status=: the campaign's emails by lead id."""
    campaign_id = parsing.campaign_id(request)
    query = parsing.query(request, bodies.ReportEmailsQuery)
    if query.event is not None and query.status is not None:
        raise ApiError(422, "invalid", "status: give status or event, not both", "status")
    reports = reports_pool(request)
    as_of = await _as_of(request)

    async def read() -> tuple[list[dict[str, typing.Any]], int | None]:
        async with reports.acquire() as conn:
            if query.event is None:
                rows = await reports_read.campaign_emails(
                    conn, campaign_id, after=query.after, limit=query.limit, status=query.status
                )
                return rows, (rows[-1]["lead_id"] if len(rows) == query.limit else None)
            # A lead whose event is loaded and its email not yet is skipped, not the end of the list.
            return await reports_read.campaign_emails_with_event(
                conn, campaign_id, query.event, after=query.after, limit=query.limit
            )

    _, (rows, next_after) = await _with_campaign(request, campaign_id, read)
    return json_response(bodies.ReportEmailPage(as_of, [_email(row) for row in rows], next_after))


def _client_gone(request: web.Request) -> bool:
    """Whether the request's client has closed its connection (a streamed answer's write fails)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def campaign_emails_csv(request: web.Request) -> web.StreamResponse:
    """GET /api/campaigns/{id}/emails.csv: every email, streamed by COPY (flat memory). HEAD
    answers the same checks and headers, and runs no export. A client that goes away part-way
    ends the COPY (its connection is closed: reports_read.export_emails) and is logged as
    ``export_client_gone`` (info), not as an error. A failure once the CSV has started closes
    the client's connection (an error answer can no longer be sent)."""
    campaign_id = parsing.campaign_id(request)
    reports = reports_pool(request)
    as_of = await _as_of(request)
    await _campaign(request, campaign_id)
    response = web.StreamResponse(
        headers={
            "content-type": "text/csv; charset=utf-8",
            "content-disposition": f'attachment; filename="campaign-{campaign_id}-emails.csv"',
            "x-as-of": as_of.isoformat() if as_of else "",
        }
    )
    try:
        async with reports.acquire() as conn:
            await response.prepare(request)  # HEAD too: it answers 503 as GET does, database down
            if request.method != hdrs.METH_HEAD:  # a probe: the headers, not a whole scan thrown away
                await reports_read.export_emails(conn, campaign_id, response.write)
        await response.write_eof()
    except asyncio.CancelledError:  # aiohttp cancels the handler of a client gone, when so set up
        if _client_gone(request):
            log.info("export_client_gone", campaign_id=campaign_id)
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _client_gone(request):
            # (an OSError, which the error middleware would answer as the database down)
            log.info("export_client_gone", campaign_id=campaign_id)
            return response
        if response.prepared and request.transport is not None:
            # The 200 and part of the CSV are sent: the error middleware's answer would be
            # written into the CSV. Closing the connection instead ends the body without its
            # last chunk: the client sees the export cut short, not a complete one.
            request.transport.close()
        raise
    return response


# --- a lead's history --------------------------------------------------------------------------


# The id of a history item (``email:CAMPAIGN:LEAD``, ``event:PROVIDER:EVENT_ID``), text Postgres
# takes (no NUL, no lone surrogate): a cursor with anything else was not given by this API.
_RECORD_ID = re.compile(r"(email|event):[^\x00\ud800-\udfff]+")


def _cursor(item: bodies.HistoryItem) -> str:
    text = f"{item.at.isoformat()}|{item.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _parse_cursor(text: str | None) -> tuple[dt.datetime, str] | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        at, record_id = raw.split("|", 1)
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("no zone")
        when = when.astimezone(dt.UTC)  # OverflowError past the years 1 to 9999 in UTC
        if not _RECORD_ID.fullmatch(record_id):
            raise ValueError("not a record id")
    except (ValueError, OverflowError):
        raise ApiError(422, "invalid", "before: not a cursor this API gave (next_before)", "before") from None
    return when, record_id


async def _history(
    request: web.Request,
    account_id: int,
    lead_id: int | None,
    address: str | None,
    before: str | None,
    limit: int,
) -> web.Response:
    cursor = _parse_cursor(before)
    reports = reports_pool(request)
    as_of = await _as_of(request)
    async with reports.acquire() as conn:
        rows = await reports_read.history(
            conn, account_id=account_id, lead_id=lead_id, address=address, before=cursor, limit=limit
        )
    items = [msgspec.convert(row, bodies.HistoryItem) for row in rows]
    next_before = _cursor(items[-1]) if len(items) == limit else None
    return json_response(bodies.History(as_of, account_id, items, next_before))


async def lead_history(request: web.Request) -> web.Response:
    """GET /api/leads/{lead_id}/history?account_id=: the lead's emails and events, newest first."""
    lead_id = parsing.path_id(request, "lead_id", "lead", minimum=0)
    query = parsing.query(request, bodies.LeadHistoryQuery)
    return await _history(request, query.account_id, lead_id, None, query.before, query.limit)


async def address_history(request: web.Request) -> web.Response:
    """GET /api/leads/history?account_id=&email=: every email and event of an address."""
    query = parsing.query(request, bodies.AddressHistoryQuery)
    return await _history(request, query.account_id, None, query.email.strip(), query.before, query.limit)


# --- usage and one message ---------------------------------------------------------------------


def usage_range(start: dt.date | None, end: dt.date | None, today: dt.date) -> tuple[dt.date, dt.date]:
    """``[from, to]`` with their defaults (the last 30 days to today); 422 for a bad range."""
    end = end or today
    # (from the first day there is when ``to`` is within the first 30 days of year 1)
    start = start or dt.date.fromordinal(max(1, end.toordinal() - DEFAULT_USAGE_DAYS + 1))
    if start > end:
        raise ApiError(422, "invalid", f"from: {start} is after to ({end})", "from")
    if (end - start).days >= MAX_USAGE_DAYS:
        raise ApiError(422, "invalid", f"to: at most {MAX_USAGE_DAYS} days from `from`", "to")
    return start, end


async def account_usage(request: web.Request) -> web.Response:
    """GET /api/accounts/{account_id}/usage?from=&to=: per UTC day, for billing and quotas."""
    account_id = parsing.path_id(request, "account_id", "account", minimum=0)  # accounts count from 0
    query = parsing.query(request, bodies.UsageQuery)
    start, end = usage_range(query.start, query.end, dt.datetime.now(dt.UTC).date())
    reports = reports_pool(request)
    as_of = await _as_of(request)
    async with reports.acquire() as conn:
        rows = await reports_read.usage(conn, account_id, start, end)
    days = [bodies.UsageDay(row["day"], _counts(row)) for row in rows]
    totals = {name: sum(int(row[name]) for row in rows) for name in COUNTERS}
    usage = bodies.Usage(as_of, account_id, start, end, days, _counts(totals))
    return json_response(usage)


async def email_by_message(request: web.Request) -> web.Response:
    """GET /api/emails/{provider_message_id}?lead_id=: one email with its events. SendGrid and
    Mailgun answer one message id for a whole batch: ``lead_id`` picks its email (409 without)."""
    message_id = request.match_info["provider_message_id"]
    if not re.fullmatch(PROVIDER_MESSAGE_ID, message_id):
        raise ApiError(404, "not_found", "not a provider message id", "provider_message_id")
    query = parsing.query(request, bodies.MessageQuery)
    reports = reports_pool(request)
    as_of = await _as_of(request)
    try:
        async with reports.acquire() as conn:
            found = await reports_read.message(conn, message_id, query.lead_id)
    except reports_read.SharedMessageId as exc:
        message = (
            f"{exc.sharing} emails share this provider message id (one request sent them: a SendGrid or"
            " Mailgun batch); name one with ?lead_id="
        )
        raise ApiError(409, "ambiguous", message, "lead_id") from None
    except reports_read.MessageNotFound:  # the id is known: not for this lead
        raise ApiError(
            404, "not_found", "no email of this lead with this provider message id", "lead_id"
        ) from None
    if found is None:
        raise ApiError(404, "not_found", "no email with this provider message id", "provider_message_id")
    found["error"] = found.pop("reason")
    found["as_of"] = as_of
    return json_response(msgspec.convert(found, bodies.Message))
