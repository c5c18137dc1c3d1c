"""Postgres stops under a sending daemon and comes back on the same port: sending stops
(nothing is sent that cannot be logged), rows waiting in memory are kept, the daemon resumes
by itself, and the campaign ends with one row per lead and no lead emailed twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import procs, scenarios

pytestmark = pytest.mark.timeout(90)


async def test_daemon_rides_out_a_postgres_outage(
    private_postgres: procs.PrivatePostgres, tmp_path: Path
) -> None:
    result = await scenarios.run_outage(private_postgres, tmp_path, outage_s=6.0)
    audit = result.audit
    figures = result.figures()
    assert result.calls_before_outage > 0, figures
    # Claims die with their connections: only batches already in flight may still arrive.
    assert result.late_calls == 0, figures
    assert result.resume_s is not None and result.resume_s < 10, figures
    assert audit.duplicates == 0, figures
    assert audit.multi_rows == 0, figures
    assert audit.missing_rows == 0, figures
    assert audit.emailed_not_accounted == 0, figures
    assert audit.logged_sent_not_emailed == 0, figures
    # No process died: every row sent before or during the outage waited in memory and was
    # written, so nothing is uncertain.
    assert audit.unknown == 0, figures
