"""Shared webhook plumbing: the request a handler sees and its errors.

Each provider's own verification and parsing lives in its module (``ses.py``, ``sendgrid.py``,
``mailgun.py``, ``postmark.py``) as a class implementing :class:`WebhookHandler`. Handlers are
pure of the database: they verify and normalise; :func:`mailerd.events.resolve` then maps each
event to its campaign and lead (metadata first, then the provider's message id, then the address).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from mailerd.models import Event

log = structlog.get_logger(__name__)


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
