"""The sections of the configuration file, one frozen dataclass each, and the checks between keys.

A new section is a dataclass here (the event stream's are in :mod:`mailerd.config.stream`), a field
of :class:`Config`, and an entry in ``_SECTIONS``;
reading and coercing values is :mod:`mailerd.config.coerce`'s job, the file and the environment
:mod:`mailerd.config.loading`'s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from mailerd import dsn as dsn_mod
from mailerd.config import pace as pace_mod
from mailerd.config import stream
from mailerd.config.coerce import build_section, named
from mailerd.config.fields import (
    MIN_RATE_PER_S,
    ConfigError,
    Secret,
    _within,
    is_http_url,
    parse_duration,
    parse_listen,
)
from mailerd.config.pace import PaceConfig
from mailerd.config.stream import CallbackConfig, KafkaConfig, RelayConfig

PROVIDER_KINDS = ("ses", "sendgrid", "mailgun", "postmark", "smtp", "sink")
# The most recipients each provider's API takes in one call (SES SendBulkEmail: 50 destinations;
# SendGrid: 1000 personalizations; Mailgun: 1000 recipients; Postmark's batch endpoint: 500).
PROVIDER_MAX_BATCH = {"ses": 50, "sink": 50, "sendgrid": 1000, "mailgun": 1000, "postmark": 500, "smtp": 1000}

T = TypeVar("T")
# The most a provider's daily_quota and a warm-up step's max_per_day may be (the quota table
# stores them as bigint), and the last day a warm-up step may name.
_MAX_DAILY = 1_000_000_000
_MAX_WARMUP_DAY = 36_500


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where the data lives. ``dsn = "embedded"`` starts a private Postgres (pgserver)."""

    dsn: Secret = Secret("embedded")
    embedded_data_dir: str = "~/.local/share/mailerd/pg"
    pool_min_size: int = _within(2, 0, 100)
    pool_max_size: int = _within(10, 1, 1000)
    command_timeout_s: float = _within(30.0, 0, 86400, low_open=True)

    @property
    def is_embedded(self) -> bool:
        return self.dsn.reveal() == "embedded"


@dataclasses.dataclass(frozen=True, slots=True)
class HttpConfig:
    """The admin API, webhooks, metrics and health endpoints."""

    listen: str = "127.0.0.1:8025"
    admin_tokens: tuple[Secret, ...] = ()
    max_body_bytes: int = _within(1_048_576, 1024, 64 * 1_048_576)
    max_bulk_bytes: int = _within(1 << 30, 1024, 1 << 40)  # POST /api/leads/bulk, streamed
    public_url: str = "http://127.0.0.1:8025"

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


_SHARE = "must be in (0, 1]"


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One email provider account; its limits are shared by every campaign on the node."""

    name: str = ""
    kind: str = "ses"
    endpoint: str = ""
    region: str = ""  # SES: the AWS region (us-east-1 when empty); SendGrid, Mailgun: "eu" or "us"
    rate_per_s: float = _within(0.0, 0, 100_000, below="must be 0 (unlimited) or more")
    burst: int = _within(0, 0, 1_000_000, below="must be 0 (one second of rate) or more")
    concurrency: int = _within(8, 1, 1000)
    batch_size: int = _within(50, 1, 1000, below="must be from 1 to 1000", above="must be from 1 to 1000")
    max_attempts: int = _within(5, 1, 100)
    timeout_s: float = _within(30.0, 0, 600, low_open=True)
    backoff_base_s: float = _within(0.2, 0, 3600, low_open=True)
    backoff_max_s: float = _within(20.0, 0, 3600, low_open=True)
    max_retry_after_s: float = _within(3600.0, 0, 86_400, low_open=True)  # a provider's Retry-After, at most
    max_error_rate: float = _within(0.5, 0, 1, low_open=True, below=_SHARE, above=_SHARE)
    error_window: int = _within(500, 10, 1_000_000)
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    api_key: Secret | None = None
    configuration_set: str = ""
    seed_rate_from_account: bool = False  # and the daily quota (SES GetAccount)
    account_refresh_s: float = _within(3600.0, 1, 86_400)  # seed_rate_from_account: read it again this often
    # Daily quota and warm-up across nodes (docs/guards.md "Daily quota and warm-up").
    daily_quota: int = _within(0, 0, _MAX_DAILY, below="must be 0 (none) or more")
    warmup: tuple[tuple[int, int], ...] = ()  # [[day, max_per_day], ...] from warmup_start
    warmup_start: str = ""  # YYYY-MM-DD (UTC): day 1 of the warm-up
    # Per kind (each documented in config/mailerd.example.toml; checked when the client is built).
    profile: str = ""  # ses: the shared-credentials profile of the AWS credential chain
    domain: str = ""  # mailgun: the sending domain; smtp: the Message-ID domain
    message_stream: str = "broadcast"  # postmark
    tls: Literal["starttls", "tls", "none"] = "starttls"  # smtp (endpoint "host:port")
    username: str = ""  # smtp AUTH (the password is api_key)
    connections: int = _within(4, 1, 1000)  # smtp: the pool per provider
    messages_per_connection: int = _within(100, 1, 1_000_000)  # smtp: then a new connection
    # The provider guard's thresholds for this account (0: [guards] provider_*; docs/guards.md).
    guard_min_sample: int = _within(0, 0, 100_000_000)
    guard_max_bounce_rate: float = _within(0.0, 0, 1, above=_SHARE)
    guard_max_complaint_rate: float = _within(0.0, 0, 1, above=_SHARE)
    guard_max_blocked_rate: float = _within(0.0, 0, 1, above=_SHARE)


@dataclasses.dataclass(frozen=True, slots=True)
class WriterConfig:
    """Email-log buffering: flush on size or time, whichever comes first."""

    flush_rows: int = _within(10_000, 1, 1_000_000)
    flush_interval_ms: int = _within(200, 1, 60_000)
    max_buffer_rows: int = _within(50_000, 1, 10_000_000)


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How campaigns are split, claimed and streamed."""

    shard_size: int = _within(50_000, 1, 10_000_000)
    max_shards_per_node: int = _within(4, 0, 1000, below="must be 0 (this node sends nothing) or more")
    window_size: int = _within(5_000, 1, 1_000_000)
    queue_batches: int = _within(64, 1, 100_000)
    poll_interval_s: float = _within(1.0, 0.01, 3600)
    # 0: derived from the provider's concurrency x batch size
    reservation_step: int = _within(0, 0, 10_000_000, below="must be 0 (derived) or more")
    resend_uncertain: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ContentConfig:
    """The budget of one recipient's render of a campaign's templates (tenant content).

    Enforced by :mod:`mailerd.sandbox` on every render; ``render_timeout_ms`` bounds how long
    campaign creation waits for the render of a sample lead (see :func:`mailerd.content.check_renders`).
    """

    max_loop_iterations: int = _within(10_000, 1, 1_000_000)
    max_output_bytes: int = _within(524_288, 1024, 10 * 1_048_576)
    max_render_ms: int = _within(10, 1, 10_000)
    render_timeout_ms: int = _within(2_000, 10, 60_000)


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Daily partitions of the append-only tables: how far ahead, how long kept."""

    days: int = _within(90, 1, 36_500)
    # Today's partition alone left no margin at midnight: the new day's rows went to the default
    # partition until the next hourly round, which moved them while the day's writes waited (and a
    # round deferred behind a long reader left the whole day there). Tomorrow's must exist already.
    partitions_ahead_days: int = _within(
        7, 2, 366, below="must be at least 2 (tomorrow's partition must exist before midnight)"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``format = "auto"`` means console output on a terminal and JSON lines elsewhere."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """This process's identity and lifecycle."""

    name: str = ""
    shutdown_grace_s: float = _within(30.0, 0, 3600, low_open=True)


_MAX_AGE_S = 30 * 86400


@dataclasses.dataclass(frozen=True, slots=True)
class SesWebhookConfig:
    """SES notifications through SNS: signature versions 1 and 2 over the canonical string.

    With signatures verified, only the ``topic_arns`` are accepted: SNS signs every account's
    topics with the same certificates, so a valid signature says nothing about whose topic it
    is. No topic listed: none is accepted, unless ``accept_any_topic`` opts out of the check.
    """

    cert_dir: str = ""
    confirm_subscriptions: bool = True
    topic_arns: tuple[str, ...] = ()
    accept_any_topic: bool = False
    max_age_s: float = _within(3600.0, 0, _MAX_AGE_S, below="must be 0 (off) or more")
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class SendgridWebhookConfig:
    """SendGrid's Signed Event Webhook: ECDSA P-256 over timestamp + raw body."""

    public_key: str = ""
    max_age_s: float = _within(600.0, 0, _MAX_AGE_S, below="must be 0 (off) or more")
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class MailgunWebhookConfig:
    """Mailgun: HMAC-SHA256 of timestamp + token with the webhook signing key. A retry carries
    the original timestamp, and Mailgun retries for 8 hours: ``max_age_s`` covers that span."""

    signing_key: Secret | None = None
    max_age_s: float = _within(28_800.0, 0, _MAX_AGE_S, below="must be 0 (off) or more")
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class PostmarkWebhookConfig:
    """Postmark: HTTP basic auth and an optional source-IP allow-list."""

    username: str = ""
    password: Secret | None = None
    allowed_ips: tuple[str, ...] = ()
    max_age_s: float = _within(0.0, 0, _MAX_AGE_S, below="must be 0 (off) or more")
    verify_signatures: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """Bounce, complaint and unsubscribe webhooks, and what they do to the suppression list."""

    soft_bounce_limit: int = _within(3, 1, 1000)
    soft_bounce_window: str = "7d"
    ses: SesWebhookConfig = SesWebhookConfig()
    sendgrid: SendgridWebhookConfig = SendgridWebhookConfig()
    mailgun: MailgunWebhookConfig = MailgunWebhookConfig()
    postmark: PostmarkWebhookConfig = PostmarkWebhookConfig()

    @property
    def soft_bounce_window_s(self) -> float:
        return parse_duration(self.soft_bounce_window)


@dataclasses.dataclass(frozen=True, slots=True)
class GuardsConfig:
    """Deliverability guards (docs/guards.md): a running campaign pauses itself once it has sent
    ``min_sample`` emails and its hard-bounce, complaint or blocked rate passes its maximum; a
    provider account is held (all its campaigns paused) when its rolling 24 hours, across every
    campaign and node, pass the ``provider_*`` maxima. The defaults stay below the rates at which
    SES puts an account under review (5 %, 0.1 %)."""

    enabled: bool = True
    min_sample: int = _within(1000, 1, 100_000_000)
    max_bounce_rate: float = _within(0.04, 0, 1, low_open=True, below=_SHARE, above=_SHARE)
    max_complaint_rate: float = _within(0.0008, 0, 1, low_open=True, below=_SHARE, above=_SHARE)
    max_blocked_rate: float = _within(0.03, 0, 1, low_open=True, below=_SHARE, above=_SHARE)
    # The provider guard: a provider account over a rolling 24 hours, across campaigns and nodes.
    provider_min_sample: int = _within(1000, 1, 100_000_000)
    provider_max_bounce_rate: float = _within(0.04, 0, 1, low_open=True, below=_SHARE, above=_SHARE)
    provider_max_complaint_rate: float = _within(0.0008, 0, 1, low_open=True, below=_SHARE, above=_SHARE)
    provider_max_blocked_rate: float = _within(0.03, 0, 1, low_open=True, below=_SHARE, above=_SHARE)
    # Daily quotas and warm-up: how often a waiting node asks again (another may give back).
    quota_recheck_s: float = _within(30.0, 0, 3600, low_open=True)


@dataclasses.dataclass(frozen=True, slots=True)
class UnsubscribeConfig:
    """RFC 8058 one-click unsubscribe: the HMAC key of the tokens in List-Unsubscribe URLs."""

    secret: Secret | None = None


# --- the relay: [relay], [kafka], [callbacks.NAME] (mailerd/relay/) ----------------------------
# Self-contained: the dataclasses, their parsing (_callbacks) and their checks (_relay_problems).


@dataclasses.dataclass(frozen=True, slots=True)
class ReportsConfig:
    """The reports database (mailerd/reports/): a separate Postgres the relay loads, where every
    report reads. ``dsn = "embedded"``: a second database (``mailerd_reports``) in the embedded
    server of ``[database] dsn = "embedded"``."""

    dsn: Secret = Secret("embedded")
    retention_days: int = _within(400, 1, 36_500)  # usage figures feed billing: keep a year and more
    pool_max_size: int = _within(4, 1, 100)  # API reads
    # The relay loads a batch's emails in this many transactions at once (each idempotent): on a
    # busy server the loader keeps up with a full-speed campaign (docs/reports.md: 2 did not here).
    load_connections: int = _within(3, 1, 16)

    @property
    def is_embedded(self) -> bool:
        return self.dsn.reveal() == "embedded"


@dataclasses.dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """Erasure (GDPR Article 17): the key of the keyed hashes that keep an erased address
    suppressed without keeping the address. Keep it stable: a new key forgets those hashes."""

    erasure_key: Secret | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The resolved configuration of one mailerd process."""

    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    providers: Mapping[str, ProviderConfig] = dataclasses.field(default_factory=dict)
    writer: WriterConfig = WriterConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    content: ContentConfig = ContentConfig()
    retention: RetentionConfig = RetentionConfig()
    logging: LoggingConfig = LoggingConfig()
    node: NodeConfig = NodeConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    guards: GuardsConfig = GuardsConfig()
    unsubscribe: UnsubscribeConfig = UnsubscribeConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    relay: RelayConfig = RelayConfig()
    reports: ReportsConfig | None = None
    kafka: KafkaConfig | None = None
    callbacks: Mapping[str, CallbackConfig] = dataclasses.field(default_factory=dict)
    pace: Mapping[str, PaceConfig] = dataclasses.field(default_factory=dict)
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
    "content": ContentConfig,
    "retention": RetentionConfig,
    "logging": LoggingConfig,
    "node": NodeConfig,
    "guards": GuardsConfig,
    "unsubscribe": UnsubscribeConfig,
    "privacy": PrivacyConfig,
    "relay": RelayConfig,
    "reports": ReportsConfig,
    "kafka": KafkaConfig,
}
_WEBHOOK_SECTIONS: dict[str, type[Any]] = {
    "ses": SesWebhookConfig,
    "sendgrid": SendgridWebhookConfig,
    "mailgun": MailgunWebhookConfig,
    "postmark": PostmarkWebhookConfig,
}


@dataclasses.dataclass(frozen=True, slots=True)
class _WebhookScalars:
    soft_bounce_limit: int = 3
    soft_bounce_window: str = "7d"


def _build(data: Mapping[str, Any], source: str) -> Config:
    kwargs: dict[str, Any] = {"source": source}
    for name, values in data.items():
        if name == "providers":
            kwargs["providers"] = _providers(values)
        elif name == "webhooks":
            kwargs["webhooks"] = _webhooks(values)
        elif name == "callbacks":
            kwargs["callbacks"] = stream.callbacks(values)
        elif name == "pace":
            kwargs["pace"] = pace_mod.groups(values)
        elif name in _SECTIONS:
            if not isinstance(values, Mapping):
                raise ConfigError(f"[{name}]: expected a table")
            kwargs[name] = build_section(name, _SECTIONS[name], values)
        else:
            raise ConfigError(f"[{name}]: unknown section")
    config = Config(**kwargs)
    _validate(config)
    return config


def _providers(values: Any) -> Mapping[str, ProviderConfig]:
    if not isinstance(values, Mapping):
        raise ConfigError("[providers]: expected a table of providers")
    providers = {}
    for pname, pvalues in values.items():
        if not isinstance(pvalues, Mapping):
            raise ConfigError(f"[providers.{pname}]: expected a table")
        provider = build_section(
            f"providers.{pname}", ProviderConfig, named(f"providers.{pname}", pvalues, pname)
        )
        if provider.kind not in PROVIDER_KINDS:
            kinds = ", ".join(PROVIDER_KINDS)
            raise ConfigError(f"[providers.{pname}] kind: expected one of {kinds}, got {provider.kind!r}")
        providers[pname] = provider
    return types.MappingProxyType(providers)


def _webhooks(values: Any) -> WebhooksConfig:
    if not isinstance(values, Mapping):
        raise ConfigError("[webhooks]: expected a table")
    scalars = {k: v for k, v in values.items() if k not in _WEBHOOK_SECTIONS}
    subs: dict[str, Any] = {}
    for wname, wcls in _WEBHOOK_SECTIONS.items():
        if wname in values:
            if not isinstance(values[wname], Mapping):
                raise ConfigError(f"[webhooks.{wname}]: expected a table")
            subs[wname] = build_section(f"webhooks.{wname}", wcls, values[wname])
    top = build_section("webhooks", _WebhookScalars, scalars)
    return WebhooksConfig(
        soft_bounce_limit=top.soft_bounce_limit, soft_bounce_window=top.soft_bounce_window, **subs
    )


def _validate(config: Config) -> None:
    """Every number within its range, and what the ranges alone cannot say."""
    _prefixed("[http]", parse_listen, config.http.listen)
    for label, section in _sections_of(config):
        for field in dataclasses.fields(section):
            limits = field.metadata.get("range")
            problem = limits.problem(getattr(section, field.name)) if limits else None
            if problem:
                raise ConfigError(f"[{label}] {field.name}: {problem}")
        for problem in _cross_checks(section):
            raise ConfigError(f"[{label}] {problem}")
    if not config.database.is_embedded:
        problem = dsn_mod.problem(config.database.dsn.reveal())
        if problem:
            raise ConfigError(f"[database] dsn: {problem}")
    if config.reports is not None:
        for problem in _reports_problems(config):
            raise ConfigError(problem)
    if not is_http_url(config.http.public_url):
        raise ConfigError("[http] public_url: expected an http:// or https:// URL")
    window = _prefixed("[webhooks] soft_bounce_window:", parse_duration, config.webhooks.soft_bounce_window)
    if not 1 <= window <= 365 * 86400:
        raise ConfigError("[webhooks] soft_bounce_window: must be from 1s to 365d")
    for problem in [
        *stream.problems(config.relay, config.kafka, config.callbacks),
        *pace_mod.problems(config.pace, config.providers),
    ]:
        raise ConfigError(problem)


def ses_topic_problem(config: Config) -> str | None:
    """Why a daemon must not start with this ``[webhooks.ses]``, or None.

    The SES webhook is in use (a provider of kind ``ses``, or a ``[webhooks.ses]`` key off its
    default)
    with signatures verified, but names no topic and does not opt out with
    ``accept_any_topic``: every notification would be refused (403), so a node that took them
    before topics were required stops at start instead of losing them.
    """
    ses = config.webhooks.ses
    if not ses.verify_signatures or ses.topic_arns or ses.accept_any_topic:
        return None
    if ses == SesWebhookConfig() and all(p.kind != "ses" for p in config.providers.values()):
        return None
    return (
        "[webhooks.ses] topic_arns: empty, so /webhooks/ses accepts no SNS topic; list the ARNs "
        "of your SES event topics, or set accept_any_topic = true to accept a signed message of "
        "any topic, whoever owns it (any AWS account can then subscribe the endpoint to its own "
        "topic and suppress addresses)"
    )


def _prefixed(prefix: str, parse: Callable[[str], T], text: str) -> T:
    """``parse(text)``, its ConfigError naming where the value is (a message of its own names
    at most the key)."""
    try:
        return parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{prefix} {exc}") from None


def _reports_problems(config: Config) -> list[str]:
    assert config.reports is not None
    if config.reports.is_embedded:
        if not config.database.is_embedded:
            return ['[reports] dsn: "embedded" needs [database] dsn = "embedded" (a second database there)']
        return []
    problem = dsn_mod.problem(config.reports.dsn.reveal())
    return [f"[reports] dsn: {problem}"] if problem else []


def _sections_of(config: Config) -> list[tuple[str, Any]]:
    hooks = config.webhooks
    sections: list[tuple[str, Any]] = [
        (name, getattr(config, name)) for name in _SECTIONS if getattr(config, name) is not None
    ]
    sections += [(f"callbacks.{name}", endpoint) for name, endpoint in config.callbacks.items()]
    sections += [(f"providers.{name}", provider) for name, provider in config.providers.items()]
    sections += [(f"pace.{name}", group) for name, group in config.pace.items()]
    sections += [("webhooks", hooks)]
    sections += [(f"webhooks.{name}", getattr(hooks, name)) for name in _WEBHOOK_SECTIONS]
    return sections


def _cross_checks(section: Any) -> list[str]:
    """Problems between the keys of one section (each key is already within its own range)."""
    if isinstance(section, DatabaseConfig) and section.pool_min_size > section.pool_max_size:
        return ["pool_min_size: must be at most pool_max_size"]
    if isinstance(section, SesWebhookConfig) and section.accept_any_topic and section.topic_arns:
        return ["accept_any_topic: true contradicts topic_arns (set one or the other)"]
    if isinstance(section, WriterConfig) and section.max_buffer_rows < section.flush_rows:
        return ["max_buffer_rows: must be at least flush_rows"]
    if isinstance(section, ProviderConfig):
        if re.match(r"(?:[a-z][a-z0-9+.-]*://)?[^/?#]*@", section.endpoint, flags=re.IGNORECASE):
            # Not a secret field: it is shown and logged as it is (check-config printed smtp's
            # "user:password@host:587", which has no scheme).
            return ["endpoint: credentials do not belong in the URL; give them as api_key"]
        if section.kind != "smtp" and section.endpoint and not is_http_url(section.endpoint):
            # "email.eu-west-1.amazonaws.com" was taken: an SES campaign then failed to prepare
            # every second for ever ('NoneType' object has no attribute 'split'), never sending.
            expected = "an http:// or https:// URL (empty: the provider's own)"
            return [f"endpoint: expected {expected}, got {section.endpoint!r}"]
        most = PROVIDER_MAX_BATCH[section.kind]
        if section.batch_size > most:
            return [f"batch_size: must be at most {most} for kind {section.kind} (the provider's API limit)"]
        if section.backoff_max_s < section.backoff_base_s:
            return ["backoff_max_s: must be at least backoff_base_s"]
        if 0 < section.rate_per_s < MIN_RATE_PER_S:
            return [f"rate_per_s: must be 0 (unlimited) or at least {MIN_RATE_PER_S}"]
        return _quota_problems(section)
    return []


def _quota_problems(section: ProviderConfig) -> list[str]:
    """A batch takes its whole size from the daily quota and the warm-up cap at once, so
    neither may be smaller than a batch; the warm-up steps are [day, max_per_day] from a date."""
    if section.daily_quota and section.daily_quota < section.batch_size:
        return [f"daily_quota: must be 0 (none) or at least batch_size ({section.batch_size})"]
    if not section.warmup:
        return ["warmup_start: only with warmup"] if section.warmup_start else []
    try:
        dt.date.fromisoformat(section.warmup_start)
    except ValueError:
        return [f"warmup_start: expected the warm-up's first day as YYYY-MM-DD, got {section.warmup_start!r}"]
    days: list[int] = []
    for number, step in enumerate(section.warmup, 1):
        if len(step) != 2:
            return [f"warmup: step {number}: expected [day, max_per_day], got {list(step)}"]
        day, most = step
        if day < 1 or (days and day <= days[-1]):
            return [f"warmup: step {number}: days must start at 1 or later and increase, got day {day}"]
        if most < section.batch_size:
            return [f"warmup: step {number}: max_per_day must be at least batch_size ({section.batch_size})"]
        if day > _MAX_WARMUP_DAY or most > _MAX_DAILY:
            # 10**20 was taken, and every reservation then failed (the quota table's bigint).
            return [
                f"warmup: step {number}: day must be at most {_MAX_WARMUP_DAY} and max_per_day at most "
                f"{_MAX_DAILY} (as daily_quota)"
            ]
        days.append(day)
    return []
