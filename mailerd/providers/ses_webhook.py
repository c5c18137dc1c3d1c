"""SES events through SNS: ``POST /webhooks/ses`` (the sending client is :mod:`.ses`).

The SNS envelope is checked by :mod:`mailerd.providers.sns`; here its Message, an SES identity
notification (``notificationType``) or event-publishing record (``eventType``), becomes one
Event per recipient:

- Bounce: ``bounceType`` Permanent -> hard_bounce; Transient -> soft_bounce; Undetermined ->
  soft_bounce too (SES could not tell, so the soft-bounce limit decides, not one message).
  provider_type "bounceType/bounceSubType", reason ``diagnosticCode``, smtp_status ``status``.
- Complaint -> complaint (provider_type ``complaintFeedbackType``, else ``complaintSubType``).
- Delivery -> delivered, for each of ``delivery.recipients`` (reason: the ``smtpResponse``).
- Subscription (SES list management) -> unsubscribe for each ``mail.destination`` when the new
  preferences say ``unsubscribeAll`` or opt out of any topic; an opt-in is ignored.
- Send, Reject, Open, Click, Rendering Failure, DeliveryDelay and unknown types are logged and
  ignored (none is an event mailerd stores; a delay is followed by a delivery or a bounce).

occurred_at is the bounce/complaint/delivery timestamp (else mail.timestamp, else the SNS
Timestamp); campaign and lead come from the ``mailerd_campaign``/``mailerd_lead`` mail.tags when
both are present (identity notifications carry no tags: then the message id or the address
maps the event); the receipt is the SNS MessageId + ":" + the recipient.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import orjson
import structlog

from mailerd.config import SesWebhookConfig
from mailerd.models import Event, EventKind
from mailerd.providers import sns, webhook_auth
from mailerd.providers.webhooks import WebhookRequest

log = structlog.get_logger(__name__)

SES_EVENT_TYPES: Final = frozenset({"Bounce", "Complaint", "Delivery", "Subscription"})


def parse_ses_message(
    message: Mapping[str, Any], sns_message_id: str, sns_timestamp: dt.datetime
) -> list[Event]:
    """Events of one SES notification or event record (see the section comment); 400 if malformed."""
    event_type = message.get("eventType", message.get("notificationType"))
    if not isinstance(event_type, str) or event_type not in SES_EVENT_TYPES:  # a list is unhashable
        log.info("ses_event_ignored", event_type=str(event_type)[:40], sns_message_id=sns_message_id)
        return []
    mail = webhook_auth.need_object(message.get("mail"), "Message.mail")
    message_id = webhook_auth.optional_id(mail, "messageId", "Message.mail")
    campaign_id, lead_id = webhook_auth.campaign_and_lead(mail.get("tags"))
    fallback = (
        webhook_auth.event_time(mail["timestamp"], "Message.mail.timestamp")
        if mail.get("timestamp")
        else sns_timestamp
    )

    def event(
        kind: EventKind,
        email: str,
        occurred_at: dt.datetime,
        *,
        provider_type: str | None = None,
        reason: str | None = None,
        smtp_status: str | None = None,
    ) -> Event:
        return Event(
            provider="ses",
            kind=kind,
            occurred_at=occurred_at,
            email=email,
            receipt=f"{sns_message_id}:{webhook_auth.receipt_address(email)}",
            provider_message_id=message_id,
            campaign_id=campaign_id,
            lead_id=lead_id,
            provider_type=provider_type,
            reason=reason,
            smtp_status=smtp_status,
        )

    if event_type == "Bounce":
        bounce = webhook_auth.need_object(message.get("bounce"), "Message.bounce")
        bounce_type = webhook_auth.need_text(bounce, "bounceType", "Message.bounce")
        sub_type = webhook_auth.optional_text(bounce, "bounceSubType")
        kind = EventKind.HARD_BOUNCE if bounce_type == "Permanent" else EventKind.SOFT_BOUNCE
        when = _event_time(bounce, "Message.bounce", fallback)
        events = []
        for index, item in enumerate(_recipients(bounce, "bouncedRecipients", "Message.bounce")):
            field = f"Message.bounce.bouncedRecipients[{index}]"
            recipient = webhook_auth.need_object(item, field)
            reason = webhook_auth.clip(webhook_auth.optional_text(recipient, "diagnosticCode"))
            events.append(
                event(
                    kind,
                    webhook_auth.need_address(recipient, "emailAddress", field),
                    when,
                    provider_type=f"{bounce_type}/{sub_type}" if sub_type else bounce_type,
                    reason=reason,
                    smtp_status=webhook_auth.optional_text(recipient, "status")
                    or webhook_auth.enhanced_status(reason),
                )
            )
        return events
    if event_type == "Complaint":
        complaint = webhook_auth.need_object(message.get("complaint"), "Message.complaint")
        when = _event_time(complaint, "Message.complaint", fallback)
        feedback = webhook_auth.optional_text(complaint, "complaintFeedbackType")
        if feedback is not None and feedback.strip().lower() == "not-spam":
            # RFC 5965: the reporter does not consider the message spam. No complaint: it
            # neither suppresses nor counts toward a guard's complaint rate.
            log.info("ses_complaint_ignored", sns_message_id=sns_message_id, reason="not-spam")
            return []
        sub_type = webhook_auth.optional_text(complaint, "complaintSubType")
        # OnAccountSuppressionList: SES never sent it (bounces.never_sent); that wins over a type
        feedback = sub_type if sub_type == "OnAccountSuppressionList" else feedback or sub_type
        items = _recipients(complaint, "complainedRecipients", "Message.complaint")
        return [
            event(
                EventKind.COMPLAINT,
                webhook_auth.need_address(
                    webhook_auth.need_object(item, f"Message.complaint.complainedRecipients[{index}]"),
                    "emailAddress",
                    f"Message.complaint.complainedRecipients[{index}]",
                ),
                when,
                provider_type=feedback,
            )
            for index, item in enumerate(items)
        ]
    if event_type == "Delivery":
        delivery = webhook_auth.need_object(message.get("delivery"), "Message.delivery")
        when = _event_time(delivery, "Message.delivery", fallback)
        response = webhook_auth.clip(webhook_auth.optional_text(delivery, "smtpResponse"))
        return [
            event(
                EventKind.DELIVERED,
                webhook_auth.address(item, f"Message.delivery.recipients[{index}]"),
                when,
                reason=response,
                smtp_status=webhook_auth.enhanced_status(response),
            )
            for index, item in enumerate(_recipients(delivery, "recipients", "Message.delivery"))
        ]
    subscription = webhook_auth.need_object(message.get("subscription"), "Message.subscription")
    preferences = subscription.get("newTopicPreferences")
    if not _opted_out(preferences):
        log.info("ses_subscription_ignored", sns_message_id=sns_message_id, reason="no opt-out")
        return []
    when = _event_time(subscription, "Message.subscription", fallback)
    contact_list = webhook_auth.optional_text(subscription, "contactList")
    return [
        event(
            EventKind.UNSUBSCRIBE,
            webhook_auth.address(item, f"Message.mail.destination[{index}]"),
            when,
            provider_type="Subscription",
            reason=f"contact list {contact_list}" if contact_list else None,
        )
        for index, item in enumerate(_recipients(mail, "destination", "Message.mail"))
    ]


def _event_time(part: Mapping[str, Any], field: str, fallback: dt.datetime) -> dt.datetime:
    value = part.get("timestamp")
    return webhook_auth.event_time(value, f"{field}.timestamp") if value else fallback


def _recipients(part: Mapping[str, Any], key: str, field: str) -> list[Any]:
    value = part.get(key)
    if not isinstance(value, list) or not value:
        what = "missing" if value is None else "expected a non-empty list"
        raise webhook_auth.bad_request("invalid_body", f"{field}.{key}: {what}", f"{field}.{key}")
    return value


def _opted_out(preferences: Any) -> bool:
    if not isinstance(preferences, Mapping):
        return False
    if preferences.get("unsubscribeAll") is True:
        return True
    topics = preferences.get("topicSubscriptionStatus")
    return isinstance(topics, list) and any(
        isinstance(t, Mapping) and t.get("subscriptionStatus") == "OptOut" for t in topics
    )


class SnsWebhook:
    """``POST /webhooks/ses``: SES notifications delivered by SNS, verified by :mod:`sns`.

    ``fetch`` (GET an https SNS URL) and ``clock`` are injectable for tests; by default
    certificates and subscription confirmations go over verified TLS.
    """

    provider = "ses"

    def __init__(
        self,
        config: SesWebhookConfig,
        *,
        fetch: sns.Fetch | None = None,
        clock: sns.Clock | None = None,
    ) -> None:
        self._sns = sns.SnsReceiver(config, fetch=fetch, clock=clock)

    async def parse(self, request: WebhookRequest) -> list[Event]:
        envelope = await self._sns.receive(request)
        if envelope is None:
            return []
        try:
            message = orjson.loads(envelope.message)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or not ("eventType" in message or "notificationType" in message):
            # Verified, but not SES: answered 2xx so SNS does not retry it forever.
            log.info(
                "sns_notification_ignored",
                topic_arn=envelope.topic_arn,
                sns_message_id=envelope.message_id,
                reason="not an SES event",
            )
            return []
        return parse_ses_message(message, envelope.message_id, envelope.timestamp)

    async def close(self) -> None:
        await self._sns.close()
