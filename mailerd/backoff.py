"""Retry delays: exponential backoff with full jitter, doubling without it, and the HTTP
``Retry-After`` header.

Pure: no clock is read unless the caller leaves ``now`` out, and randomness is injectable.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import re

_RNG = random.Random()
# ASCII digits only (``\d`` took "٣" for 3); as many as sent: a longer one than a float holds
# is still "a very long time" (the callers cap it), not "no Retry-After".
_DELTA_SECONDS = re.compile(r"[0-9]+(\.[0-9]{1,6})?")
_LONGEST_S = 1e12  # about 31,700 years: any delta-seconds above it reads as this
# Doubling stops mattering long before this; it keeps 2**attempt from overflowing a float.
_MAX_EXPONENT = 64


def delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Full jitter (AWS style): uniform over ``[0, min(cap, base * 2**attempt)]``, so clients that
    failed together spread out. A server's ``retry_after`` is a floor, not a hint: the result is
    at least ``retry_after`` plus a small jitter (up to ``max(base, retry_after / 10)``) so that
    the clients it throttled do not all come back in the same instant. ``retry_after`` is not
    capped by ``cap``; the caller decides whether a wait that long is still worth it.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, got {attempt}")
    if not (base >= 0 and cap >= 0):
        raise ValueError(f"base and cap must be 0 or more, got base={base!r} cap={cap!r}")
    rng = rng if rng is not None else _RNG
    ceiling = min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))
    wait = rng.uniform(0.0, ceiling)
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        floor = retry_after + rng.uniform(0.0, max(base, retry_after / 10))
        wait = max(wait, floor)
    return wait


def doubling(attempt: int, *, base: float, cap: float) -> float:
    """``base`` doubled ``attempt`` times, at most ``cap`` (no jitter: for a node's own retries
    of its database or a provider preparation, where no crowd of clients retries in step).
    Never overflows, however many attempts."""
    return min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))


def capped_retry_after(retry_after: float | None, cap: float) -> float | None:
    """A server's ``retry_after`` (seconds), at most ``cap``; None stays None. ``Retry-After:
    9999999999`` or a date in 2099 would otherwise hold whoever waits on it for centuries while
    it looks busy."""
    return None if retry_after is None else min(retry_after, cap)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    A date in the past gives 0. Anything unparseable (or negative) gives ``None``: the caller
    then falls back to its own backoff. A delta-seconds of any length counts (at most
    ``_LONGEST_S``): ``99999999999`` was unparseable, so the endpoint that asked for the longest
    wait was retried at once. ``now`` defaults to the current UTC time; naive
    datetimes are taken as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), _LONGEST_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    now = now if now is not None else dt.datetime.now(dt.UTC)
    seconds = (_as_utc(when) - _as_utc(now)).total_seconds()
    return max(0.0, seconds)


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
