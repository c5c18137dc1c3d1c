"""The guard's verdict: rates over the sample, the first one above its maximum, a reason that
names the rate, the threshold and the sample."""

from __future__ import annotations

from mailerd import guards
from mailerd.guards import Counts, Limits

LIMITS = Limits(min_sample=1000, max_bounce_rate=0.04, max_complaint_rate=0.0008, max_blocked_rate=0.03)


def test_nothing_is_judged_below_the_sample() -> None:
    assert guards.judge(Counts(sent=999, hard_bounced=999, complained=999, blocked=999), LIMITS) is None


def test_a_rate_at_its_maximum_passes_and_one_above_it_pauses() -> None:
    assert guards.judge(Counts(sent=10_000, hard_bounced=400, complained=8, blocked=300), LIMITS) is None
    verdict = guards.judge(Counts(sent=10_000, hard_bounced=0, complained=9, blocked=0), LIMITS)
    assert verdict == guards.Verdict(
        "complaint",
        "guard: campaign complaint rate 0.09% (9 of 10000 sent) exceeds max_complaint_rate 0.08%",
    )


def test_the_bounce_rate_is_judged_first_and_the_scope_is_named() -> None:
    verdict = guards.judge(
        Counts(sent=1000, hard_bounced=41, complained=1, blocked=31), LIMITS, scope="provider ses"
    )
    assert verdict is not None and verdict.signal == "bounce"
    assert (
        verdict.reason
        == "guard: provider ses hard-bounce rate 4.1% (41 of 1000 sent) exceeds max_bounce_rate 4%"
    )


def test_percent_keeps_small_shares_readable() -> None:
    assert [guards.percent(x) for x in (0.0008, 0.04, 1 / 3, 1.0)] == ["0.08%", "4%", "33.3%", "100%"]


def test_a_rate_just_above_its_maximum_reads_above_it() -> None:
    """Three significant digits rounded 4,001 of 100,001 (4.0009 %) to "4%": the reason said
    "4% exceeds max_bounce_rate 4%". The rate takes the digits it needs to read above, and a
    threshold shows all of its own."""
    verdict = guards.judge(Counts(sent=100_001, hard_bounced=4001, complained=0, blocked=0), LIMITS)
    assert verdict is not None
    assert verdict.reason == (
        "guard: campaign hard-bounce rate 4.001% (4001 of 100001 sent) exceeds max_bounce_rate 4%"
    )
    limits = Limits(
        min_sample=1000, max_bounce_rate=0.04125, max_complaint_rate=0.0008, max_blocked_rate=0.03
    )
    verdict = guards.judge(Counts(sent=10_000, hard_bounced=413, complained=0, blocked=0), limits)
    assert verdict is not None
    assert verdict.reason.endswith("rate 4.13% (413 of 10000 sent) exceeds max_bounce_rate 4.125%")
    assert guards.percent_above(0.0801, 0.08) == "8.01%"
    assert guards.percent_above(0.30000001, 0.3) == "30.000001%"
