"""Shared webhook plumbing: the request a handler sees, its errors, and mapping events to leads.

Each provider's own verification and parsing lives in its module (``ses.py``, ``sendgrid.py``,
``mailgun.py``, ``postmark.py``) as a class implementing :class:`WebhookHandler`. Handlers are
pure of the database: they verify and normalise; :func:`resolve` then maps each event to its
campaign and lead (metadata first, then the provider's message id, then the address).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, Final, Protocol

import asyncpg
import structlog

from mailerd.models import Event

log = structlog.get_logger(__name__)

# How far back a provider message id is looked for in email_log (it has no index on it: the
# metadata our providers send is the normal path, this is the fallback).
MESSAGE_ID_LOOKBACK = dt.timedelta(days=3)


# What the edge lets through to the database (bytes of UTF-8; see docs/webhooks.md#limits).
MAX_ADDRESS_BYTES: Final = 254  # RFC 5321: a path is at most 256 octets with its angle brackets
MAX_ID_BYTES: Final = 255  # a provider's event id, message id, record id or signature token
MAX_KEY_BYTES: Final = 1024  # a receipt or guard: an id, an address and our separators
# Free texts are clipped (at a character boundary), never refused.
TEXT_LIMITS: Final[Mapping[str, int]] = {"reason": 1000, "provider_type": 100, "smtp_status": 32}
KEY_LIMITS: Final[Mapping[str, int]] = {
    "email": MAX_ADDRESS_BYTES,
    "provider_message_id": MAX_ID_BYTES,
    "receipt": MAX_KEY_BYTES,
    "guard": MAX_KEY_BYTES,
}


class WebhookError(Exception):
    """A webhook that is refused: 400 (not what the provider sends), 401/403 (authentication).

    ``field`` names the offending field of the body when there is one (``error.field``).
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookRequest:
    """What a handler gets: the raw body (signatures cover bytes), headers, the peer address."""

    body: bytes
    headers: Mapping[str, str]
    remote: str | None = None
    content_type: str = ""


class WebhookHandler(Protocol):
    """One provider's webhook: verify the request, return its events (possibly none)."""

    provider: str

    async def parse(self, request: WebhookRequest) -> list[Event]:
        """Verify and normalise; raise :class:`WebhookError` for a request to refuse."""

    async def close(self) -> None:
        """Release resources (HTTP sessions for certificate fetches, ...)."""


_TEXT_FIELDS = ("email", "receipt", "provider_message_id", "provider_type", "reason", "smtp_status", "guard")


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (without encoding it when it is ASCII)."""
    return len(text) if text.isascii() else len(text.encode())


def clip_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    if len(text) <= limit // 4 or utf8_size(text) <= limit:
        return text
    return text.encode()[:limit].decode("utf-8", "ignore")


def scrub(events: list[Event]) -> list[Event]:
    """Make provider text storable; the last check before the writer, whatever built the events.

    NUL characters (Postgres text cannot hold them) become U+FFFD; free texts are clipped to
    :data:`TEXT_LIMITS`; a key field above :data:`KEY_LIMITS` (which the parsers already refuse
    with the payload's own field name) is refused here too: a 400 naming the event field, rather
    than a flush that fails on an index entry too large and wedges the writer.
    """
    cleaned = []
    for event in events:
        changes: dict[str, Any] = {}
        for name in _TEXT_FIELDS:
            value = getattr(event, name)
            if not isinstance(value, str):
                continue
            clean = value.replace("\x00", "\ufffd") if "\x00" in value else value
            limit = TEXT_LIMITS.get(name)
            if limit is not None:
                clean = clip_bytes(clean, limit)
            elif utf8_size(clean) > KEY_LIMITS[name]:
                raise WebhookError(
                    400, "too_long", f"{name}: longer than {KEY_LIMITS[name]} bytes", field=name
                )
            if clean is not value:
                changes[name] = clean
        cleaned.append(dataclasses.replace(event, **changes) if changes else event)
    return cleaned


async def resolve(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """Fill ``campaign_id``/``lead_id``/``account_id``: metadata, else message id, else address.

    An event matched by address alone becomes one event per account that has the address as a
    lead; an event that matches nothing is kept as it is (unmatched).
    """
    resolved: list[Event | None] = [None] * len(events)
    # 1. Metadata: campaign and lead ids travelled with the email; only the account is needed.
    campaign_ids = {e.campaign_id for e in events if e.campaign_id is not None}
    accounts: dict[int, int] = {}
    if campaign_ids:
        rows = await conn.fetch(
            "SELECT id, account_id FROM campaigns WHERE id = ANY($1::bigint[])", list(campaign_ids)
        )
        accounts = {r["id"]: r["account_id"] for r in rows}
    pending_by_message: list[int] = []
    events = [
        # Metadata naming a campaign we do not have is not ours (or forged): drop it.
        dataclasses.replace(event, campaign_id=None, lead_id=None)
        if event.campaign_id is not None and event.campaign_id not in accounts
        else event
        for event in events
    ]
    for index, event in enumerate(events):
        if event.campaign_id is not None:
            resolved[index] = dataclasses.replace(event, account_id=accounts[event.campaign_id])
        elif event.provider_message_id:
            pending_by_message.append(index)
    # 2. The provider's message id, in the recent email_log partitions.
    by_message: dict[str, tuple[int, int]] = {}
    if pending_by_message:
        message_ids = list({events[i].provider_message_id for i in pending_by_message})
        rows = await conn.fetch(
            """SELECT e.provider_message_id, e.campaign_id, e.lead_id, c.account_id
               FROM email_log e JOIN campaigns c ON c.id = e.campaign_id
               WHERE e.provider_message_id = ANY($1::text[]) AND e.sent_at > now() - $2::interval""",
            message_ids,
            MESSAGE_ID_LOOKBACK,
        )
        for row in rows:
            by_message[row["provider_message_id"]] = (row["campaign_id"], row["lead_id"])
            accounts[row["campaign_id"]] = row["account_id"]
    result: list[Event] = []
    by_address: list[int] = []
    for index, event in enumerate(events):
        done = resolved[index]
        if done is not None:
            result.append(done)
            continue
        found = by_message.get(event.provider_message_id or "")
        if found is not None:
            result.append(
                dataclasses.replace(
                    event, campaign_id=found[0], lead_id=found[1], account_id=accounts[found[0]]
                )
            )
        elif event.email:
            by_address.append(index)
        else:
            result.append(event)
    # 3. The address, in every account that has it as a lead.
    if by_address:
        emails = list({(events[i].email or "").lower() for i in by_address})
        rows = await conn.fetch(
            "SELECT account_id, id, lower(email) AS email FROM leads WHERE lower(email) = ANY($1::text[])",
            emails,
        )
        owners: dict[str, list[tuple[int, int]]] = {}
        for row in rows:
            owners.setdefault(row["email"], []).append((row["account_id"], row["id"]))
        for index in by_address:
            event = events[index]
            matches = owners.get((event.email or "").lower(), [])
            if not matches:
                result.append(event)
                log.info("webhook_event_unmatched", provider=event.provider, kind=str(event.kind))
                continue
            for account_id, lead_id in matches:
                result.append(
                    dataclasses.replace(
                        event,
                        account_id=account_id,
                        lead_id=lead_id,
                        receipt=f"{event.receipt}@{account_id}" if len(matches) > 1 else event.receipt,
                    )
                )
    return result
