"""Reading the reports database: each report one statement of indexed reads, never a scan.

Totals, series, domains and bounce reasons come from the rollups; lists (a campaign's emails, a
lead's history, one message) from ``report_emails`` / ``report_events`` through their indexes,
with keyset pagination.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from mailerd.db.reports_load import COUNTERS

_SUM_OF = {c: f"coalesce(sum({c}), 0)::bigint" for c in COUNTERS}
_SUMS = ", ".join(f"{total} AS {c}" for c, total in _SUM_OF.items())
_SUM_VALUES = ", ".join(_SUM_OF.values())
_COLUMNS = ", ".join(COUNTERS)


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignRows:
    """What a campaign report is made of, as one statement read it (one snapshot)."""

    totals: dict[str, int]
    series: dict[str, list[dict[str, Any]]]  # by unit (minute, hour): ``at`` and the counters
    domains: list[dict[str, Any]]  # ``domain`` and the counters
    reasons: list[dict[str, Any]]


UNITS = ("minute", "hour")
_REASON_COLUMNS = ("bounce", "smtp_status", "reason", "count", "last_at")


def _series(unit: str) -> str:
    return f"""ARRAY(SELECT row(at, {_COLUMNS}) FROM (
                   SELECT date_trunc('{unit}', minute, 'UTC') AS at, {_SUMS}
                   FROM report_campaign_minutes WHERE campaign_id = $1
                   GROUP BY 1 ORDER BY 1 DESC LIMIT $2
               ) latest ORDER BY at) AS per_{unit}"""


# The whole campaign report in one round trip (each part one indexed read of the campaign's
# rows): on a busy node every round trip is a wake-up of this process and of a backend, and the
# tail of the report latency is waiting for a CPU, not the reads (bench/README.md, reports.py).
# Both series come back (the caller picks by the campaign's status on the main database, read at
# the same time): a campaign has one rollup row a minute it sent in or had events in, so both
# aggregate the same few rows (a campaign spread over many days has more of them: one extra pass).
# Each list is an array of anonymous records (tuples, in the order of their columns here).
_CAMPAIGN_REPORT = f"""
SELECT (SELECT row({_SUM_VALUES}) FROM report_campaign_totals WHERE campaign_id = $1) AS totals,
       {", ".join(_series(unit) for unit in UNITS)},
       ARRAY(SELECT row(domain, {_COLUMNS}) FROM report_campaign_domains WHERE campaign_id = $1
             ORDER BY sent + failed + unknown + suppressed DESC, domain LIMIT $3) AS domains,
       ARRAY(SELECT row({", ".join(_REASON_COLUMNS)}) FROM report_bounce_reasons WHERE campaign_id = $1
             ORDER BY count DESC, bounce, smtp_status, reason LIMIT $3) AS reasons"""


async def campaign_report(
    conn: asyncpg.Connection, campaign_id: int, *, points: int, top: int
) -> CampaignRows:
    """Totals, the latest ``points`` minutes and hours (UTC) of the series (oldest first), the
    ``top`` recipient domains (by emails) and bounce reasons (by count) of the campaign: zeros
    and empty lists when nothing was loaded."""
    row = await conn.fetchrow(_CAMPAIGN_REPORT, campaign_id, points, top)
    assert row is not None
    return CampaignRows(
        totals=dict(zip(COUNTERS, row["totals"], strict=True)),
        series={
            unit: [dict(zip(("at", *COUNTERS), values, strict=True)) for values in row[f"per_{unit}"]]
            for unit in UNITS
        },
        domains=[dict(zip(("domain", *COUNTERS), values, strict=True)) for values in row["domains"]],
        reasons=[dict(zip(_REASON_COLUMNS, values, strict=True)) for values in row["reasons"]],
    )


_EMAIL = "lead_id, address, status, sent_at, provider_message_id, reason"


async def campaign_emails(
    conn: asyncpg.Connection, campaign_id: int, *, after: int, limit: int, status: str | None
) -> list[dict[str, Any]]:
    """Up to ``limit`` emails of the campaign with ``lead_id > after`` (and ``status``), by lead id."""
    if status is None:
        sql = f"""SELECT {_EMAIL} FROM report_emails WHERE campaign_id = $1 AND lead_id > $2
                  ORDER BY lead_id LIMIT $3"""
        rows = await conn.fetch(sql, campaign_id, after, limit)
    else:
        sql = f"""SELECT {_EMAIL} FROM report_emails WHERE campaign_id = $1 AND status = $4 AND lead_id > $2
                  ORDER BY lead_id LIMIT $3"""
        rows = await conn.fetch(sql, campaign_id, after, limit, status)
    return [dict(r) for r in rows]


async def campaign_emails_with_event(
    conn: asyncpg.Connection, campaign_id: int, event: str, *, after: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """The emails of the next ``limit`` leads (``lead_id > after``, by lead id) of the campaign that
    had an ``event`` (bounced, complained...): the events' ``(campaign_id, type, lead_id)`` index
    first. Also the last of those leads when ``limit`` were found (else None): where the next page
    starts, even when some of them have no email here yet (an event loaded before its email)."""
    columns = ", ".join(f"e.{name}" for name in _EMAIL.split(", "))
    rows = await conn.fetch(
        f"""WITH found AS (
                SELECT DISTINCT lead_id FROM report_events
                WHERE campaign_id = $1 AND type = $2 AND lead_id > $3 ORDER BY lead_id LIMIT $4
            )
            SELECT found.lead_id AS found_lead, {columns} FROM found
            LEFT JOIN report_emails e ON e.campaign_id = $1 AND e.lead_id = found.lead_id
            ORDER BY found.lead_id""",
        campaign_id,
        event,
        after,
        limit,
    )
    found = {r["found_lead"] for r in rows}
    emails = [{k: v for k, v in r.items() if k != "found_lead"} for r in rows if r["lead_id"] is not None]
    return emails, (rows[-1]["found_lead"] if len(found) == limit else None)


def _cell(column: str) -> str:
    """``column`` for a spreadsheet: a text that starts with ``= + - @``, a tab or a carriage
    return gets a leading ``'``, so that opening the export does not run it as a formula (an
    address ``=HYPERLINK(...)@x.com`` or a provider's reason could; OWASP's "CSV injection")."""
    return (
        f"CASE WHEN left({column}, 1) IN ('=', '+', '-', '@', chr(9), chr(13)) "
        f"THEN chr(39) || {column} ELSE {column} END AS {column}"
    )


async def export_emails(
    conn: asyncpg.Connection, campaign_id: int, write: Callable[[bytes], Awaitable[None]]
) -> None:
    """Every email of the campaign as CSV (with a header), streamed through ``write`` by COPY:
    the rows never sit in memory here. Times are UTC in ISO 8601 whatever the server's TimeZone
    and DateStyle; a text a spreadsheet would run as a formula is quoted (see :func:`_cell`).

    When ``write`` raises (the client went away) or the task is cancelled, the connection is
    closed: asyncpg abandons the COPY half-way (with a cancel request), and the pool's reset of
    that connection would fail with "another operation is in progress"; closing it also ends
    the COPY on the server."""
    try:
        await conn.copy_from_query(
            f"""SELECT lead_id, {_cell("address")}, status,
                       to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') AS sent_at,
                       {_cell("provider_message_id")}, {_cell("reason")}
                FROM report_emails WHERE campaign_id = $1 ORDER BY lead_id""",
            campaign_id,
            output=write,
            format="csv",
            header=True,
        )
    except BaseException:
        # (a connection the server closed is already back to its pool: terminate() refuses it)
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.terminate()
        raise


# --- a lead's history ---------------------------------------------------------------------------

# Emails and events as one list, newest first: (at, id) is the keyset (id is the record id).
_HISTORY_EMAILS = """
    SELECT 'email' AS kind, 'email:' || campaign_id || ':' || lead_id AS id, sent_at AS at, campaign_id,
           lead_id, address, status AS what, provider_message_id, reason, NULL::text AS smtp_status
    FROM report_emails WHERE {where}"""
_HISTORY_EVENTS = """
    SELECT 'event', 'event:' || provider || ':' || provider_event_id, occurred_at, campaign_id, lead_id,
           address, type, provider_message_id, reason, smtp_status
    FROM report_events WHERE {where}"""


async def history(
    conn: asyncpg.Connection,
    *,
    account_id: int,
    lead_id: int | None,
    address: str | None,
    before: tuple[dt.datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A lead's emails and events (by lead id, or by address), newest first, before the cursor."""
    # Addresses are stored as this database's lower() wrote them (mailerd.db.reports_load).
    who = "account_id = $1 AND " + ("lead_id = $2" if lead_id is not None else "address = lower($2)")
    union = _HISTORY_EMAILS.format(where=who) + " UNION ALL " + _HISTORY_EVENTS.format(where=who)
    condition = "" if before is None else "WHERE (at, id) < ($3::timestamptz, $4::text)"
    limit_arg = "$3" if before is None else "$5"
    args: list[Any] = [account_id, lead_id if lead_id is not None else address]
    if before is not None:
        args += [before[0], before[1]]
    rows = await conn.fetch(
        f"SELECT * FROM ({union}) history {condition} ORDER BY at DESC, id DESC LIMIT {limit_arg}",
        *args,
        limit,
    )
    return [dict(r) for r in rows]


# --- usage and one message ----------------------------------------------------------------------


async def usage(
    conn: asyncpg.Connection, account_id: int, start: dt.date, end: dt.date
) -> list[dict[str, Any]]:
    """The account's counters per UTC day in ``[start, end]``, days without any left out."""
    rows = await conn.fetch(
        f"""SELECT day, {_COLUMNS} FROM report_account_days
            WHERE account_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day""",
        account_id,
        start,
        end,
    )
    return [dict(r) for r in rows]


_EVENT_COLUMNS = ("type", "provider", "occurred_at", "received_at", "reason", "smtp_status", "provider_type")


class MessageNotFound(Exception):
    """The message id is known, but no email of the lead asked for has it (``sharing``: the
    emails that do)."""

    def __init__(self, sharing: int) -> None:
        super().__init__(f"{sharing} emails have this provider message id")
        self.sharing = sharing


class SharedMessageId(MessageNotFound):
    """Several emails share the message id (one request sent them all: SendGrid, Mailgun) and no
    lead was named to pick one."""


async def message(
    conn: asyncpg.Connection, provider_message_id: str, lead_id: int | None = None
) -> dict[str, Any] | None:
    """The email a provider message id names (of ``lead_id``, when given), with its events
    (oldest first), in one statement: the events of its lead, and those matched to no lead when
    the id names this email alone. :class:`SharedMessageId` when the id names several emails and
    no ``lead_id``; :class:`MessageNotFound` when it names none of ``lead_id``'s; None when no
    email has it."""
    events = ", ".join(f"v.{column}" for column in _EVENT_COLUMNS)
    rows = await conn.fetch(
        f"""WITH shared AS (SELECT count(*) AS sharing FROM report_emails WHERE provider_message_id = $1),
            found AS (
                SELECT campaign_id, account_id, provider, {_EMAIL}
                FROM report_emails
                WHERE provider_message_id = $1 AND ($2::bigint IS NULL OR lead_id = $2)
                ORDER BY sent_at, lead_id LIMIT 2)
            SELECT s.sharing, f.*,
                   ARRAY(SELECT row({events}) FROM report_events v
                         WHERE v.provider_message_id = $1
                           AND (v.lead_id = f.lead_id OR (v.lead_id IS NULL AND s.sharing = 1))
                         ORDER BY v.occurred_at, v.received_at) AS events
            FROM shared s LEFT JOIN found f ON true""",
        provider_message_id,
        lead_id,
    )
    sharing = int(rows[0]["sharing"])
    if not sharing:
        return None
    if len(rows) > 1:
        raise SharedMessageId(sharing)
    if rows[0]["lead_id"] is None:
        raise MessageNotFound(sharing)
    found = dict(rows[0])
    del found["sharing"]
    found["events"] = [dict(zip(_EVENT_COLUMNS, values, strict=True)) for values in rows[0]["events"]]
    return found
