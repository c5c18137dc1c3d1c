"""Backoff delays and Retry-After parsing."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailerd import backoff

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def test_full_jitter_stays_under_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(8):
        ceiling = min(20.0, 0.2 * 2**attempt)
        delays = [backoff.delay(attempt, base=0.2, cap=20.0, rng=rng) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter: spread over the whole range, not bunched at the top.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_cap_bounds_late_attempts_and_huge_attempts_do_not_overflow() -> None:
    rng = random.Random(2)
    assert all(backoff.delay(a, base=0.2, cap=5.0, rng=rng) <= 5.0 for a in (10, 100, 10_000))


def test_retry_after_is_a_floor_with_a_little_jitter() -> None:
    rng = random.Random(3)
    delays = [backoff.delay(0, base=0.2, cap=20.0, retry_after=30.0, rng=rng) for _ in range(200)]
    assert all(30.0 <= d <= 33.0 for d in delays)  # jitter up to a tenth of Retry-After
    assert len(set(delays)) == len(delays)  # throttled clients don't come back together


def test_short_retry_after_gets_base_sized_jitter_and_zero_is_ignored() -> None:
    rng = random.Random(4)
    assert all(1.0 <= backoff.delay(0, base=0.5, cap=20, retry_after=1.0, rng=rng) <= 1.5 for _ in range(100))
    assert all(backoff.delay(0, base=0.5, cap=20, retry_after=0.0, rng=rng) <= 0.5 for _ in range(100))


def test_retry_after_beyond_cap_still_wins() -> None:
    assert backoff.delay(0, base=0.1, cap=1.0, retry_after=60.0, rng=random.Random(5)) >= 60.0


def test_default_rng_works_and_bad_arguments_are_refused() -> None:
    assert 0 <= backoff.delay(3, base=1.0, cap=2.0) <= 2.0
    with pytest.raises(ValueError, match="attempt"):
        backoff.delay(-1, base=1.0, cap=2.0)
    with pytest.raises(ValueError, match="base"):
        backoff.delay(0, base=-1.0, cap=2.0)


@given(
    attempt=st.integers(0, 200),
    base=st.floats(0, 10),
    cap=st.floats(0, 100),
    retry_after=st.none() | st.floats(0, 1000),
)
def test_delay_bounds(attempt: int, base: float, cap: float, retry_after: float | None) -> None:
    d = backoff.delay(attempt, base=base, cap=cap, retry_after=retry_after, rng=random.Random(0))
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    assert d >= 0
    if retry_after:
        assert retry_after <= d <= max(ceiling, retry_after + max(base, retry_after / 10))
    else:
        assert d <= ceiling


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  0 ", 0.0),
        ("1.5", 1.5),  # not RFC 9110, but some APIs send it
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 01-May-24 12:01:00 GMT", 60.0),  # RFC 850
        ("Wed May  1 12:00:10 2024", 10.0),  # asctime
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),  # in the past: go now
        ("Wed, 01 May 2024 14:00:05 +0200", 5.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("inf", None),
        ("Wed, 99 Foo 2024 12:00:30 GMT", None),
        ("12 34", None),
        ("99999999999", 99_999_999_999.0),  # was None: the longest wait asked for, none taken
        ("9" * 400, 1e12),  # more than a float holds: still very long, not unparseable
        ("\u0663", None),  # an Arabic-Indic 3 is not delta-seconds
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert backoff.parse_retry_after(value, now=NOW) == expected


def test_capped_retry_after_keeps_what_is_within_the_cap() -> None:
    assert backoff.capped_retry_after(None, 60.0) is None
    assert backoff.capped_retry_after(30.0, 60.0) == 30.0
    assert backoff.capped_retry_after(60.0, 60.0) == 60.0
    assert backoff.capped_retry_after(9_999_999_999.0, 60.0) == 60.0


def test_parse_retry_after_with_naive_now_and_default_now() -> None:
    naive = NOW.replace(tzinfo=None)
    assert backoff.parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now=naive) == 30.0
    far = backoff.parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT")
    assert far is not None and far > 0


def test_doubling_starts_at_the_base_and_stays_at_the_cap_for_any_attempt() -> None:
    assert [backoff.doubling(n, base=0.5, cap=16.0) for n in range(7)] == [0.5, 1, 2, 4, 8, 16, 16]
    assert backoff.doubling(10**6, base=5.0, cap=300.0) == 300.0  # 2.0 ** 1024 overflowed
