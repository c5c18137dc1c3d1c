"""SIGKILL the daemon (one node or one of two) at random moments, pause and resume, and check
the sink's record against ``email_log``: no lead emailed twice, one row per matched lead, the
``unknown`` rows bounded by what a crash can leave in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import procs, scenarios

pytestmark = pytest.mark.timeout(90)


def _check_exactly_once(result: scenarios.ScenarioResult) -> None:
    audit = result.audit
    figures = result.figures()
    assert audit.duplicates == 0, figures
    assert audit.multi_rows == 0, figures
    assert audit.missing_rows == 0, figures
    assert audit.foreign_rows == 0, figures
    assert audit.emailed_not_accounted == 0, figures
    assert audit.logged_sent_not_emailed == 0, figures
    assert audit.unknown == sum(result.uncertain_per_crash), figures


def _check_bound(result: scenarios.ScenarioResult) -> None:
    assert max(result.uncertain_per_crash, default=0) <= result.bound, result.figures()


async def test_single_node_survives_repeated_sigkill(dsn: str, tmp_path: Path) -> None:
    scenario = scenarios.Scenario("single", leads=15000, kills=4, seed=11)
    result = await scenarios.run_scenario(dsn, tmp_path, scenario)
    assert result.crashes >= 3, result.figures()
    _check_exactly_once(result)


async def test_two_nodes_one_killed_the_other_takes_over(dsn: str, tmp_path: Path) -> None:
    # 6,000 matched leads at 300/s per node: the survivor alone cannot finish the campaign while
    # a killed node restarts on a busy machine (3,000 at 600/s once finished after one kill).
    scenario = scenarios.Scenario("two-nodes", leads=18000, nodes=2, kills=3, rate_per_s=300.0, seed=12)
    result = await scenarios.run_scenario(dsn, tmp_path, scenario)
    assert result.crashes >= 2, result.figures()
    _check_exactly_once(result)
    assert result.takeover_s, result.figures()
    # A dead claim is noticed by Postgres at once; the survivor claims on its next poll.
    assert max(result.takeover_s) < 5, result.figures()


async def test_pauses_and_resumes_between_crashes(dsn: str, tmp_path: Path) -> None:
    scenario = scenarios.Scenario("pause-resume", leads=15000, kills=2, pauses=3, seed=13)
    result = await scenarios.run_scenario(dsn, tmp_path, scenario)
    assert result.pauses >= 2, result.figures()
    _check_exactly_once(result)
    # Pause reaches the node by NOTIFY: only the batches already in flight complete.
    assert max(result.pause_latency_s) < 1.5, result.figures()


async def test_resend_uncertain_resends_instead_of_logging_unknown(dsn: str, tmp_path: Path) -> None:
    scenario = scenarios.Scenario("resend-uncertain", leads=12000, kills=3, resend_uncertain=True, seed=14)
    result = await scenarios.run_scenario(dsn, tmp_path, scenario)
    audit = result.audit
    figures = result.figures()
    assert result.crashes >= 2, figures
    assert audit.unknown == 0, figures
    assert audit.multi_rows == 0, figures
    assert audit.missing_rows == 0, figures
    assert audit.emailed_not_accounted == 0, figures
    # The operator's choice: a lead may be emailed twice only if it was in flight at a crash.
    assert audit.duplicates <= sum(result.uncertain_per_crash), figures


async def test_unknown_per_crash_stays_within_the_in_flight_bound(dsn: str, tmp_path: Path) -> None:
    """One shard, a writer that flushes once a second (a legal setting, or a slow Postgres):
    a crash must still leave at most concurrency x batch_size + reservation_step uncertain."""
    options = procs.DaemonOptions(shard_size=100_000, flush_interval_ms=1000)
    scenario = scenarios.Scenario("bound", kills=1, rate_per_s=5000.0, seed=15)
    result = await scenarios.run_scenario(dsn, tmp_path, scenario, options)
    _check_exactly_once(result)
    _check_bound(result)


@pytest.mark.parametrize("kind", ["sendgrid", "mailgun", "postmark", "smtp"])
async def test_every_provider_kind_survives_sigkill(kind: str, dsn: str, tmp_path: Path) -> None:
    """The same guarantees through each provider's client and emulator (the full matrix of
    scenarios per kind is bench/faults.py)."""
    scenario = scenarios.Scenario(f"single-{kind}", leads=6000, kills=2, seed=21, kind=kind)
    result = await scenarios.run_scenario(dsn, tmp_path, scenario)
    assert result.crashes >= 1, result.figures()
    _check_exactly_once(result)
    assert result.audit.emailed, result.figures()
