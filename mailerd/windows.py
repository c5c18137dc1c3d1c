"""Send windows: when, in a lead's own time zone, a campaign may send to it. Pure: no I/O.

A window is a daily interval ``[start, end)`` of local wall-clock time on some days of the week
(the day an interval *starts*: ``fri 22:00-06:00`` runs from Friday 22:00 to Saturday 06:00;
``end = "24:00"`` is the end of the day). Local times become instants with :mod:`zoneinfo` and
PEP 495 ``fold=0``: a time repeated by a DST fall-back is its first occurrence, and a time skipped
by a spring-forward is shifted later by the gap (02:30 on the night Berlin skips 02:00-03:00 is
03:30 CEST).

Leads are grouped by zone when a campaign is split (``mailerd.splitting.split_campaign``): each
shard carries one zone (zones whose clocks agree, such as Europe/Paris and Europe/Berlin, share
shards: :func:`group_zones`) and is claimed only while that zone's window is open, so the checks
here run per shard, never per lead. A lead's zone is the IANA name in its attribute
``timezone_attribute``; a lead without one, with a non-string or with a name that is not an IANA
zone, belongs to ``default_timezone`` (UTC unless the window names another; mailerd keeps no
account settings of its own).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_ATTRIBUTE = "timezone"
DEFAULT_ZONE = "UTC"
MAX_PATH_KEYS = 32
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_HORIZON_DAYS = 9  # every weekly window has an interval starting within this many days
_END_OF_DAY = "24:00"


class WindowError(ValueError):
    """An invalid window; ``field`` names the key (``send_window.start``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class SendWindow:
    """A validated window. ``days`` are weekday numbers (Monday 0); ``end`` None is 24:00."""

    days: frozenset[int]
    start: dt.time
    end: dt.time | None
    timezone_attribute: str = DEFAULT_ATTRIBUTE
    default_timezone: str = DEFAULT_ZONE

    def to_json(self) -> dict[str, Any]:
        """The window as stored and shown (the input's shape, defaults filled in)."""
        return {
            "days": [DAYS[day] for day in sorted(self.days)],
            "start": self.start.strftime("%H:%M"),
            "end": _END_OF_DAY if self.end is None else self.end.strftime("%H:%M"),
            "timezone_attribute": self.timezone_attribute,
            "default_timezone": self.default_timezone,
        }

    @property
    def attribute_path(self) -> tuple[str, ...]:
        return tuple(self.timezone_attribute.split("."))


def parse(raw: Mapping[str, Any]) -> SendWindow:
    """Validate a window given as a JSON object; :class:`WindowError` names the first bad key."""
    known = {"days", "start", "end", "timezone_attribute", "default_timezone"}
    for key in raw:
        if key not in known:
            raise WindowError(f"send_window.{key}", "unknown field")
    days = _days(raw.get("days"))
    start = _clock(raw.get("start"), "start", allow_end_of_day=False)
    end = _clock(raw.get("end"), "end", allow_end_of_day=True)
    if start is None:
        raise WindowError("send_window.start", "is required")
    if end == start:
        raise WindowError(
            "send_window.end", "must differ from start (leave the window out to send at any time)"
        )
    attribute = raw.get("timezone_attribute", DEFAULT_ATTRIBUTE)
    if not isinstance(attribute, str) or not attribute:
        raise WindowError("send_window.timezone_attribute", "expected a non-empty attribute name")
    keys = attribute.split(".")
    if any(not key for key in keys) or len(keys) > MAX_PATH_KEYS or "\x00" in attribute:
        raise WindowError(
            "send_window.timezone_attribute",
            f"expected an attribute path such as timezone or profile.tz (at most {MAX_PATH_KEYS} keys)",
        )
    zone = raw.get("default_timezone", DEFAULT_ZONE)
    if not isinstance(zone, str) or not valid_zone(zone):
        raise WindowError("send_window.default_timezone", f"not an IANA time zone name: {str(zone)[:60]!r}")
    return SendWindow(frozenset(days), start, end, attribute, zone)


def _days(raw: Any) -> list[int]:
    if raw is None:
        return list(range(7))
    if not isinstance(raw, list) or not raw:
        raise WindowError("send_window.days", "expected a non-empty array of days (mon, tue, ..., sun)")
    days = []
    for index, name in enumerate(raw):
        if not isinstance(name, str) or name.lower() not in DAYS:
            raise WindowError(f"send_window.days[{index}]", f"expected one of {', '.join(DAYS)}")
        days.append(DAYS.index(name.lower()))
    return days


def _clock(raw: Any, key: str, *, allow_end_of_day: bool) -> dt.time | None:
    """``HH:MM`` (``24:00`` for an end: returned as None); a missing end is an error too."""
    if raw is None:
        raise WindowError(f"send_window.{key}", "is required")
    if allow_end_of_day and raw == _END_OF_DAY:
        return None
    match = _CLOCK.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        shape = "HH:MM from 00:00 to 23:59" + (", or 24:00" if allow_end_of_day else "")
        raise WindowError(f"send_window.{key}", f"expected {shape}")
    return dt.time(int(match[1]), int(match[2]))


# Files of the zone database that are not zones: ``localtime`` is the host's own zone (a symlink
# some systems keep there: nodes in different zones would send to the same lead at different
# hours), ``Factory`` a placeholder for "unset".
_NOT_ZONES = frozenset({"localtime", "Factory"})


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def valid_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone this machine knows (exact spelling)."""
    return name in _zones()


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def resolve_zones(window: SendWindow, values: Iterable[str | None]) -> dict[str | None, str]:
    """Each attribute value as the zone its leads belong to (invalid or missing: the default)."""
    default = window.default_timezone
    return {value: value if value is not None and valid_zone(value) else default for value in values}


def intervals(window: SendWindow, zone: str, now: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """The window's open intervals (UTC, merged where they touch) from the one that may hold
    ``now`` to about a week ahead."""
    tz = _zone(zone)
    today = now.astimezone(tz).date()
    spans: list[tuple[dt.datetime, dt.datetime]] = []
    for offset in range(-1, _HORIZON_DAYS):
        day = today + dt.timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        begin = dt.datetime.combine(day, window.start, tzinfo=tz)
        if window.end is None:
            finish = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
        elif window.end > window.start:
            finish = dt.datetime.combine(day, window.end, tzinfo=tz)
        else:  # crosses midnight
            finish = dt.datetime.combine(day + dt.timedelta(days=1), window.end, tzinfo=tz)
        begin_utc, finish_utc = begin.astimezone(dt.UTC), finish.astimezone(dt.UTC)
        if finish_utc <= begin_utc:
            continue  # a DST shift swallowed the whole interval
        if spans and begin_utc <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], finish_utc))
        else:
            spans.append((begin_utc, finish_utc))
    return spans


def is_open(window: SendWindow, zone: str, now: dt.datetime) -> bool:
    """Whether leads of ``zone`` may be sent at ``now`` (an aware time)."""
    return any(begin <= now < finish for begin, finish in intervals(window, zone, now))


def next_open(window: SendWindow, zone: str, now: dt.datetime) -> dt.datetime:
    """``now`` when open, else when the window next opens in ``zone``."""
    for begin, finish in intervals(window, zone, now):
        if finish > now:
            return max(begin, now)
    raise AssertionError("a window with at least one day opens within a week")  # pragma: no cover


def next_close(window: SendWindow, zone: str, now: dt.datetime) -> dt.datetime | None:
    """When the open interval holding ``now`` (or else the next one) ends; None when it lasts
    past the horizon (a window open every day around the clock never closes)."""
    spans = intervals(window, zone, now)
    for index, (_begin, finish) in enumerate(spans):
        if finish > now:
            return None if index == len(spans) - 1 and finish >= _horizon_end(spans) else finish
    return None  # pragma: no cover


def _horizon_end(spans: list[tuple[dt.datetime, dt.datetime]]) -> dt.datetime:
    """An interval reaching this far merged every day up to the horizon: the window never closes."""
    return spans[0][0] + dt.timedelta(days=_HORIZON_DAYS - 1)


GROUP_HORIZON_DAYS = 400  # zones grouped at a split agree for this long (a campaign is shorter)


def group_zones(zones: Iterable[str], default: str, now: dt.datetime) -> dict[str, str]:
    """Each zone -> the zone whose shards send its leads: zones whose clocks agree at every
    moment of the next :data:`GROUP_HORIZON_DAYS` days (Europe/Paris and Europe/Berlin, Asia/Seoul
    and Asia/Tokyo) have the same windows, so they share shards, named after the first of them
    in sorted order, or ``default`` for the default zone's group."""
    by_rules: dict[tuple[Any, ...], list[str]] = {}
    for zone in sorted({*zones, default}):
        by_rules.setdefault(_rules(zone, now), []).append(zone)
    groups: dict[str, str] = {}
    for names in by_rules.values():
        for zone in names:
            groups[zone] = default if default in names else names[0]
    return groups


def _rules(zone: str, now: dt.datetime) -> tuple[Any, ...]:
    """The zone's UTC offset now and every change of it (to the second) over the horizon."""
    tz = _zone(zone)

    def offset(second: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(second, tz).utcoffset()

    start = int(now.timestamp())
    current = offset(start)
    changes: list[Any] = [current]
    day = 86_400
    for number in range(GROUP_HORIZON_DAYS):
        low, high = start + number * day, start + (number + 1) * day
        if offset(high) == current:
            continue
        while high - low > 1:  # the first second of the new offset
            middle = (low + high) // 2
            if offset(middle) == current:
                low = middle
            else:
                high = middle
        current = offset(high)
        changes.append((high, current))
    return tuple(changes)


def zone_condition(window: SendWindow, zone: str, groups: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """The segment condition of the leads of ``zone``, one of a campaign's zone ``groups`` (each
    zone the shards carry -> the zone names whose leads it sends).

    A named zone takes the leads whose attribute is exactly one of its names; the default zone
    takes every other lead (missing, not a string, not a zone, or a zone first seen after the
    split), so the shards of a campaign cover each lead exactly once.
    """
    field = f"attributes.{window.timezone_attribute}"
    if zone != window.default_timezone:
        return {"field": field, "op": "in", "value": sorted(groups[zone])}
    others = sorted({name for group, names in groups.items() if group != zone for name in names})
    if not others:
        return {"all": []}
    return {"not": {"field": field, "op": "in", "value": others}}
