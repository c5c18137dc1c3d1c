"""Daily quotas and warm-up schedules: how much of a provider account's volume a node may reserve
now, and when it may reserve again once the volume is used up. Pure: the reservation itself
(:mod:`mailerd.db.provider_quota`) runs this under the provider's lock with the database's clock.

- The **daily quota** (``daily_quota``) caps what all nodes reserve over the rolling 24 hours: the
  last :data:`WINDOW_HOURS` hour buckets (24 to 25 hours, never less than a day, like the
  provider guard's window). The SES account's own ``Max24HourSend`` caps the same plus what the
  account sent elsewhere (``SentLast24Hours`` beyond the reservations): that volume is the
  account's, not mailerd's share, so it counts against the account's quota only.
- The **warm-up schedule** (``warmup = [[day, max_per_day], ...]`` from ``warmup_start``) caps
  what they reserve per UTC day while a new domain or IP builds its reputation. Day 1 is
  ``warmup_start``; each step holds from its day until the next step; the last step holds for every
  later day (remove ``warmup`` to end it), and days before the start count as day 1.

Reservations are counted, not sends: a node reserves before it sends, so the nodes together never
send more than the limits; what a node reserved and did not send is given back when it stops (a
node that dies loses at most the block it held, which the window frees a day later).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

WINDOW_HOURS = 25
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)

Buckets = Sequence[tuple[dt.datetime, int]]  # (hour, reserved), any order


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A provider's limits: the daily quota as configured (0: none), the warm-up steps, and the
    account's own quota (0: none; :meth:`with_account_quota`)."""

    daily_quota: int = 0
    warmup: tuple[tuple[int, int], ...] = ()  # (day, max_per_day), days increasing
    warmup_start: dt.date | None = None
    account_quota: int = 0  # SES Max24HourSend: what the account sends, from anywhere

    @property
    def limited(self) -> bool:
        return self.daily_quota > 0 or self.account_quota > 0 or bool(self.warmup)

    @property
    def daily_limit(self) -> int:
        """The lower of the configured quota and the account's (0: none)."""
        return min((n for n in (self.daily_quota, self.account_quota) if n > 0), default=0)

    def with_account_quota(self, max_24_hour_send: int | None) -> Schedule:
        """The schedule with the account's own quota (``None`` or below 1: none)."""
        if not max_24_hour_send or max_24_hour_send < 1:
            max_24_hour_send = 0
        return dataclasses.replace(self, account_quota=max_24_hour_send)


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What one reservation got, the usage it saw (this grant included), and, when the limits
    are used up, until when and why."""

    granted: int
    reserved_24h: int
    reserved_today: int
    daily_limit: int | None
    warmup_day: int | None
    warmup_limit: int | None
    exhausted_until: dt.datetime | None = None
    reason: str = ""


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def day_of(moment: dt.datetime) -> dt.datetime:
    """The UTC midnight that starts ``moment``'s day."""
    utc = moment.astimezone(dt.UTC)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


def warmup_day(start: dt.date, today: dt.date) -> int:
    """Day 1 is the start date; days before it count as day 1."""
    return max(1, (today - start).days + 1)


def warmup_limit(steps: Sequence[tuple[int, int]], day: int) -> int:
    """The cap of the last step whose day is at most ``day`` (the first step before it)."""
    limit = steps[0][1]
    for step_day, max_per_day in steps:
        if step_day > day:
            break
        limit = max_per_day
    return limit


def decide(
    schedule: Schedule,
    buckets: Buckets,
    now: dt.datetime,
    want: int,
    need: int = 1,
    elsewhere: Buckets = (),
) -> Decision:
    """Grant up to ``want`` within both limits. When the grant falls short of ``need`` (what the
    caller must have to send its batch), the limits are used up for it: say until when it fits,
    the daily quota as old hours leave the window, the warm-up at the next UTC midnight.

    ``buckets`` are the nodes' reservations, ``elsewhere`` what the account sent beyond them
    (:func:`mailerd.db.provider_quota.count_sent_elsewhere`): counted against the account's
    quota only. Of the two daily quotas, the one with less room left is reported."""
    window_start = hour_of(now) - (WINDOW_HOURS - 1) * HOUR
    today = day_of(now)
    own = [(hour, n) for hour, n in buckets if hour >= window_start]
    everything = own + [(hour, n) for hour, n in elsewhere if hour >= window_start and n]
    reserved_today = sum(n for hour, n in buckets if hour >= today)
    dailies = [
        (limit, counted, sum(n for _, n in counted))
        for limit, counted in ((schedule.daily_quota, own), (schedule.account_quota, everything))
        if limit > 0
    ]
    room = want
    for daily, _, reserved in dailies:
        room = min(room, daily - reserved)
    day = limit = None
    if schedule.warmup:
        day = warmup_day(schedule.warmup_start or today.date(), today.date())
        limit = warmup_limit(schedule.warmup, day)
        room = min(room, limit - reserved_today)
    granted = max(0, room)
    reserved_today += granted
    short = need - granted
    daily_waits: list[tuple[dt.datetime, str]] = []
    for daily, counted, reserved in dailies:
        reserved += granted
        if short > 0 and reserved + short > daily:
            current = [(hour, n) for hour, n in counted if hour != hour_of(now)]
            current.append((hour_of(now), sum(n for hour, n in counted if hour == hour_of(now)) + granted))
            daily_waits.append(
                (
                    frees_at(current, reserved + short - daily),
                    f"daily quota of {daily:,} reached ({reserved:,} reserved in the last 24 h)",
                )
            )
    waits = [max(daily_waits)] if daily_waits else []  # the daily quota that frees last
    if short > 0 and limit is not None and reserved_today + short > limit:
        waits.append((today + DAY, f"warm-up day {day}: {limit:,} a day reached"))
    until = max((w[0] for w in waits), default=None)
    shown = min(dailies, key=lambda d: d[0] - d[2], default=None)  # the one with less room
    return Decision(
        granted,
        (shown[2] if shown else sum(n for _, n in own)) + granted,
        reserved_today,
        shown[0] if shown else None,
        day,
        limit,
        until,
        "; ".join(w[1] for w in waits),
    )


def frees_at(buckets: Buckets, needed: int) -> dt.datetime:
    """When at least ``needed`` of what the window holds has left it: an hour bucket leaves the
    window :data:`WINDOW_HOURS` hours after it began."""
    ordered = sorted(buckets)
    if not ordered:
        raise ValueError("an empty window frees nothing")
    freed = 0
    for hour, reserved in ordered:
        freed += reserved
        if freed >= needed:
            return hour + WINDOW_HOURS * HOUR
    return ordered[-1][0] + WINDOW_HOURS * HOUR
