"""Bad input to the command line gets one line naming the problem and a documented exit status,
never a traceback, and a refused command changes nothing (the defects a review found)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg

from tests.integration.helpers import add_leads
from tests.integration.test_cli_basics import Result, base_env, mailerd

ALL = '{"all": []}'  # every lead
NOT_UTF8 = os.fsdecode(b"b\xff@example.com")  # what a Latin-1 terminal passes


def _one_line(result: Result) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_leads_erase_checks_every_address_before_erasing_any(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    # the good address was erased, then the bad one was a traceback
    await add_leads(conn, 7, 1)  # user0@example.com
    env = base_env(MAILERD_DSN=dsn, MAILERD_PRIVACY__ERASURE_KEY="k" * 40)
    result = await mailerd("leads", "erase", "--account", "7", "user0@example.com", NOT_UTF8, env=env)
    assert result.returncode == 2, result
    _one_line(result)
    assert await conn.fetchval("SELECT count(*) FROM leads WHERE account_id = 7") == 1


async def test_leads_erase_trims_an_address_as_the_api_does(conn: asyncpg.Connection, dsn: str) -> None:
    # " user0@example.com" (pasted from a spreadsheet) erased nothing, recorded the hash of the
    # untrimmed text, and exited 0 saying "erased": the person was still there
    await add_leads(conn, 7, 1)  # user0@example.com
    env = base_env(MAILERD_DSN=dsn, MAILERD_PRIVACY__ERASURE_KEY="k" * 40)
    result = await mailerd("leads", "erase", "--account", "7", " user0@example.com\t", env=env)
    assert result.returncode == 0, result
    assert "erased user0@example.com from account 7" in result.stdout and "leads_deleted 1" in result.stdout
    assert await conn.fetchval("SELECT count(*) FROM leads WHERE account_id = 7") == 0


async def test_a_database_that_cannot_be_reached_is_one_line(dsn: str) -> None:
    missing = dsn.rsplit("/", 1)[0] + "/no_such_database_here"
    results = await asyncio.gather(
        mailerd("migrate", env=base_env(MAILERD_DSN=missing)),
        mailerd(
            "segment",
            "count",
            "--account",
            "1",
            ALL,
            env=base_env(MAILERD_DSN="postgresql://u@127.0.0.1:1/x"),
        ),
        mailerd("check-config", env=base_env(MAILERD_DSN="postgresql://u@127.0.0.1/x?sslmode=bogus")),
        mailerd("check-config", env=base_env(MAILERD_DSN="postgresql://u@127.0.0.1:99999999/x")),
    )
    for result in results:
        assert result.returncode == 1, result
        _one_line(result)
    assert "no_such_database_here" in results[0].stderr and "sslmode" in results[2].stderr
    assert "beyond 65535" in results[3].stderr


async def test_a_fifo_is_refused_not_read_twice(dsn: str, tmp_path: Path) -> None:
    # it hung, and imported only what a second writer wrote
    fifo = tmp_path / "leads.csv"
    os.mkfifo(fifo)
    result = await mailerd("leads", "import", "--account", "3", str(fifo), env=base_env(MAILERD_DSN=dsn))
    assert result.returncode == 1, result
    assert "not a regular file" in result.stderr


async def test_relay_replay_and_campaign_arguments_are_checked(dsn: str, tmp_path: Path) -> None:
    env = base_env(MAILERD_DSN=dsn, MAILERD_ADMIN_TOKEN="t")
    replay = ("relay", "replay", "--destination", "kafka")
    create = ("campaign", "create", "--name", "n", "--segment", "{}", "--subject", "s", "--html", "h")
    create += ("--text", "t", "--from", "a@example.com", "--provider", "p")
    results = await asyncio.gather(
        mailerd(*replay, "--from", "2026-01-01", "--campaign", "9" * 20, env=env),
        mailerd(*replay, "--from", "0001-01-01T00:00:00+14:00", env=env),
        mailerd(*replay, "--from", "2025-02-01", "--to", "2025-01-01", env=env),
        mailerd(*create, "--account", "1", "--rate", "nan", env=env),
        mailerd(*create, "--account", "9" * 20, env=env),
        mailerd(*create, "--account", "1", "--rate", "5e-324", env=env),
    )
    campaign, early, backwards, nan_rate, huge_account, tiny_rate = results
    assert campaign.returncode == 2 and "--campaign" in campaign.stderr, campaign  # argparse
    assert early.returncode == 2 and "out of range once in UTC" in early.stderr, early
    assert backwards.returncode == 2 and "must be before --to" in backwards.stderr, backwards
    assert nan_rate.returncode == 2 and "--rate" in nan_rate.stderr, nan_rate
    assert huge_account.returncode == 2 and "--account" in huge_account.stderr, huge_account
    assert tiny_rate.returncode == 2, tiny_rate
    assert "--rate: expected a number of at least 1e-05, got 5e-324" in tiny_rate.stderr, tiny_rate
    for result in results:
        assert "Traceback" not in result.stderr, result.stderr


async def test_every_usage_error_exits_2_naming_the_option(dsn: str) -> None:
    # partitions --days 0, suppressions list --limit 0 and replay --dead-letters --to exited 1
    env = base_env(MAILERD_DSN=dsn)
    results = await asyncio.gather(
        mailerd("partitions", "--days", "0", env=env),
        mailerd("suppressions", "list", "--account", "1", "--limit", "0", env=env),
        mailerd("suppressions", "list", "--account", "1", "--limit", "10001", env=env),
        mailerd("relay", "replay", "--destination", "kafka", "--dead-letters", "--to", "2026-01-01", env=env),
        mailerd("relay", "replay", "--destination", "kafka", "--dead-letters", "--campaign", "1", env=env),
        mailerd("suppressions", "add", "--account", "1", "not-an-address", env=env),
    )
    named = ["--days", "--limit", "--limit", "--to", "--campaign", "not an email address"]
    for result, option in zip(results, named, strict=True):
        assert result.returncode == 2, result
        assert option in result.stderr, result
        assert "Traceback" not in result.stderr, result.stderr


async def test_a_unicode_error_not_from_an_argument_is_a_failure_not_refused_input() -> None:
    # a host name IDNA cannot encode: it was reported as "an argument is not UTF-8", exit 2
    host = "a" * 64 + ".example.com"
    result = await mailerd("migrate", env=base_env(MAILERD_DSN=f"postgresql://postgres@{host}:5432/x"))
    assert result.returncode == 1, result
    _one_line(result)
    assert "argument" not in result.stderr


async def test_a_config_path_too_long_is_one_line(tmp_path: Path) -> None:
    result = await mailerd("check-config", "--config", str(tmp_path / ("x" * 300)), env=base_env())
    assert result.returncode == 1, result
    _one_line(result)
