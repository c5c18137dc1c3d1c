"""Shared webhook plumbing: the request a handler sees and its errors.

Each provider's own verification and parsing lives in its module (``ses.py``, ``sendgrid.py``,
``mailgun.py``, ``postmark.py``) as a class implementing :class:`WebhookHandler`. Handlers are
pure of the database: they verify and normalise; :func:`mailerd.events.resolve` then maps each
event to its campaign and lead (metadata first, then the provider's message id, then the address).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, Protocol

import structlog

from mailerd.models import Event

log = structlog.get_logger(__name__)


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
    """What a handler gets: the raw body (signatures cover bytes), headers, the peer address.

    ``claims``: one-time keys the handler adds once the request is verified (Mailgun: its
    signature token). Each is claimed in ``webhook_receipts`` whatever follows: with the
    request's events (their ``guard``), else on its own, also when the request is then refused.
    """

    body: bytes
    headers: Mapping[str, str]
    remote: str | None = None
    content_type: str = ""
    claims: list[str] = dataclasses.field(default_factory=list)


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
