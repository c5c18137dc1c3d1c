"""Postmark webhooks as the loopback sink posts them: one record per post, basic auth.

:mod:`mailerd.providers.postmark_webhook` checks the same credentials (the password written to a file).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import random
import secrets
from pathlib import Path
from typing import Any, Final

import orjson

from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind

BLOCK_DETAILS: Final = (
    "smtp;553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in "
    "Spamhaus's list; see https://postmaster.yahooinc.com/error-codes"
)


class PostmarkEmulatorSigner:
    """Posts webhooks as Postmark does: one record per post, basic auth with random credentials."""

    def __init__(self) -> None:
        self.username = "mailerd-sink"
        self.password = secrets.token_urlsafe(24)
        self._next_id = random.SystemRandom().randrange(10**9, 10**12)

    def record(self, kind: EventKind, sent: SentEmail, *, block: bool = False) -> dict[str, Any]:
        """One record as Postmark writes it for ``kind``; ``block``: a ``Bounce`` record of
        ``Type: Blocked`` (an ISP block, which leaves the address active)."""
        email, campaign_id, lead_id, message_id, occurred_at = sent
        at = occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        metadata = {"mailerd_campaign": str(campaign_id), "mailerd_lead": str(lead_id)}
        common: dict[str, Any] = {
            "MessageID": message_id,
            "ServerID": 1,
            "MessageStream": "broadcast",
            "Tag": f"campaign-{campaign_id}",
            "Metadata": metadata,
        }
        if kind is EventKind.DELIVERED and not block:
            return {
                "RecordType": "Delivery",
                **common,
                "Recipient": email,
                "DeliveredAt": at,
                "Details": "smtp;250 2.0.0 OK",
            }
        if kind is EventKind.UNSUBSCRIBE and not block:
            return {
                "RecordType": "SubscriptionChange",
                **common,
                "ChangedAt": at,
                "Recipient": email,
                "Origin": "Recipient",
                "SuppressSending": True,
                "SuppressionReason": "Unsubscribe",
            }
        self._next_id += 1
        bounce = {
            "ID": self._next_id,
            **common,
            "Email": email,
            "From": "sender@mailerd.sink",
            "BouncedAt": at,
            "DumpAvailable": False,
            "Subject": "",
        }
        if block:
            return {
                "RecordType": "Bounce",
                **bounce,
                "Type": "Blocked",
                "TypeCode": 100000,
                "Name": "ISP block",
                "Description": "The ISP has blocked this email. This may be due to your sending IP "
                "address or domain, or to the content of the message.",
                "Details": BLOCK_DETAILS,
                "Inactive": False,
                "CanActivate": True,
            }
        if kind is EventKind.COMPLAINT:
            return {
                "RecordType": "SpamComplaint",
                **bounce,
                "Type": "SpamComplaint",
                "TypeCode": 512,
                "Name": "Spam complaint",
                "Description": "The subscriber explicitly marked this message as spam.",
                "Details": "Test spam complaint details",
                "Inactive": True,
                "CanActivate": False,
            }
        hard = kind is EventKind.HARD_BOUNCE
        return {
            "RecordType": "Bounce",
            **bounce,
            "Type": "HardBounce" if hard else "SoftBounce",
            "TypeCode": 1 if hard else 4096,
            "Name": "Hard bounce" if hard else "Soft bounce/Undeliverable",
            "Description": "The server was unable to deliver your message (ex: unknown user, "
            "mailbox not found)."
            if hard
            else "Unable to temporarily deliver this email.",
            "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist"
            if hard
            else "smtp;452 4.2.2 The email account that you tried to reach is over quota",
            "Inactive": hard,
            "CanActivate": True,
        }

    def request(
        self, kind: EventKind, sent: SentEmail, *, block: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of one authenticated POST."""
        record = self.record(kind, sent, block=block)
        return self.headers(), orjson.dumps(record)

    def headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Content-Type": "application/json", "Authorization": f"Basic {token}"}

    def daemon_settings(self, work_dir: Path) -> dict[str, Any]:
        """The ``[webhooks.postmark]`` values that accept this signer: the password in a file."""
        path = Path(work_dir) / "postmark-webhook-password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(self.password + "\n")
        return {"username": self.username, "password_file": str(path)}
