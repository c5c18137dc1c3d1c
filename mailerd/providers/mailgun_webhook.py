"""Mailgun webhooks: verification and normalisation (the emulator side is in :mod:`mailerd.emulator`).

Verification: the body is ``{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}``
and ``signature`` is the hex HMAC-SHA256 of ``timestamp + token`` under the webhook signing key
(not the API key), compared in constant time. The timestamp must be within ``max_age_s`` of now
(0 turns that off). Status codes follow :mod:`mailerd.providers.webhook_auth`.

Mailgun retries a post not answered 200 (or 406) for 8 hours (after 5, 10, 15 minutes, 1, 2 and
4 hours), and a retry carries the original signature block, token and timestamp (Mailgun's
pages do not say; integrations that check freshness see its retries refused as stale). So the
default ``max_age_s`` is 8 hours: a shorter window refused every later retry for good, and an
event answered 503 once (Postgres down) was lost.

The signature does not cover ``event-data``, so a captured signature block could be replayed
with other data: each token is remembered (bounded, for the freshness window) with a digest of
its ``event-data``, and the same token with different data is refused (401). The same request
again (same token, same data) is let through: it is Mailgun's retry, and refusing the retry of a
post whose commit failed would lose the event; the receipt de-duplication in the database
records it once. That memory is per process; the database also claims every verified token
(``token:<token>`` in ``webhook_receipts``: with the post's events as their ``Event.guard``,
else on its own through :attr:`WebhookRequest.claims`, also for a post with no event of ours
or refused after verification), so a replay with other data on another node, or after a
restart, records nothing.

Events:

- ``failed`` with ``severity`` ``permanent`` -> hard_bounce, except the reasons
  ``suppress-unsubscribe`` -> unsubscribe, ``suppress-complaint`` -> complaint (Mailgun dropped
  it because the address is on that list of its own) and ``old`` -> soft_bounce (Mailgun gave up
  after retrying temporary failures for hours: nothing says the address is bad).
- ``failed`` with ``severity`` ``temporary`` -> no event. Mailgun posts one per delivery
  attempt while it keeps retrying (``delivery-status.attempt-no`` 1, 2, 3, ...), then
  ``delivered``, or ``failed``/``permanent`` when it gives up (reason ``old`` above): counting
  each attempt as a soft bounce made one greylisted message three soft bounces (the address
  suppressed at ``soft_bounce_limit``) or three blocks, though it was delivered. SendGrid's
  ``deferred`` is ignored for the same reason.
- ``complained`` -> complaint; ``unsubscribed`` -> unsubscribe; ``delivered`` -> delivered;
  any other event (accepted, opened, clicked, ...) -> no event.

``receipt`` = ``event-data.id:recipient``; ``provider_message_id`` =
``event-data.message.headers.message-id``; our ids come from ``event-data.user-variables``.
``smtp_status`` is the enhanced status code in the diagnostic text when there is one (``5.1.1``),
else ``delivery-status.code`` (``550``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from typing import Any, Final

import orjson
import structlog

from mailerd.config import MailgunWebhookConfig
from mailerd.models import Event, EventKind
from mailerd.providers import webhook_auth as auth
from mailerd.providers.webhooks import WebhookRequest

log = structlog.get_logger(__name__)

PROVIDER: Final = "mailgun"
PERMANENT_REASONS: Final = {
    "suppress-unsubscribe": EventKind.UNSUBSCRIBE,
    "suppress-complaint": EventKind.COMPLAINT,
    "old": EventKind.SOFT_BOUNCE,
}
SIMPLE_EVENTS: Final = {
    "complained": EventKind.COMPLAINT,
    "unsubscribed": EventKind.UNSUBSCRIBE,
    "delivered": EventKind.DELIVERED,
}


def signature_of(signing_key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of ``timestamp + token``."""
    message = f"{timestamp}{token}".encode()
    return hmac.new(signing_key.encode(), message, hashlib.sha256).hexdigest()


def classify(data: dict[str, Any]) -> tuple[EventKind, str] | None:
    """``(kind, provider_type)`` of one event-data, or None when it is not one we record."""
    name = data.get("event")
    if name == "failed":
        severity = data.get("severity")
        reason = auth.optional_text(data, "reason")
        provider_type = f"{severity}/{reason}" if reason else str(severity)
        if severity == "permanent":
            return PERMANENT_REASONS.get(reason or "", EventKind.HARD_BOUNCE), provider_type
        if severity == "temporary":
            return None  # an attempt Mailgun retries; its outcome comes later (module docstring)
        raise auth.bad_request(
            "invalid_body", "event-data.severity: expected 'permanent' or 'temporary'", "event-data.severity"
        )
    if isinstance(name, str) and name in SIMPLE_EVENTS:
        return SIMPLE_EVENTS[name], name
    return None


def parse_event(data: dict[str, Any]) -> list[Event]:
    """The event of one ``event-data`` object (none, or one)."""
    field = "event-data"
    name = data.get("event")
    if not isinstance(name, str) or not name:
        raise auth.bad_request("invalid_body", f"{field}.event: missing", f"{field}.event")
    classified = classify(data)
    if classified is None:
        return []
    kind, provider_type = classified
    email = auth.need_address(data, "recipient", field)
    event_id = auth.need_id(data, "id", field)
    if "timestamp" not in data:
        raise auth.bad_request("invalid_body", f"{field}.timestamp: missing", f"{field}.timestamp")
    occurred_at = auth.event_time(data["timestamp"], f"{field}.timestamp")
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = (
        auth.optional_id(headers, "message-id", f"{field}.message.headers")
        if isinstance(headers, dict)
        else None
    )
    campaign_id, lead_id = auth.campaign_and_lead(data.get("user-variables"))
    status = data.get("delivery-status")
    reason = smtp_status = None
    if isinstance(status, dict):
        reason = auth.optional_text(status, "message") or auth.optional_text(status, "description")
        code = auth.optional_text(status, "code")
        smtp_status = auth.enhanced_status(reason, auth.optional_text(status, "description")) or code
    if kind is EventKind.DELIVERED:
        reason = None
    return [
        Event(
            provider=PROVIDER,
            kind=kind,
            occurred_at=occurred_at,
            email=email,
            receipt=f"{event_id}:{auth.receipt_address(email)}",
            provider_message_id=message_id.strip("<>") if message_id else None,
            campaign_id=campaign_id,
            lead_id=lead_id,
            provider_type=provider_type,
            reason=auth.clip(reason),
            smtp_status=smtp_status,
        )
    ]


class MailgunWebhook:
    """``POST /webhooks/mailgun``: verify signature, freshness and token, then normalise."""

    provider = PROVIDER

    def __init__(self, config: MailgunWebhookConfig, *, clock: auth.Clock = time.time) -> None:
        self._config = config
        self._clock = clock
        self._key = config.signing_key.reveal() if config.signing_key is not None else ""
        self._tokens = auth.ReplayGuard(config.max_age_s)

    async def parse(self, request: WebhookRequest) -> list[Event]:
        body = auth.need_object(auth.json_body(request.body), "body")
        data = body.get("event-data")
        block = body.get("signature")
        token = block.get("token") if isinstance(block, dict) else None
        if isinstance(token, str):
            auth.bounded_id(token, "signature.token")  # before the replay memory keeps it
        if self._config.verify_signatures:
            self._verify(block, data)
            # Mailgun signs only timestamp + token: the database also remembers each verified
            # token, so a captured signature replayed with other data on another node (or after
            # a restart) is not recorded. Every one: also that of a post with no event of ours
            # (opened) or refused below, whose token would otherwise stay free for a forgery.
            request.claims.append(f"token:{token}")
        events = parse_event(auth.need_object(data, "event-data"))
        if isinstance(token, str) and token:
            events = [dataclasses.replace(e, guard=f"token:{token}") for e in events]
        return events

    async def close(self) -> None:
        return None

    def _verify(self, block: Any, data: Any) -> None:
        if not self._key:
            raise auth.forbidden("not_configured", "no [webhooks.mailgun] signing_key is configured")
        if not isinstance(block, dict):
            raise auth.unauthorized("missing_signature", "signature: missing")
        timestamp = auth.optional_text(block, "timestamp")
        token, signature = block.get("token"), block.get("signature")
        if not timestamp or not isinstance(token, str) or not isinstance(signature, str):
            raise auth.unauthorized(
                "missing_signature", "signature.timestamp, .token and .signature are required"
            )
        signed_at = auth.unix_time(timestamp, "signature.timestamp")
        expected = signature_of(self._key, timestamp, token)
        if not auth.equal(expected, signature.strip().lower()):
            raise auth.unauthorized("bad_signature", "signature.signature does not verify")
        now = self._clock()
        auth.check_fresh(signed_at, now, self._config.max_age_s, "signature.timestamp")
        try:
            digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).digest()
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254; it reads 1,024)
            raise auth.bad_request("invalid_event", "event-data: nested too deeply", "event-data") from None
        if not self._tokens.check(token, digest, now):
            log.warning("webhook_replay_refused", provider=PROVIDER)
            raise auth.unauthorized("replayed_token", "signature.token was already used")
