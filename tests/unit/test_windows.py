"""Send windows: parsing, open/next-open/next-close across days, midnight and DST edges."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mailerd import segments, windows

UTC = dt.UTC


def window(**overrides: Any) -> windows.SendWindow:
    raw: dict[str, Any] = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}
    raw.update(overrides)
    return windows.parse(raw)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def test_parse_fills_defaults_and_round_trips() -> None:
    parsed = windows.parse({"start": "09:00", "end": "24:00"})
    assert parsed.days == frozenset(range(7))
    assert parsed.end is None
    assert parsed.to_json() == {
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start": "09:00",
        "end": "24:00",
        "timezone_attribute": "timezone",
        "default_timezone": "UTC",
    }
    assert windows.parse(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"end": "17:00"}, "send_window.start"),
        ({"start": "9:00", "end": "17:00"}, "send_window.start"),
        ({"start": "24:00", "end": "17:00"}, "send_window.start"),
        ({"start": "09:00"}, "send_window.end"),
        ({"start": "09:00", "end": "17:60"}, "send_window.end"),
        ({"start": "09:00", "end": "09:00"}, "send_window.end"),
        ({"start": "09:00", "end": "17:00", "days": []}, "send_window.days"),
        ({"start": "09:00", "end": "17:00", "days": ["mon", "fr"]}, "send_window.days[1]"),
        (
            {"start": "09:00", "end": "17:00", "default_timezone": "Mars/Olympus"},
            "send_window.default_timezone",
        ),
        # the host's own zone (nodes in different zones disagree) and the database's placeholder
        ({"start": "09:00", "end": "17:00", "default_timezone": "localtime"}, "send_window.default_timezone"),
        ({"start": "09:00", "end": "17:00", "default_timezone": "Factory"}, "send_window.default_timezone"),
        ({"start": "09:00", "end": "17:00", "timezone_attribute": "a..b"}, "send_window.timezone_attribute"),
        ({"start": "09:00", "end": "17:00", "zone": "UTC"}, "send_window.zone"),
    ],
)
def test_parse_names_the_bad_key(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(windows.WindowError) as caught:
        windows.parse(raw)
    assert caught.value.field == field


def test_weekday_window_in_the_leads_zone() -> None:
    w = window()
    berlin = "Europe/Berlin"
    # Wednesday 2026-01-07 08:30 UTC is 09:30 in Berlin (CET, +1): open there, not in New York.
    now = at("2026-01-07T08:30:00+00:00")
    assert windows.is_open(w, berlin, now)
    assert not windows.is_open(w, "America/New_York", now)
    assert windows.next_open(w, berlin, now) == now
    assert windows.next_close(w, berlin, now) == at("2026-01-07T17:00:00+01:00")
    assert windows.next_open(w, "America/New_York", now) == at("2026-01-07T09:00:00-05:00")


def test_the_weekend_waits_for_monday() -> None:
    w = window()
    friday_evening = at("2026-01-09T18:00:00+01:00")
    assert not windows.is_open(w, "Europe/Berlin", friday_evening)
    assert windows.next_open(w, "Europe/Berlin", friday_evening) == at("2026-01-12T09:00:00+01:00")
    # the window's end is exclusive, its start inclusive
    assert not windows.is_open(w, "Europe/Berlin", at("2026-01-09T17:00:00+01:00"))
    assert windows.is_open(w, "Europe/Berlin", at("2026-01-09T09:00:00+01:00"))


def test_a_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    w = window(days=["fri"], start="22:00", end="06:00")
    zone = "Europe/Berlin"
    assert windows.is_open(w, zone, at("2026-01-09T23:00:00+01:00"))  # Friday night
    assert windows.is_open(w, zone, at("2026-01-10T05:59:00+01:00"))  # Saturday early
    assert not windows.is_open(w, zone, at("2026-01-10T06:00:00+01:00"))
    assert not windows.is_open(w, zone, at("2026-01-09T05:00:00+01:00"))  # Friday early: Thursday's
    assert windows.next_close(w, zone, at("2026-01-09T23:00:00+01:00")) == at("2026-01-10T06:00:00+01:00")
    assert windows.next_open(w, zone, at("2026-01-10T07:00:00+01:00")) == at("2026-01-16T22:00:00+01:00")


def test_adjacent_days_merge_and_a_window_open_around_the_clock_never_closes() -> None:
    w = window(days=["mon", "tue"], start="00:00", end="24:00")
    monday = at("2026-01-05T12:00:00+00:00")
    assert windows.next_close(w, "UTC", monday) == at("2026-01-07T00:00:00+00:00")
    always = window(days=list(windows.DAYS), start="00:00", end="24:00")
    assert windows.next_close(always, "Asia/Tokyo", monday) is None
    assert windows.is_open(always, "Asia/Tokyo", monday)


def test_spring_forward_shifts_a_skipped_start_by_the_gap() -> None:
    # Berlin skips 02:00-03:00 on Sunday 2026-03-29: a 02:30 start is 03:30 CEST that day.
    w = window(days=["sun"], start="02:30", end="04:00")
    assert windows.next_open(w, "Europe/Berlin", at("2026-03-29T00:00:00+00:00")) == at(
        "2026-03-29T03:30:00+02:00"
    )
    assert windows.next_close(w, "Europe/Berlin", at("2026-03-29T01:40:00+00:00")) == at(
        "2026-03-29T04:00:00+02:00"
    )


def test_fall_back_takes_the_first_of_a_repeated_hour() -> None:
    # Berlin repeats 02:00-03:00 on Sunday 2026-10-25; a window 01:00-02:30 lasts 1.5 h, ending
    # at the first 02:30 (CEST), and the second 02:30 (CET) is outside it.
    w = window(days=["sun"], start="01:00", end="02:30")
    first = at("2026-10-25T02:15:00+02:00")
    second = at("2026-10-25T02:15:00+01:00")
    assert windows.is_open(w, "Europe/Berlin", first)
    assert not windows.is_open(w, "Europe/Berlin", second)
    assert windows.next_close(w, "Europe/Berlin", first) == at("2026-10-25T02:30:00+02:00")


def test_zones_resolve_to_the_default_when_missing_or_invalid() -> None:
    w = window(default_timezone="Europe/Berlin")
    resolved = windows.resolve_zones(
        w, [None, "Asia/Tokyo", "Mars/Olympus", "europe/berlin", "../etc", "localtime"]
    )
    assert resolved == {
        None: "Europe/Berlin",
        "Asia/Tokyo": "Asia/Tokyo",
        "Mars/Olympus": "Europe/Berlin",
        "europe/berlin": "Europe/Berlin",
        "../etc": "Europe/Berlin",
        "localtime": "Europe/Berlin",
    }


def test_zone_conditions_cover_each_lead_exactly_once() -> None:
    w = window(default_timezone="Europe/Berlin", timezone_attribute="profile.tz")
    groups = {
        "Europe/Berlin": ["Europe/Berlin", "Europe/Paris"],
        "Asia/Tokyo": ["Asia/Seoul", "Asia/Tokyo"],
        "America/New_York": ["America/New_York"],
    }
    conditions = {zone: segments.parse(windows.zone_condition(w, zone, groups)) for zone in groups}
    leads = [
        ({"profile": {"tz": "Asia/Tokyo"}}, "Asia/Tokyo"),
        ({"profile": {"tz": "Asia/Seoul"}}, "Asia/Tokyo"),
        ({"profile": {"tz": "America/New_York"}}, "America/New_York"),
        ({"profile": {"tz": "Europe/Berlin"}}, "Europe/Berlin"),
        ({"profile": {"tz": "Europe/Paris"}}, "Europe/Berlin"),
        ({"profile": {"tz": "Europe/Rome"}}, "Europe/Berlin"),  # first seen after the split
        ({"profile": {"tz": "Mars/Olympus"}}, "Europe/Berlin"),
        ({"profile": {"tz": 5}}, "Europe/Berlin"),
        ({"profile": {}}, "Europe/Berlin"),
        ({}, "Europe/Berlin"),
    ]
    created = dt.datetime(2026, 1, 1, tzinfo=UTC)
    for attributes, expected in leads:
        owners = [
            zone
            for zone, condition in conditions.items()
            if segments.evaluate(condition, email="a@example.com", created_at=created, attributes=attributes)
        ]
        assert owners == [expected], attributes
    assert windows.zone_condition(w, "Europe/Berlin", {"Europe/Berlin": ["Europe/Berlin"]}) == {"all": []}


def test_zones_whose_clocks_agree_share_shards() -> None:
    now = at("2026-01-07T12:00:00+00:00")
    zones = [
        "Europe/Paris",
        "Europe/Rome",
        "Europe/London",
        "Europe/Lisbon",
        "Asia/Tokyo",
        "Asia/Seoul",
        "America/New_York",
        "America/Toronto",
        "America/Denver",
        "America/Phoenix",  # Mountain time without DST: not Denver's clock in summer
        "Australia/Sydney",
        "Australia/Brisbane",  # no DST: not Sydney's clock
    ]
    groups = windows.group_zones(zones, "Europe/Berlin", now)
    assert groups["Europe/Paris"] == groups["Europe/Rome"] == groups["Europe/Berlin"] == "Europe/Berlin"
    assert groups["Europe/London"] == groups["Europe/Lisbon"] == "Europe/Lisbon"
    assert groups["Asia/Tokyo"] == groups["Asia/Seoul"] == "Asia/Seoul"
    assert groups["America/New_York"] == groups["America/Toronto"] == "America/New_York"
    assert groups["America/Denver"] == "America/Denver" and groups["America/Phoenix"] == "America/Phoenix"
    assert groups["Australia/Sydney"] != groups["Australia/Brisbane"]
    assert windows.group_zones([], "UTC", now) == {"UTC": "UTC"}


def test_a_zone_shards_window_follows_the_density_of_its_zone() -> None:
    from mailerd.shard import MAX_SPAN_FACTOR, next_span

    assert next_span(5000, 5000, 5000) == 5000  # dense: as it was
    assert next_span(5000, 1000, 5000) == 20_000  # a fifth of the ids: wider, at most 4x a step
    assert next_span(5000, 2500, 5000) == 10_000
    assert next_span(20_000, 0, 5000) == 80_000  # none seen: 4x
    assert next_span(80_000, 1, 5000) == 5000 * MAX_SPAN_FACTOR  # capped
    assert next_span(80_000, 40_000, 5000) == 10_000  # denser again: narrower at once
    assert next_span(5000, 9000, 5000) == 5000  # never below window_size
