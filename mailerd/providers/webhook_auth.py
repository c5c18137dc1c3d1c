"""Pieces the webhook handlers share: freshness, constant-time compares, replay memory, bounded parsing.

Pure: no I/O. Status codes are the same for every provider (SendGrid, Mailgun, Postmark):

- 400: the body is not what the provider sends (not JSON, wrong shape, a field missing or of the
  wrong type, an address or id beyond its limit: :func:`address`, :func:`bounded_id`); the
  message names the field, and so does :attr:`WebhookError.field`.
- 401: the request could not be authenticated as coming from the provider: credentials or signature
  missing, malformed or wrong, a timestamp outside the freshness window, a replayed token.
- 403: authentication cannot succeed whatever the request says: the source address is not on the
  allow-list, or the daemon has no verification key configured for this provider.
"""

from __future__ import annotations

import collections
import datetime as dt
import hmac
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson

from mailerd import decoding
from mailerd.providers import webhooks
from mailerd.providers.webhooks import WebhookError

Clock = Callable[[], float]


CAMPAIGN_KEY: Final = "mailerd_campaign"
LEAD_KEY: Final = "mailerd_lead"
# An RFC 3463 enhanced status code ("5.1.1") inside a diagnostic text.
_ENHANCED_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
# One address, the way a provider writes a recipient (RFC 5321 / 6531 mailbox, UTF-8 allowed):
# never a list, a display name, angle brackets, white space or control characters.
_NOT_ATOM = r"\s\x00-\x1f\x7f-\x9f\"(),:;<>@\[\\\]"
_LOCAL_ATOM = re.compile(rf"[^{_NOT_ATOM}]+")
_LOCAL_QUOTED = re.compile(r'"(?:[^"\\\x00-\x1f\x7f-\x9f]|\\[^\x00-\x1f\x7f-\x9f])*"')
_DOMAIN = re.compile(rf"(?:[^{_NOT_ATOM}.]{{1,63}}\.)*[^{_NOT_ATOM}.]{{1,63}}")
_ADDRESS_LITERAL = re.compile(r"\[[^\s\x00-\x1f\x7f-\x9f\[\]\\]+\]")
MAX_LOCAL_BYTES: Final = 64


def unauthorized(code: str, message: str) -> WebhookError:
    return WebhookError(401, code, message)


def bad_request(code: str, message: str, field: str | None = None) -> WebhookError:
    return WebhookError(400, code, message, field)


def forbidden(code: str, message: str) -> WebhookError:
    return WebhookError(403, code, message)


def equal(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality (for signatures and passwords); text is compared as UTF-8."""
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def unix_time(value: Any, field: str) -> float:
    """A Unix timestamp given as a number or decimal text, else a 401 (it is a credential)."""
    if isinstance(value, bool):
        raise unauthorized("invalid_timestamp", f"{field}: not a Unix timestamp")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        text = value.strip().lstrip("0")
        seconds = float(text or "0") if len(text) <= _TIME_DIGITS else math.inf
    else:
        raise unauthorized("invalid_timestamp", f"{field}: not a Unix timestamp")
    if not abs(seconds) < _MAX_UNIX_TIME:  # inf, nan: 400 nines read as a float
        raise unauthorized("invalid_timestamp", f"{field}: not a Unix timestamp within the years 1-9999")
    return seconds


_TIME_DIGITS = 20
_MAX_UNIX_TIME = 253_402_300_800.0  # 10000-01-01T00:00:00Z


def check_fresh(timestamp: float, now: float, max_age_s: float, field: str) -> None:
    """Refuse (401) a signed timestamp more than ``max_age_s`` from now, either way; 0 = no limit."""
    if max_age_s > 0 and abs(now - timestamp) > max_age_s:
        raise unauthorized(
            "stale_timestamp", f"{field}: {int(now - timestamp)} s from now, window is {max_age_s:g} s"
        )


class ReplayGuard:
    """Remembers recently seen one-time tokens (bounded), each with a digest of what it signed.

    A token seen again with a different digest is a replay (the caller refuses it). The same token
    with the same digest is the same request delivered again (a provider's retry of a post not
    answered 2xx carries the original token): it is let through, and the event-id
    de-duplication in the database records it once.
    Memory is per process: a multi-node deployment relies on that database de-duplication too.
    """

    def __init__(self, window_s: float, capacity: int = 100_000) -> None:
        self._window_s = window_s
        self._capacity = capacity
        self._seen: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, token: str, digest: bytes, now: float) -> bool:
        """True if the token is new (or a byte-identical repeat); remembers it. False: a replay."""
        self._expire(now)
        seen = self._seen.get(token)
        if seen is not None:
            return hmac.compare_digest(seen[1], digest)
        self._seen[token] = (now, digest)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        if self._window_s <= 0:
            return
        horizon = now - self._window_s
        while self._seen:
            token, (seen_at, _) = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[token]


# --- body parsing -------------------------------------------------------------------------------


def json_body(body: bytes) -> Any:
    """The decoded JSON body, or a 400."""
    if not body:
        raise bad_request("empty_body", "the request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"the body is not JSON: {exc}") from None


def need_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request("invalid_body", f"{field}: expected an object", field)
    return value


def need_text(data: Mapping[str, Any], key: str, field: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        what = "missing" if value is None else "expected a non-empty string"
        raise bad_request("invalid_body", f"{field}.{key}: {what}", f"{field}.{key}")
    return value


def optional_text(data: Mapping[str, Any], key: str) -> str | None:
    """Text or a number as text; None when absent, null or empty; 400 for another JSON type (a
    list or an object where a provider sends text is not a body it sends)."""
    value = data.get(key)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if value is None or value == "":
        return None
    raise bad_request("invalid_body", f"{key}: expected text, got {decoding.json_type(value)}", key)


def optional_flag(data: Mapping[str, Any], key: str, field: str) -> bool:
    """A JSON boolean, false when absent or null; 400 for another type (``"true"`` is not true)."""
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise bad_request(
        "invalid_body", f"{field}.{key}: expected true or false, got {decoding.json_type(value)}", key
    )


def bounded_id(value: str, field: str) -> str:
    """A provider's id as given, or a 400 naming ``field`` when it is above 255 bytes."""
    size = webhooks.utf8_size(value)
    if size > webhooks.MAX_ID_BYTES:
        raise bad_request(
            "too_long", f"{field}: {size} bytes, an id may have at most {webhooks.MAX_ID_BYTES}", field
        )
    return value


def need_id(data: Mapping[str, Any], key: str, field: str) -> str:
    """A required id (event id, record id): non-empty text of at most 255 bytes."""
    return bounded_id(need_text(data, key, field), f"{field}.{key}")


def optional_id(data: Mapping[str, Any], key: str, field: str) -> str | None:
    """An optional id (text or a number, as :func:`optional_text`), at most 255 bytes."""
    value = optional_text(data, key)
    return None if value is None else bounded_id(value, f"{field}.{key}")


def is_address(text: str) -> bool:
    """Whether ``text`` (trimmed) is one mailbox ``local@domain``: see ``_LOCAL_ATOM`` and co."""
    if text.startswith('"'):
        quoted = _LOCAL_QUOTED.match(text)
        if quoted is None or text[quoted.end() : quoted.end() + 1] != "@":
            return False
        local, domain = text[: quoted.end()], text[quoted.end() + 1 :]
    else:
        local, at, domain = text.partition("@")
        if not at or _LOCAL_ATOM.fullmatch(local) is None:
            return False
    if webhooks.utf8_size(local) > MAX_LOCAL_BYTES:
        return False
    return _DOMAIN.fullmatch(domain) is not None or _ADDRESS_LITERAL.fullmatch(domain) is not None


def address(value: Any, field: str) -> str:
    """One email address of at most 254 bytes, trimmed; else a 400 naming ``field``. Not
    lower-cased: the database does that (:func:`mailerd.events.resolve`), as it does for the leads
    it is matched with; Python's ``str.lower`` differs from it. A receipt takes
    :func:`receipt_address` instead."""
    if not isinstance(value, str) or not value.strip():
        what = "missing" if value is None else "not an email address"
        raise bad_request("invalid_body", f"{field}: {what}", field)
    text = value.strip()
    size = webhooks.utf8_size(text)
    if size > webhooks.MAX_ADDRESS_BYTES:
        raise bad_request(
            "too_long",
            f"{field}: {size} bytes, an address has at most {webhooks.MAX_ADDRESS_BYTES} bytes (RFC 5321)",
            field,
        )
    if not is_address(text):
        raise bad_request("invalid_body", f"{field}: not one email address", field)
    return text


def receipt_address(address: str) -> str:
    """The address as a receipt spells it: lower-cased by Python, as receipts were before
    addresses were left to the database, so that an event delivered again is still known."""
    return address.lower()


def need_address(data: Mapping[str, Any], key: str, field: str) -> str:
    """``data[key]`` as one email address (see :func:`address`); the field is ``field.key``."""
    return address(data.get(key), f"{field}.{key}")


def event_time(value: Any, field: str) -> dt.datetime:
    """A Unix timestamp (number) or ISO 8601 text as an aware UTC datetime, else a 400."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(float(value), dt.UTC)
        except (OverflowError, OSError, ValueError):
            pass
    elif isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            try:
                return parsed.astimezone(dt.UTC)
            except OverflowError:
                pass
    raise bad_request("invalid_body", f"{field}: not a timestamp", field)


def metadata_id(value: Any) -> int | None:
    """One of our ids from provider metadata ("12", 12, ["12"]); None when absent or unusable."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 2**63 else None
    if isinstance(value, str):
        return decoding.whole_number(value.strip()) or None  # 0 is no id
    return None


def campaign_and_lead(metadata: Any) -> tuple[int | None, int | None]:
    """``(campaign_id, lead_id)`` from a metadata mapping; both or neither."""
    if not isinstance(metadata, Mapping):
        return None, None
    campaign_id = metadata_id(metadata.get(CAMPAIGN_KEY))
    lead_id = metadata_id(metadata.get(LEAD_KEY))
    if campaign_id is None or lead_id is None:
        return None, None
    return campaign_id, lead_id


def enhanced_status(*texts: str | None) -> str | None:
    """The first RFC 3463 status code ("5.1.1") found in the given diagnostic texts."""
    for text in texts:
        if text:
            found = _ENHANCED_STATUS.search(text)
            if found:
                return found.group(1)
    return None


def clip(text: str | None, limit: int = webhooks.TEXT_LIMITS["reason"]) -> str | None:
    """Diagnostic text trimmed for storage (bounce dumps can be large): at most ``limit`` bytes."""
    if text is None:
        return None
    text = text.strip()
    return webhooks.clip_bytes(text, limit) if text else None
