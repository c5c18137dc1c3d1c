"""Mailgun webhooks as the loopback sink posts them: HMAC-signed with a random signing key.

:mod:`mailerd.providers.mailgun_webhook` verifies them with the same key (written to a file).
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Final

import orjson

from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import webhook_auth as auth
from mailerd.providers.mailgun_webhook import signature_of

BLOCK_MESSAGE: Final = "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"


class MailgunEmulatorSigner:
    """Signs webhook posts as Mailgun does, with a random webhook signing key."""

    def __init__(self, *, clock: auth.Clock = time.time) -> None:
        self.signing_key = secrets.token_hex(16)
        self._clock = clock

    def event_data(self, kind: EventKind, sent: SentEmail, *, block: bool = False) -> dict[str, Any]:
        """One ``event-data`` object as Mailgun writes it for ``kind``; ``block``: a permanent
        failure whose delivery status is a 5.7.1 block-list refusal."""
        email, campaign_id, lead_id, message_id, occurred_at = sent
        data: dict[str, Any] = {
            "id": secrets.token_urlsafe(16),
            "timestamp": occurred_at.timestamp(),
            "log-level": "info",
            "recipient": email,
            "recipient-domain": email.rpartition("@")[2],
            "tags": [],
            "user-variables": {"mailerd_campaign": str(campaign_id), "mailerd_lead": str(lead_id)},
            "message": {"headers": {"message-id": message_id, "to": email}},
        }
        if block:
            data.update(
                event="failed",
                severity="permanent",
                reason="bounce",
                **{"log-level": "error"},
                **{
                    "delivery-status": {
                        "code": 554,
                        "message": BLOCK_MESSAGE,
                        "description": "",
                        "attempt-no": 1,
                    }
                },
            )
        elif kind is EventKind.DELIVERED:
            data.update(
                event="delivered",
                **{"delivery-status": {"code": 250, "message": "OK", "description": ""}},
            )
        elif kind in (EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE):
            # A soft bounce is Mailgun giving up after 8 hours of temporary failures (reason
            # "old"): its temporary failure of each attempt is no event (mailgun_webhook.py).
            hard = kind is EventKind.HARD_BOUNCE
            data.update(
                event="failed",
                severity="permanent",
                reason="bounce" if hard else "old",
                **{"log-level": "error"},
                **{
                    "delivery-status": {
                        "code": 550 if hard else 452,
                        "message": "5.1.1 The email account that you tried to reach does not exist"
                        if hard
                        else "4.2.2 The email account that you tried to reach is over quota",
                        "description": "",
                        "attempt-no": 1 if hard else 7,
                    }
                },
            )
        elif kind is EventKind.COMPLAINT:
            data.update(event="complained", **{"log-level": "warn"})
        else:
            data.update(event="unsubscribed")
        return data

    def request(
        self, kind: EventKind, sent: SentEmail, *, block: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of one signed POST."""
        data = self.event_data(kind, sent, block=block)
        return self.signed(data)

    def signed(self, data: dict[str, Any], *, token: str | None = None) -> tuple[dict[str, str], bytes]:
        """Headers and body of one POST of ``data`` with a fresh (or the given) token."""
        timestamp = str(int(self._clock()))
        token = token or secrets.token_hex(25)
        body = {
            "signature": {
                "timestamp": timestamp,
                "token": token,
                "signature": signature_of(self.signing_key, timestamp, token),
            },
            "event-data": data,
        }
        return {"Content-Type": "application/json"}, orjson.dumps(body)

    def daemon_settings(self, work_dir: Path) -> dict[str, Any]:
        """The ``[webhooks.mailgun]`` values that verify this signer: the key goes in a file."""
        path = Path(work_dir) / "mailgun-signing-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(self.signing_key + "\n")
        return {"signing_key_file": str(path)}
