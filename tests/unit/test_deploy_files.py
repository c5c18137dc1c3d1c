"""The deployment files: the template unit for more instances on one host matches the main unit
but for what makes an instance, both pass ``systemd-analyze verify``, the example environment
file names only settings the configuration knows, and every file is shipped in the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mailerd import config as config_mod
from mailerd import shipped

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "mailerd.service"
TEMPLATE = ROOT / "systemd" / "mailerd@.service"
ENV_EXAMPLE = ROOT / "deploy" / "mailerd.env.example"
EXAMPLE = ROOT / "config" / "mailerd.example.toml"
# What makes an instance: its name, its configuration, its secrets, its state directory.
INSTANCE_KEYS = {"Description", "ExecStart", "EnvironmentFile", "StateDirectory", "WorkingDirectory"}


def _directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of each line, comments dropped, in order."""
    section, found = "", []
    for line in path.read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match.group(1)
            continue
        key, _, value = line.partition("=")
        found.append((section, key, value))
    return found


def test_the_template_differs_from_the_unit_only_in_what_makes_an_instance() -> None:
    unit, template = _directives(UNIT), _directives(TEMPLATE)
    assert [(s, k) for s, k, _ in unit] == [(s, k) for s, k, _ in template]
    for (_, key, one), (_, _, many) in zip(unit, template, strict=True):
        if key in INSTANCE_KEYS:
            assert "%i" in many, key
        else:
            assert one == many, key
    assert ("Service", "EnvironmentFile", "/etc/mailerd/%i.env") in template


@pytest.mark.parametrize("source", [UNIT, TEMPLATE])
def test_a_node_started_while_postgres_is_down_is_restarted_until_it_answers(source: Path) -> None:
    """``mailerd run`` exits 1 within a second or two when Postgres does not answer, and
    ``Restart=on-failure`` starts it again RestartSec later: a start limit that such a loop can use
    up leaves the node stopped for good once Postgres is back (``start-limit-hit``)."""
    settings = {key: value for _, key, value in _directives(source)}
    assert settings["Restart"] == "on-failure"
    interval = float(settings.get("StartLimitIntervalSec", "10"))
    burst = int(settings.get("StartLimitBurst", "5"))
    shortest_cycle = float(settings["RestartSec"])  # the failed start itself takes a little more
    assert interval == 0 or shortest_cycle * burst > interval, (interval, burst, shortest_cycle)


@pytest.mark.parametrize("source", [UNIT, ROOT / "docs" / "runbook.md", ROOT / "README.md"])
def test_the_install_steps_migrate_with_the_secrets_of_the_unit(source: Path) -> None:
    """The DSN is in /etc/mailerd/env, which only systemd reads: a ``mailerd migrate`` run from a
    shell without it migrates ``database.dsn`` of the file (the example's embedded database)."""
    lines = source.read_text("utf-8").splitlines()
    steps = [n for n, line in enumerate(lines) if "mailerd migrate --config /etc/mailerd/" in line]
    assert steps
    for n in steps:
        before = lines[n - 1] + lines[n][: lines[n].index("mailerd migrate")]
        assert ". /etc/mailerd/env" in before, lines[n]


def _verify(tmp_path: Path, source: Path, name: str) -> tuple[int, str]:
    """systemd-analyze verify of a copy named ``name`` whose ExecStart exists (verify checks)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    executable = Path(sys.executable).with_name("mailerd")
    text = source.read_text("utf-8").replace("/opt/mailerd/.venv/bin/mailerd", str(executable))
    unit = tmp_path / name
    unit.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(("source", "name"), [(UNIT, "mailerd.service"), (TEMPLATE, "mailerd@b.service")])
def test_every_shipped_unit_passes_systemd_analyze_verify(tmp_path: Path, source: Path, name: str) -> None:
    code, output = _verify(tmp_path, source, name)
    assert code == 0, output
    assert [line for line in output.splitlines() if name in line] == [], output


def test_verify_names_a_broken_template_instance(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text(TEMPLATE.read_text("utf-8").replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    _, output = _verify(tmp_path, broken, "mailerd@b.service")
    assert any("mailerd@b.service" in line for line in output.splitlines()), output


def test_every_variable_of_the_example_environment_file_is_a_setting() -> None:
    env = {}
    for line in ENV_EXAMPLE.read_text("utf-8").splitlines():
        if match := re.fullmatch(r"#?(MAILERD_\w+)=(.*)", line.strip()):
            value = match.group(2).replace("CHANGE-ME", "filled-in")  # the placeholder is refused
            env[match.group(1)] = value or "value-" + match.group(1).lower()
    assert {"MAILERD_DSN", "MAILERD_ADMIN_TOKEN", "MAILERD_UNSUBSCRIBE__SECRET"} <= set(env)
    raw = tomllib.loads(EXAMPLE.read_text("utf-8"))
    config = config_mod.from_mapping(raw, env=env)
    assert config.unsubscribe.secret is not None


@pytest.mark.parametrize(
    "variable", ["MAILERD_ADMIN_TOKEN", "MAILERD_UNSUBSCRIBE__SECRET", "MAILERD_PRIVACY__ERASURE_KEY"]
)
def test_a_secret_left_at_the_example_placeholder_is_refused(variable: str) -> None:
    # The example file installed and not filled in gave the admin API, the unsubscribe links and
    # the erasure hashes a key everybody knows.
    placeholders = [
        line for line in ENV_EXAMPLE.read_text("utf-8").splitlines() if line == f"{variable}=CHANGE-ME"
    ]
    assert placeholders, variable
    with pytest.raises(
        config_mod.ConfigError, match="CHANGE-ME is the example environment file's placeholder"
    ):
        config_mod.from_mapping({}, env={variable: "CHANGE-ME"})


def test_every_deployment_file_is_shipped_in_the_package() -> None:
    sources = {
        "mailerd.example.toml": EXAMPLE,
        "mailerd.service": UNIT,
        "mailerd@.service": TEMPLATE,
        "mailerd-relay.service": ROOT / "systemd" / "mailerd-relay.service",
        "mailerd.env.example": ENV_EXAMPLE,
        "grafana-mailerd.json": ROOT / "deploy" / "grafana" / "mailerd.json",
        "prometheus-alerts.yml": ROOT / "deploy" / "prometheus" / "alerts.yml",
        "journald-mailerd.conf": ROOT / "deploy" / "journald" / "mailerd.conf",
    }
    assert shipped.names() == sorted(sources)
    # A unit added to systemd/ ships too: an operator who installed the wheel has no checkout.
    assert {path.name for path in (ROOT / "systemd").iterdir()} <= set(sources)
    for name, source in sources.items():
        assert shipped.read(name) == source.read_bytes(), name
    with pytest.raises(KeyError, match=r"there are: grafana-mailerd\.json"):
        shipped.read("../pyproject.toml")


def test_mailerd_files_lists_prints_and_refuses(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from mailerd import cli

    assert cli.main(["files"]) == 0
    assert capsysbinary.readouterr().out.decode().split() == shipped.names()
    assert cli.main(["files", "mailerd@.service"]) == 0
    assert capsysbinary.readouterr().out == TEMPLATE.read_bytes()
    assert cli.main(["files", "mailerd.toml"]) == 2  # a usage error (it was 1, a failure)
    assert b"no shipped file 'mailerd.toml'; there are: " in capsysbinary.readouterr().err


def test_a_value_written_as_the_example_environment_file_says_reads_the_same_in_a_shell(
    tmp_path: Path,
) -> None:
    """The file is read by systemd and, for the commands run by hand, by a shell (``set -a; .
    /etc/mailerd/env``): written unquoted as it said ("no quotes needed"), a DSN whose password
    holds ``&`` or a token list with a space ran part of the line as a command, and left
    ``MAILERD_DSN`` unset, so ``mailerd migrate`` migrated the example's embedded database."""
    header = ENV_EXAMPLE.read_text("utf-8").split("\n\n", 1)[0]
    assert "no quotes needed" not in header
    assert "single quotes" in header
    values = {
        "MAILERD_DSN": "postgresql://mailerd:p&ss;w$rd(1)@db.internal:5432/mailerd",
        "MAILERD_ADMIN_TOKEN": "tok-1, tok-2 # <new>",
    }
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{key}='{value}'\n" for key, value in values.items()), "utf-8")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = 'set -a; . "$1"; set +a; printf "%s\\n%s\\n" "$MAILERD_DSN" "$MAILERD_ADMIN_TOKEN"'
    done = subprocess.run(
        [bash, "-c", script, "bash", str(env_file)], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.splitlines() == list(values.values()), done.stderr
