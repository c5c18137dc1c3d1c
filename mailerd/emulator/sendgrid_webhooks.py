"""SendGrid's Signed Event Webhook as the loopback sink posts it: events signed with ECDSA P-256.

The key is generated here; :mod:`mailerd.providers.sendgrid_webhook` verifies with its public half.
"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import webhook_auth as auth
from mailerd.providers.sendgrid_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER

BLOCK_REASON: Final = (
    "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
    "service provider since part of their network is on our block list (S3140). You can also refer "
    "your provider to http://mail.live.com/mail/troubleshooting.aspx#errors."
)


class SendgridEmulatorSigner:
    """Signs Event Webhook posts as SendGrid does, with a P-256 key generated here."""

    def __init__(self, *, clock: auth.Clock = time.time) -> None:
        self._private_key = ec.generate_private_key(ec.SECP256R1())
        self._clock = clock

    @property
    def public_key(self) -> str:
        """The base64 DER verification key (what SendGrid's settings page shows)."""
        der = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        signature = self._private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def event(self, kind: EventKind, sent: SentEmail, *, block: bool = False) -> dict[str, Any]:
        """One event object as SendGrid writes it for ``kind``; ``block``: a ``bounce`` event of
        type ``blocked`` (Outlook refusing the sending IP)."""
        email, campaign_id, lead_id, message_id, occurred_at = sent
        item: dict[str, Any] = {
            "email": email,
            "timestamp": int(occurred_at.timestamp()),
            "smtp-id": f"<{message_id}@mailerd.sink>",
            "sg_event_id": secrets.token_urlsafe(16),
            "sg_message_id": f"{message_id}.filterdrecv-mailerd-sink-1-0",
            "mailerd_campaign": str(campaign_id),
            "mailerd_lead": str(lead_id),
        }
        if block:
            item.update(event="bounce", type="blocked", status="5.7.1", reason=BLOCK_REASON)
        elif kind is EventKind.DELIVERED:
            item.update(event="delivered", response="250 2.0.0 OK")
        elif kind is EventKind.HARD_BOUNCE:
            item.update(
                event="bounce",
                type="bounce",
                status="5.1.1",
                reason="550 5.1.1 The email account that you tried to reach does not exist.",
            )
        elif kind is EventKind.SOFT_BOUNCE:
            item.update(
                event="bounce",
                type="blocked",
                status="4.2.2",
                reason="452 4.2.2 The email account that you tried to reach is over quota.",
            )
        elif kind is EventKind.COMPLAINT:
            item.update(event="spamreport")
        else:
            item.update(event="unsubscribe")
        return item

    def request(
        self, kind: EventKind, sent: SentEmail, *, block: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of one signed POST carrying one event."""
        item = self.event(kind, sent, block=block)
        return self.signed([item])

    def signed(self, items: list[dict[str, Any]]) -> tuple[dict[str, str], bytes]:
        """Headers and body of one signed POST carrying ``items`` (SendGrid batches events)."""
        body = orjson.dumps(items) + b"\r\n"
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: self.sign(body, timestamp),
            TIMESTAMP_HEADER: timestamp,
        }
        return headers, body

    def daemon_settings(self, work_dir: Path) -> dict[str, Any]:
        """The ``[webhooks.sendgrid]`` values that verify this signer's requests."""
        return {"public_key": self.public_key}
