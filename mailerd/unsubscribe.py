"""RFC 8058 one-click unsubscribe: signed opaque tokens and the two small pages. Pure.

A token is ``base64url(version | account | campaign | lead | ...)`` without padding: a version
byte and three signed 64-bit big-endian ids, then

- version 2 (what :func:`url_builder` makes): the recipient's address, encrypted and
  authenticated with AES-SIV (RFC 5297), the 25 bytes before it as associated data: a 16-byte
  synthetic IV, then as many bytes as the address has in UTF-8 (at most
  :data:`MAX_ADDRESS_BYTES`). The unsubscribe must hold when the lead is gone by then (deleted,
  or erased) or has another address: the address is what is suppressed (beside the lead's
  address now), and only the token still has it. An erased
  person's address is then suppressed as the erasure keeps it, a keyed hash
  (:func:`mailerd.events.record`), never stored again.
- version 1 (a longer address; links in emails sent before version 2): the first 16 bytes of
  HMAC-SHA256 over the 25 bytes, no address.

Both are keyed with ``[unsubscribe] secret`` (the AES-SIV key is derived from it). No address
travels in clear, and a token can only be made by whoever holds the key. Only the canonical
base64url spelling is accepted, so one token has exactly one textual form.

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
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from mailerd.models import Campaign, Lead

VERSION: Final = 1  # ids and a MAC
ADDRESS_VERSION: Final = 2  # ids and the address, sealed
MAC_BYTES: Final = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 section 5 allows it)
SIV_BYTES: Final = 16  # AES-SIV's synthetic IV, its authentication tag
MAX_ADDRESS_BYTES: Final = 254  # an address's most (RFC 5321 counts octets): a token of 394 chars
_IDS: Final = struct.Struct(">Bqqq")
TOKEN_BYTES: Final = _IDS.size + MAC_BYTES
TOKEN_CHARS: Final = (TOKEN_BYTES * 8 + 5) // 6
MAX_TOKEN_CHARS: Final = ((_IDS.size + SIV_BYTES + MAX_ADDRESS_BYTES) * 8 + 5) // 6
ONE_CLICK_FIELD: Final = "List-Unsubscribe"
ONE_CLICK_VALUE: Final = "One-Click"
_ADDRESS_KEY_LABEL: Final = b"mailerd one-click unsubscribe: address key"


class Token(NamedTuple):
    """What a token says: whose unsubscribe, and the address it was sent to (None in a
    version 1 token)."""

    account_id: int
    campaign_id: int
    lead_id: int
    email: str | None


class BadToken(ValueError):
    """A token we did not make: forged, altered, truncated or not base64url at all."""


def _check_secret(secret: bytes) -> None:
    if not secret:
        raise ValueError("the unsubscribe secret must not be empty")


def _address_cipher(secret: bytes) -> AESSIV:
    """AES-256-SIV keyed with 64 bytes derived from the secret (never the secret itself)."""
    return AESSIV(hmac.digest(secret, _ADDRESS_KEY_LABEL, "sha512"))


def _address_bytes(email: str | None) -> bytes | None:
    """The address as a version 2 token carries it; None when it cannot (too long, empty)."""
    if not email:
        return None
    try:
        encoded = email.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return encoded if len(encoded) <= MAX_ADDRESS_BYTES else None


def make_token(
    secret: bytes, account_id: int, campaign_id: int, lead_id: int, email: str | None = None
) -> str:
    """The opaque token for one lead of one campaign: with ``email`` (the address the email goes
    to) version 2 (about 90 URL-safe characters), without it version 1 (55)."""
    _check_secret(secret)
    address = _address_bytes(email)
    if address is None:
        payload = _IDS.pack(VERSION, account_id, campaign_id, lead_id)
        raw = payload + hmac.digest(secret, payload, "sha256")[:MAC_BYTES]
    else:
        payload = _IDS.pack(ADDRESS_VERSION, account_id, campaign_id, lead_id)
        raw = payload + _address_cipher(secret).encrypt(address, [payload])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_token(secret: bytes, token: str) -> Token:
    """What a token we made says (:class:`Token`); else raise :class:`BadToken`."""
    _check_secret(secret)
    if not TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or not token.isascii():
        raise BadToken("malformed token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise BadToken("malformed token") from None
    # The decoder skips stray characters and ignores the spare bits of the last one: insist on
    # the one spelling make_token produces.
    if len(raw) < TOKEN_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        raise BadToken("malformed token")
    payload, sealed = raw[: _IDS.size], raw[_IDS.size :]
    version, account_id, campaign_id, lead_id = _IDS.unpack(payload)
    if version == VERSION and len(sealed) == MAC_BYTES:
        expected = hmac.digest(secret, payload, "sha256")[:MAC_BYTES]
        if not hmac.compare_digest(sealed, expected):
            raise BadToken("bad signature")
        return Token(account_id, campaign_id, lead_id, None)
    if version == ADDRESS_VERSION and len(sealed) > SIV_BYTES:
        try:
            address = _address_cipher(secret).decrypt(sealed, [payload])
        except InvalidTag:
            raise BadToken("bad signature") from None
        return Token(account_id, campaign_id, lead_id, address.decode("utf-8"))
    if version in (VERSION, ADDRESS_VERSION):
        raise BadToken("malformed token")
    raise BadToken(f"unknown token version {version}")


def url_builder(secret: bytes, public_url: str) -> Callable[[Campaign, Lead], str]:
    """``(campaign, lead) -> "{public_url}/u/{token}"``; runs once per email, so kept lean.

    Same tokens as :func:`make_token` with the lead's address, in a few µs: the cipher (and, for
    an address too long to carry, the HMAC) is keyed once.
    """
    _check_secret(secret)
    prefix = public_url.rstrip("/") + "/u/"
    keyed = hmac.new(secret, digestmod=hashlib.sha256)
    seal = _address_cipher(secret).encrypt
    pack, to_base64 = _IDS.pack, binascii.b2a_base64

    def build(campaign: Campaign, lead: Lead) -> str:
        address = _address_bytes(lead.email)
        if address is not None:
            payload = pack(ADDRESS_VERSION, campaign.account_id, campaign.id, lead.id)
            raw = payload + seal(address, [payload])
        else:
            payload = pack(VERSION, campaign.account_id, campaign.id, lead.id)
            mac = keyed.copy()
            mac.update(payload)
            raw = payload + mac.digest()[:MAC_BYTES]
        token = to_base64(raw, newline=False).translate(_URLSAFE)
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
