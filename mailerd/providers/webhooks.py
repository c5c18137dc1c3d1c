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
from typing import Any, Protocol

import asyncpg
import structlog

from mailerd.models import Event

log = structlog.get_logger(__name__)

# How far back a provider message id is looked for in email_log (it has no index on it: the
# metadata our providers send is the normal path, this is the fallback).
MESSAGE_ID_LOOKBACK = dt.timedelta(days=3)


class WebhookError(Exception):
    """A webhook that is refused: 400 (not what the provider sends), 401/403 (authentication)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


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


_TEXT_FIELDS = ("email", "receipt", "provider_message_id", "provider_type", "reason", "smtp_status")


def scrub(events: list[Event]) -> list[Event]:
    """Replace NUL characters (Postgres text cannot hold them) in what providers sent."""
    cleaned = []
    for event in events:
        changes: dict[str, Any] = {
            name: value.replace("\x00", "\ufffd")
            for name in _TEXT_FIELDS
            if isinstance(value := getattr(event, name), str) and "\x00" in value
        }
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
