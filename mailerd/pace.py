"""Daily caps of a provider account: its quota and its warm-up schedule (issue 15, part 3).

Pure. A warm-up schedule is ``[[day, max_per_day], ...]`` from a start date: on day ``n`` since
the start (the start itself is day 1), the cap is the ``max_per_day`` of the last entry whose
``day`` is at most ``n``; before the first entry's day, the first entry's; after the last
entry's day, there is no warm-up cap. The effective daily cap is the least of the quota (0:
none) and the warm-up cap. Not wired to sending yet: the quota counted across nodes is not
built (docs/guards.md "Not yet").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

Schedule = tuple[tuple[int, int], ...]


class ScheduleError(ValueError):
    """A warm-up schedule or start date that cannot be used; the message names the key."""


def parse_warmup(value: Any, key: str = "warmup") -> Schedule:
    """``[[day, max_per_day], ...]`` with days from 1, strictly increasing, and caps from 1."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ScheduleError(f"{key}: expected a list of [day, max_per_day] pairs")
    entries: list[tuple[int, int]] = []
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if (
            not isinstance(entry, Sequence)
            or isinstance(entry, str | bytes)
            or len(entry) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in entry)
        ):
            raise ScheduleError(f"{where}: expected [day, max_per_day], two integers")
        day, cap = entry
        if day < 1:
            raise ScheduleError(f"{where}: day must be at least 1")
        if cap < 1:
            raise ScheduleError(f"{where}: max_per_day must be at least 1")
        if entries and day <= entries[-1][0]:
            raise ScheduleError(f"{where}: days must increase (day {day} after day {entries[-1][0]})")
        entries.append((day, cap))
    return tuple(entries)


def parse_start(value: Any, key: str = "warmup_start") -> dt.date:
    """``"YYYY-MM-DD"`` (a TOML date is taken as it is)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ScheduleError(f"{key}: expected a day as YYYY-MM-DD, got {value!r}")


def warmup_cap(schedule: Schedule, start: dt.date, today: dt.date) -> int | None:
    """Today's warm-up cap; None when there is none (no schedule, or past its last day)."""
    if not schedule:
        return None
    day = (today - start).days + 1
    if day > schedule[-1][0]:
        return None
    cap = schedule[0][1]
    for entry_day, entry_cap in schedule:
        if entry_day <= day:
            cap = entry_cap
    return cap


def daily_cap(daily_quota: int, schedule: Schedule, start: dt.date | None, today: dt.date) -> int | None:
    """The effective cap of ``today``: the least of the quota (0: none) and the warm-up cap;
    None when neither applies."""
    caps = [daily_quota] if daily_quota > 0 else []
    if schedule and start is not None:
        warm = warmup_cap(schedule, start, today)
        if warm is not None:
            caps.append(warm)
    return min(caps) if caps else None
