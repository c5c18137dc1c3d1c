"""Campaigns: the creation body, its validation, creation, status changes and counts.

Shared by the admin API, the demo and the tests; the rows are read and written by
:mod:`mailerd.db.campaigns`, which alone knows the allowed status transitions.
"""

from __future__ import annotations

import datetime as dt
import email.errors
import re
from email import headerregistry
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
import orjson

from mailerd import content, decoding, segments, windows
from mailerd.config import Config
from mailerd.db import campaigns as campaign_rows
from mailerd.db import leads as leads_db
from mailerd.models import MIN_CAMPAIGN_RATE, Campaign, CampaignStatus, Lead
from mailerd.providers import ses

NOTIFY_CHANNEL = campaign_rows.NOTIFY_CHANNEL
TRANSITIONS = campaign_rows.TRANSITIONS
API_ACTIONS = campaign_rows.API_ACTIONS
TransitionError = campaign_rows.TransitionError
transition = campaign_rows.change_status
show = campaign_rows.show

MAX_ID = 2**63 - 1


class CampaignError(ValueError):
    """A field of a new campaign is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


MAX_NAME_LENGTH = 200
MAX_REASON_LENGTH = 500  # of the reason given with an action
MAX_FROM_LENGTH = 320
MAX_HEADERS = 20
MAX_HEADER_VALUE = 900  # a header line stays under RFC 5322's 998 characters
# The provider kinds that send a template stored at the provider (``provider_template``).
TEMPLATE_KINDS = ("sendgrid", "postmark")
# The provider kinds that go through SES's API (the sink emulates it).
SES_KINDS = ("ses", "sink")

# Header lines mailerd (or the provider) writes itself: a campaign may not set or repeat them.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "sender",
        "date",
        "message-id",
        "return-path",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "dkim-signature",
        "received",
    }
)
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 field-name: printable ASCII but ':'
FROM_SHAPE = "one address, optionally with a display name: news@example.com or News <news@example.com>"


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
EVERY_DAY: list[Day] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class SendWindowBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When a campaign may send to a lead, in the lead's own time zone (docs/api.md#send-windows).

    Each listed day, from ``start`` to ``end`` local time (an ``end`` at or before ``start``
    crosses midnight; ``24:00`` is the end of the day).
    """

    start: Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM")]
    end: Annotated[
        str, msgspec.Meta(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$", description="HH:MM or 24:00")
    ]
    days: Annotated[list[Day], msgspec.Meta(min_length=1, max_length=7, description="default: every day")] = (
        msgspec.field(default_factory=lambda: list(EVERY_DAY))
    )
    timezone_attribute: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=500,
            pattern=decoding.NO_CONTROL,
            description="the lead attribute (a dotted path under attributes) holding an IANA zone name",
        ),
    ] = windows.DEFAULT_ATTRIBUTE
    default_timezone: Annotated[
        str,
        msgspec.Meta(
            max_length=100,
            pattern=decoding.NO_CONTROL,
            description="the zone of leads without a valid one (IANA name)",
        ),
    ] = windows.DEFAULT_ZONE


class NewCampaign(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a user gives to create a campaign: the body of ``POST /api/campaigns``.

    Python names as the code uses them, JSON names as the API spells them (``html``, ``from``,
    ``rate``). The types and constraints are the first step of validation and the OpenAPI
    schema; :func:`validate` adds what needs a parser or the configuration.
    """

    account_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="owner of the leads")]
    name: Annotated[
        str, msgspec.Meta(max_length=MAX_NAME_LENGTH, pattern=decoding.NO_NUL, description="not blank")
    ]
    segment: Annotated[
        Any,
        msgspec.Meta(description="the segment condition (see docs/segments.md), or it as a JSON string"),
    ]
    subject: Annotated[str, msgspec.Meta(pattern=decoding.ONE_LINE, description="Jinja2 template, one line")]
    html_body: Annotated[
        str, msgspec.Meta(pattern=decoding.NO_NUL, description="Jinja2 template (autoescaped)")
    ] = msgspec.field(name="html")
    text_body: Annotated[str, msgspec.Meta(pattern=decoding.NO_NUL, description="Jinja2 template")] = (
        msgspec.field(name="text")
    )
    from_address: Annotated[
        str,
        msgspec.Meta(max_length=MAX_FROM_LENGTH, pattern=decoding.NO_CONTROL, description=FROM_SHAPE),
    ] = msgspec.field(name="from")
    provider: Annotated[
        str, msgspec.Meta(pattern=decoding.NO_NUL, description="a [providers.NAME] of the node")
    ]
    start: Annotated[bool, msgspec.Meta(description="true: scheduled now")] = False
    send_at: Annotated[dt.datetime, msgspec.Meta(tz=True, description="scheduled at this time")] | None = None
    rate_per_s: (
        Annotated[
            float,
            msgspec.Meta(ge=MIN_CAMPAIGN_RATE, description="per-campaign cap, recipients per second"),
        ]
        | None
    ) = msgspec.field(default=None, name="rate")
    resend_uncertain: Annotated[
        bool, msgspec.Meta(description="after a crash, re-send what may have been sent")
    ] = False
    reply_to: (
        Annotated[
            str, msgspec.Meta(max_length=MAX_FROM_LENGTH, pattern=decoding.NO_CONTROL, description=FROM_SHAPE)
        ]
        | None
    ) = None
    headers: (
        Annotated[
            dict[str, str],
            msgspec.Meta(
                max_length=MAX_HEADERS,
                description="extra header lines of every email: name -> one-line value "
                "(not one mailerd writes itself, such as From, To, Subject or List-Unsubscribe)",
            ),
        ]
        | None
    ) = None
    provider_template: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=255,
                pattern=decoding.NO_CONTROL,
                description="a template stored at the provider: a SendGrid dynamic template id, "
                "a Postmark template alias",
            ),
        ]
        | None
    ) = None
    send_window: SendWindowBody | None = None


def validate(new: NewCampaign, config: Config) -> list[CampaignError]:
    """Every problem of ``new``, one per field (empty when it can be created).

    First the types and constraints of :class:`NewCampaign` (checked again here, since code
    builds the Struct without decoding it), then the rest if those pass.
    """
    shape = decoding.problems(NewCampaign, msgspec.to_builtins(new))
    if shape:
        return [CampaignError(problem.field, problem.message) for problem in shape]
    errors: list[CampaignError] = []
    if not new.name.strip():
        errors.append(CampaignError("name", "must not be empty"))
    try:
        segments.parse(new.segment)
    except segments.SegmentError as exc:
        errors.append(CampaignError("segment", str(exc)))
    try:
        content.compile_content(new.subject, new.html_body, new.text_body, limits=config.content)
    except content.TemplateError as exc:
        errors.append(CampaignError(_template_field(exc.part), str(exc)))
    if not is_one_address(new.from_address):
        errors.append(CampaignError("from", f"must be {FROM_SHAPE}; got {new.from_address[:100]!r}"))
    if new.provider not in config.providers:
        known = ", ".join(sorted(config.providers)) or "none configured"
        errors.append(CampaignError("provider", f"unknown provider {new.provider!r} (configured: {known})"))
    elif new.provider_template and config.providers[new.provider].kind not in TEMPLATE_KINDS:
        kind = config.providers[new.provider].kind
        errors.append(
            CampaignError(
                "provider_template",
                f"provider {new.provider!r} is of kind {kind}, which takes no stored template "
                f"(only {' and '.join(TEMPLATE_KINDS)} do); it would be ignored",
            )
        )
    errors.extend(_header_problems(new))
    if not errors and new.provider in config.providers and config.providers[new.provider].kind in SES_KINDS:
        errors.extend(_ses_problems(new))
    if new.send_window is not None:
        try:
            windows.parse(msgspec.to_builtins(new.send_window))
        except windows.WindowError as exc:
            errors.append(CampaignError(exc.field, exc.message))
    if new.send_at is not None and not _storable(new.send_at):
        errors.append(
            CampaignError("send_at", "out of range: the time must fall in the years 1 to 9999 in UTC")
        )
    return errors


def _ses_problems(new: NewCampaign) -> list[CampaignError]:
    """What SES cannot carry (a header past its limits, a From whose local part is not ASCII):
    refused here rather than failing the campaign at its first batch."""
    headers = sorted((new.headers or {}).items())
    try:
        ses.message_fields(new.from_address, new.reply_to, headers, ses.UNSUBSCRIBE_HEADERS)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        return [CampaignError(field, message)]
    return []


def is_one_address(value: str) -> bool:
    """Whether ``value`` is exactly one mailbox (``local@domain``, optionally with a display name)
    as a ``From`` header holds it: no group, no list, no defect, no line break."""
    if any(ord(char) < 0x20 or char == "\x7f" for char in value):
        return False  # a header line can never carry these; refuse before parsing
    try:
        header = headerregistry.HeaderRegistry()("From", value)
    except (email.errors.HeaderParseError, IndexError, ValueError):  # IndexError: "a@" (CPython)
        return False
    if not isinstance(header, headerregistry.AddressHeader) or header.defects:
        return False
    if len(header.groups) != 1 or header.groups[0].display_name is not None:
        return False
    addresses = header.groups[0].addresses
    return len(addresses) == 1 and bool(addresses[0].username) and bool(addresses[0].domain)


def _header_problems(new: NewCampaign) -> list[CampaignError]:
    """Reply-To is one address; every extra header is a valid name with a one-line value that
    mailerd does not write itself: no header can inject another."""
    errors: list[CampaignError] = []
    if new.reply_to is not None and not is_one_address(new.reply_to):
        errors.append(CampaignError("reply_to", f"must be {FROM_SHAPE}; got {new.reply_to[:100]!r}"))
    for name, value in (new.headers or {}).items():
        field = f"headers.{name[:40]}"
        if not _HEADER_NAME.fullmatch(name):
            errors.append(CampaignError(field, "a header name is printable ASCII without ':' (at most 76)"))
        elif name.lower() in RESERVED_HEADERS or name.lower().startswith("x-mailerd-"):
            errors.append(CampaignError(field, f"{name} is written by mailerd itself"))
        elif len(value) > MAX_HEADER_VALUE or any(
            ord(char) < 0x20 or char == "\x7f" or char in decoding.LINE_BREAKS for char in value
        ):
            errors.append(CampaignError(field, f"must be one line of at most {MAX_HEADER_VALUE} characters"))
    return errors


def _storable(moment: dt.datetime) -> bool:
    """Whether Postgres can be given ``moment`` (asyncpg converts it to UTC first)."""
    try:
        moment.astimezone(dt.UTC)
    except OverflowError:
        return False
    return True


def _template_field(part: str) -> str:
    return {"subject": "subject", "html": "html", "text": "text"}.get(part, part)


def _blank_lead() -> Lead:
    return Lead(0, "sample@example.com", {})


async def check_content_budget(conn: asyncpg.Connection, new: NewCampaign, config: Config) -> None:
    """Templates are tenant content: render them for a sample lead (the first the segment
    matches, else a blank one) off the event loop, on the send-time budget and within
    ``[content] render_timeout_ms``; a :class:`CampaignError` naming the part if they cannot."""
    compiled = content.compile_content(new.subject, new.html_body, new.text_body, limits=config.content)
    sample = await leads_db.sample_matching(conn, new.account_id, segments.parse(new.segment), limit=1)
    # A fresh blank lead each time: nothing one account's check does can reach another's.
    lead = Lead(sample[0]["id"], sample[0]["email"], sample[0]["attributes"]) if sample else _blank_lead()
    campaign = Campaign(
        id=0,
        account_id=new.account_id,
        name=new.name,
        status=CampaignStatus.DRAFT,
        segment=None,
        from_address=new.from_address,
        subject=new.subject,
        html_body=new.html_body,
        text_body=new.text_body,
        provider=new.provider,
    )
    try:
        await content.check_renders(
            compiled, lead, campaign, timeout_s=config.content.render_timeout_ms / 1000
        )
    except content.BudgetExceeded as exc:
        raise CampaignError(
            _template_field(exc.part), f"cannot be rendered within its budget: {exc}"
        ) from None
    except content.RenderError as exc:  # e.g. what the sandbox refuses: changing the lead's data
        raise CampaignError(_template_field(exc.part), f"cannot be rendered: {exc}") from None


async def create(conn: asyncpg.Connection, new: NewCampaign, config: Config) -> int:
    """Validate and insert; raise the first :class:`CampaignError` if invalid. Returns the id."""
    errors = validate(new, config)
    if errors:
        raise errors[0]
    await check_content_budget(conn, new, config)
    if new.start:
        status, send_at = "scheduled", dt.datetime.now(dt.UTC)
    elif new.send_at is not None:
        status, send_at = "scheduled", new.send_at
    else:
        status, send_at = "draft", None
    # Stored as sent: read back with orjson, a number no double holds would change.
    segment = orjson.Fragment(segments.as_json(new.segment))
    row = campaign_rows.CampaignRow(
        account_id=new.account_id,
        name=new.name,
        status=status,
        segment=segment,
        from_address=new.from_address,
        subject=new.subject,
        html_body=new.html_body,
        text_body=new.text_body,
        provider=new.provider,
        rate_per_s=new.rate_per_s,
        resend_uncertain=new.resend_uncertain,
        send_at=send_at,
        reply_to=new.reply_to,
        headers=dict(new.headers or {}),
        provider_template=new.provider_template,
        send_window=None
        if new.send_window is None
        else windows.parse(msgspec.to_builtins(new.send_window)).to_json(),
    )
    return await campaign_rows.insert(conn, row)
