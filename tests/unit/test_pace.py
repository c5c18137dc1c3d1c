"""Warm-up schedules and daily caps (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from mailerd import pace

START = dt.date(2026, 12, 1)
RAMP = pace.parse_warmup([[1, 500], [3, 2000], [7, 10000]])


@pytest.mark.parametrize(
    ("today", "cap"),
    [
        (START - dt.timedelta(days=1), 500),  # before the start: the first entry's
        (START, 500),  # day 1
        (START + dt.timedelta(days=1), 500),  # day 2
        (START + dt.timedelta(days=2), 2000),  # day 3
        (START + dt.timedelta(days=6), 10000),  # day 7, the last entry
        (START + dt.timedelta(days=7), None),  # after the last entry: no warm-up cap
    ],
)
def test_the_warmup_cap_follows_the_days_since_the_start(today: dt.date, cap: int | None) -> None:
    assert pace.warmup_cap(RAMP, START, today) == cap


def test_the_daily_cap_is_the_least_of_quota_and_warmup() -> None:
    day3 = START + dt.timedelta(days=2)
    assert pace.daily_cap(1000, RAMP, START, day3) == 1000
    assert pace.daily_cap(50000, RAMP, START, day3) == 2000
    assert pace.daily_cap(0, RAMP, START, day3) == 2000
    assert pace.daily_cap(0, RAMP, START, START + dt.timedelta(days=30)) is None
    assert pace.daily_cap(700, (), None, day3) == 700
    assert pace.daily_cap(0, (), None, day3) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,500", "warmup: expected a list of [day, max_per_day] pairs"),
        ([[1, 500, 3]], "warmup[0]: expected [day, max_per_day], two integers"),
        ([[1, "500"]], "warmup[0]: expected [day, max_per_day], two integers"),
        ([[0, 500]], "warmup[0]: day must be at least 1"),
        ([[1, 0]], "warmup[0]: max_per_day must be at least 1"),
        ([[2, 500], [2, 900]], "warmup[1]: days must increase (day 2 after day 2)"),
    ],
)
def test_bad_schedules_name_the_key(value: object, message: str) -> None:
    with pytest.raises(pace.ScheduleError) as caught:
        pace.parse_warmup(value)
    assert str(caught.value) == message


def test_the_start_is_a_day() -> None:
    assert pace.parse_start("2026-12-01") == START
    assert pace.parse_start(START) == START
    with pytest.raises(pace.ScheduleError, match=r"warmup_start: expected a day as YYYY-MM-DD"):
        pace.parse_start("12/01/2026")
