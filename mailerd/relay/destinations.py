"""The destinations the configuration asks for, by name."""

from __future__ import annotations

from mailerd.config import Config
from mailerd.db import connect
from mailerd.relay.callbacks import CallbackDestination
from mailerd.relay.destination import Destination
from mailerd.relay.kafka import KafkaDestination
from mailerd.relay.reports import NAME as REPORTS
from mailerd.relay.reports import ReportsDestination


def names(config: Config) -> list[str]:
    """The configured destinations' names (their positions' keys), without opening anything."""
    found = ["kafka"] if config.kafka is not None else []
    found += [f"callbacks.{name}" for name in config.callbacks]
    found += [REPORTS] if config.reports is not None else []
    return found


def from_config(config: Config, main_dsn: str, *, replay: bool = False) -> list[Destination]:
    """One object per configured destination (nothing connects before the first delivery).
    ``main_dsn`` is the resolved main database (an embedded reports database is beside it);
    ``replay``: they send an operator's replay (callbacks under new ``webhook-id`` values)."""
    found: list[Destination] = []
    if config.kafka is not None:
        found.append(KafkaDestination(config.kafka))
    found += [CallbackDestination(endpoint, replay=replay) for endpoint in config.callbacks.values()]
    if config.reports is not None:
        dsn = connect.reports_dsn(config.reports, main_dsn)
        found.append(
            ReportsDestination(
                config.reports, dsn, config.privacy, command_timeout_s=config.database.command_timeout_s
            )
        )
    return found


def enabled(config: Config) -> bool:
    """The relay runs when at least one destination is configured."""
    return bool(names(config))


def runs_in_daemon(config: Config) -> bool:
    """Whether ``mailerd run`` takes part in the relay lock (else only ``mailerd relay run`` does)."""
    return enabled(config) and config.relay.run_in == "daemon"
