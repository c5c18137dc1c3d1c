"""RFC 8058 one-click unsubscribe: signed opaque tokens and the two small pages. Pure.

A token is ``base64url(version | account | campaign | lead | mac)`` without padding: a version
byte, three signed 64-bit big-endian ids, and the first 16 bytes of HMAC-SHA256 over what
precedes it, keyed with ``[unsubscribe] secret``. No address travels in clear, and a token can
only be made by whoever holds the key. Only the canonical base64url spelling is accepted, so
one token has exactly one textual form.

Rotating the secret invalidates the links in emails already sent; keep it stable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import struct
from collections.abc import Callable
from typing import Final

from mailerd.models import Campaign, Lead

VERSION: Final = 1
MAC_BYTES: Final = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 section 5 allows it)
_IDS: Final = struct.Struct(">Bqqq")
TOKEN_BYTES: Final = _IDS.size + MAC_BYTES
TOKEN_CHARS: Final = (TOKEN_BYTES * 8 + 5) // 6
ONE_CLICK_FIELD: Final = "List-Unsubscribe"
ONE_CLICK_VALUE: Final = "One-Click"


class BadToken(ValueError):
    """A token we did not make: forged, altered, truncated or not base64url at all."""


def _check_secret(secret: bytes) -> None:
    if not secret:
        raise ValueError("the unsubscribe secret must not be empty")


def make_token(secret: bytes, account_id: int, campaign_id: int, lead_id: int) -> str:
    """The opaque token for one lead of one campaign (about 55 URL-safe characters)."""
    _check_secret(secret)
    payload = _IDS.pack(VERSION, account_id, campaign_id, lead_id)
    mac = hmac.digest(secret, payload, "sha256")[:MAC_BYTES]
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")


def read_token(secret: bytes, token: str) -> tuple[int, int, int]:
    """``(account_id, campaign_id, lead_id)`` of a token we made; else raise :class:`BadToken`."""
    _check_secret(secret)
    if len(token) != TOKEN_CHARS or not token.isascii():
        raise BadToken("malformed token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("malformed token") from None
    # The decoder skips stray characters and ignores the spare bits of the last one: insist on
    # the one spelling make_token produces.
    if len(raw) != TOKEN_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        raise BadToken("malformed token")
    payload, mac = raw[: _IDS.size], raw[_IDS.size :]
    expected = hmac.digest(secret, payload, "sha256")[:MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        raise BadToken("bad signature")
    version, account_id, campaign_id, lead_id = _IDS.unpack(payload)
    if version != VERSION:
        raise BadToken(f"unknown token version {version}")
    return account_id, campaign_id, lead_id


def url_builder(secret: bytes, public_url: str) -> Callable[[Campaign, Lead], str]:
    """``(campaign, lead) -> "{public_url}/u/{token}"``; runs once per email, so kept lean.

    Same tokens as :func:`make_token`, in a few µs: the HMAC is keyed once and its state
    copied per call (``hmac.digest`` re-keys every time).
    """
    _check_secret(secret)
    prefix = public_url.rstrip("/") + "/u/"
    keyed = hmac.new(secret, digestmod=hashlib.sha256)
    pack, to_base64 = _IDS.pack, binascii.b2a_base64

    def build(campaign: Campaign, lead: Lead) -> str:
        payload = pack(VERSION, campaign.account_id, campaign.id, lead.id)
        mac = keyed.copy()
        mac.update(payload)
        token = to_base64(payload + mac.digest()[:MAC_BYTES], newline=False).translate(_URLSAFE)
        return prefix + token.rstrip(b"=").decode("ascii")

    return build


_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


def is_one_click(fields: dict[str, str]) -> bool:
    """True when a POSTed form carries ``List-Unsubscribe=One-Click`` (RFC 8058 section 3.1)."""
    return fields.get(ONE_CLICK_FIELD, "").strip() == ONE_CLICK_VALUE


_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def confirm_page() -> str:
    """GET: a button that POSTs ``List-Unsubscribe=One-Click`` back to the page's own URL.

    The form has no ``action``: it posts to the URL the page was loaded from, whatever proxy
    path or host that was. Showing the page changes nothing (mail scanners prefetch links).
    """
    return _page(
        "Unsubscribe",
        "<h1>Unsubscribe</h1><p>Stop receiving these emails?</p>"
        '<form method="post">'
        f'<input type="hidden" name="{ONE_CLICK_FIELD}" value="{ONE_CLICK_VALUE}">'
        '<button type="submit">Unsubscribe</button></form>',
    )


def done_page() -> str:
    """POST answered: the address is off the list (the same text on every repeat)."""
    return _page(
        "Unsubscribed",
        "<h1>You are unsubscribed</h1><p>You will not receive these emails any more.</p>",
    )


def invalid_page() -> str:
    """A token we did not make (400)."""
    return _page(
        "Invalid link",
        "<h1>This link is not valid</h1><p>Please use the unsubscribe link from the email itself.</p>",
    )


def not_one_click_page() -> str:
    """A POST without ``List-Unsubscribe=One-Click`` in its form body (400)."""
    return _page(
        "Unsubscribe",
        "<h1>Nothing changed</h1><p>Use the button on the unsubscribe page to confirm.</p>",
    )
