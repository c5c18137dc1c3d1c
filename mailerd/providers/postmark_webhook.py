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

``receipt`` = ``ID:recipient`` for bounce records, else ``RecordType:MessageID:time:recipient``;
but a hard bounce or a complaint with a ``MessageID`` and an address, of either record type,
has ``kind:MessageID:recipient`` (:func:`_shared_receipt`): Postmark posts a
``SubscriptionChange`` for the bounce or complaint that put the address on its suppression list,
and the two records of one event are recorded (and counted) once. Our ids come from
``Metadata`` (``mailerd_campaign``, ``mailerd_lead``).

Two real shapes besides the documented ones: records without ``RecordType`` (older webhooks: the
type is inferred from the field only it has, :data:`INFERRED_TYPES`), and the "Unsubscribe
request" bounce record, which has neither ``Email`` nor ``BouncedAt``: its event has no address,
only the ``MessageID`` the resolver maps to a lead, and the time it was received.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
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


# Older webhooks (servers set up before Postmark's modular webhooks) post records without
# RecordType; each record type has a field no other type has.
INFERRED_TYPES: Final = (
    ("BouncedAt", "Bounce"),
    ("DeliveredAt", "Delivery"),
    ("ChangedAt", "SubscriptionChange"),
    ("FirstOpen", "Open"),
    ("OriginalLink", "Click"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class _Parsed:
    """What a record type's reader finds; :func:`parse_record` adds what every record shares."""

    kind: EventKind
    email: str | None
    occurred_at: dt.datetime
    provider_type: str
    receipt: str
    reason: str | None = None
    smtp_status: str | None = None
    suppress: bool = False


def _record_time(record: dict[str, Any], key: str) -> dt.datetime:
    if key not in record:
        raise auth.bad_request("invalid_body", f"{key}: missing", key)
    return auth.event_time(record[key], key)


def record_type(record: dict[str, Any]) -> str:
    """``RecordType``, or the type its fields show when it is absent (:data:`INFERRED_TYPES`)."""
    value = record.get("RecordType")
    if isinstance(value, str) and value:
        return value
    if value is None:
        for key, inferred in INFERRED_TYPES:
            if key in record:
                return inferred
    keys = ", ".join(key for key, _ in INFERRED_TYPES)
    raise auth.bad_request(
        "invalid_body", f"RecordType: missing, and no {keys} to infer it from", "RecordType"
    )


def _shared_receipt(kind: EventKind, message_id: str | None, email: str | None) -> str | None:
    """The receipt a hard bounce or complaint shares with the ``SubscriptionChange`` Postmark
    posts for it (same message, same recipient), so that one bounce is not two; None for others.
    The ``Bounce`` record's ``Inactive: true`` says what the change says, so nothing the second
    record would have suppressed is lost."""
    if kind not in (EventKind.HARD_BOUNCE, EventKind.COMPLAINT) or not message_id or not email:
        return None
    return f"{kind}:{message_id}:{auth.receipt_address(email)}"


def _bounce(record: dict[str, Any], kind_of_record: str, received_at: dt.datetime) -> _Parsed | None:
    """A ``Bounce`` or ``SpamComplaint`` record (see the module docstring)."""
    message_id = auth.optional_id(record, "MessageID", "record")
    email: str | None = None
    if record.get("Email") not in (None, "") or message_id is None:
        email = auth.need_address(record, "Email", "record")
        occurred_at = _record_time(record, "BouncedAt")
    else:
        # The "Unsubscribe request" record has neither Email nor BouncedAt: the message id maps
        # it to its lead later (webhooks.resolve), and it happened when it arrived.
        occurred_at = _record_time(record, "BouncedAt") if "BouncedAt" in record else received_at
    if kind_of_record == "Bounce":
        provider_type = auth.need_text(record, "Type", "record")
        kind = BOUNCE_KINDS.get(provider_type, EventKind.SOFT_BOUNCE)
    else:
        provider_type = auth.optional_text(record, "Type") or kind_of_record
        kind = EventKind.COMPLAINT
    inactive = auth.optional_flag(record, "Inactive", "record")
    if kind is None:
        if not inactive:
            return None
        kind = EventKind.SOFT_BOUNCE
    key = (
        auth.optional_id(record, "ID", "record")
        or f"{kind_of_record}:{message_id}:{record.get('BouncedAt', '')}"
    )
    details = auth.optional_text(record, "Details")
    return _Parsed(
        kind,
        email,
        occurred_at,
        provider_type,
        _shared_receipt(kind, message_id, email)
        or (f"{key}:{auth.receipt_address(email)}" if email else key),
        reason=auth.clip(details or auth.optional_text(record, "Description")),
        smtp_status=auth.enhanced_status(details, auth.optional_text(record, "Content")),
        suppress=inactive,
    )


def _subscription_change(record: dict[str, Any]) -> _Parsed | None:
    email = auth.need_address(record, "Recipient", "record")
    occurred_at = _record_time(record, "ChangedAt")
    suppress_sending = record.get("SuppressSending")
    if not isinstance(suppress_sending, bool):
        raise auth.bad_request("invalid_body", "SuppressSending: expected true or false", "SuppressSending")
    why = auth.optional_text(record, "SuppressionReason") or "Unknown"
    if not suppress_sending:
        log.info("postmark_reactivation_ignored", reason=why, origin=record.get("Origin"))
        return None
    message_id = auth.optional_id(record, "MessageID", "record")
    kind = SUPPRESSION_REASONS.get(why, EventKind.UNSUBSCRIBE)
    return _Parsed(
        kind,
        email,
        occurred_at,
        f"SubscriptionChange/{why}",
        _shared_receipt(kind, message_id, email)
        or f"SubscriptionChange:{message_id}:{record['ChangedAt']}:{auth.receipt_address(email)}",
        reason=auth.clip(auth.optional_text(record, "Origin")),
        suppress=True,
    )


def _delivery(record: dict[str, Any]) -> _Parsed:
    email = auth.need_address(record, "Recipient", "record")
    occurred_at = _record_time(record, "DeliveredAt")
    message_id = auth.optional_id(record, "MessageID", "record")
    receipt = f"Delivery:{message_id}:{record['DeliveredAt']}:{auth.receipt_address(email)}"
    return _Parsed(EventKind.DELIVERED, email, occurred_at, "Delivery", receipt)


def parse_record(record: dict[str, Any], received_at: dt.datetime | None = None) -> list[Event]:
    """The event of one (authenticated) record: none, or one.

    ``received_at`` (default: now) stands in for the time of a record that carries none.
    """
    kind_of_record = record_type(record)
    parsed: _Parsed | None
    if kind_of_record in ("Bounce", "SpamComplaint"):
        parsed = _bounce(record, kind_of_record, received_at or dt.datetime.now(dt.UTC))
    elif kind_of_record == "SubscriptionChange":
        parsed = _subscription_change(record)
    elif kind_of_record == "Delivery":
        parsed = _delivery(record)
    else:
        return []
    if parsed is None:
        return []
    campaign_id, lead_id = auth.campaign_and_lead(record.get("Metadata"))
    return [
        Event(
            provider=PROVIDER,
            kind=parsed.kind,
            occurred_at=parsed.occurred_at,
            email=parsed.email,
            receipt=parsed.receipt,
            provider_message_id=auth.optional_id(record, "MessageID", "record"),
            campaign_id=campaign_id,
            lead_id=lead_id,
            provider_type=parsed.provider_type,
            reason=parsed.reason,
            smtp_status=parsed.smtp_status,
            suppress=parsed.suppress,
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
        events = parse_record(record, dt.datetime.fromtimestamp(self._clock(), dt.UTC))
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
