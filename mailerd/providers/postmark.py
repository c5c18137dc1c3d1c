"""Postmark webhooks: authentication and normalisation (the emulator side is in :mod:`mailerd.emulator`).

Postmark signs nothing; its webhooks are secured with HTTP basic auth in the webhook URL
(``username``/``password``, both compared in constant time) and, optionally, by the address the
request comes from (``allowed_ips``: addresses or CIDR networks, checked against the peer
address). At least one of the two must be configured (else 403). Wrong or missing credentials ->
401, a source outside the allow-list -> 403 (see :mod:`mailerd.providers.webhook_auth`). With
``max_age_s`` > 0, a record whose own time (``BouncedAt``, ``DeliveredAt``, ``ChangedAt``) is older
than that is refused (401); off by default, because Postmark retries a failed post for hours.

The body is ONE JSON record. ``RecordType``:

- ``Bounce``: classified by ``Type`` after Postmark's bounce type table (see :data:`BOUNCE_KINDS`):
  ``HardBounce``, ``BadEmailAddress``, ``ManuallyDeactivated`` -> hard_bounce; ``Unsubscribe`` ->
  unsubscribe; ``SpamComplaint`` -> complaint; ``Transient``, ``SoftBounce``, ``DnsError``,
  ``SpamNotification``, ``Blocked``, ``DMARCPolicy``, ``Unknown`` and the rest -> soft_bounce;
  ``AutoResponder``, ``Subscribe``, ``ChallengeVerification``, ``OpenRelayTest``,
  ``InboundError`` (replies and tests, not failures) -> no event. ``Inactive: true`` means Postmark
  deactivated the address: the event is kept whatever the type, with ``suppress=True``.
- ``SpamComplaint`` -> complaint.
- ``SubscriptionChange``: ``SuppressSending: true`` puts the address on Postmark's suppression
  list; by ``SuppressionReason`` -> hard_bounce (``HardBounce``), complaint (``SpamComplaint``),
  else unsubscribe (``Unsubscribe``, ``ManualSuppression``), always with ``suppress=True``.
  ``SuppressSending: false`` (a reactivation) -> no event, logged.
- ``Delivery`` -> delivered. ``Open``, ``Click`` and others -> no event.

``receipt`` = ``ID:recipient`` for bounce records, else ``RecordType:MessageID:time:recipient``.
Our ids come from ``Metadata`` (``mailerd_campaign``, ``mailerd_lead``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import time
from typing import Any, Final

import structlog

from mailerd.config import ConfigError, PostmarkWebhookConfig
from mailerd.models import Event, EventKind
from mailerd.providers import webhook_auth as auth
from mailerd.providers.webhooks import WebhookRequest

log = structlog.get_logger(__name__)

PROVIDER: Final = "postmark"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Postmark's bounce types (API reference, "Bounce types") -> our kind; None: not a failure.
BOUNCE_KINDS: Final[dict[str, EventKind | None]] = {
    "HardBounce": EventKind.HARD_BOUNCE,
    "BadEmailAddress": EventKind.HARD_BOUNCE,
    "ManuallyDeactivated": EventKind.HARD_BOUNCE,
    "Unsubscribe": EventKind.UNSUBSCRIBE,
    "SpamComplaint": EventKind.COMPLAINT,
    "Transient": EventKind.SOFT_BOUNCE,
    "SoftBounce": EventKind.SOFT_BOUNCE,
    "DnsError": EventKind.SOFT_BOUNCE,
    "SpamNotification": EventKind.SOFT_BOUNCE,
    "Blocked": EventKind.SOFT_BOUNCE,
    "DMARCPolicy": EventKind.SOFT_BOUNCE,
    "AddressChange": EventKind.SOFT_BOUNCE,
    "VirusNotification": EventKind.SOFT_BOUNCE,
    "Unconfirmed": EventKind.SOFT_BOUNCE,
    "SMTPApiError": EventKind.SOFT_BOUNCE,
    "TemplateRenderingFailed": EventKind.SOFT_BOUNCE,
    "Unknown": EventKind.SOFT_BOUNCE,
    "AutoResponder": None,
    "Subscribe": None,
    "ChallengeVerification": None,
    "OpenRelayTest": None,
    "InboundError": None,
}
SUPPRESSION_REASONS: Final = {
    "HardBounce": EventKind.HARD_BOUNCE,
    "SpamComplaint": EventKind.COMPLAINT,
}


def parse_networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """``allowed_ips`` as networks (a bare address is a /32 or /128); ValueError when invalid."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def address_allowed(remote: str | None, networks: tuple[Network, ...]) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(username, password)`` of an ``Authorization: Basic`` header, None if absent or garbled."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def _record_time(record: dict[str, Any], key: str) -> dt.datetime:
    if key not in record:
        raise auth.bad_request("invalid_body", f"{key}: missing", key)
    return auth.event_time(record[key], key)


def parse_record(record: dict[str, Any]) -> list[Event]:
    """The event of one (authenticated) record: none, or one."""
    record_type = record.get("RecordType")
    if not isinstance(record_type, str) or not record_type:
        raise auth.bad_request("invalid_body", "RecordType: missing", "RecordType")
    campaign_id, lead_id = auth.campaign_and_lead(record.get("Metadata"))
    message_id = auth.optional_id(record, "MessageID", "record")
    suppress = False
    if record_type in ("Bounce", "SpamComplaint"):
        email = auth.need_address(record, "Email", "record")
        occurred_at = _record_time(record, "BouncedAt")
        if record_type == "Bounce":
            provider_type = auth.need_text(record, "Type", "record")
        else:
            provider_type = auth.optional_text(record, "Type") or record_type
        inactive = record.get("Inactive") is True
        if record_type == "SpamComplaint":
            kind: EventKind | None = EventKind.COMPLAINT
        else:
            kind = BOUNCE_KINDS.get(provider_type, EventKind.SOFT_BOUNCE)
        if kind is None:
            if not inactive:
                return []
            kind = EventKind.SOFT_BOUNCE
        suppress = inactive
        bounce_id = auth.optional_id(record, "ID", "record")
        key = bounce_id or f"{record_type}:{message_id}:{record['BouncedAt']}"
        details = auth.optional_text(record, "Details")
        reason = details or auth.optional_text(record, "Description")
        smtp_status = auth.enhanced_status(details, auth.optional_text(record, "Content"))
    elif record_type == "SubscriptionChange":
        email = auth.need_address(record, "Recipient", "record")
        occurred_at = _record_time(record, "ChangedAt")
        suppress_sending = record.get("SuppressSending")
        if not isinstance(suppress_sending, bool):
            raise auth.bad_request(
                "invalid_body", "SuppressSending: expected true or false", "SuppressSending"
            )
        why = auth.optional_text(record, "SuppressionReason") or "Unknown"
        if not suppress_sending:
            log.info("postmark_reactivation_ignored", reason=why, origin=record.get("Origin"))
            return []
        kind = SUPPRESSION_REASONS.get(why, EventKind.UNSUBSCRIBE)
        suppress = True
        provider_type = f"SubscriptionChange/{why}"
        key = f"{record_type}:{message_id}:{record['ChangedAt']}"
        reason = auth.optional_text(record, "Origin")
        smtp_status = None
    elif record_type == "Delivery":
        email = auth.need_address(record, "Recipient", "record")
        occurred_at = _record_time(record, "DeliveredAt")
        kind = EventKind.DELIVERED
        provider_type = "Delivery"
        key = f"{record_type}:{message_id}:{record['DeliveredAt']}"
        reason = smtp_status = None
    else:
        return []
    return [
        Event(
            provider=PROVIDER,
            kind=kind,
            occurred_at=occurred_at,
            email=email,
            receipt=f"{key}:{email}",
            provider_message_id=message_id,
            campaign_id=campaign_id,
            lead_id=lead_id,
            provider_type=provider_type,
            reason=auth.clip(reason),
            smtp_status=smtp_status,
            suppress=suppress,
        )
    ]


class PostmarkWebhook:
    """``POST /webhooks/postmark``: source address and basic auth, then normalise."""

    provider = PROVIDER

    def __init__(self, config: PostmarkWebhookConfig, *, clock: auth.Clock = time.time) -> None:
        self._config = config
        self._clock = clock
        self._password = config.password.reveal() if config.password is not None else ""
        try:
            self._networks = parse_networks(config.allowed_ips)
        except ValueError as exc:
            raise ConfigError(f"[webhooks.postmark] allowed_ips: {exc}") from None

    async def parse(self, request: WebhookRequest) -> list[Event]:
        if self._config.verify_signatures:
            self._authenticate(request)
        record = auth.need_object(auth.json_body(request.body), "body")
        events = parse_record(record)
        if self._config.verify_signatures and self._config.max_age_s > 0:
            now = self._clock()
            for event in events:
                auth.check_fresh(event.occurred_at.timestamp(), now, self._config.max_age_s, "record time")
        return events

    async def close(self) -> None:
        return None

    def _authenticate(self, request: WebhookRequest) -> None:
        if not self._password and not self._networks:
            raise auth.forbidden(
                "not_configured", "no [webhooks.postmark] password or allowed_ips is configured"
            )
        if self._networks and not address_allowed(request.remote, self._networks):
            raise auth.forbidden("source_not_allowed", "the source address is not in allowed_ips")
        if not self._password:
            return
        credentials = basic_credentials(request.headers.get("Authorization"))
        if credentials is None:
            raise auth.unauthorized("missing_credentials", "HTTP basic credentials are required")
        # Both compared, always: the time taken says nothing about which one was wrong.
        user_ok = auth.equal(credentials[0], self._config.username)
        password_ok = auth.equal(credentials[1], self._password)
        if not (user_ok & password_ok):
            raise auth.unauthorized("bad_credentials", "the HTTP basic credentials are wrong")
