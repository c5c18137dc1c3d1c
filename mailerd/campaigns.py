"""Campaigns: the creation body, its validation, creation, status changes and counts.

Shared by the admin API, the demo and the tests; the rows are read and written by
:mod:`mailerd.db.campaigns`, which alone knows the allowed status transitions.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import asyncpg
import msgspec
import orjson

from mailerd import content, decoding, segments
from mailerd.config import Config
from mailerd.db import campaigns as campaign_rows

NOTIFY_CHANNEL = campaign_rows.NOTIFY_CHANNEL
TRANSITIONS = campaign_rows.TRANSITIONS
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


class NewCampaign(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a user gives to create a campaign: the body of ``POST /api/campaigns``.

    Python names as the code uses them, JSON names as the API spells them (``html``, ``from``,
    ``rate``). The types and constraints are the first step of validation and the OpenAPI
    schema; :func:`validate` adds what needs a parser or the configuration.
    """

    account_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID, description="owner of the leads")]
    name: str
    segment: Annotated[
        Any,
        msgspec.Meta(description="the segment condition (see docs/segments.md), or it as a JSON string"),
    ]
    subject: Annotated[str, msgspec.Meta(description="Jinja2 template")]
    html_body: Annotated[str, msgspec.Meta(description="Jinja2 template (autoescaped)")] = msgspec.field(
        name="html"
    )
    text_body: Annotated[str, msgspec.Meta(description="Jinja2 template")] = msgspec.field(name="text")
    from_address: Annotated[str, msgspec.Meta(description="sender address")] = msgspec.field(name="from")
    provider: Annotated[str, msgspec.Meta(description="a [providers.NAME] of the node")]
    start: Annotated[bool, msgspec.Meta(description="true: scheduled now")] = False
    send_at: Annotated[dt.datetime, msgspec.Meta(tz=True, description="scheduled at this time")] | None = None
    rate_per_s: (
        Annotated[float, msgspec.Meta(gt=0, description="per-campaign cap, recipients per second")] | None
    ) = msgspec.field(default=None, name="rate")
    resend_uncertain: Annotated[
        bool, msgspec.Meta(description="after a crash, re-send what may have been sent")
    ] = False


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
    for field, value in (
        ("name", new.name),
        ("subject", new.subject),
        ("html", new.html_body),
        ("text", new.text_body),
        ("from", new.from_address),
        ("provider", new.provider),
    ):
        if "\x00" in value:
            errors.append(CampaignError(field, "must not contain NUL characters"))
    try:
        segments.parse(new.segment)
    except segments.SegmentError as exc:
        errors.append(CampaignError("segment", str(exc)))
    try:
        content.compile_content(new.subject, new.html_body, new.text_body)
    except content.TemplateError as exc:
        errors.append(CampaignError(_template_field(exc.part), str(exc)))
    if "@" not in new.from_address or len(new.from_address) > 320:
        errors.append(CampaignError("from", f"not an email address: {new.from_address!r}"))
    if new.provider not in config.providers:
        known = ", ".join(sorted(config.providers)) or "none configured"
        errors.append(CampaignError("provider", f"unknown provider {new.provider!r} (configured: {known})"))
    return errors


def _template_field(part: str) -> str:
    return {"subject": "subject", "html": "html", "text": "text"}.get(part, part)


async def create(conn: asyncpg.Connection, new: NewCampaign, config: Config) -> int:
    """Validate and insert; raise the first :class:`CampaignError` if invalid. Returns the id."""
    errors = validate(new, config)
    if errors:
        raise errors[0]
    if new.start:
        status, send_at = "scheduled", dt.datetime.now(dt.UTC)
    elif new.send_at is not None:
        status, send_at = "scheduled", new.send_at
    else:
        status, send_at = "draft", None
    segment = new.segment if not isinstance(new.segment, str | bytes) else orjson.loads(new.segment)
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
    )
    return await campaign_rows.insert(conn, row)
