"""The event stream's sections: ``[relay]``, ``[kafka]``, ``[callbacks.NAME]``, and their checks."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import importlib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mailerd.config.coerce import build_section, named
from mailerd.config.fields import ConfigError, Secret, _within, is_http_url, parse_listen

RELAY_KINDS = ("email", "event", "campaign", "erasure")
RELAY_EVENT_TYPES = ("delivered", "hard_bounce", "soft_bounce", "complaint", "unsubscribe")


@dataclasses.dataclass(frozen=True, slots=True)
class RelayConfig:
    """How the relay reads the outbox (it runs when ``[kafka]``, ``[callbacks.*]`` or ``[reports]``
    exist)."""

    poll_interval_ms: int = _within(250, 10, 60_000)
    batch_records: int = _within(5_000, 1, 1_000_000)
    # Behind, a destination reads a batch in up to this many ranges at once, one connection each
    # (more: the relay catches up sooner, and takes that much more of the sending database's CPU).
    read_connections: int = _within(1, 1, 16)
    lock_retry_s: float = _within(1.0, 0.05, 60)
    # Floors: 1e-9 was taken, and a failing destination was retried in a near-busy loop.
    retry_base_s: float = _within(0.5, 0.05, 3600)
    retry_max_s: float = _within(30.0, 1, 3600)
    # "earliest": a new destination gets every row written since the relay's migration;
    # "latest": only what commits after it first runs (older rows: `mailerd relay replay`).
    start: Literal["earliest", "latest"] = "earliest"
    # "daemon": every `mailerd run` takes part (the relay shares the sending loop's CPU);
    # "process": only `mailerd relay run` processes do (their own loop, their own CPU).
    run_in: Literal["daemon", "process"] = "daemon"
    # HOST:PORT where `mailerd relay run` serves /healthz and /metrics; empty: no HTTP.
    listen: str = ""

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaConfig:
    """The Kafka destination (aiokafka producer): one topic per record kind."""

    bootstrap_servers: tuple[str, ...] = ()
    client_id: str = "mailerd"
    kinds: tuple[str, ...] = RELAY_KINDS
    email_topic: str = "mailerd.emails"
    event_topic: str = "mailerd.events"
    campaign_topic: str = "mailerd.campaigns"
    erasure_topic: str = "mailerd.erasures"
    acks: Literal["all", "1", "0"] = "all"
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    linger_ms: int = _within(5, 0, 60_000)
    max_batch_bytes: int = _within(524_288, 1024, 64 * 1_048_576)
    request_timeout_ms: int = _within(30_000, 1000, 600_000)
    enable_idempotence: bool = False
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = ""
    sasl_username: str = ""
    sasl_password: Secret | None = None

    def topic(self, kind: str) -> str:
        return str(getattr(self, f"{kind}_topic"))


@dataclasses.dataclass(frozen=True, slots=True)
class CallbackConfig:
    """One HTTPS endpoint of the host application, sent batches signed the Standard Webhooks way."""

    name: str = ""
    url: str = ""
    secret: Secret | None = None  # whsec_<base64>, as Standard Webhooks libraries take it
    kinds: tuple[str, ...] = RELAY_KINDS
    event_types: tuple[str, ...] = ()  # empty: every event type
    max_records: int = _within(100, 1, 10_000)
    timeout_s: float = _within(10.0, 0, 600, low_open=True)


def callbacks(values: Any) -> Mapping[str, CallbackConfig]:
    if not isinstance(values, Mapping):
        raise ConfigError("[callbacks]: expected a table of endpoints ([callbacks.NAME])")
    endpoints = {}
    for name, endpoint in values.items():
        if not isinstance(endpoint, Mapping):
            raise ConfigError(f"[callbacks.{name}]: expected a table")
        endpoints[name] = build_section(
            f"callbacks.{name}", CallbackConfig, named(f"callbacks.{name}", endpoint, name)
        )
    return types.MappingProxyType(endpoints)


def problems(
    relay: RelayConfig, kafka: KafkaConfig | None, callbacks: Mapping[str, CallbackConfig]
) -> list[str]:
    """What the ranges alone cannot say about [relay], [kafka] and [callbacks.*]."""
    problems = []
    if relay.retry_max_s < relay.retry_base_s:
        problems.append("[relay] retry_max_s: must be at least retry_base_s")
    if relay.listen:
        try:
            parse_listen(relay.listen)
        except ConfigError:
            problems.append(f"[relay] listen: expected HOST:PORT or empty, got {relay.listen!r}")
    if kafka is not None:
        problems += [f"[kafka] {p}" for p in _kafka_problems(kafka)]
    for name, endpoint in callbacks.items():
        problems += [f"[callbacks.{name}] {p}" for p in _callback_problems(endpoint)]
    return problems


def _kafka_problems(kafka: KafkaConfig) -> list[str]:
    problems = []
    if not kafka.bootstrap_servers:
        problems.append('bootstrap_servers: required, e.g. ["kafka1:9092"]')
    problems += _kind_problems(kafka.kinds, ())
    if kafka.security_protocol.startswith("SASL_"):
        if not kafka.sasl_mechanism:
            problems.append(f"sasl_mechanism: required with security_protocol {kafka.security_protocol}")
        elif not kafka.sasl_username or kafka.sasl_password is None:
            problems.append("sasl_username and sasl_password (or sasl_password_file): required with SASL")
    elif kafka.sasl_mechanism:
        problems.append("sasl_mechanism: needs security_protocol SASL_PLAINTEXT or SASL_SSL")
    if kafka.enable_idempotence and kafka.acks != "all":
        # (the producer refuses the pair: every delivery failed, and nothing was published)
        problems.append(f'enable_idempotence: needs acks = "all" (not "{kafka.acks}")')
    if kafka.compression in ("snappy", "lz4", "zstd") and not _cramjam_installed():
        # (aiokafka reads these codecs with cramjam: without it every delivery failed)
        problems.append(
            f"compression: {kafka.compression} needs the cramjam package "
            f"(pip install 'aiokafka[{kafka.compression}]')"
        )
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(kafka, key)
        if path and not Path(path).expanduser().is_file():
            problems.append(f"{key}: {path} is not a readable file")
    return problems


def _cramjam_installed() -> bool:
    """Whether aiokafka can compress with snappy, lz4 and zstd (its codecs are cramjam's)."""
    try:
        importlib.import_module("cramjam")
    except ImportError:
        return False
    return True


def _callback_problems(endpoint: CallbackConfig) -> list[str]:
    problems = []
    if not is_http_url(endpoint.url):
        problems.append("url: expected an http:// or https:// URL without credentials")
    if endpoint.secret is None:
        problems.append(
            "secret: required (secret_file or the environment), e.g. whsec_ + base64 of 32 random bytes"
        )
    elif not _webhook_secret_ok(endpoint.secret.reveal()):
        problems.append("secret: expected whsec_ followed by base64 (at least 16 bytes)")
    return problems + _kind_problems(endpoint.kinds, endpoint.event_types)


def _kind_problems(kinds: tuple[str, ...], event_types: tuple[str, ...]) -> list[str]:
    problems = []
    unknown = [k for k in kinds if k not in RELAY_KINDS]
    if unknown or not kinds:
        problems.append(f"kinds: expected some of {', '.join(RELAY_KINDS)}, got {list(kinds)}")
    unknown = [t for t in event_types if t not in RELAY_EVENT_TYPES]
    if unknown:
        problems.append(f"event_types: expected some of {', '.join(RELAY_EVENT_TYPES)}, got {unknown}")
    if event_types and "event" not in kinds:
        problems.append('event_types: needs "event" in kinds')
    return problems


def _webhook_secret_ok(secret: str) -> bool:
    text = secret.removeprefix("whsec_")
    try:
        return len(base64.b64decode(text, validate=True)) >= 16
    except (binascii.Error, ValueError):
        return False
