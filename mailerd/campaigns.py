"""Campaigns: validated creation, status and counts. Shared by the CLI (and the admin API)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from mailerd import content, segments
from mailerd.config import Config


class CampaignError(ValueError):
    """A field of a new campaign is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class NewCampaign:
    """What a user gives to create a campaign."""

    account_id: int
    name: str
    segment: Any
    subject: str
    html_body: str
    text_body: str
    from_address: str
    provider: str
    start: bool = False
    send_at: dt.datetime | None = None
    rate_per_s: float | None = None
    resend_uncertain: bool = False


def validate(new: NewCampaign, config: Config) -> list[CampaignError]:
    """Every problem of ``new``, one per field (empty when it can be created)."""
    errors: list[CampaignError] = []
    if not 0 <= new.account_id < 2**63:
        errors.append(CampaignError("account_id", "must be a non-negative 64-bit integer"))
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
    if new.rate_per_s is not None and new.rate_per_s <= 0:
        errors.append(CampaignError("rate", "must be a positive number of recipients per second"))
    if new.send_at is not None and new.send_at.tzinfo is None:
        errors.append(CampaignError("send_at", "needs a time zone (e.g. 2026-12-01T09:00:00Z)"))
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
    campaign_id: int = await conn.fetchval(
        """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject,
                                  html_body, text_body, provider, rate_per_s, resend_uncertain, send_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id""",
        new.account_id,
        new.name,
        status,
        segment,
        new.from_address,
        new.subject,
        new.html_body,
        new.text_body,
        new.provider,
        new.rate_per_s,
        new.resend_uncertain,
        send_at,
    )
    await conn.execute(
        "INSERT INTO campaign_stats (campaign_id) VALUES ($1) ON CONFLICT DO NOTHING", campaign_id
    )
    if status == "scheduled":
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{campaign_id} {status}")
    return campaign_id


NOTIFY_CHANNEL = "mailerd_campaigns"

# action -> (statuses it may start from, status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"draft", "scheduled"}), "scheduled"),
    "pause": (frozenset({"scheduled", "running"}), "paused"),
    "resume": (frozenset({"paused"}), "running"),
    "cancel": (frozenset({"draft", "scheduled", "running", "paused"}), "cancelled"),
}


class TransitionError(Exception):
    """The action is not allowed from the campaign's current status (or it does not exist)."""

    def __init__(self, campaign_id: int, action: str, current: str | None) -> None:
        what = "no such campaign" if current is None else f"campaign is {current}"
        super().__init__(f"cannot {action} campaign {campaign_id}: {what}")
        self.current = current


async def transition(
    conn: asyncpg.Connection, campaign_id: int, action: str, reason: str | None = None
) -> str:
    """Apply ``action`` (start, pause, resume, cancel) and tell every node at once (NOTIFY).

    Returns the new status; raises :class:`TransitionError` when not allowed.
    """
    allowed, target = TRANSITIONS[action]
    async with conn.transaction():
        status = await conn.fetchval(
            """UPDATE campaigns SET status = $2, updated_at = now(),
                   status_reason = $4,
                   send_at = CASE WHEN $2 = 'scheduled' THEN now() ELSE send_at END,
                   started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now())
                                     ELSE started_at END,
                   finished_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE finished_at END
               WHERE id = $1 AND status = ANY($3::text[]) RETURNING status""",
            campaign_id,
            target,
            sorted(allowed),
            reason,
        )
        if status is None:
            current = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
            raise TransitionError(campaign_id, action, current)
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{campaign_id} {status}")
    return str(status)


async def show(conn: asyncpg.Connection, campaign_id: int) -> dict[str, Any] | None:
    """Status and counters of one campaign (reads ``campaign_stats``, never the hot log)."""
    row = await conn.fetchrow(
        """SELECT c.id, c.account_id, c.name, c.status, c.status_reason, c.provider, c.created_at,
                  c.send_at, c.started_at, c.finished_at,
                  coalesce(s.matched, 0) AS matched, coalesce(s.sent, 0) AS sent,
                  coalesce(s.failed, 0) AS failed, coalesce(s.unknown, 0) AS unknown,
                  coalesce(s.suppressed, 0) AS suppressed, coalesce(s.retried, 0) AS retried,
                  coalesce(s.delivered, 0) AS delivered, coalesce(s.bounced, 0) AS bounced,
                  coalesce(s.complained, 0) AS complained,
                  coalesce(s.unsubscribed, 0) AS unsubscribed,
                  (SELECT count(*) FROM campaign_shards h WHERE h.campaign_id = c.id) AS shards,
                  (SELECT count(*) FROM campaign_shards h
                   WHERE h.campaign_id = c.id AND h.state = 'done') AS shards_done
           FROM campaigns c LEFT JOIN campaign_stats s ON s.campaign_id = c.id
           WHERE c.id = $1""",
        campaign_id,
    )
    if row is None:
        return None
    result = dict(row)
    result["processed"] = result["sent"] + result["failed"] + result["unknown"] + result["suppressed"]
    result["reason"] = result.pop("status_reason")
    return result


def _read_template(path: str, field: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError(field, f"cannot read {path}: {exc}") from None


async def cli_create(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign create``: through the admin API; prints the new id (JSON with ``--json``)."""
    from mailerd import client

    try:
        try:
            segment = orjson.loads(args.segment)
        except orjson.JSONDecodeError as exc:
            raise CampaignError("segment", f"not valid JSON: {exc}") from None
        body: dict[str, Any] = {
            "account_id": args.account,
            "name": args.name,
            "segment": segment,
            "subject": args.subject,
            "html": _read_template(args.html, "html"),
            "text": _read_template(args.text, "text"),
            "from": args.from_address,
            "provider": args.provider,
            "start": bool(args.start),
            "resend_uncertain": bool(args.resend_uncertain),
        }
        if args.send_at:
            body["send_at"] = args.send_at
        if args.rate is not None:
            body["rate"] = args.rate
    except CampaignError as exc:
        print(f"mailerd campaign create: {exc}", file=sys.stderr)
        return 2
    url = client.base_url(args, config)
    try:
        created = await client.call("POST", f"{url}/api/campaigns", client.token(args, config), body)
    except client.ApiFailure as failure:
        return client.report_failure("campaign create", failure)
    if args.json:
        print(orjson.dumps({"id": created["id"], "status": created["status"]}).decode())
    else:
        print(created["id"])
    return 0


async def cli_show(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign show ID``: status and counts, through the admin API."""
    from mailerd import client

    url = client.base_url(args, config)
    try:
        info = await client.call("GET", f"{url}/api/campaigns/{args.id}", client.token(args, config))
    except client.ApiFailure as failure:
        return client.report_failure("campaign show", failure)
    if args.json:
        print(orjson.dumps(info).decode())
        return 0
    print(f"campaign {info['id']} {info['name']!r} (account {info['account_id']}): {info['status']}")
    if info.get("reason"):
        print(f"  reason: {info['reason']}")
    print(
        "  matched {matched:,}  sent {sent:,}  failed {failed:,}  unknown {unknown:,}  "
        "suppressed {suppressed:,}  retried {retried:,}".format(**info)
    )
    print(
        "  delivered {delivered:,}  bounced {bounced:,}  complained {complained:,}  "
        "unsubscribed {unsubscribed:,}".format(**info)
    )
    eta = f", ETA {info['eta_s']:.0f} s" if info.get("eta_s") is not None else ""
    print(f"  shards {info['shards_done']}/{info['shards']} done, {info['rate_per_s']:,.0f} emails/s{eta}")
    return 0


async def cli_action(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign start|pause|resume|cancel ID``."""
    from mailerd import client

    url = client.base_url(args, config)
    action = args.campaign_command
    body = {"reason": args.reason} if getattr(args, "reason", None) else None
    try:
        info = await client.call(
            "POST", f"{url}/api/campaigns/{args.id}/{action}", client.token(args, config), body
        )
    except client.ApiFailure as failure:
        return client.report_failure(f"campaign {action}", failure)
    print(f"campaign {info['id']}: {info['status']}")
    return 0


async def cli_list(args: argparse.Namespace, config: Config) -> int:
    """``mailerd campaign list [--status S] [--account ID]``: every page, one line each."""
    from mailerd import client

    url = client.base_url(args, config)
    after = 0
    bearer = client.token(args, config)
    rows: list[dict[str, Any]] = []
    try:
        while True:
            query = f"after={after}&limit=500"
            if args.status:
                query += f"&status={args.status}"
            if args.account is not None:
                query += f"&account_id={args.account}"
            page = await client.call("GET", f"{url}/api/campaigns?{query}", bearer)
            rows.extend(page["campaigns"])
            if page["next_after"] is None:
                break
            after = page["next_after"]
    except client.ApiFailure as failure:
        return client.report_failure("campaign list", failure)
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    for row in rows:
        print(f"{row['id']:>8}  {row['status']:<10} {row['sent']:>10,}/{row['matched']:<10,} {row['name']}")
    return 0
