"""Configuration: a TOML file plus ``MAILERD_*`` environment overrides, as frozen dataclasses.

Only :mod:`mailerd.config.loading` reads ``os.environ``; everything else receives a :class:`Config`.

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

from mailerd.config.fields import ConfigError, Secret, parse_duration, parse_listen
from mailerd.config.loading import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    SystemdSettings,
    from_mapping,
    load,
    redact_dsn,
    redacted,
    systemd_settings,
)
from mailerd.config.pace import PaceConfig
from mailerd.config.sections import (
    PROVIDER_KINDS,
    PROVIDER_MAX_BATCH,
    Config,
    ContentConfig,
    DatabaseConfig,
    GuardsConfig,
    HttpConfig,
    LoggingConfig,
    MailgunWebhookConfig,
    NodeConfig,
    PostmarkWebhookConfig,
    PrivacyConfig,
    ProviderConfig,
    ReportsConfig,
    RetentionConfig,
    SchedulerConfig,
    SendgridWebhookConfig,
    SesWebhookConfig,
    UnsubscribeConfig,
    WebhooksConfig,
    WriterConfig,
    ses_topic_problem,
)
from mailerd.config.stream import (
    RELAY_EVENT_TYPES,
    RELAY_KINDS,
    CallbackConfig,
    KafkaConfig,
    RelayConfig,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "PROVIDER_KINDS",
    "PROVIDER_MAX_BATCH",
    "RELAY_EVENT_TYPES",
    "RELAY_KINDS",
    "CallbackConfig",
    "Config",
    "ConfigError",
    "ContentConfig",
    "DatabaseConfig",
    "GuardsConfig",
    "HttpConfig",
    "KafkaConfig",
    "LoggingConfig",
    "MailgunWebhookConfig",
    "NodeConfig",
    "PaceConfig",
    "PostmarkWebhookConfig",
    "PrivacyConfig",
    "ProviderConfig",
    "RelayConfig",
    "ReportsConfig",
    "RetentionConfig",
    "SchedulerConfig",
    "Secret",
    "SendgridWebhookConfig",
    "SesWebhookConfig",
    "SystemdSettings",
    "UnsubscribeConfig",
    "WebhooksConfig",
    "WriterConfig",
    "from_mapping",
    "load",
    "parse_duration",
    "parse_listen",
    "redact_dsn",
    "redacted",
    "ses_topic_problem",
    "systemd_settings",
]
