"""The report API's queries and answers (msgspec Structs): what the handlers of
:mod:`mailerd.http.reports` decode and answer, and what the OpenAPI document says.

Every answer carries ``as_of``: everything committed on the main database before that moment is
in the reports database (null before the relay first delivered to it).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

import msgspec

from mailerd.http.bodies import MAX_ID, AccountId, LogStatusName, Time

AsOf = Annotated[
    dt.datetime | None,
    msgspec.Meta(description="everything committed before this moment is in the reports database"),
]
EventType = Literal["delivered", "hard_bounce", "soft_bounce", "complaint", "unsubscribe"]


class Counts(msgspec.Struct, frozen=True):
    """Emails by outcome (sent, failed, unknown, suppressed) and provider events by type."""

    sent: int
    failed: int
    unknown: int
    suppressed: int
    delivered: int
    bounced_hard: int
    bounced_soft: int
    complained: int
    unsubscribed: int


class Rates(msgspec.Struct, frozen=True):
    """Shares of the emails sent (0 when none was)."""

    delivery: float
    bounce: float
    hard_bounce: float
    complaint: float
    unsubscribe: float


class SeriesPoint(msgspec.Struct, frozen=True):
    """The counts of one minute or hour (UTC), starting at ``at``."""

    at: Time
    counts: Counts


class DomainReport(msgspec.Struct, frozen=True):
    """One recipient domain of a campaign."""

    domain: str
    counts: Counts
    rates: Rates


class BounceReason(msgspec.Struct, frozen=True):
    """A bounce diagnostic of a campaign (addresses in it shown as ``<address>``)."""

    bounce: Literal["hard", "soft"]
    smtp_status: str
    reason: str
    count: int
    last_at: Time


class CampaignReport(msgspec.Struct, frozen=True):
    """``GET /api/campaigns/{id}/report``: totals, rates, a time series (per minute while the
    campaign sends, per hour after), the top recipient domains and bounce reasons."""

    campaign_id: int
    account_id: int
    status: str
    as_of: AsOf
    totals: Counts
    rates: Rates
    granularity: Literal["minute", "hour"]
    series: list[SeriesPoint]
    top_domains: list[DomainReport]
    top_bounce_reasons: list[BounceReason]


class ReportQuery(msgspec.Struct, frozen=True):
    """``GET /api/campaigns/{id}/report`` query."""

    top: Annotated[int, msgspec.Meta(ge=1, le=100, description="domains and reasons listed")] = 10
    points: Annotated[int, msgspec.Meta(ge=1, le=10_000, description="latest series points")] = 1440


class ReportEmail(msgspec.Struct, frozen=True):
    """One email of a campaign, as the reports database holds it."""

    lead_id: int
    address: str | None
    status: LogStatusName
    sent_at: Time
    provider_message_id: str | None
    error: str | None


class ReportEmailPage(msgspec.Struct, frozen=True):
    """A page of a campaign's emails by lead id."""

    as_of: AsOf
    emails: list[ReportEmail]
    next_after: int | None


class ReportEmailsQuery(msgspec.Struct, frozen=True):
    """``GET /api/campaigns/{id}/emails`` query (``status`` and ``event`` are case-insensitive):
    ``event`` keeps the emails whose lead had that event (the bounced list: ``hard_bounce``)."""

    lowercase: ClassVar[frozenset[str]] = frozenset({"status", "event"})

    after: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="keyset cursor: lead_id > after")] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    status: LogStatusName | None = None
    event: EventType | None = None


class HistoryItem(msgspec.Struct, frozen=True):
    """An email sent to the lead (``kind`` email, ``what`` its status) or an event about it
    (``kind`` event, ``what`` its type)."""

    kind: Literal["email", "event"]
    id: str
    at: Time
    what: str
    campaign_id: int | None
    lead_id: int | None
    address: str | None
    provider_message_id: str | None
    reason: str | None
    smtp_status: str | None


class History(msgspec.Struct, frozen=True):
    """A lead's emails and events, newest first; ``next_before`` continues the list."""

    as_of: AsOf
    account_id: int
    items: list[HistoryItem]
    next_before: str | None


HistoryCursor = Annotated[
    str, msgspec.Meta(max_length=2000, description="next_before of the previous page", pattern=r"^[^\x00]*$")
]


class LeadHistoryQuery(msgspec.Struct, frozen=True):
    """``GET /api/leads/{lead_id}/history`` query."""

    account_id: AccountId
    before: HistoryCursor | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class AddressHistoryQuery(msgspec.Struct, frozen=True):
    """``GET /api/leads/history`` query: every email and event of an address in an account."""

    account_id: AccountId
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^\x00\s]+@[^\x00\s]+$")]
    before: HistoryCursor | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class UsageDay(msgspec.Struct, frozen=True):
    """One UTC day of an account."""

    day: dt.date
    counts: Counts


class Usage(msgspec.Struct, frozen=True):
    """``GET /api/accounts/{account_id}/usage``: per day (days without any left out) and totals."""

    as_of: AsOf
    account_id: int
    start: dt.date
    end: dt.date
    days: list[UsageDay]
    totals: Counts


class UsageQuery(msgspec.Struct, frozen=True, rename={"start": "from", "end": "to"}):
    """``from`` and ``to`` are UTC days, both included (default: the last 30 days)."""

    start: dt.date | None = None
    end: dt.date | None = None


class MessageEvent(msgspec.Struct, frozen=True):
    """One provider event about a message."""

    type: EventType
    provider: str
    occurred_at: Time
    received_at: Time
    reason: str | None
    smtp_status: str | None
    provider_type: str | None


class MessageQuery(msgspec.Struct, frozen=True):
    """``GET /api/emails/{provider_message_id}`` query."""

    lead_id: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=MAX_ID,
                description="the lead whose email it is, when the id names a batch (SendGrid, Mailgun)",
            ),
        ]
        | None
    ) = None


class Message(msgspec.Struct, frozen=True):
    """``GET /api/emails/{provider_message_id}``: one email with its events."""

    as_of: AsOf
    campaign_id: int
    account_id: int | None
    lead_id: int
    address: str | None
    provider: str | None
    provider_message_id: str
    status: LogStatusName
    sent_at: Time
    error: str | None
    events: list[MessageEvent]
