"""Daily quotas and warm-up schedules: the grant, the wait and its reason (pure), and the
configuration's errors naming the key."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from mailerd import config, quota, quota_gate

NOW = dt.datetime(2026, 12, 5, 14, 20, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _hours_ago(*reserved: int) -> list[tuple[dt.datetime, int]]:
    """Buckets from the current hour backwards: reserved[0] now, reserved[1] an hour ago..."""
    return [(quota.hour_of(NOW) - n * HOUR, r) for n, r in enumerate(reserved) if r]


def test_a_grant_within_the_quota_says_nothing_of_waiting() -> None:
    decision = quota.decide(quota.Schedule(daily_quota=1000), _hours_ago(100, 200), NOW, 400)
    assert decision.granted == 400 and decision.reserved_24h == 700
    assert decision.exhausted_until is None and decision.reason == ""


def test_the_last_of_the_quota_is_granted_and_the_wait_ends_when_old_hours_leave() -> None:
    # 900 reserved: 500 twenty hours ago, 300 ten hours ago, 100 now.
    buckets = _hours_ago(*([100] + [0] * 9 + [300] + [0] * 9 + [500]))
    decision = quota.decide(quota.Schedule(daily_quota=1000), buckets, NOW, 400, need=400)
    assert decision.granted == 100 and decision.reserved_24h == 1000
    # The other 300 the batch needs are freed when the hour of 20 hours ago (500) leaves the
    # window, 25 h after it began.
    assert decision.exhausted_until == quota.hour_of(NOW) - 20 * HOUR + 25 * HOUR
    assert decision.reason == "daily quota of 1,000 reached (1,000 reserved in the last 24 h)"
    # Needing 700 more than the quota leaves, it waits for the hour of 10 hours ago as well.
    more = quota.decide(quota.Schedule(daily_quota=1000), buckets, NOW, 400, need=900)
    assert more.exhausted_until == quota.hour_of(NOW) - 10 * HOUR + 25 * HOUR


def test_a_grant_that_fills_the_quota_is_no_wait_while_it_covers_the_batch() -> None:
    decision = quota.decide(quota.Schedule(daily_quota=1000), _hours_ago(900), NOW, 400, need=50)
    assert decision.granted == 100 and decision.exhausted_until is None and decision.reason == ""


def test_hours_older_than_the_window_do_not_count() -> None:
    buckets = _hours_ago(*([0] * 25 + [5000]))  # 25 hours ago: out of the 25-bucket window
    assert quota.decide(quota.Schedule(daily_quota=1000), buckets, NOW, 400).granted == 400


def test_a_used_up_quota_grants_nothing() -> None:
    decision = quota.decide(quota.Schedule(daily_quota=500), _hours_ago(500), NOW, 50)
    assert decision.granted == 0 and decision.exhausted_until == quota.hour_of(NOW) + 25 * HOUR


def test_warmup_days_steps_and_the_end_of_the_schedule() -> None:
    steps = ((1, 100), (3, 1000), (7, 10_000))
    assert [quota.warmup_limit(steps, day) for day in (1, 2, 3, 6, 7, 30)] == [
        100,
        100,
        1000,
        1000,
        10_000,
        10_000,
    ]
    start = dt.date(2026, 12, 1)
    assert quota.warmup_day(start, dt.date(2026, 12, 1)) == 1
    assert quota.warmup_day(start, dt.date(2026, 12, 5)) == 5
    assert quota.warmup_day(start, dt.date(2026, 11, 20)) == 1  # before the start: day 1


def test_the_warmup_cap_counts_today_and_waits_for_midnight() -> None:
    schedule = quota.Schedule(warmup=((1, 100), (5, 2000)), warmup_start=dt.date(2026, 12, 1))
    # 1,500 today (this hour and 10 hours ago), 5,000 yesterday (which the cap does not count).
    buckets = _hours_ago(*([500] + [0] * 9 + [1000] + [0] * 6 + [5000]))
    decision = quota.decide(schedule, buckets, NOW, 800, need=800)
    assert decision.granted == 500 and decision.warmup_day == 5 and decision.warmup_limit == 2000
    assert decision.reserved_today == 2000
    assert decision.exhausted_until == dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    assert decision.reason == "warm-up day 5: 2,000 a day reached"


def test_both_limits_reached_wait_for_the_later() -> None:
    schedule = quota.Schedule(daily_quota=1000, warmup=((1, 1000),), warmup_start=dt.date(2026, 12, 1))
    decision = quota.decide(schedule, _hours_ago(1000), NOW, 10)
    assert decision.granted == 0
    assert decision.exhausted_until == quota.hour_of(NOW) + 25 * HOUR  # later than midnight
    assert "daily quota" in decision.reason and "warm-up day 5" in decision.reason


def test_the_account_quota_lowers_the_configured_one_never_raises_it() -> None:
    configured = quota.Schedule(daily_quota=50_000)
    assert configured.with_account_quota(200).daily_limit == 200
    assert configured.with_account_quota(1_000_000).daily_limit == 50_000
    assert configured.with_account_quota(None).daily_limit == 50_000
    assert quota.Schedule().with_account_quota(-1) == quota.Schedule()  # SES: -1 is unlimited
    assert quota.Schedule().with_account_quota(200).limited


def test_what_was_sent_elsewhere_counts_against_the_account_quota_only() -> None:
    """daily_quota is mailerd's share of the account, the warm-up what mailerd sends a day: the
    other senders' volume (SentLast24Hours beyond the reservations) is neither. It used to be
    added to the reservations and counted against all three."""
    elsewhere = _hours_ago(400)
    share = quota.Schedule(daily_quota=150).with_account_quota(1000)
    decision = quota.decide(share, _hours_ago(100), NOW, 100, elsewhere=elsewhere)
    assert decision.granted == 50 and (decision.daily_limit, decision.reserved_24h) == (150, 150)
    # The account's quota counts both: 500 of 600 used leaves 100, less than the share's 600.
    tight = quota.Schedule(daily_quota=1000).with_account_quota(600)
    decision = quota.decide(tight, _hours_ago(0, 400), NOW, 200, need=200, elsewhere=_hours_ago(100))
    assert decision.granted == 100 and (decision.daily_limit, decision.reserved_24h) == (600, 600)
    assert decision.reason == "daily quota of 600 reached (600 reserved in the last 24 h)"
    assert decision.exhausted_until == quota.hour_of(NOW) - HOUR + 25 * HOUR  # the 400 leave
    # Without an account quota nothing counts it; nor does the warm-up.
    warmup = quota.Schedule(warmup=((1, 100),), warmup_start=dt.date(2026, 12, 1))
    assert quota.decide(warmup, [], NOW, 100, elsewhere=elsewhere).granted == 100


def test_each_account_quota_read_replaces_the_last() -> None:
    """Read again every account_refresh_s: a raised quota applies, an unlimited one gives the
    configured quota back (it was the lowest ever read)."""
    gate = quota_gate.QuotaGate("ses", None, quota.Schedule(daily_quota=50_000), step=100)  # type: ignore[arg-type]
    gate.set_account_quota(150)
    assert gate.schedule.daily_limit == 150
    gate.set_account_quota(400)
    assert gate.schedule.daily_limit == 400
    gate.set_account_quota(None)
    assert gate.schedule.daily_limit == 50_000
    unconfigured = quota_gate.QuotaGate("ses", None, quota.Schedule(), step=100)  # type: ignore[arg-type]
    unconfigured.set_account_quota(150)
    unconfigured.set_account_quota(-1)
    assert not unconfigured.schedule.limited


def _provider(**keys: Any) -> config.Config:
    return config.from_mapping({"providers": {"ses": {"kind": "ses", **keys}}}, env={})


def test_quota_and_warmup_keys_are_read() -> None:
    loaded = _provider(daily_quota=50_000, warmup=[[1, 500], [4, 5000]], warmup_start="2026-12-01").provider(
        "ses"
    )
    assert loaded.daily_quota == 50_000 and loaded.warmup == ((1, 500), (4, 5000))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"daily_quota": 10}, "[providers.ses] daily_quota: must be 0 (none) or at least batch_size (50)"),
        ({"daily_quota": -1}, "[providers.ses] daily_quota: must be 0 (none) or more"),
        (
            {"warmup": [[1, 500]]},
            "[providers.ses] warmup_start: expected the warm-up's first day as YYYY-MM-DD",
        ),
        ({"warmup_start": "2026-12-01"}, "[providers.ses] warmup_start: only with warmup"),
        (
            {"warmup": [[1, 500, 3]], "warmup_start": "2026-12-01"},
            "[providers.ses] warmup: step 1: expected [day, max_per_day], got [1, 500, 3]",
        ),
        (
            {"warmup": [[2, 500], [2, 900]], "warmup_start": "2026-12-01"},
            "[providers.ses] warmup: step 2: days must start at 1 or later and increase, got day 2",
        ),
        (
            {"warmup": [[1, 20]], "warmup_start": "2026-12-01"},
            "[providers.ses] warmup: step 1: max_per_day must be at least batch_size (50)",
        ),
        (  # 10**20 was taken, and every reservation failed: the quota table holds a bigint
            {"warmup": [[1, 500], [3, 10**20]], "warmup_start": "2026-12-01"},
            "[providers.ses] warmup: step 2: day must be at most 36500 and max_per_day at most 1000000000",
        ),
        (
            {"warmup": [[36_501, 500]], "warmup_start": "2026-12-01"},
            "[providers.ses] warmup: step 1: day must be at most 36500",
        ),
        (
            {"warmup": [["a", 1]], "warmup_start": "2026-12-01"},
            "[providers.ses] warmup: expected a whole number",
        ),
    ],
)
def test_bad_quota_keys_are_refused_naming_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        _provider(**keys)


def test_a_node_reserves_bigger_blocks_while_it_reserves_often() -> None:
    now = [100.0]
    gate = quota_gate.QuotaGate(
        "ses", None, quota.Schedule(daily_quota=10_000), step=100, clock=lambda: now[0]
    )  # type: ignore[arg-type]
    sizes = []
    for _ in range(5):
        sizes.append(gate._block_size())
        now[0] += 0.1
    assert sizes == [100, 200, 400, 800, 1600]
    gate._limit = 10_000  # as a reservation saw it: a block is at most a twentieth of it
    assert [gate._block_size(), gate._block_size()] == [500, 500]
    now[0] += 5  # a quiet second: back to one step
    assert gate._block_size() == 100
