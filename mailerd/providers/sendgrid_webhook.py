"""SendGrid's Signed Event Webhook: verification and normalisation (emulator side: :mod:`mailerd.emulator`).

Verification: ECDSA P-256 with SHA-256 over the ``X-Twilio-Email-Event-Webhook-Timestamp``
header followed by the raw body bytes; the signature (base64 DER) is in
``X-Twilio-Email-Event-Webhook-Signature``, the public key is the base64 DER "Verification Key"
from SendGrid's settings. The timestamp must be within ``max_age_s`` of now (0 turns that off).
Status codes follow :mod:`mailerd.providers.webhook_auth` (400 body, 401 authentication).

The body is a JSON array of events. How each becomes an :class:`~mailerd.models.Event`:

- ``bounce``: ``type`` ``bounce`` (or absent, in older payloads) -> hard_bounce; ``blocked``
  (a block by the receiving server, often reputation or content, not a bad address) -> soft_bounce.
- ``dropped``: SendGrid did not even try. The reasons ``Bounced Address``, ``Unsubscribed
  Address`` and ``Spam Reporting Address`` mean the address is on SendGrid's own suppression list,
  so they map to hard_bounce, unsubscribe and complaint; any other reason -> soft_bounce.
- ``spamreport`` -> complaint; ``unsubscribe`` and ``group_unsubscribe`` -> unsubscribe;
  ``delivered`` -> delivered.
- ``deferred`` -> no event. A deferral is SendGrid retrying after a temporary refusal, not a
  bounce: SendGrid keeps trying for up to 72 hours and reports the end as ``delivered`` or as
  ``bounce``/``dropped``. Counting each deferral as a soft bounce would count one message's
  retries several times and could suppress an address whose mail was in the end delivered.
- ``processed``, ``open``, ``click`` and any other event -> no event.

``receipt`` = ``sg_event_id:email``; ``provider_message_id`` = ``sg_message_id`` without its
``.filterdrecv-...`` suffix (it names the SendGrid host that handled the message; our send
answer's ``X-Message-Id`` is the prefix, see :func:`base_message_id`). Our ids come from the
``custom_args`` we send, which appear as the top-level keys ``mailerd_campaign`` and
``mailerd_lead`` of each event.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Final

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailerd import decoding
from mailerd.config import ConfigError, SendgridWebhookConfig
from mailerd.models import Event, EventKind
from mailerd.providers import webhook_auth as auth
from mailerd.providers.webhooks import WebhookRequest

log = structlog.get_logger(__name__)

PROVIDER: Final = "sendgrid"
SIGNATURE_HEADER: Final = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER: Final = "X-Twilio-Email-Event-Webhook-Timestamp"

DROPPED_REASONS: Final = {
    "bounced address": EventKind.HARD_BOUNCE,
    "unsubscribed address": EventKind.UNSUBSCRIBE,
    "spam reporting address": EventKind.COMPLAINT,
}
SIMPLE_EVENTS: Final = {
    "spamreport": EventKind.COMPLAINT,
    "unsubscribe": EventKind.UNSUBSCRIBE,
    "group_unsubscribe": EventKind.UNSUBSCRIBE,
    "delivered": EventKind.DELIVERED,
}


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The base64 DER (or PEM) verification key; ValueError if it is not a P-256 public key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ValueError(f"not a public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify_signature(key: ec.EllipticCurvePublicKey, body: bytes, signature_b64: str, timestamp: str) -> bool:
    """Whether ``signature_b64`` signs ``timestamp + body`` (SendGrid's SDK semantics)."""
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def base_message_id(sg_message_id: str | None) -> str | None:
    """Our send answer's ``X-Message-Id`` in an ``sg_message_id``: the part before ``.filter...``.

    Current ids have no dot of their own (``LRzXl_NHStOGhQ4kofSm_A.filterdrecv-...``); older
    ones did (``14c5d75ce93.dfd.64b469.filter0001...``), hence the cut at ``.filter`` first.
    """
    if not sg_message_id:
        return None
    cut = sg_message_id.find(".filter")
    return sg_message_id[:cut] if cut > 0 else sg_message_id.split(".", 1)[0]


def classify(item: dict[str, Any]) -> tuple[EventKind, str] | None:
    """``(kind, provider_type)`` of one event, or None when it is not one we record."""
    name = item.get("event")
    if name == "bounce":
        bounce_type = item.get("type")
        if bounce_type == "blocked":
            return EventKind.SOFT_BOUNCE, "blocked"
        return EventKind.HARD_BOUNCE, "bounce"
    if name == "dropped":
        reason = str(item.get("reason") or "").strip().lower()
        return DROPPED_REASONS.get(reason, EventKind.SOFT_BOUNCE), "dropped"
    if isinstance(name, str) and name in SIMPLE_EVENTS:
        return SIMPLE_EVENTS[name], name
    return None


def parse_events(body: bytes) -> list[Event]:
    """The events of a (verified) body; raises a 400 WebhookError for a body SendGrid never sends."""
    data = auth.json_body(body)
    if not isinstance(data, list):
        raise auth.bad_request("invalid_body", "expected a JSON array of events", "body")
    events: list[Event] = []
    for index, raw in enumerate(data):
        field = f"events[{index}]"
        item = auth.need_object(raw, field)
        name = item.get("event")
        if not isinstance(name, str) or not name:
            raise auth.bad_request("invalid_body", f"{field}.event: missing", f"{field}.event")
        for key in ("type", "reason"):  # they classify the event: only text is a body SendGrid sends
            if item.get(key) is not None and not isinstance(item[key], str):
                message = f"{field}.{key}: expected text, got {decoding.json_type(item[key])}"
                raise auth.bad_request("invalid_body", message, f"{field}.{key}")
        classified = classify(item)
        if classified is None:
            continue
        kind, provider_type = classified
        email = auth.need_address(item, "email", field)
        event_id = auth.need_id(item, "sg_event_id", field)
        if "timestamp" not in item:
            raise auth.bad_request("invalid_body", f"{field}.timestamp: missing", f"{field}.timestamp")
        occurred_at = auth.event_time(item["timestamp"], f"{field}.timestamp")
        message_id = auth.optional_id(item, "sg_message_id", field)
        campaign_id, lead_id = auth.campaign_and_lead(item)
        reason = auth.optional_text(item, "reason") or auth.optional_text(item, "response")
        status = auth.optional_text(item, "status")
        events.append(
            Event(
                provider=PROVIDER,
                kind=kind,
                occurred_at=occurred_at,
                email=email,
                receipt=f"{event_id}:{auth.receipt_address(email)}",
                provider_message_id=base_message_id(message_id),
                campaign_id=campaign_id,
                lead_id=lead_id,
                provider_type=provider_type,
                reason=auth.clip(reason),
                smtp_status=status or auth.enhanced_status(reason),
            )
        )
    return events


class SendgridWebhook:
    """``POST /webhooks/sendgrid``: verify the signature and freshness, then normalise."""

    provider = PROVIDER

    def __init__(self, config: SendgridWebhookConfig, *, clock: auth.Clock = time.time) -> None:
        self._config = config
        self._clock = clock
        self._key: ec.EllipticCurvePublicKey | None = None
        if config.public_key:
            try:
                self._key = load_public_key(config.public_key)
            except ValueError as exc:
                raise ConfigError(f"[webhooks.sendgrid] public_key: {exc}") from None

    async def parse(self, request: WebhookRequest) -> list[Event]:
        if self._config.verify_signatures:
            self._verify(request)
        return parse_events(request.body)

    async def close(self) -> None:
        return None

    def _verify(self, request: WebhookRequest) -> None:
        if self._key is None:
            raise auth.forbidden("not_configured", "no [webhooks.sendgrid] public_key is configured")
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            raise auth.unauthorized(
                "missing_signature", f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required"
            )
        signed_at = auth.unix_time(timestamp, TIMESTAMP_HEADER)
        if not verify_signature(self._key, request.body, signature, timestamp):
            raise auth.unauthorized("bad_signature", f"{SIGNATURE_HEADER} does not verify")
        auth.check_fresh(signed_at, self._clock(), self._config.max_age_s, TIMESTAMP_HEADER)
