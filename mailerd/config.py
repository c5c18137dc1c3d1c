"""Configuration: a TOML file plus ``MAILERD_*`` environment overrides, as frozen dataclasses.

This is the only module that reads ``os.environ``. Everything else receives a :class:`Config`.

Environment overrides take the general form ``MAILERD_<SECTION>__<KEY>`` (double underscore
between levels, case-insensitive), e.g. ``MAILERD_WRITER__FLUSH_ROWS=5000`` or
``MAILERD_PROVIDERS__SES__RATE_PER_S=14``. Values are read as TOML values when they parse as
one (``5000``, ``true``, ``["a", "b"]``), else as plain strings. Two shortcuts exist:
``MAILERD_DSN`` (``database.dsn``) and ``MAILERD_ADMIN_TOKEN`` (``http.admin_tokens``, comma
separated).

Secrets (tokens, keys, passwords) never sit inline in the TOML file: give them through the
environment, or as ``<key>_file = "/path"`` naming a file that holds the value. They are wrapped
in :class:`Secret`, whose ``repr`` and ``str`` are redacted.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

DEFAULT_CONFIG_PATH = "/etc/mailerd/mailerd.toml"
ENV_PREFIX = "MAILERD_"
PROVIDER_KINDS = ("ses", "sendgrid", "mailgun", "postmark", "smtp", "sink")


class ConfigError(Exception):
    """A configuration problem, with the file and the key it concerns in the message."""


@dataclasses.dataclass(frozen=True, slots=True)
class Secret:
    """A secret value; ``repr``/``str`` never show it. Call :meth:`reveal` where it is used."""

    value: str = dataclasses.field(repr=False)

    def reveal(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where the data lives. ``dsn = "embedded"`` starts a private Postgres (pgserver)."""

    dsn: Secret = Secret("embedded")
    reports_dsn: Secret | None = None
    embedded_data_dir: str = "~/.local/share/mailerd/pg"
    pool_min_size: int = 2
    pool_max_size: int = 10
    command_timeout_s: float = 30.0

    @property
    def is_embedded(self) -> bool:
        return self.dsn.reveal() == "embedded"


@dataclasses.dataclass(frozen=True, slots=True)
class HttpConfig:
    """The admin API, webhooks, metrics and health endpoints."""

    listen: str = "127.0.0.1:8025"
    admin_tokens: tuple[Secret, ...] = ()
    max_body_bytes: int = 1_048_576
    public_url: str = "http://127.0.0.1:8025"

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One email provider account; its limits are shared by every campaign on the node."""

    name: str = ""
    kind: str = "ses"
    endpoint: str = ""
    region: str = "us-east-1"
    rate_per_s: float = 0.0
    burst: int = 0
    concurrency: int = 8
    batch_size: int = 50
    max_attempts: int = 5
    timeout_s: float = 30.0
    backoff_base_s: float = 0.2
    backoff_max_s: float = 20.0
    max_error_rate: float = 0.5
    error_window: int = 500
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    api_key: Secret | None = None
    configuration_set: str = ""
    seed_rate_from_account: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class WriterConfig:
    """Email-log buffering: flush on size or time, whichever comes first."""

    flush_rows: int = 10_000
    flush_interval_ms: int = 200
    max_buffer_rows: int = 50_000


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How campaigns are split, claimed and streamed."""

    shard_size: int = 50_000
    max_shards_per_node: int = 4
    window_size: int = 5_000
    queue_batches: int = 64
    poll_interval_s: float = 1.0
    reservation_step: int = 0  # 0: derived from the provider's concurrency x batch size
    resend_uncertain: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Daily partitions of the append-only tables: how far ahead, how long kept."""

    days: int = 90
    partitions_ahead_days: int = 7


@dataclasses.dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``format = "auto"`` means console output on a terminal and JSON lines elsewhere."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """This process's identity and lifecycle."""

    name: str = ""
    shutdown_grace_s: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class SesWebhookConfig:
    """SES notifications through SNS: signature versions 1 and 2 over the canonical string."""

    cert_dir: str = ""
    confirm_subscriptions: bool = True
    topic_arns: tuple[str, ...] = ()
    max_age_s: float = 3600.0
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class SendgridWebhookConfig:
    """SendGrid's Signed Event Webhook: ECDSA P-256 over timestamp + raw body."""

    public_key: str = ""
    max_age_s: float = 600.0
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class MailgunWebhookConfig:
    """Mailgun: HMAC-SHA256 of timestamp + token with the webhook signing key."""

    signing_key: Secret | None = None
    max_age_s: float = 600.0
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class PostmarkWebhookConfig:
    """Postmark: HTTP basic auth and an optional source-IP allow-list."""

    username: str = ""
    password: Secret | None = None
    allowed_ips: tuple[str, ...] = ()
    max_age_s: float = 0.0
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """Bounce, complaint and unsubscribe webhooks, and what they do to the suppression list."""

    soft_bounce_limit: int = 3
    soft_bounce_window: str = "7d"
    ses: SesWebhookConfig = SesWebhookConfig()
    sendgrid: SendgridWebhookConfig = SendgridWebhookConfig()
    mailgun: MailgunWebhookConfig = MailgunWebhookConfig()
    postmark: PostmarkWebhookConfig = PostmarkWebhookConfig()

    @property
    def soft_bounce_window_s(self) -> float:
        return parse_duration(self.soft_bounce_window)


@dataclasses.dataclass(frozen=True, slots=True)
class UnsubscribeConfig:
    """RFC 8058 one-click unsubscribe: the HMAC key of the tokens in List-Unsubscribe URLs."""

    secret: Secret | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The resolved configuration of one mailerd process."""

    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    providers: Mapping[str, ProviderConfig] = dataclasses.field(default_factory=dict)
    writer: WriterConfig = WriterConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    retention: RetentionConfig = RetentionConfig()
    logging: LoggingConfig = LoggingConfig()
    node: NodeConfig = NodeConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    unsubscribe: UnsubscribeConfig = UnsubscribeConfig()
    source: str = "<defaults>"

    def provider(self, name: str) -> ProviderConfig:
        try:
            return self.providers[name]
        except KeyError:
            known = ", ".join(sorted(self.providers)) or "none configured"
            raise ConfigError(f"unknown provider {name!r} (configured: {known})") from None


_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseConfig,
    "http": HttpConfig,
    "writer": WriterConfig,
    "scheduler": SchedulerConfig,
    "retention": RetentionConfig,
    "logging": LoggingConfig,
    "node": NodeConfig,
    "unsubscribe": UnsubscribeConfig,
}
_WEBHOOK_SECTIONS: dict[str, type[Any]] = {
    "ses": SesWebhookConfig,
    "sendgrid": SendgridWebhookConfig,
    "mailgun": MailgunWebhookConfig,
    "postmark": PostmarkWebhookConfig,
}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"72h"``, ``"7d"`` or a plain number of seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ConfigError(f"expected a duration such as 72h or 7d, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@dataclasses.dataclass(frozen=True, slots=True)
class _WebhookScalars:
    soft_bounce_limit: int = 3
    soft_bounce_window: str = "7d"


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8025"`` -> ``("127.0.0.1", 8025)``; ``"[::1]:80"`` works too."""
    match = re.fullmatch(r"\[?([^\]]*)\]?:(\d{1,5})", listen)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    return match.group(1), int(match.group(2))


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate, and freeze.

    ``path=None`` means ``$MAILERD_CONFIG`` or :data:`DEFAULT_CONFIG_PATH`; a missing default
    file is not an error (defaults apply), a missing named file is.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "MAILERD_CONFIG" in env
    file_path = Path(path if path is not None else env.get("MAILERD_CONFIG", DEFAULT_CONFIG_PATH))
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if file_path.exists():
        source = str(file_path)
        try:
            raw = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error: {file_path}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"config error: {file_path}: {exc.strerror}") from None
    elif explicit:
        raise ConfigError(f"config error: {file_path}: no such file")
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
        raise ConfigError(f"config error: {source}: {exc}") from None


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as plain data with every secret replaced, for ``check-config``."""

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
    dsn = config.database.dsn.reveal()
    result["database"]["dsn"] = redact_dsn(dsn)
    return result


def redact_dsn(dsn: str) -> str:
    """Hide the password of a libpq URL, keep the rest (host, database) for operators."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1**********@", dsn)


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
    ("database", "reports_dsn"): False,
}


def _is_secret_type(tp: Any) -> bool:
    args = typing.get_args(tp)
    if tp is Secret:
        return True
    return any(a is Secret for a in args) or any(_is_secret_type(a) for a in args if a is not type(None))


def _check_inline_secrets(data: dict[str, Any], source: str) -> None:
    """Secrets must come from the environment or a file, never inline in the TOML file."""

    def check(section: str, values: Mapping[str, Any], cls: type[Any]) -> None:
        hints = typing.get_type_hints(cls)
        for key in values:
            name = section.split(".")[0]
            if key in hints and _is_secret_type(hints[key]) and _SECRET_FIELDS.get((name, key), True):
                raise ConfigError(
                    f"config error: {source}: [{section}] {key}: secrets may not be written in "
                    f'the file; use {key}_file = "/path" or the environment '
                    f"({_env_name(section, key)})"
                )

    for name, values in data.items():
        if name in _SECTIONS and isinstance(values, Mapping):
            check(name, values, _SECTIONS[name])
        elif name == "providers" and isinstance(values, Mapping):
            for pname, pvalues in values.items():
                if isinstance(pvalues, Mapping):
                    check(f"providers.{pname}", pvalues, ProviderConfig)
        elif name == "webhooks" and isinstance(values, Mapping):
            for wname, wvalues in values.items():
                if wname in _WEBHOOK_SECTIONS and isinstance(wvalues, Mapping):
                    check(f"webhooks.{wname}", wvalues, _WEBHOOK_SECTIONS[wname])


def _env_name(section: str, key: str) -> str:
    return ENV_PREFIX + "__".join([*section.upper().split("."), key.upper()])


class _EnvText(str):
    """A raw environment value; :func:`_coerce` reads it as TOML unless the key takes text."""

    __slots__ = ()


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # A section or provider that is not a table in the file is left for _build to report.
    if "MAILERD_DSN" in env:
        data.setdefault("database", {})["dsn"] = env["MAILERD_DSN"]
    if "MAILERD_ADMIN_TOKEN" in env:
        tokens = [t.strip() for t in env["MAILERD_ADMIN_TOKEN"].split(",") if t.strip()]
        data.setdefault("http", {})["admin_tokens"] = tokens
    for key, value in env.items():
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or "__" not in upper:
            continue
        parts = [p.lower() for p in upper[len(ENV_PREFIX) :].split("__")]
        if parts[0] == "providers" and len(parts) == 3:
            # Provider names are case-sensitive in TOML; match an existing one case-insensitively.
            providers = data.setdefault("providers", {})
            if not isinstance(providers, dict):
                continue
            existing = {n.lower(): n for n in providers}
            target = providers.setdefault(existing.get(parts[1], parts[1]), {})
            if isinstance(target, dict):
                target[parts[2]] = _EnvText(value)
        elif parts[0] == "webhooks" and len(parts) in (2, 3):
            webhooks = data.setdefault("webhooks", {})
            if isinstance(webhooks, dict):
                if len(parts) == 3:
                    sub = webhooks.setdefault(parts[1], {})
                    if isinstance(sub, dict):
                        sub[parts[2]] = _EnvText(value)
                else:
                    webhooks[parts[1]] = _EnvText(value)
        elif len(parts) == 2 and parts[0] in _SECTIONS:
            section = data.setdefault(parts[0], {})
            if isinstance(section, dict):
                section[parts[1]] = _EnvText(value)
        else:
            raise ConfigError(f"config error: environment: {key}: not a known setting")


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(data: Mapping[str, Any], source: str) -> Config:
    kwargs: dict[str, Any] = {"source": source}
    for name, values in data.items():
        if name == "providers":
            if not isinstance(values, Mapping):
                raise ConfigError("[providers]: expected a table of providers")
            providers = {}
            for pname, pvalues in values.items():
                if not isinstance(pvalues, Mapping):
                    raise ConfigError(f"[providers.{pname}]: expected a table")
                provider = _section(f"providers.{pname}", ProviderConfig, {**pvalues, "name": pname})
                if provider.kind not in PROVIDER_KINDS:
                    raise ConfigError(
                        f"[providers.{pname}] kind: expected one of "
                        f"{', '.join(PROVIDER_KINDS)}, got {provider.kind!r}"
                    )
                providers[pname] = provider
            kwargs["providers"] = types.MappingProxyType(providers)
        elif name == "webhooks":
            if not isinstance(values, Mapping):
                raise ConfigError("[webhooks]: expected a table")
            scalars = {k: v for k, v in values.items() if k not in _WEBHOOK_SECTIONS}
            subs: dict[str, Any] = {}
            for wname, wcls in _WEBHOOK_SECTIONS.items():
                if wname in values:
                    if not isinstance(values[wname], Mapping):
                        raise ConfigError(f"[webhooks.{wname}]: expected a table")
                    subs[wname] = _section(f"webhooks.{wname}", wcls, values[wname])
            top = _section("webhooks", _WebhookScalars, scalars)
            kwargs["webhooks"] = WebhooksConfig(
                soft_bounce_limit=top.soft_bounce_limit, soft_bounce_window=top.soft_bounce_window, **subs
            )
        elif name in _SECTIONS:
            if not isinstance(values, Mapping):
                raise ConfigError(f"[{name}]: expected a table")
            kwargs[name] = _section(name, _SECTIONS[name], values)
        else:
            raise ConfigError(f"[{name}]: unknown section")
    config = Config(**kwargs)
    _validate(config)
    return config


def _section(section: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        target = key
        if key.endswith("_file") and key[: -len("_file")] in hints:
            target = key[: -len("_file")]
            if not _is_secret_type(hints[target]):
                raise ConfigError(f"[{section}] {key}: only secrets can be read from a file")
            value = _read_secret_file(section, key, value)
        if target not in hints:
            raise ConfigError(f"[{section}] {key}: unknown key")
        kwargs[target] = _coerce(section, target, hints[target], value)
    return cls(**kwargs)


def _read_secret_file(section: str, key: str, path: Any) -> str:
    if not isinstance(path, str):
        raise ConfigError(f"[{section}] {key}: expected a file path, got {_show(path)}")
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"[{section}] {key}: cannot read {path}: {exc.strerror}") from None


def _coerce(section: str, key: str, tp: Any, value: Any) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"[{section}] {key}: expected {expected}, got {_show(value)}")

    if isinstance(value, _EnvText):
        # "12345" is a fine API key and "042" a fine node name: text keys take the raw text
        # unless it is written as a TOML string ("\"a b\""); other keys take it as TOML.
        parsed = _env_value(value)
        value = str(value) if _takes_text(tp) and not isinstance(parsed, str) else parsed
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _coerce(section, key, inner[0], value)
    if tp is Secret:
        if not isinstance(value, str):
            raise fail("a string")
        return Secret(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise fail("a list")
        return tuple(_coerce(section, key, args[0], v) for v in value)
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise ConfigError(f"[{section}] {key}: unsupported type {tp!r}")  # pragma: no cover


def _takes_text(tp: Any) -> bool:
    if tp in (str, Secret) or typing.get_origin(tp) is Literal:
        return True
    if typing.get_origin(tp) in (types.UnionType, typing.Union, tuple):
        return any(_takes_text(a) for a in typing.get_args(tp) if a not in (type(None), Ellipsis))
    return False


def _validate(config: Config) -> None:
    parse_listen(config.http.listen)
    checks: list[tuple[bool, str]] = [
        (config.writer.flush_rows >= 1, "[writer] flush_rows: must be at least 1"),
        (config.writer.flush_interval_ms >= 1, "[writer] flush_interval_ms: must be at least 1"),
        (
            config.writer.max_buffer_rows >= config.writer.flush_rows,
            "[writer] max_buffer_rows: must be at least flush_rows",
        ),
        (config.scheduler.shard_size >= 1, "[scheduler] shard_size: must be at least 1"),
        (config.scheduler.window_size >= 1, "[scheduler] window_size: must be at least 1"),
        (config.scheduler.queue_batches >= 1, "[scheduler] queue_batches: must be at least 1"),
        (config.scheduler.max_shards_per_node >= 1, "[scheduler] max_shards_per_node: must be at least 1"),
        (config.retention.days >= 1, "[retention] days: must be at least 1"),
        (
            config.retention.partitions_ahead_days >= 1,
            "[retention] partitions_ahead_days: must be at least 1",
        ),
        (config.node.shutdown_grace_s > 0, "[node] shutdown_grace_s: must be positive"),
        (config.webhooks.soft_bounce_limit >= 1, "[webhooks] soft_bounce_limit: must be at least 1"),
    ]
    for provider in config.providers.values():
        section = f"[providers.{provider.name}]"
        checks += [
            (provider.rate_per_s >= 0, f"{section} rate_per_s: must be 0 (unlimited) or more"),
            (provider.concurrency >= 1, f"{section} concurrency: must be at least 1"),
            (1 <= provider.batch_size <= 1000, f"{section} batch_size: must be from 1 to 1000"),
            (provider.max_attempts >= 1, f"{section} max_attempts: must be at least 1"),
            (provider.burst >= 0, f"{section} burst: must be 0 (one second of rate) or more"),
            (0 < provider.max_error_rate <= 1, f"{section} max_error_rate: must be in (0, 1]"),
            (provider.error_window >= 10, f"{section} error_window: must be at least 10"),
        ]
    try:
        parse_duration(config.webhooks.soft_bounce_window)
    except ConfigError as exc:
        raise ConfigError(f"[webhooks] soft_bounce_window: {exc}") from None
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
