"""Reading the configuration: the TOML file, ``MAILERD_*`` overrides, redaction, systemd's variables.

This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailerd import dsn as dsn_mod
from mailerd.config.coerce import EnvText, is_secret_type
from mailerd.config.fields import ConfigError, Secret
from mailerd.config.sections import (
    _SECTIONS,
    _WEBHOOK_SECTIONS,
    Config,
    ProviderConfig,
    _build,
)
from mailerd.config.stream import CallbackConfig

DEFAULT_CONFIG_PATH = "/etc/mailerd/mailerd.toml"
ENV_PREFIX = "MAILERD_"


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate, and freeze.

    ``path=None`` means ``$MAILERD_CONFIG`` or :data:`DEFAULT_CONFIG_PATH`; a missing default
    file is not an error (defaults apply), a missing named file is, and so is any file that
    cannot be read.
    """
    env = os.environ if env is None else env
    # Path("") is ".": an empty value was "config error: .: Is a directory", naming nothing.
    if path is not None and not os.fspath(path):
        raise ConfigError("config error: --config: empty path")
    if path is None and env.get("MAILERD_CONFIG") == "":
        raise ConfigError(
            f"config error: environment: MAILERD_CONFIG: empty (unset it for {DEFAULT_CONFIG_PATH})"
        )
    explicit = path is not None or "MAILERD_CONFIG" in env
    file_path = Path(path if path is not None else env.get("MAILERD_CONFIG", DEFAULT_CONFIG_PATH))
    raw: dict[str, Any] = {}
    source = "<defaults>"
    try:
        # Absence is told by opening the file, never by Path.exists(): that answers False for a
        # symlink loop (and, from Python 3.12, for a directory this user cannot search), and the
        # daemon then ran on the defaults (an embedded database) instead of refusing to start.
        data = file_path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        if explicit:
            raise ConfigError(f"config error: {file_path}: no such file") from None
        return from_mapping(raw, source=source, env=env)
    except OSError as exc:
        raise ConfigError(f"config error: {file_path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL character in the path
        raise ConfigError(f"config error: {file_path}: {exc}") from None
    source = str(file_path)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {file_path}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config error: {file_path}: not UTF-8 text") from None
    except ValueError as exc:  # a whole number of more than 4300 digits: Python refuses to read it
        raise ConfigError(f"config error: {file_path}: {str(exc).split(';')[0]}") from None
    return from_mapping(raw, source=source, env=env)


def from_mapping(
    raw: Mapping[str, Any], *, source: str = "<mapping>", env: Mapping[str, str] | None = None
) -> Config:
    """Build a :class:`Config` from already-parsed TOML data plus environment overrides."""
    data = _deep_copy(raw)
    _check_inline_secrets(data, source)
    _apply_env(data, env or {})
    try:
        return _build(data, source)
    except ConfigError as exc:
        raise ConfigError(f"config error: {source}: {exc}{_env_origin(data, str(exc))}") from None


# "[section] key:" or "[table.NAME] key:", how a problem names the key it is about
_PROBLEM_KEY = re.compile(r"\[([^\]\s]+)\] (\w+):")


def _env_origin(data: Mapping[str, Any], problem: str) -> str:
    """`` (from the environment: VAR)`` when the key ``problem`` names was set by a variable:
    a value out of range, or refused with another key, was reported against the file alone,
    which holds another value or none (a wrong type or an unknown key already says it)."""
    match = _PROBLEM_KEY.match(problem)
    if match is None or "(from the environment:" in problem:
        return ""
    table: Any = data
    for part in match.group(1).split("."):
        table = table.get(part) if isinstance(table, Mapping) else None
    value = table.get(match.group(2)) if isinstance(table, Mapping) else None
    if isinstance(value, EnvText) and value.variable:
        return f" (from the environment: {value.variable})"
    return ""


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as plain data with every secret replaced, for ``check-config``.

    DSNs keep what an operator needs (user, hosts, database, options) without their passwords.
    """

    def convert(value: Any) -> Any:
        if isinstance(value, Secret):
            return "**********"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        return value

    result: dict[str, Any] = convert(config)
    result["database"]["dsn"] = redact_dsn(config.database.dsn.reveal())
    if config.reports is not None:
        result["reports"]["dsn"] = redact_dsn(config.reports.dsn.reveal())
    return result


def redact_dsn(dsn: str) -> str:
    """Hide the passwords of a DSN in any form libpq accepts (see :mod:`mailerd.dsn`)."""
    return dsn_mod.redact(dsn)


@dataclasses.dataclass(frozen=True, slots=True)
class SystemdSettings:
    """What systemd told this process through its environment (all unset outside systemd).

    ``notify_socket`` is ``$NOTIFY_SOCKET`` as given (a leading ``@`` names an abstract
    socket); ``watchdog_usec`` is ``$WATCHDOG_USEC`` (None when unset or 0);
    ``watchdog_pid`` is ``$WATCHDOG_PID``, the process the watchdog settings are meant for.
    """

    notify_socket: str | None = None
    watchdog_usec: int | None = None
    watchdog_pid: int | None = None


def systemd_settings(env: Mapping[str, str] | None = None) -> SystemdSettings:
    """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (``os.environ`` by default).

    A malformed number raises :class:`ConfigError`: silently ignoring it would get the unit
    killed by the watchdog it asked for.
    """
    env = os.environ if env is None else env

    def number(key: str) -> int | None:
        text = env.get(key, "").strip()
        if not text:
            return None
        if not text.isdigit():
            raise ConfigError(f"config error: environment: {key}: expected a whole number, got {text!r}")
        return int(text) or None

    return SystemdSettings(
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        watchdog_usec=number("WATCHDOG_USEC"),
        watchdog_pid=number("WATCHDOG_PID"),
    )


# --- internals -------------------------------------------------------------------------------

_SECRET_FIELDS = {
    ("database", "dsn"): False,  # a DSN may carry a password, but may also be inline
    ("reports", "dsn"): False,
}


def _check_inline_secrets(data: dict[str, Any], source: str) -> None:
    """Secrets must come from the environment or a file, never inline in the TOML file."""

    def check(section: str, values: Mapping[str, Any], cls: type[Any]) -> None:
        hints = typing.get_type_hints(cls)
        for key in values:
            name = section.split(".")[0]
            if key in hints and is_secret_type(hints[key]) and _SECRET_FIELDS.get((name, key), True):
                raise ConfigError(
                    f"config error: {source}: [{section}] {key}: secrets may not be written in "
                    f'the file; use {key}_file = "/path" or the environment '
                    f"({_env_name(section, key)})"
                )

    # Tables of tables: [providers.NAME] and [callbacks.NAME] (named by the operator), and
    # [webhooks.PROVIDER]; each sub-table's class by its name (None: not a table of secrets).
    tables: dict[str, typing.Callable[[str], type[Any] | None]] = {
        "providers": lambda _name: ProviderConfig,
        "callbacks": lambda _name: CallbackConfig,
        "webhooks": _WEBHOOK_SECTIONS.get,
    }
    for name, values in data.items():
        if not isinstance(values, Mapping):
            continue
        if name in _SECTIONS:
            check(name, values, _SECTIONS[name])
            continue
        class_of = tables.get(name)
        for table, table_values in values.items():
            cls = class_of(table) if class_of is not None else None
            if cls is not None and isinstance(table_values, Mapping):
                check(f"{name}.{table}", table_values, cls)


def _env_name(section: str, key: str) -> str:
    return ENV_PREFIX + "__".join([*section.upper().split("."), key.upper()])


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # A section or provider that is not a table in the file is left for _build to report.
    if "MAILERD_DSN" in env:
        data.setdefault("database", {})["dsn"] = EnvText(env["MAILERD_DSN"], "MAILERD_DSN")
    if "MAILERD_ADMIN_TOKEN" in env:
        # Split at commas when coerced, as MAILERD_HTTP__ADMIN_TOKENS is; as EnvText so that an
        # error (the example file's placeholder, a control character) names this variable.
        token_text = EnvText(env["MAILERD_ADMIN_TOKEN"], "MAILERD_ADMIN_TOKEN")
        data.setdefault("http", {})["admin_tokens"] = token_text
    file_tables = {
        section: sorted(tables) if isinstance(tables := data.get(section), dict) else []
        for section in _DEFINED_BY
    }
    for key, value in env.items():
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or "__" not in upper:
            continue
        parts = [p.lower() for p in upper[len(ENV_PREFIX) :].split("__")]
        target = _env_target(data, parts) if all(parts) else False  # MAILERD_WRITER__ names no key
        if target is False:
            raise ConfigError(f"config error: environment: {key}: not a known setting")
        if isinstance(target, dict):
            target[parts[-1]] = EnvText(value, key)
    _check_env_tables(data, env, file_tables)


# The tables of named tables, the key that defines one from the environment alone, and what it is.
_DEFINED_BY = {
    "providers": ("kind", "provider"),
    "callbacks": ("url", "callback endpoint"),
    "pace": ("domains", "domain group"),
}


def _check_env_tables(
    data: dict[str, Any], env: Mapping[str, str], file_tables: dict[str, list[str]]
) -> None:
    """A provider, callback endpoint or domain group the file does not define comes from the
    environment only with its defining key (``KIND``, ``URL``, ``DOMAINS``): a key meant for
    ``[providers.newsletter]`` but named after its kind (``MAILERD_PROVIDERS__SENDGRID__API_KEY``)
    would otherwise make a second provider, of kind ``ses``, and leave the operator's own without
    its key; a callback's secret under a misspelt name was refused as a missing url."""
    for section, (defining, what) in _DEFINED_BY.items():
        tables = data.get(section)
        if not isinstance(tables, dict):
            continue
        in_file = file_tables[section]
        for name, table in tables.items():
            if name in in_file or not isinstance(table, dict) or defining in table:
                continue
            prefix = f"{ENV_PREFIX}{section.upper()}__{name.upper()}__"
            named = sorted(key for key in env if key.upper().startswith(prefix))
            known = ", ".join(f"[{section}.{n}]" for n in in_file) or "none"
            raise ConfigError(
                f"config error: environment: {named[0] if named else prefix + '...'}: the configuration "
                f"file has no [{section}.{name}] (it has: {known}); set {prefix}{defining.upper()} too "
                f"to define that {what} from the environment"
            )


def _env_target(data: dict[str, Any], parts: list[str]) -> dict[str, Any] | bool:
    """The table an override's last part goes in; True: none (left for _build to report);
    False: not a known setting."""
    if parts[0] == "providers" and len(parts) == 3:
        # Provider names are case-sensitive in TOML; match an existing one case-insensitively.
        providers = data.setdefault("providers", {})
        if not isinstance(providers, dict):
            return True
        existing = {n.lower(): n for n in providers}
        return _table(providers, existing.get(parts[1], parts[1]))
    if parts[0] in ("callbacks", "pace") and len(parts) == 3:
        tables = data.setdefault(parts[0], {})
        if not isinstance(tables, dict):
            return True
        existing = {n.lower(): n for n in tables}
        return _table(tables, existing.get(parts[1], parts[1]))
    if parts[0] == "webhooks" and len(parts) in (2, 3):
        webhooks = data.setdefault("webhooks", {})
        if not isinstance(webhooks, dict):
            return True
        return _table(webhooks, parts[1]) if len(parts) == 3 else webhooks
    if len(parts) == 2 and parts[0] in _SECTIONS:
        return _table(data, parts[0])
    return False


def _table(parent: dict[str, Any], name: str) -> dict[str, Any] | bool:
    table = parent.setdefault(name, {})
    return table if isinstance(table, dict) else True


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
