"""Per-domain pace: its configuration (errors naming the key) and the grouping of a batch's
recipients into the group buckets (pure)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from mailerd import config, pace, ratelimit

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


def test_a_mixed_batch_counts_each_groups_recipients() -> None:
    google, microsoft = ratelimit.TokenBucket(20), ratelimit.TokenBucket(5)
    buckets = {"gmail.com": google, "googlemail.com": google, "outlook.com": microsoft}
    addresses = ["a@gmail.com", "b@GoogleMail.COM", "c@example.com", "d@outlook.com", "e@sub.gmail.com", "x"]
    assert pace.count_by_bucket(buckets, addresses) == {google: 2, microsoft: 1}
    assert pace.count_by_bucket(buckets, []) == {}
    assert pace.domain_of("Ann@Example.COM") == "example.com"


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
