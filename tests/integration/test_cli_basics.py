"""The CLI as a subprocess: migrate, partitions, check-config, and configuration errors."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path

import asyncpg
import orjson
import pytest

from mailerd import config
from mailerd.db import partitions

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "mailerd.example.toml"


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MAILERD_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MAILERD_")}
    env.update(extra)
    return env


async def mailerd(*args: str, env: dict[str, str]) -> Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "mailerd.toml"
    path.write_text('[logging]\nformat = "json"\n', encoding="utf-8")
    return path


async def test_migrate_on_a_migrated_database_has_nothing_to_do(dsn: str, config_file: Path) -> None:
    result = await mailerd("migrate", env=base_env(MAILERD_DSN=dsn, MAILERD_CONFIG=str(config_file)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nothing to do: the schema is up to date\n"


async def test_migrate_on_an_empty_database_applies_everything(empty_dsn: str, config_file: Path) -> None:
    result = await mailerd("migrate", "--config", str(config_file), env=base_env(MAILERD_DSN=empty_dsn))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "applied 0001_initial"
    assert all(line.startswith("applied ") for line in result.stdout.splitlines())


async def test_partitions_prints_what_it_created(dsn: str, config_file: Path) -> None:
    env = base_env(MAILERD_DSN=dsn, MAILERD_CONFIG=str(config_file))
    before = dt.datetime.now(dt.UTC).date()
    result = await mailerd("partitions", "--days", "3", env=env)
    after = dt.datetime.now(dt.UTC).date()
    assert result.returncode == 0, result.stderr
    # The run may straddle midnight UTC: accept either day as "today".
    expected = [
        [
            f"created {table} {partitions.partition_name(table, today + dt.timedelta(days=d))}"
            for table in partitions.PARTITIONED
            for d in range(3)
        ]
        for today in {before, after}
    ]
    assert result.stdout.splitlines() in expected

    again = await mailerd("partitions", "--days", "3", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to do: partitions exist for the next 3 days")


async def test_partitions_fails_when_a_long_transaction_defers_a_day(
    dsn: str, conn: asyncpg.Connection, config_file: Path
) -> None:
    """Behind a transaction that read email_log, its day is not created (waiting would hold up
    every write): the run says so and exits 1, the other table's days are created."""
    env = base_env(MAILERD_DSN=dsn, MAILERD_CONFIG=str(config_file))
    today = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    async with conn.transaction():
        await conn.fetchval("SELECT count(*) FROM email_log")
        result = await mailerd("partitions", "--days", "2", env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"deferred email_log creating {partitions.partition_name('email_log', today)}: a lock was not "
        f"granted within {partitions.DDL_LOCK_TIMEOUT_MS} ms (a transaction is using the table); "
        "retried next round",
        f"created email_events {partitions.partition_name('email_events', today)}",
        f"created email_events {partitions.partition_name('email_events', today + dt.timedelta(days=1))}",
    ]
    assert result.stderr.splitlines()[-1] + "\n" == (
        "mailerd partitions: 1 table(s) left partly undone: a transaction is using them; "
        "run again when it has ended\n"
    )


@pytest.mark.parametrize("days", ["0", "367"])  # 100000 made a partition a day up to the year 2300
async def test_partitions_refuses_days_out_of_range(config_file: Path, days: str) -> None:
    result = await mailerd("partitions", "--days", days, env=base_env(MAILERD_CONFIG=str(config_file)))
    assert result.returncode == 2  # a usage error (it was 1, a failure)
    assert f"argument --days: must be from 1 to 366, got {days}" in result.stderr


@pytest.fixture
def config_with_secret_file(tmp_path: Path) -> Path:
    key_file = tmp_path / "api_key"
    key_file.write_text("sk-very-secret\n", encoding="utf-8")
    path = tmp_path / "with-secret.toml"
    path.write_text(
        f'[providers.sink]\nkind = "sink"\nendpoint = "http://127.0.0.1:8026"\n'
        f'api_key_file = "{key_file}"\n[writer]\nflush_rows = 123\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def bad_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('[providers.ses]\nrate_per_s = "fast"\n', encoding="utf-8")
    return path


async def test_check_config_prints_redacted_json(config_with_secret_file: Path) -> None:
    config_file = config_with_secret_file
    env = base_env(
        MAILERD_CONFIG=str(config_file),
        MAILERD_ADMIN_TOKEN="supersecret",
        MAILERD_DSN="postgresql://mailerd:pw-hidden@db.internal/mailerd",
    )
    result = await mailerd("check-config", env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("supersecret", "sk-very-secret", "pw-hidden"):
        assert secret not in result.stdout
        assert secret not in result.stderr
    data = orjson.loads(result.stdout)
    assert data["source"] == str(config_file)
    assert data["http"]["admin_tokens"] == ["**********"]
    assert data["providers"]["sink"]["api_key"] == "**********"
    assert data["providers"]["sink"]["endpoint"] == "http://127.0.0.1:8026"
    assert data["database"]["dsn"] == "postgresql://mailerd:**********@db.internal/mailerd"
    assert data["writer"]["flush_rows"] == 123


async def test_check_config_accepts_the_example_file() -> None:
    result = await mailerd("check-config", "--config", str(EXAMPLE), env=base_env())
    assert result.returncode == 0, result.stderr
    assert sorted(orjson.loads(result.stdout)["providers"]) == ["ses", "sink"]


@pytest.mark.parametrize("command", ["check-config", "run"])
async def test_a_key_a_provider_kind_needs_is_refused_by_check_config_and_run(
    tmp_path: Path, command: str
) -> None:
    # check-config printed this file and exited 0; `mailerd run` refused it only once it had
    # reached the database, without naming the file.
    path = tmp_path / "mailerd.toml"
    path.write_text('[providers.news]\nkind = "sendgrid"\n', encoding="utf-8")
    env = base_env(MAILERD_CONFIG=str(path), MAILERD_DSN="postgresql://mailerd@127.0.0.1:1/none")
    result = await mailerd(command, env=env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"config error: {path}: [providers.news] api_key: required for kind sendgrid\n"


@pytest.mark.skipif(Path(config.DEFAULT_CONFIG_PATH).exists(), reason="this machine has a default config")
async def test_check_config_without_a_file_shows_the_defaults() -> None:
    result = await mailerd("check-config", env=base_env())
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["source"] == "<defaults>"
    assert data["database"]["dsn"] == "embedded"


async def test_bad_config_file_exits_1_with_the_error_on_stderr(bad_config_file: Path) -> None:
    bad = bad_config_file
    for args, env in [
        (("check-config", "--config", str(bad)), base_env()),
        (("migrate",), base_env(MAILERD_CONFIG=str(bad))),
    ]:
        result = await mailerd(*args, env=env)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (
            f'config error: {bad}: [providers.ses] rate_per_s: expected a number, got "fast"\n'
        )


async def test_missing_config_file_and_bad_environment_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    result = await mailerd("check-config", "--config", str(missing), env=base_env())
    assert (result.returncode, result.stderr) == (1, f"config error: {missing}: no such file\n")
    result = await mailerd("check-config", env=base_env(MAILERD_CONFIG=str(missing)))
    assert (result.returncode, result.stderr) == (1, f"config error: {missing}: no such file\n")
    result = await mailerd("check-config", env=base_env(MAILERD_WRITER__FLUSH_ROWZ="1"))
    assert result.returncode == 1
    assert result.stderr.startswith("config error: ")
    assert "flush_rowz" in result.stderr


@pytest.mark.parametrize(
    "text",
    ['[providers.ses]\nkind = "ses"\n', '[webhooks.ses]\ncert_dir = "/etc/mailerd/sns"\n'],
)
async def test_ses_webhook_without_topics_is_refused_by_run_and_check_config(
    tmp_path: Path, text: str
) -> None:
    """SNS signs every account's topics alike: an SES webhook in use must name its topics (or
    opt out with accept_any_topic), else any AWS account could subscribe it and suppress."""
    path = tmp_path / "mailerd.toml"
    path.write_text(text, encoding="utf-8")
    for command in ("check-config", "run"):
        result = await mailerd(command, "--config", str(path), env=base_env())
        assert (result.returncode, result.stdout) == (1, ""), (command, result.stderr)
        assert result.stderr.startswith(f"config error: {path}: [webhooks.ses] topic_arns: empty"), command
        assert "accept_any_topic = true" in result.stderr
    for fix in ('topic_arns = ["arn:aws:sns:us-east-1:123456789012:mine"]', "accept_any_topic = true"):
        path.write_text(text + ("" if "[webhooks.ses]" in text else "[webhooks.ses]\n") + fix + "\n")
        result = await mailerd("check-config", "--config", str(path), env=base_env())
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://mailerd@db.internal/mailerd?sslmode=require&password=pw-hidden",
            "postgresql://mailerd@db.internal/mailerd?sslmode=require&password=**********",
        ),
        (
            "postgres://mailerd:pw-hidden@db1:5432,db2:5433/mailerd?pass%77ord=pw-hidden",
            "postgres://mailerd:**********@db1:5432,db2:5433/mailerd?pass%77ord=**********",
        ),
    ],
)
async def test_check_config_hides_a_password_in_any_part_of_the_dsn(dsn: str, shown: str) -> None:
    env = base_env(MAILERD_DSN=dsn, MAILERD_REPORTS__DSN=dsn)
    result = await mailerd("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "pw-hidden" not in result.stdout + result.stderr
    data = orjson.loads(result.stdout)
    assert data["database"]["dsn"] == shown
    assert data["reports"]["dsn"] == shown


async def test_a_key_value_dsn_is_a_config_error_that_does_not_show_it() -> None:
    result = await mailerd("check-config", env=base_env(MAILERD_DSN="host=db password='pw hidden'"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("config error: ")
    assert "[database] dsn: expected a postgresql:// URL" in result.stderr
    assert "hidden" not in result.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
async def test_an_empty_secret_file_is_a_config_error_at_load(tmp_path: Path, command: str) -> None:
    secret = tmp_path / "unsubscribe_secret"
    secret.write_text("\n", encoding="utf-8")
    path = tmp_path / "mailerd.toml"
    path.write_text(f'[unsubscribe]\nsecret_file = "{secret}"\n', encoding="utf-8")
    result = await mailerd(command, "--config", str(path), env=base_env())
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"config error: {path}: [unsubscribe] secret_file: {secret} is empty\n"


async def test_a_zero_body_limit_is_a_config_error() -> None:
    result = await mailerd("check-config", env=base_env(MAILERD_HTTP__MAX_BODY_BYTES="0"))
    assert result.returncode == 1
    assert result.stderr.endswith(
        "[http] max_body_bytes: must be at least 1024 (from the environment: MAILERD_HTTP__MAX_BODY_BYTES)\n"
    )
