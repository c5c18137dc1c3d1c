"""Per-domain pace: its configuration (errors naming the key) and the grouping of a batch's
recipients into the group buckets (pure)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from mailerd import config, pace, ratelimit
from mailerd.models import Lead

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "mailerd.example.toml"


def _config(**groups: Any) -> config.Config:
    return config.from_mapping(
        {
            "providers": {"smtp": {"kind": "smtp", "endpoint": "mx:25"}, "ses": {"kind": "ses"}},
            "pace": groups,
        },
        env={},
    )


def test_groups_are_read_with_domains_lower_cased() -> None:
    loaded = _config(
        google={"domains": ["Gmail.com", "googlemail.com"], "rate_per_s": 20},
        microsoft={
            "domains": ["outlook.com", "hotmail.com"],
            "rate_per_s": 5,
            "burst": 10,
            "providers": ["smtp"],
        },
    )
    assert loaded.pace["google"].domains == ("gmail.com", "googlemail.com")
    assert loaded.pace["microsoft"].applies_to("smtp") and not loaded.pace["microsoft"].applies_to("ses")
    assert loaded.pace["google"].applies_to("ses")


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"google": {"domains": ["gmail.com"]}}, r"\[pace.google\] rate_per_s: must be positive"),
        ({"google": {"domains": ["gmail.com"], "rate_per_s": -1}}, r"\[pace.google\] rate_per_s"),
        (
            {"google": {"domains": ["gmail.com"], "rate_per_s": 1e-300}},
            r"\[pace.google\] rate_per_s: must be at least 0.001",
        ),
        ({"google": {"domains": [], "rate_per_s": 1}}, r"\[pace.google\] domains: must name at least one"),
        ({"google": {"domains": ["@gmail.com"], "rate_per_s": 1}}, r"\[pace.google\] domains: '@gmail.com'"),
        (
            {
                "a": {"domains": ["gmail.com"], "rate_per_s": 1},
                "b": {"domains": ["GMAIL.com"], "rate_per_s": 1},
            },
            r"\[pace.b\] domains: gmail.com is already in \[pace.a\]",
        ),
        (
            {"google": {"domains": ["gmail.com"], "rate_per_s": 1, "providers": ["sendgrid"]}},
            r"\[pace.google\] providers: unknown provider 'sendgrid' \(configured: ses, smtp\)",
        ),
        (
            {"google": {"domains": ["gmail.com"], "rate_per_s": 1, "rate": 2}},
            r"\[pace.google\] rate: unknown key",
        ),
        ({"google": 5}, r"\[pace.google\]: expected a table"),
    ],
)
def test_bad_groups_are_refused_naming_the_key(groups: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        _config(**groups)


def test_the_environment_sets_a_groups_rate() -> None:
    loaded = config.from_mapping(
        {"pace": {"google": {"domains": ["gmail.com"], "rate_per_s": 20}}},
        env={"MAILERD_PACE__GOOGLE__RATE_PER_S": "7.5"},
    )
    assert loaded.pace["google"].rate_per_s == 7.5


def test_buckets_apply_per_provider_and_are_shared_between_the_lanes() -> None:
    loaded = _config(
        google={"domains": ["gmail.com", "googlemail.com"], "rate_per_s": 20},
        microsoft={"domains": ["outlook.com"], "rate_per_s": 5, "providers": ["smtp"]},
    )
    domain_pace = pace.DomainPace(loaded.pace)
    smtp, ses = domain_pace.for_provider("smtp"), domain_pace.for_provider("ses")
    assert set(smtp) == {"gmail.com", "googlemail.com", "outlook.com"}
    assert set(ses) == {"gmail.com", "googlemail.com"}
    assert smtp["gmail.com"] is smtp["googlemail.com"] is ses["gmail.com"]
    assert pace.DomainPace({}).for_provider("smtp") == {}


def _plan(
    buckets: pace.DomainBuckets, addresses: list[str], size: int, hold: int = 100
) -> list[tuple[list[int], Any, int]]:
    """The plan of a window (0, 1000] whose leads have ids 10, 20, ... in ``addresses``' order."""
    leads = [Lead(10 * (n + 1), address, {}) for n, address in enumerate(addresses)]
    planned = pace.LanePace(buckets, "sink").plan(leads, size, 1000, hold)
    return [([lead.id for lead in chunk], bucket, upto) for chunk, bucket, upto in planned]


def test_a_window_puts_each_groups_recipients_in_batches_of_their_own() -> None:
    google, microsoft = ratelimit.TokenBucket(20), ratelimit.TokenBucket(5)
    buckets = {"gmail.com": google, "googlemail.com": google, "outlook.com": microsoft}
    addresses = [
        "a@gmail.com",  # 10
        "b@example.com",  # 20
        "c@GoogleMail.COM",  # 30
        "d@outlook.com",  # 40
        "e@sub.gmail.com",  # 50: not the group's domain
        "f@example.com",  # 60
        "x",  # 70
        "g@gmail.com",  # 80
    ]
    # The unpaced batches first, then the group's full batch held back, then the rest; no upto
    # passes a lead that goes in a later batch
    assert _plan(buckets, addresses, 2) == [
        ([20, 50], None, 9),
        ([60, 70], None, 9),
        ([10, 30], google, 39),
        ([80], google, 39),
        ([40], microsoft, 1000),
    ]
    # Held back up to `hold` recipients only: here a batch goes as soon as it is full
    assert _plan(buckets, addresses, 2, hold=2) == [
        ([10, 30], google, 19),
        ([20, 50], None, 39),
        ([60, 70], None, 39),
        ([80], google, 39),
        ([40], microsoft, 1000),
    ]
    assert _plan(buckets, addresses, 50) == [
        ([20, 50, 60, 70], None, 9),
        ([10, 30, 80], google, 39),
        ([40], microsoft, 1000),
    ]
    assert _plan(buckets, [], 50) == []


def test_a_window_without_a_paced_recipient_is_planned_as_without_pace() -> None:
    buckets = {"gmail.com": ratelimit.TokenBucket(20)}
    assert _plan(buckets, [f"u{n}@example.com" for n in range(5)], 2) == [
        ([10, 20], None, 29),
        ([30, 40], None, 49),
        ([50], None, 1000),
    ]


def test_a_group_holds_its_rate_under_an_injected_clock() -> None:
    now = [0.0]
    bucket = ratelimit.TokenBucket(20, clock=lambda: now[0])
    waits = [bucket.reserve(10) for _ in range(10)]  # 100 recipients at once: a 20-token burst, then 20/s
    assert waits[1] == 0 and waits[2] == pytest.approx(0.5) and waits[-1] == pytest.approx(4.0)


def test_the_example_documents_the_group_and_loads_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("#[pace.google]\n")
    block = text[start : text.index("\n\n", start)]
    for field in config.PaceConfig.__dataclass_fields__:
        if field != "name":
            assert re.search(rf"^# .*\n# {field} = ", block, flags=re.MULTILINE), field
    uncommented = re.sub(r"^# (\w+ = )", r"\1", block, flags=re.MULTILINE).replace("#[pace", "[pace")
    path = tmp_path / "mailerd.toml"
    path.write_text(text.replace(block, uncommented), encoding="utf-8")
    loaded = config.load(path, env={})
    assert loaded.pace["google"] == config.PaceConfig(
        name="google", domains=("gmail.com", "googlemail.com"), rate_per_s=20.0
    )


async def test_a_stop_during_a_groups_wait_gives_its_tokens_back() -> None:
    bucket = ratelimit.TokenBucket(1, clock=lambda: 0.0)  # a burst of 1, time stands still
    slept: list[float] = []

    async def sleep(delay: float, stopped: asyncio.Event) -> None:
        slept.append(delay)
        stopped.set()  # the shard stops while the batch waits

    lane = pace.LanePace({"gmail.com": bucket}, "sink", sleep=sleep)
    stopped = asyncio.Event()
    assert not await lane.acquire(bucket, 10, stopped)
    assert slept == [9.0] and bucket.tokens() == 1.0
    assert not await lane.acquire(bucket, 1, stopped)  # already stopped: nothing taken
    assert bucket.tokens() == 1.0
    assert await lane.acquire(bucket, 1, asyncio.Event())


def test_recipients_not_sent_after_all_give_their_groups_tokens_back() -> None:
    gmail = ratelimit.TokenBucket(1, burst=10, clock=lambda: 0.0)  # time stands still
    outlook = ratelimit.TokenBucket(1, burst=10, clock=lambda: 0.0)
    lane = pace.LanePace({"gmail.com": gmail, "outlook.com": outlook}, "sink")
    assert gmail.reserve(10) == 0 and outlook.reserve(10) == 0
    # two Gmail recipients and an unpaced one are dropped (erased) after dispatch
    lane.refund(["a@gmail.com", "b@GMAIL.com", "c@example.com"])
    assert gmail.tokens() == 2.0 and outlook.tokens() == 0.0


def test_a_group_configured_in_a_labels_holds_leads_typed_in_unicode() -> None:
    bucket = ratelimit.TokenBucket(1)
    lane = pace.LanePace({"xn--bcher-kva.de": bucket}, "sink")
    leads = [Lead(1, "ann@Bücher.de", {}), Lead(2, "bob@example.com", {})]
    assert [(len(chunk), group) for chunk, group, _ in lane.plan(leads, 10, 100, hold=10)] == [
        (1, None),
        (1, bucket),
    ]
