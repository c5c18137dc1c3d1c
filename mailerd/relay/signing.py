"""Standard Webhooks signatures (https://www.standardwebhooks.com): the headers of one request.

Pure. ``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
where the key is the base64 part of the ``whsec_...`` secret. Receivers verify with any Standard
Webhooks library (``standardwebhooks`` in Python) and the same secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional)."""
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent at ``timestamp`` (Unix seconds)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def message_id(record_ids: list[str], resend: str = "") -> str:
    """The same id for the same records, on every retry of one request (receivers may drop a
    request whose id they already processed; records still carry their own ids). A ``resend``
    tag (one per operator replay) gives the same records new ids: a replay is a new message, and
    a receiver de-duplicating on ``webhook-id`` as the specification recommends dropped it."""
    digest = hashlib.sha256("\n".join([resend, *record_ids] if resend else record_ids).encode()).hexdigest()
    return f"msg_{digest[:32]}"
