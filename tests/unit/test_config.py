"""Configuration: TOML + environment, errors that name the file and key, secrets kept secret."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from mailerd import config
from mailerd.config import loading

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "mailerd.example.toml"

FULL = """
[database]
dsn = "postgresql://mailerd@db.internal:5432/mailerd"
embedded_data_dir = "/var/lib/mailerd/pg"
pool_min_size = 1
pool_max_size = 20
command_timeout_s = 5

[http]
listen = "0.0.0.0:9000"
max_body_bytes = 2048
public_url = "https://mailer.example.com"

[writer]
flush_rows = 500
flush_interval_ms = 50
max_buffer_rows = 1000

[scheduler]
shard_size = 1000
max_shards_per_node = 2
window_size = 100
queue_batches = 8
poll_interval_s = 0.5
reservation_step = 400
resend_uncertain = true

[retention]
days = 30
partitions_ahead_days = 3

[logging]
level = "debug"
format = "json"

[node]
name = "node-a"
shutdown_grace_s = 10

[providers.ses]
kind = "ses"
region = "eu-west-1"
rate_per_s = 14
burst = 28
concurrency = 4
batch_size = 50
max_attempts = 3
timeout_s = 10
backoff_base_s = 0.1
backoff_max_s = 5
max_error_rate = 0.2
configuration_set = "mailerd-events"
seed_rate_from_account = true

[providers.sink]
kind = "sink"
endpoint = "http://127.0.0.1:8026"
"""

SES_TABLE = '[providers.ses]\nkind = "ses"'  # a provider the environment overrides


def write(tmp_path: Path, text: str, name: str = "mailerd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env=env or {})
    return str(info.value)


# --- defaults and a full file ----------------------------------------------------------------


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    loaded = config.load(env={})
    assert loaded == config.Config()
    assert loaded.source == "<defaults>"
    assert loaded.database.is_embedded
    assert loaded.http.host_port == ("127.0.0.1", 8025)
    assert dict(loaded.providers) == {}
    assert loaded.writer.flush_rows == 10_000
    assert loaded.retention == config.RetentionConfig(days=90, partitions_ahead_days=7)


def test_full_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    loaded = config.load(path, env={})
    assert loaded.source == str(path)
    assert loaded.database.dsn.reveal() == "postgresql://mailerd@db.internal:5432/mailerd"
    assert not loaded.database.is_embedded
    assert loaded.database.command_timeout_s == 5.0
    assert isinstance(loaded.database.command_timeout_s, float)
    assert loaded.http.host_port == ("0.0.0.0", 9000)
    assert loaded.writer == config.WriterConfig(500, 50, 1000)
    assert loaded.scheduler.resend_uncertain is True
    assert loaded.scheduler.reservation_step == 400
    assert loaded.retention.days == 30
    assert loaded.logging == config.LoggingConfig("debug", "json")
    assert loaded.node == config.NodeConfig("node-a", 10.0)
    assert sorted(loaded.providers) == ["ses", "sink"]
    ses = loaded.provider("ses")
    assert (ses.name, ses.kind, ses.region, ses.rate_per_s, ses.burst) == (
        "ses",
        "ses",
        "eu-west-1",
        14.0,
        28,
    )
    assert ses.seed_rate_from_account is True
    assert ses.api_key is None
    sink = loaded.provider("sink")
    assert (sink.kind, sink.endpoint, sink.batch_size) == ("sink", "http://127.0.0.1:8026", 50)


def test_config_is_frozen(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, FULL), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.writer.flush_rows = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        loaded.providers["x"] = config.ProviderConfig()  # type: ignore[index]


def test_unknown_provider_names_the_configured_ones(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, FULL), env={})
    with pytest.raises(config.ConfigError, match=r"unknown provider 'nope' \(configured: ses, sink\)"):
        loaded.provider("nope")
    with pytest.raises(config.ConfigError, match="none configured"):
        config.Config().provider("ses")


def test_ipv6_listen() -> None:
    assert config.parse_listen("[::1]:8025") == ("::1", 8025)


# --- errors name the file and the key ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[providers.ses]\nrate_per_s = "fast"', '[providers.ses] rate_per_s: expected a number, got "fast"'),
        ("[bogus]\nx = 1", "[bogus]: unknown section"),
        ("[writer]\nflush_rowz = 1", "[writer] flush_rowz: unknown key"),
        ("[providers.ses]\nspeed = 1", "[providers.ses] speed: unknown key"),
        ("[writer]\nflush_rows = 1.5", "[writer] flush_rows: expected a whole number, got 1.5"),
        ("[writer]\nflush_rows = true", "[writer] flush_rows: expected a whole number, got true"),
        ("[scheduler]\nresend_uncertain = 1", "[scheduler] resend_uncertain: expected true or false, got 1"),
        ("[node]\nname = 7", "[node] name: expected a string, got 7"),
        (
            '[logging]\nformat = "xml"',
            "[logging] format: expected one of 'auto', 'json', 'console', got \"xml\"",
        ),
        ('[providers.x]\nkind = "pigeon"', "[providers.x] kind: expected one of ses, sendgrid, mailgun"),
        ("writer = 3", "[writer]: expected a table"),
        ("providers = 3", "[providers]: expected a table of providers"),
        ("[providers]\nses = 3", "[providers.ses]: expected a table"),
        ('[node]\nname_file = "/x"', "[node] name_file: only secrets can be read from a file"),
        ('[http]\nlisten_file = "/x"', "[http] listen_file: only secrets can be read from a file"),
        ("[providers.ses]\napi_key_file = 3", "[providers.ses] api_key_file: expected a file path, got 3"),
    ],
)
def test_errors_name_file_section_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    assert error.startswith(f"config error: {path}: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[providers.ses]\nbatch_size = 0", "[providers.ses] batch_size: must be from 1 to 1000"),
        ("[providers.ses]\nbatch_size = 1001", "[providers.ses] batch_size: must be from 1 to 1000"),
        ("[providers.ses]\nrate_per_s = -1", "[providers.ses] rate_per_s: must be 0 (unlimited) or more"),
        # 1e-300 froze the lane's workers on an endless wait
        (
            "[providers.ses]\nrate_per_s = 1e-300",
            "[providers.ses] rate_per_s: must be 0 (unlimited) or at least 0.001",
        ),
        ("[providers.ses]\nconcurrency = 0", "[providers.ses] concurrency: must be at least 1"),
        ("[providers.ses]\nmax_attempts = 0", "[providers.ses] max_attempts: must be at least 1"),
        ("[providers.ses]\nburst = -1", "[providers.ses] burst: must be 0 (one second of rate) or more"),
        ("[providers.ses]\naccount_refresh_s = 0", "[providers.ses] account_refresh_s: must be at least 1"),
        (
            "[providers.ses]\naccount_refresh_s = 90000",
            "[providers.ses] account_refresh_s: must be at most 86400",
        ),
        ("[providers.ses]\nmax_error_rate = 0", "[providers.ses] max_error_rate: must be in (0, 1]"),
        ('[http]\nlisten = "localhost"', "[http] listen: expected HOST:PORT, got 'localhost'"),
        ('[http]\nlisten = "host:99999"', "[http] listen: expected HOST:PORT, got 'host:99999'"),
        (  # it named neither the section nor the key
            '[webhooks]\nsoft_bounce_window = "fast"',
            "[webhooks] soft_bounce_window: expected a duration such as 72h or 7d, got 'fast'",
        ),
        ("[writer]\nflush_rows = 0", "[writer] flush_rows: must be at least 1"),
        (
            "[writer]\nflush_rows = 10\nmax_buffer_rows = 5",
            "[writer] max_buffer_rows: must be at least flush_rows",
        ),
        ("[writer]\nflush_interval_ms = 0", "[writer] flush_interval_ms: must be at least 1"),
        (
            '[webhooks.ses]\ntopic_arns = ["arn:aws:sns:us-east-1:1:t"]\naccept_any_topic = true',
            "[webhooks.ses] accept_any_topic: true contradicts topic_arns (set one or the other)",
        ),
        ("[scheduler]\nshard_size = 0", "[scheduler] shard_size: must be at least 1"),
        ("[scheduler]\nwindow_size = 0", "[scheduler] window_size: must be at least 1"),
        ("[scheduler]\nqueue_batches = 0", "[scheduler] queue_batches: must be at least 1"),
        (
            "[scheduler]\nmax_shards_per_node = -1",
            "[scheduler] max_shards_per_node: must be 0 (this node sends nothing) or more",
        ),
        ("[retention]\ndays = 0", "[retention] days: must be at least 1"),
        ("[node]\nshutdown_grace_s = 0", "[node] shutdown_grace_s: must be positive"),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert load_error(path) == f"config error: {path}: {message}"


@pytest.mark.parametrize("days", [0, 1])
def test_partitions_are_created_at_least_a_day_ahead(tmp_path: Path, days: int) -> None:
    """With 1, only today's partition existed: at midnight the new day's rows went to the
    default partition until the next hourly round, which moved them (writes waiting meanwhile),
    and a round deferred behind a long reader left the whole day there."""
    message = "[retention] partitions_ahead_days: must be at least 2"
    message += " (tomorrow's partition must exist before midnight)"
    path = write(tmp_path, f"[retention]\npartitions_ahead_days = {days}")
    assert load_error(path) == f"config error: {path}: {message}"
    empty = write(tmp_path, "", "empty.toml")
    assert load_error(empty, env={"MAILERD_RETENTION__PARTITIONS_AHEAD_DAYS": str(days)}).endswith(
        f"{message} (from the environment: MAILERD_RETENTION__PARTITIONS_AHEAD_DAYS)"
    )
    two = config.load(empty, env={"MAILERD_RETENTION__PARTITIONS_AHEAD_DAYS": "2"})
    assert two.retention.partitions_ahead_days == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The body limit: 0 used to turn it off, negative values were accepted.
        ("[http]\nmax_body_bytes = 0", "[http] max_body_bytes: must be at least 1024"),
        ("[http]\nmax_body_bytes = -1", "[http] max_body_bytes: must be at least 1024"),
        ("[http]\nmax_body_bytes = 1073741824", "[http] max_body_bytes: must be at most 67108864"),
        (
            '[http]\npublic_url = "mailer.example.com"',
            "[http] public_url: expected an http:// or https:// URL",
        ),
        ("[database]\npool_max_size = 0", "[database] pool_max_size: must be at least 1"),
        ("[database]\npool_min_size = -1", "[database] pool_min_size: must be at least 0"),
        (
            "[database]\npool_min_size = 5\npool_max_size = 4",
            "[database] pool_min_size: must be at most pool_max_size",
        ),
        ("[database]\ncommand_timeout_s = 0", "[database] command_timeout_s: must be positive"),
        ("[database]\ncommand_timeout_s = 1e9", "[database] command_timeout_s: must be at most 86400"),
        ("[providers.ses]\nconcurrency = 100000", "[providers.ses] concurrency: must be at most 1000"),
        ("[providers.ses]\nrate_per_s = 1e12", "[providers.ses] rate_per_s: must be at most 100000"),
        (
            "[providers.ses]\nrate_per_s = inf",
            "[providers.ses] rate_per_s: expected a finite number, got inf",
        ),
        (
            "[providers.ses]\nrate_per_s = nan",
            "[providers.ses] rate_per_s: expected a finite number, got nan",
        ),
        (
            "[providers.ses]\nbatch_size = 51",
            "[providers.ses] batch_size: must be at most 50 for kind ses (the provider's API limit)",
        ),
        (
            '[providers.s]\nkind = "sink"\nbatch_size = 100',
            "[providers.s] batch_size: must be at most 50 for kind sink (the provider's API limit)",
        ),
        (
            '[providers.p]\nkind = "postmark"\nbatch_size = 501',
            "[providers.p] batch_size: must be at most 500 for kind postmark (the provider's API limit)",
        ),
        ("[providers.ses]\nmax_attempts = 1000", "[providers.ses] max_attempts: must be at most 100"),
        ("[providers.ses]\ntimeout_s = 0", "[providers.ses] timeout_s: must be positive"),
        ("[providers.ses]\ntimeout_s = -5", "[providers.ses] timeout_s: must be positive"),
        ("[providers.ses]\nbackoff_base_s = 0", "[providers.ses] backoff_base_s: must be positive"),
        (
            "[providers.ses]\nbackoff_base_s = 5\nbackoff_max_s = 1",
            "[providers.ses] backoff_max_s: must be at least backoff_base_s",
        ),
        ("[providers.ses]\nmax_error_rate = 1.5", "[providers.ses] max_error_rate: must be in (0, 1]"),
        ("[providers.ses]\nerror_window = 9", "[providers.ses] error_window: must be at least 10"),
        ("[providers.ses]\nburst = 10000000", "[providers.ses] burst: must be at most 1000000"),
        ("[writer]\nflush_rows = -3", "[writer] flush_rows: must be at least 1"),
        ("[writer]\nflush_interval_ms = 3600000", "[writer] flush_interval_ms: must be at most 60000"),
        (
            "[writer]\nflush_rows = 1000000\nmax_buffer_rows = 100000000",
            "[writer] max_buffer_rows: must be at most 10000000",
        ),
        ("[scheduler]\nwindow_size = -1", "[scheduler] window_size: must be at least 1"),
        ("[scheduler]\npoll_interval_s = 0", "[scheduler] poll_interval_s: must be at least 0.01"),
        ("[scheduler]\npoll_interval_s = -1", "[scheduler] poll_interval_s: must be at least 0.01"),
        ("[scheduler]\nreservation_step = -1", "[scheduler] reservation_step: must be 0 (derived) or more"),
        ("[scheduler]\nqueue_batches = 1000000", "[scheduler] queue_batches: must be at most 100000"),
        (
            "[retention]\npartitions_ahead_days = 400",
            "[retention] partitions_ahead_days: must be at most 366",
        ),
        ("[node]\nshutdown_grace_s = -1", "[node] shutdown_grace_s: must be positive"),
        ("[node]\nshutdown_grace_s = 86400", "[node] shutdown_grace_s: must be at most 3600"),
        ("[webhooks]\nsoft_bounce_limit = 0", "[webhooks] soft_bounce_limit: must be at least 1"),
        ('[webhooks]\nsoft_bounce_window = "0s"', "[webhooks] soft_bounce_window: must be from 1s to 365d"),
        ('[webhooks]\nsoft_bounce_window = "400d"', "[webhooks] soft_bounce_window: must be from 1s to 365d"),
        ("[content]\nmax_loop_iterations = 0", "[content] max_loop_iterations: must be at least 1"),
        ("[content]\nmax_output_bytes = 100", "[content] max_output_bytes: must be at least 1024"),
        (
            "[content]\nmax_output_bytes = 1e6",
            "[content] max_output_bytes: expected a whole number, got 1000000.0",
        ),
        ("[content]\nmax_render_ms = 0", "[content] max_render_ms: must be at least 1"),
        ("[content]\nrender_timeout_ms = 3600000", "[content] render_timeout_ms: must be at most 60000"),
        ("[webhooks.ses]\nmax_age_s = -1", "[webhooks.ses] max_age_s: must be 0 (off) or more"),
        ("[webhooks.mailgun]\nmax_age_s = 1e10", "[webhooks.mailgun] max_age_s: must be at most 2592000"),
        (
            "[webhooks.postmark]\nmax_age_s = nan",
            "[webhooks.postmark] max_age_s: expected a finite number, got nan",
        ),
        ("[reports]\nload_connections = 0", "[reports] load_connections: must be at least 1"),
        ("[reports]\nload_connections = 17", "[reports] load_connections: must be at most 16"),
        ("[relay]\nread_connections = 0", "[relay] read_connections: must be at least 1"),
        ("[relay]\nread_connections = 17", "[relay] read_connections: must be at most 16"),
    ],
)
def test_every_number_has_a_range(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert load_error(path) == f"config error: {path}: {message}"


def test_content_limits_load_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[content]\nmax_loop_iterations = 500\nmax_output_bytes = 4096")
    loaded = config.load(path, env={"MAILERD_CONTENT__MAX_RENDER_MS": "25"})
    assert loaded.content == config.ContentConfig(
        max_loop_iterations=500, max_output_bytes=4096, max_render_ms=25, render_timeout_ms=2000
    )


def test_the_range_limits_themselves_are_accepted(tmp_path: Path) -> None:
    text = """
[database]
pool_min_size = 0
pool_max_size = 1000
[http]
max_body_bytes = 1024
listen = "127.0.0.1:0"
[providers.sg]
kind = "sendgrid"
batch_size = 1000
rate_per_s = 0
[providers.sink]
kind = "sink"
batch_size = 50
[writer]
flush_rows = 1
flush_interval_ms = 60000
[scheduler]
poll_interval_s = 0.01
[webhooks]
soft_bounce_window = "365d"
[webhooks.ses]
max_age_s = 0
"""
    loaded = config.load(write(tmp_path, text), env={})
    assert loaded.http.max_body_bytes == 1024
    assert loaded.provider("sg").batch_size == 1000


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nname = "n\xe9"\n')
    assert load_error(path) == f"config error: {path}: not UTF-8 text"


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[writer\nflush_rows = 1")
    assert load_error(path).startswith(f"config error: {path}: ")


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    assert load_error(tmp_path) == f"config error: {tmp_path}: Is a directory"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert load_error(path) == f"config error: {path}: no such file"
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(env={"MAILERD_CONFIG": str(path)})


def test_missing_default_file_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    assert config.load(env={}).source == "<defaults>"


def test_a_default_path_under_a_regular_file_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").write_text("", encoding="utf-8")  # ENOTDIR: no such file, as ENOENT
    monkeypatch.setattr(loading, "DEFAULT_CONFIG_PATH", str(tmp_path / "etc" / "mailerd.toml"))
    assert config.load(env={}).source == "<defaults>"


def test_a_default_file_that_cannot_be_opened_is_an_error_not_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path.exists() answered False for it, and the daemon ran on an embedded database
    loop = tmp_path / "mailerd.toml"
    loop.symlink_to(loop)
    monkeypatch.setattr(loading, "DEFAULT_CONFIG_PATH", str(loop))
    with pytest.raises(config.ConfigError) as info:
        config.load(env={})
    assert str(info.value) == f"config error: {loop}: Too many levels of symbolic links"


@pytest.mark.skipif(os.geteuid() == 0, reason="root searches any directory")
def test_a_default_file_in_an_unsearchable_directory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # from Python 3.12, Path.exists() answers False for it
    directory = tmp_path / "etc"
    directory.mkdir()
    (directory / "mailerd.toml").write_text("[logging]\n", encoding="utf-8")
    monkeypatch.setattr(loading, "DEFAULT_CONFIG_PATH", str(directory / "mailerd.toml"))
    directory.chmod(0)
    try:
        with pytest.raises(config.ConfigError) as info:
            config.load(env={})
    finally:
        directory.chmod(0o700)
    assert str(info.value) == f"config error: {directory / 'mailerd.toml'}: Permission denied"


def test_an_empty_config_path_is_named() -> None:
    # it was "config error: .: Is a directory" (Path("") is the working directory)
    with pytest.raises(config.ConfigError) as info:
        config.load(env={"MAILERD_CONFIG": ""})
    assert str(info.value) == (
        f"config error: environment: MAILERD_CONFIG: empty (unset it for {config.DEFAULT_CONFIG_PATH})"
    )
    with pytest.raises(config.ConfigError) as info:
        config.load("", env={})
    assert str(info.value) == "config error: --config: empty path"


def test_mailerd_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    assert config.load(env={"MAILERD_CONFIG": str(path)}).source == str(path)


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("", False),  # the SES webhook is not in use: its endpoint refuses every topic (403)
        ("[webhooks.ses]\nconfirm_subscriptions = true", False),  # a default value
        ('[providers.sink]\nkind = "sink"', False),
        ('[providers.ses]\nkind = "ses"', True),
        ('[webhooks.ses]\ncert_dir = "/etc/mailerd/sns"', True),
        ("[webhooks.ses]\nmax_age_s = 600", True),
        ('[providers.ses]\nkind = "ses"\n[webhooks.ses]\naccept_any_topic = true', False),
        ('[providers.ses]\nkind = "ses"\n[webhooks.ses]\ntopic_arns = ["arn:aws:sns:us-east-1:1:t"]', False),
        ('[providers.ses]\nkind = "ses"\n[webhooks.ses]\nverify_signatures = false', False),
    ],
)
def test_ses_webhook_in_use_needs_its_topics_to_serve(tmp_path: Path, text: str, refused: bool) -> None:
    """Loading works (a CLI command serves no webhook); ``mailerd run`` and ``check-config``
    refuse what :func:`config.ses_topic_problem` names (tests/integration/test_cli_basics.py)."""
    problem = config.ses_topic_problem(config.load(write(tmp_path, text), env={}))
    assert (problem is not None) == refused
    if problem:
        assert problem.startswith("[webhooks.ses] topic_arns: empty")
        assert "accept_any_topic = true" in problem


# --- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env_name"),
    [
        ('[providers.ses]\napi_key = "sk-123"', "MAILERD_PROVIDERS__SES__API_KEY"),
        ('[providers.ses]\nsecret_access_key = "x"', "MAILERD_PROVIDERS__SES__SECRET_ACCESS_KEY"),
        ('[providers.ses]\naccess_key_id = "x"', "MAILERD_PROVIDERS__SES__ACCESS_KEY_ID"),
        ('[http]\nadmin_tokens = ["t"]', "MAILERD_HTTP__ADMIN_TOKENS"),
    ],
)
def test_inline_secrets_are_refused(tmp_path: Path, text: str, env_name: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    assert error.startswith(f"config error: {path}: [")
    assert "secrets may not be written in the file" in error
    assert env_name in error
    assert "sk-123" not in error


def test_an_inline_dsn_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, '[reports]\ndsn = "postgresql://reports/mailerd"')
    loaded = config.load(path, env={}).reports
    assert loaded is not None
    assert loaded.dsn == config.Secret("postgresql://reports/mailerd")
    assert loaded.retention_days == 400


def test_the_old_reports_dsn_names_its_replacement(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nreports_dsn = "postgresql://replica/mailerd"')
    assert "replaced by [reports] dsn" in load_error(path, {})


def test_an_embedded_reports_database_needs_the_embedded_server(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\ndsn = "postgresql://db/m"\n[reports]\ndsn = "embedded"')
    assert '[reports] dsn: "embedded" needs' in load_error(path, {})


def test_secret_files_are_read_and_redacted(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-live-abc\n", encoding="utf-8")
    (tmp_path / "tokens").write_text("tok-one, tok-two\n", encoding="utf-8")
    (tmp_path / "dsn").write_text("postgresql://mailerd:pw-xyz@db/mailerd\n", encoding="utf-8")
    path = write(
        tmp_path,
        f"""
[database]
dsn_file = "{tmp_path / "dsn"}"
[http]
admin_tokens_file = "{tmp_path / "tokens"}"
[providers.pm]
kind = "postmark"
api_key_file = "{tmp_path / "key"}"
""",
    )
    loaded = config.load(path, env={})
    assert loaded.provider("pm").api_key == config.Secret("sk-live-abc")
    assert [t.reveal() for t in loaded.http.admin_tokens] == ["tok-one", "tok-two"]
    assert loaded.database.dsn.reveal() == "postgresql://mailerd:pw-xyz@db/mailerd"
    shown = repr(loaded) + str(loaded) + repr(config.redacted(loaded))
    for secret in ("sk-live-abc", "tok-one", "tok-two", "pw-xyz"):
        assert secret not in shown
    data = config.redacted(loaded)
    assert data["providers"]["pm"]["api_key"] == "**********"
    assert data["http"]["admin_tokens"] == ["**********", "**********"]
    # The DSN keeps what an operator needs (user, host, database), not the password.
    assert data["database"]["dsn"] == "postgresql://mailerd:**********@db/mailerd"
    assert data["providers"]["pm"]["kind"] == "postmark"
    assert data["writer"]["flush_rows"] == 10_000


def test_secret_repr_and_str() -> None:
    secret = config.Secret("hunter2")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert "hunter2" not in text
    assert secret.reveal() == "hunter2"


def test_unreadable_secret_file(tmp_path: Path) -> None:
    path = write(tmp_path, f'[providers.ses]\napi_key_file = "{tmp_path / "nope"}"')
    assert load_error(path) == (
        f"config error: {path}: [providers.ses] api_key_file: "
        f"cannot read {tmp_path / 'nope'}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"  \n\t\n", "is empty"),
        (b"\xff\xfe secret", "not UTF-8 text (write the secret as text, e.g. `openssl rand -hex 32`)"),
        (b"line-one\nline-two\n", "holds control characters (one line of text expected)"),
        (b"nul\x00here", "holds control characters (one line of text expected)"),
    ],
)
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("unsubscribe", "secret"),
        ("providers.ses", "api_key"),
        ("webhooks.mailgun", "signing_key"),
        ("database", "dsn"),
        ("http", "admin_tokens"),
    ],
)
def test_a_bad_secret_file_is_a_config_error_naming_the_key(
    tmp_path: Path, section: str, key: str, content: bytes, problem: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    path = write(tmp_path, f'[{section}]\n{key}_file = "{secret}"')
    error = load_error(path)
    assert error == f"config error: {path}: [{section}] {key}_file: {secret} {problem}"
    assert "line-two" not in error


def test_a_secret_file_that_is_a_directory(tmp_path: Path) -> None:
    path = write(tmp_path, f'[unsubscribe]\nsecret_file = "{tmp_path}"')
    assert load_error(path) == (
        f"config error: {path}: [unsubscribe] secret_file: cannot read {tmp_path}: Is a directory"
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("MAILERD_UNSUBSCRIBE__SECRET", "[unsubscribe] secret"),
        ("MAILERD_PROVIDERS__SES__API_KEY", "[providers.ses] api_key"),
        ("MAILERD_WEBHOOKS__POSTMARK__PASSWORD", "[webhooks.postmark] password"),
        ("MAILERD_DSN", "[database] dsn"),
    ],
)
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_secret_in_the_environment_is_a_config_error(
    tmp_path: Path, name: str, key: str, value: str
) -> None:
    path = write(tmp_path, SES_TABLE)
    assert load_error(path, {name: value}) == (
        f"config error: {path}: {key}: must not be empty (from the environment: {name})"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("host=db password=pw-secret", "expected a postgresql:// URL (asyncpg takes no key=value"),
        ("postgresql://u:pw?secret@db/d", "must be percent-encoded"),
        ("postgresql://u:pw/secret@db/d", "a port is not a number"),
    ],
)
@pytest.mark.parametrize("env_name", ["MAILERD_DSN", "MAILERD_REPORTS__DSN"])
def test_a_dsn_asyncpg_would_misread_is_refused_without_showing_it(
    tmp_path: Path, env_name: str, value: str, message: str
) -> None:
    path = write(tmp_path, "")
    error = load_error(path, {env_name: value})
    section = "[database] dsn" if env_name == "MAILERD_DSN" else "[reports] dsn"
    assert error.startswith(f"config error: {path}: {section}: ")
    assert message in error
    assert "secret" not in error


def test_redacted_hides_passwords_in_every_dsn_and_url(tmp_path: Path) -> None:
    env = {
        "MAILERD_DSN": "postgresql://u@db/d?sslmode=require&password=pw-query",
        "MAILERD_REPORTS__DSN": "postgresql://r:pw-reports@replica/d",
        "MAILERD_UNSUBSCRIBE__SECRET": "pw-unsubscribe",
        "MAILERD_WEBHOOKS__MAILGUN__SIGNING_KEY": "pw-mailgun",
        "MAILERD_WEBHOOKS__POSTMARK__PASSWORD": "pw-postmark",
        "MAILERD_PROVIDERS__SES__SECRET_ACCESS_KEY": "pw-aws",
        "MAILERD_ADMIN_TOKEN": "pw-admin",
    }
    loaded = config.load(write(tmp_path, SES_TABLE), env=env)
    data = config.redacted(loaded)
    shown = repr(data) + repr(loaded) + str(loaded)
    assert "pw-" not in shown
    assert data["database"]["dsn"] == "postgresql://u@db/d?sslmode=require&password=**********"
    assert data["reports"]["dsn"] == "postgresql://r:**********@replica/d"
    assert data["providers"]["ses"]["secret_access_key"] == "**********"
    assert data["unsubscribe"]["secret"] == "**********"


def test_credentials_in_a_provider_endpoint_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, SES_TABLE)
    error = load_error(path, {"MAILERD_PROVIDERS__SES__ENDPOINT": "https://user:pw-endpoint@ses.example/"})
    assert error == (
        f"config error: {path}: [providers.ses] endpoint: credentials do not belong in the URL; "
        "give them as api_key (from the environment: MAILERD_PROVIDERS__SES__ENDPOINT)"
    )
    # smtp's host:port has no scheme: its user info was taken, and check-config printed it.
    smtp = write(
        tmp_path, '[providers.relay]\nkind = "smtp"\nendpoint = "mailer:pw-smtp@smtp.example.com:587"'
    )
    assert load_error(smtp) == (
        f"config error: {smtp}: [providers.relay] endpoint: credentials do not belong in the URL; "
        "give them as api_key"
    )


@pytest.mark.parametrize(
    ("kind", "endpoint"),
    [
        ("ses", "email.eu-west-1.amazonaws.com"),
        ("sink", "127.0.0.1:8026"),
        ("sendgrid", "htps://api.sendgrid.com"),
    ],
)
def test_an_api_endpoint_that_is_no_http_url_is_refused(tmp_path: Path, kind: str, endpoint: str) -> None:
    # Taken, an SES campaign failed to prepare every second for ever ('NoneType' object has no
    # attribute 'split'), and an API call without a scheme never left (aiohttp's InvalidURL).
    path = write(tmp_path, f'[providers.p]\nkind = "{kind}"\nendpoint = "{endpoint}"')
    assert load_error(path) == (
        f"config error: {path}: [providers.p] endpoint: expected an http:// or https:// URL "
        f"(empty: the provider's own), got {endpoint!r}"
    )


@pytest.mark.parametrize("url", ["https://h.example.com:44x3", "https://h.example.com:99999", "https://[::1"])
@pytest.mark.parametrize(
    ("table", "key"),
    [("[http]", "public_url"), ('[providers.p]\nkind = "sendgrid"', "endpoint"), ("[callbacks.app]", "url")],
)
def test_an_http_url_whose_port_or_host_does_not_parse_is_refused(
    tmp_path: Path, table: str, key: str, url: str
) -> None:
    # The form check took them, and every request to it then raised ValueError in aiohttp
    # (a provider's calls logged their recipients unknown, an SES campaign never prepared, a
    # callback endpoint was retried for ever, every unsubscribe link was broken).
    path = write(tmp_path, f'{table}\n{key} = "{url}"')
    section = table.split("\n")[0]
    assert f"{section} {key}: expected an http:// or https:// URL" in load_error(path)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("MAILERD_PROVIDERS__SES__RATE_PER_S", "1e9", "[providers.ses] rate_per_s: must be at most 100000"),
        ("MAILERD_HTTP__PUBLIC_URL", "mailer.example.com", "[http] public_url: expected an http"),
        ("MAILERD_PROVIDERS__SES__ENDPOINT", "email.eu-west-1.amazonaws.com", "[providers.ses] endpoint:"),
        ("MAILERD_DATABASE__POOL_MIN_SIZE", "50", "[database] pool_min_size: must be at most pool_max_size"),
    ],
)
def test_a_value_out_of_range_set_through_the_environment_names_its_variable(
    tmp_path: Path, variable: str, value: str, problem: str
) -> None:
    # Only an unknown key or a wrong type named the variable; a value of the right type but out
    # of range (or refused by a check across keys) named the file alone, which holds another
    # value or none: the operator looked for the key in the file.
    path = write(tmp_path, '[providers.ses]\nkind = "ses"\nrate_per_s = 14')
    message = load_error(path, env={variable: value})
    assert message.startswith(f"config error: {path}: {problem}"), message
    assert message.endswith(f" (from the environment: {variable})"), message
    assert message.count("from the environment") == 1


def test_a_value_out_of_range_in_the_file_names_no_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.ses]\nkind = "ses"\nrate_per_s = 1e9')
    message = load_error(path, env={"MAILERD_PROVIDERS__SES__CONCURRENCY": "4"})
    assert message == f"config error: {path}: [providers.ses] rate_per_s: must be at most 100000"


def test_redact_dsn() -> None:
    assert config.redact_dsn("postgresql://u:p@h:5432/d") == "postgresql://u:**********@h:5432/d"
    assert config.redact_dsn("postgresql://u@h/d") == "postgresql://u@h/d"
    assert config.redact_dsn("embedded") == "embedded"


# --- environment -------------------------------------------------------------------------


def test_env_dsn_and_admin_tokens(tmp_path: Path) -> None:
    env = {"MAILERD_DSN": "postgresql://u:pw-xyz@h/d", "MAILERD_ADMIN_TOKEN": " tok-1 ,tok-2,, "}
    loaded = config.load(write(tmp_path, FULL), env=env)
    assert loaded.database.dsn.reveal() == "postgresql://u:pw-xyz@h/d"
    assert [t.reveal() for t in loaded.http.admin_tokens] == ["tok-1", "tok-2"]
    for secret in ("pw-xyz", "tok-1", "tok-2"):
        assert secret not in repr(loaded)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("tok-1,CHANGE-ME", "CHANGE-ME is the example environment file's placeholder"),
        ("tok-1,a\tb", "holds control characters"),
    ],
)
def test_an_admin_token_error_names_the_shortcut_variable(value: str, problem: str) -> None:
    # the message named [http] admin_tokens only: not in the file, and not the variable set
    with pytest.raises(config.ConfigError) as info:
        config.from_mapping({}, env={"MAILERD_ADMIN_TOKEN": value})
    assert problem in str(info.value)
    assert str(info.value).endswith("(from the environment: MAILERD_ADMIN_TOKEN)")


def test_admin_tokens_from_the_shortcut_are_split_and_stripped() -> None:
    loaded = config.from_mapping({}, env={"MAILERD_ADMIN_TOKEN": " 12345 , tok-2,,"})
    assert [t.reveal() for t in loaded.http.admin_tokens] == ["12345", "tok-2"]
    assert config.from_mapping({}, env={"MAILERD_ADMIN_TOKEN": ""}).http.admin_tokens == ()


def test_env_section_overrides_take_toml_values(tmp_path: Path) -> None:
    env = {
        "MAILERD_WRITER__FLUSH_ROWS": "700",
        "mailerd_scheduler__resend_uncertain": "true",
        "MAILERD_LOGGING__FORMAT": "console",  # not TOML: read as a plain string
        "MAILERD_HTTP__LISTEN": '"127.0.0.1:1234"',
        "MAILERD_NODE__SHUTDOWN_GRACE_S": "2.5",
    }
    loaded = config.load(write(tmp_path, FULL), env=env)
    assert loaded.writer.flush_rows == 700
    assert loaded.writer.flush_interval_ms == 50  # the file's other keys stay
    assert loaded.scheduler.resend_uncertain is True
    assert loaded.logging.format == "console"
    assert loaded.http.listen == "127.0.0.1:1234"
    assert loaded.node.shutdown_grace_s == 2.5


def test_env_provider_overrides(tmp_path: Path) -> None:
    env = {
        "MAILERD_PROVIDERS__SES__RATE_PER_S": "20",
        "MAILERD_PROVIDERS__SES__SECRET_ACCESS_KEY": "aws-secret/xyz",
        "MAILERD_PROVIDERS__NEW__KIND": "sink",
    }
    loaded = config.load(write(tmp_path, FULL), env=env)
    ses = loaded.provider("ses")
    assert ses.rate_per_s == 20.0
    assert ses.region == "eu-west-1"
    assert ses.secret_access_key == config.Secret("aws-secret/xyz")
    assert loaded.provider("new").kind == "sink"
    assert "aws-secret" not in repr(loaded)


def test_env_keys_of_a_provider_the_file_does_not_define_are_refused(tmp_path: Path) -> None:
    # The README's SendGrid table is [providers.newsletter]: a key named after the kind would
    # have made a second provider (of kind ses) and left newsletter without its key.
    path = write(tmp_path, '[providers.newsletter]\nkind = "sendgrid"')
    assert load_error(path, {"MAILERD_PROVIDERS__SENDGRID__API_KEY": "SG.x"}) == (
        "config error: environment: MAILERD_PROVIDERS__SENDGRID__API_KEY: the configuration file has "
        "no [providers.sendgrid] (it has: [providers.newsletter]); set MAILERD_PROVIDERS__SENDGRID__KIND "
        "too to define that provider from the environment"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "(it has: none)" in load_error(write(empty, ""), {"MAILERD_PROVIDERS__SES__RATE_PER_S": "3"})
    loaded = config.load(
        path,
        env={"MAILERD_PROVIDERS__SENDGRID__API_KEY": "SG.x", "MAILERD_PROVIDERS__SENDGRID__KIND": "sendgrid"},
    )
    assert sorted(loaded.providers) == ["newsletter", "sendgrid"]
    assert loaded.provider("newsletter").api_key is None


def test_env_keys_of_a_callback_or_pace_group_the_file_does_not_define_are_refused(tmp_path: Path) -> None:
    # "[callbacks.hooks] url: expected an http:// or https:// URL" it was, as for providers before
    path = write(tmp_path, '[callbacks.app]\nurl = "https://app.example.com/hooks"')
    assert load_error(path, {"MAILERD_CALLBACKS__HOOKS__SECRET": "whsec_x"}) == (
        "config error: environment: MAILERD_CALLBACKS__HOOKS__SECRET: the configuration file has "
        "no [callbacks.hooks] (it has: [callbacks.app]); set MAILERD_CALLBACKS__HOOKS__URL too to "
        "define that callback endpoint from the environment"
    )
    assert load_error(path, {"MAILERD_PACE__GMAIL__RATE_PER_S": "3"}) == (
        "config error: environment: MAILERD_PACE__GMAIL__RATE_PER_S: the configuration file has no "
        "[pace.gmail] (it has: none); set MAILERD_PACE__GMAIL__DOMAINS too to define that domain group "
        "from the environment"
    )
    secret = "whsec_" + "A" * 24
    loaded = config.load(
        path,
        env={
            "MAILERD_CALLBACKS__APP__SECRET": secret,
            "MAILERD_CALLBACKS__HOOKS__URL": "https://b.example.com/",
            "MAILERD_CALLBACKS__HOOKS__SECRET": secret,
            "MAILERD_PACE__GMAIL__DOMAINS": '["gmail.com"]',
            "MAILERD_PACE__GMAIL__RATE_PER_S": "3",
        },
    )
    assert sorted(loaded.callbacks) == ["app", "hooks"]
    assert loaded.callbacks["app"].secret == config.Secret(secret)
    assert loaded.pace["gmail"].domains == ("gmail.com",)


def test_env_provider_name_matches_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.MySES]\nkind = "ses"')
    loaded = config.load(path, env={"MAILERD_PROVIDERS__MYSES__RATE_PER_S": "3"})
    assert list(loaded.providers) == ["MySES"]
    assert loaded.provider("MySES").rate_per_s == 3.0


def test_env_without_double_underscore_is_ignored(tmp_path: Path) -> None:
    env = {"MAILERD_CONFIG_X": "1", "MAILERD_TEST_DSN": "x", "OTHER__THING": "1"}
    assert config.load(write(tmp_path, FULL), env=env).writer.flush_rows == 500


@pytest.mark.parametrize(
    "name", ["MAILERD_BOGUS__X", "MAILERD_PROVIDERS__SES", "MAILERD_WRITER__A__B", "MAILERD_WRITER__"]
)
def test_env_unknown_setting(tmp_path: Path, name: str) -> None:
    assert load_error(write(tmp_path, ""), {name: "1"}) == (
        f"config error: environment: {name}: not a known setting"
    )


@pytest.mark.parametrize(
    ("table", "kind"), [("providers.main", 'kind = "sink"'), ("callbacks.app", ""), ("pace.google", "")]
)
def test_a_name_key_in_a_named_table_is_an_unknown_key(tmp_path: Path, table: str, kind: str) -> None:
    # It was replaced by the table's own name without a word: [providers.main] name = "other"
    # made a provider "main", which campaigns naming "other" did not find.
    path = write(tmp_path, f'[{table}]\n{kind}\nname = "other"')
    assert load_error(path) == (
        f"config error: {path}: [{table}] name: unknown key (the name is the table's: [{table}])"
    )
    variable = "MAILERD_" + "__".join(table.upper().split(".")) + "__NAME"
    assert load_error(write(tmp_path, f"[{table}]\n{kind}"), {variable: "other"}).endswith(
        f"(from the environment: {variable})"
    )


def test_env_unknown_key_and_bad_value_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, SES_TABLE)
    # The key is not in the file: the error names the variable that holds it.
    assert load_error(path, {"MAILERD_WRITER__NOPE": "1"}).endswith(
        "[writer] nope: unknown key (from the environment: MAILERD_WRITER__NOPE)"
    )
    assert load_error(path, {"MAILERD_WRITER__FLUSH_ROWS_FILE": "/x"}).endswith(
        "[writer] flush_rows_file: only secrets can be read from a file"
        " (from the environment: MAILERD_WRITER__FLUSH_ROWS_FILE)"
    )
    assert load_error(path, {"MAILERD_PROVIDERS__SES__API_KEY_FILE": str(path.parent / "none")}).endswith(
        f"[providers.ses] api_key_file: cannot read {path.parent / 'none'}: No such file or directory"
        " (from the environment: MAILERD_PROVIDERS__SES__API_KEY_FILE)"
    )
    assert load_error(path, {"MAILERD_PROVIDERS__SES__RATE_PER_S": "fast"}).endswith(
        '[providers.ses] rate_per_s: expected a number, got "fast"'
        " (from the environment: MAILERD_PROVIDERS__SES__RATE_PER_S)"  # the file does not hold it
    )
    assert load_error(path, {"MAILERD_PROVIDERS__SES__BATCH_SIZE": "0"}).endswith(
        "[providers.ses] batch_size: must be from 1 to 1000"
        " (from the environment: MAILERD_PROVIDERS__SES__BATCH_SIZE)"
    )


def test_from_mapping_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILERD_WRITER__FLUSH_ROWS", "3")
    assert config.from_mapping({}).writer.flush_rows == 10_000


def test_env_string_settings_that_look_like_numbers(tmp_path: Path) -> None:
    env = {"MAILERD_PROVIDERS__SES__API_KEY": "12345", "MAILERD_NODE__NAME": "42"}
    loaded = config.load(write(tmp_path, SES_TABLE), env=env)
    assert loaded.provider("ses").api_key == config.Secret("12345")
    assert loaded.node.name == "42"


def test_a_number_too_large_to_read_is_a_config_error(tmp_path: Path) -> None:
    # int("1" + "0" * 400) in a float key raised OverflowError: a traceback, no key named.
    huge = "1" + "0" * 400
    path = write(tmp_path, SES_TABLE + f"\nrate_per_s = {huge}")
    assert (
        load_error(path)
        == f"config error: {path}: [providers.ses] rate_per_s: expected a finite number, got {huge}"
    )
    assert load_error(write(tmp_path, ""), {"MAILERD_NODE__SHUTDOWN_GRACE_S": huge}).endswith(
        f"[node] shutdown_grace_s: expected a finite number, got {huge} (from the environment: "
        "MAILERD_NODE__SHUTDOWN_GRACE_S)"
    )
    # More than 4300 digits: Python refuses to read it (ValueError from tomllib, a traceback).
    longer = "1" + "0" * 5000
    path = write(tmp_path, f"[writer]\nflush_rows = {longer}")
    assert load_error(path) == (
        f"config error: {path}: Exceeds the limit (4300 digits) for integer string conversion: "
        "value has 5001 digits"
    )
    assert load_error(write(tmp_path, ""), {"MAILERD_WRITER__FLUSH_ROWS": longer}).endswith(
        f'[writer] flush_rows: expected a whole number, got "{longer}" (from the environment: '
        "MAILERD_WRITER__FLUSH_ROWS)"
    )


def test_env_lists_of_strings_take_a_toml_array_or_commas(tmp_path: Path) -> None:
    # The documented TOML form (["a", "b"]) was split at its commas, brackets and quotes kept:
    # a topic ARN of '["arn:..."]' matched no notification (each refused with 403).
    arn = "arn:aws:sns:us-east-1:123456789012:mailerd-events"
    env = {
        "MAILERD_KAFKA__BOOTSTRAP_SERVERS": '["kafka1:9092", "kafka2:9092"]',
        "MAILERD_WEBHOOKS__SES__TOPIC_ARNS": f'["{arn}"]',
        "MAILERD_HTTP__ADMIN_TOKENS": '["tok-1", "tok-2"]',
        "MAILERD_WEBHOOKS__POSTMARK__ALLOWED_IPS": "10.0.0.0/8, 192.168.1.1",
    }
    loaded = config.load(write(tmp_path, FULL), env=env)
    assert loaded.kafka is not None
    assert loaded.kafka.bootstrap_servers == ("kafka1:9092", "kafka2:9092")
    assert loaded.webhooks.ses.topic_arns == (arn,)
    assert [t.reveal() for t in loaded.http.admin_tokens] == ["tok-1", "tok-2"]
    assert loaded.webhooks.postmark.allowed_ips == ("10.0.0.0/8", "192.168.1.1")


def test_env_override_of_a_non_table_section_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "writer = 3")
    with pytest.raises(config.ConfigError):
        config.load(path, env={"MAILERD_WRITER__FLUSH_ROWS": "5"})


def test_unknown_log_level_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[logging]\nlevel = "verbose"')
    assert load_error(path).startswith(f"config error: {path}: [logging] level: expected one of")


# --- the example file --------------------------------------------------------------------


def test_example_file_loads_and_shows_the_defaults() -> None:
    loaded = config.load(EXAMPLE, env={})
    # The one value that is not a default: a placeholder topic (none is refused at start).
    assert loaded.webhooks.ses.topic_arns == ("arn:aws:sns:us-east-1:123456789012:mailerd-events",)
    ses_hooks = dataclasses.replace(loaded.webhooks.ses, topic_arns=())
    loaded = dataclasses.replace(loaded, webhooks=dataclasses.replace(loaded.webhooks, ses=ses_hooks))
    for field in dataclasses.fields(config.Config):
        if field.name in ("providers", "source", "callbacks", "pace"):
            continue  # callbacks, pace: commented out, like [kafka] (test_relay_config.py, test_pace.py)
        assert getattr(loaded, field.name) == field.default, field.name
    assert loaded.callbacks == {}
    assert loaded.provider("ses").kind == "ses"
    assert dataclasses.replace(loaded.provider("ses"), name="") == config.ProviderConfig()
    sink = loaded.provider("sink")
    assert (sink.kind, sink.endpoint) == ("sink", "http://127.0.0.1:8026")


def test_the_readme_configuration_loads_and_serves(tmp_path: Path) -> None:
    # Its [providers.ses] without [webhooks.ses] topic_arns: `mailerd run` refused the README's
    # "essentials" as they were written.
    readme = (EXAMPLE.parents[1] / "README.md").read_text(encoding="utf-8")
    text = readme.split("## Configuration", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    for name in re.findall(r'"/etc/mailerd/(\w+)"', text):
        (tmp_path / name).write_text("x-secret\n", encoding="utf-8")
    text = text.replace("/etc/mailerd/", f"{tmp_path}/")
    loaded = config.load(write(tmp_path, text), env={})
    assert sorted(loaded.providers) == ["newsletter", "ses"]
    assert config.ses_topic_problem(loaded) is None


def test_example_secret_lines_work_when_uncommented(tmp_path: Path) -> None:
    """Every commented ``*_file`` line of the example is valid once its file exists (those of the
    commented-out tables, ``#[kafka]`` and ``#[callbacks.app]``, are checked with their tables in
    test_relay_config.py)."""
    text = re.sub(r"^#\[[\w.]+\]\n(?:#.*\n?)*", "", EXAMPLE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    lines = re.findall(r"^# ((\w+)_file) = \"([^\"]+)\"$", text, flags=re.MULTILINE)
    assert {key for key, _, _ in lines} >= {
        "dsn_file", "admin_tokens_file",
        "access_key_id_file", "secret_access_key_file", "api_key_file",
    }  # fmt: skip
    for key, _, original in lines:
        secret = tmp_path / key
        value = f"postgresql://value-of-{key}/db" if key.endswith("dsn_file") else f"value-of-{key}"
        secret.write_text(f"{value}\n", encoding="utf-8")
        text = text.replace(f'# {key} = "{original}"', f'{key} = "{secret}"')
    loaded = config.load(write(tmp_path, text), env={})
    ses = loaded.provider("ses")
    assert ses.api_key == config.Secret("value-of-api_key_file")
    assert ses.secret_access_key == config.Secret("value-of-secret_access_key_file")
    assert loaded.http.admin_tokens == (config.Secret("value-of-admin_tokens_file"),)


def _sections(text: str) -> dict[str, str]:
    """The example's text per ``[table]`` header, comments included."""
    parts = re.split(r"^\[([\w.]+)\]\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _documented(body: str, key: str) -> bool:
    """``key = ...`` or ``key_file = ...``, set or commented out, with a comment above."""
    match = re.search(rf"^(?:# )?{key}(?:_file)? = ", body, flags=re.MULTILINE)
    if not match:
        return False
    before = body[: match.start()].rstrip("\n").splitlines()
    return bool(before) and before[-1].startswith("#")


def test_example_documents_every_key() -> None:
    sections = _sections(EXAMPLE.read_text(encoding="utf-8"))
    hints = typing.get_type_hints(config.Config)
    expected: dict[str, type[Any]] = {
        f.name: hints[f.name]
        for f in dataclasses.fields(config.Config)
        # [kafka] and [callbacks.NAME] are commented out: tests/unit/test_relay_config.py
        if f.name not in ("providers", "source", "webhooks", "kafka", "callbacks", "reports", "pace")
    }
    expected["providers.ses"] = config.ProviderConfig
    expected["webhooks"] = config.sections._WebhookScalars
    for name, cls in config.sections._WEBHOOK_SECTIONS.items():
        expected[f"webhooks.{name}"] = cls
    missing = []
    for section, cls in expected.items():
        assert section in sections, f"[{section}] missing from the example"
        for field in dataclasses.fields(cls):
            if cls is config.ProviderConfig and field.name == "name":
                continue  # the name is the table's own name: [providers.NAME]
            if not _documented(sections[section], field.name):
                missing.append(f"[{section}] {field.name}")
    assert missing == []


def test_example_gives_the_highest_value_of_every_number() -> None:
    # "Every number has a range, given in its comment": [guards] min_sample said "from 1" and
    # quota_recheck_s "number > 0", where 100000001 and 3601 are refused.
    text = EXAMPLE.read_text(encoding="utf-8")
    tables = {
        "[providers.ses]": config.ProviderConfig,
        "[webhooks]": config.WebhooksConfig,
        "#[reports]": config.ReportsConfig,
        "#[kafka]": config.KafkaConfig,
        "#[callbacks.app]": config.CallbackConfig,
        "#[pace.google]": config.PaceConfig,
        **{
            f"[{name}]": cls
            for name, cls in config.sections._SECTIONS.items()
            if name not in ("reports", "kafka")
        },
        **{f"[webhooks.{name}]": cls for name, cls in config.sections._WEBHOOK_SECTIONS.items()},
    }
    unstated = []
    for header, cls in tables.items():
        body = re.split(r"^#?\[", text.split(f"\n{header}\n", 1)[1], maxsplit=1, flags=re.MULTILINE)[0]
        lines = body.splitlines()
        for field in dataclasses.fields(cls):
            limits = field.metadata.get("range")
            if limits is None:
                continue
            at = next(i for i, line in enumerate(lines) if re.match(rf"(# )?{field.name} = ", line))
            comment = []  # the comment lines above the key, up to the previous key
            for line in reversed(lines[:at]):
                if not line.startswith("#") or re.match(r"# \w+ = ", line):
                    break
                comment.append(line)
            words = " ".join(comment).replace(",", "")
            highest = str(int(limits.high)) if float(limits.high).is_integer() else repr(limits.high)
            if highest not in words and not (limits.high == 1 and re.search(r"[(\[]0 1\]", words)):
                unstated.append(f"{header} {field.name}: {highest}")
    assert unstated == []
