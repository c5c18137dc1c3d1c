"""``[pace.NAME]``: optional limits per group of recipient domains, on top of a provider's own rate.

A group names its domains (``gmail.com``, ``googlemail.com``: matched exactly against the part of
the address after ``@``, case-insensitively) and the recipients per second the node may send to
them, through every provider or only through those it names. The limiter is per node (one token
bucket per group, shared by the provider lanes the group applies to), like a provider's
``rate_per_s``: divide the cluster's limit by the number of nodes.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from typing import Any

from mailerd.config.coerce import build_section, named
from mailerd.config.fields import MIN_RATE_PER_S, ConfigError, _within

_DOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


@dataclasses.dataclass(frozen=True, slots=True)
class PaceConfig:
    """One domain group: its domains, its rate and burst, and the providers it applies to."""

    name: str = ""
    domains: tuple[str, ...] = ()
    rate_per_s: float = _within(0.0, 0, 100_000, low_open=True)
    burst: int = _within(0, 0, 1_000_000, below="must be 0 (one second of rate) or more")
    providers: tuple[str, ...] = ()  # empty: every provider

    def applies_to(self, provider: str) -> bool:
        return not self.providers or provider in self.providers


def groups(values: Any) -> Mapping[str, PaceConfig]:
    """The ``[pace.NAME]`` tables, domains lower-cased; each key's problem names it."""
    if not isinstance(values, Mapping):
        raise ConfigError("[pace]: expected a table of domain groups ([pace.NAME])")
    found: dict[str, PaceConfig] = {}
    for name, table in values.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"[pace.{name}]: expected a table")
        group = build_section(f"pace.{name}", PaceConfig, named(f"pace.{name}", table, name))
        found[name] = dataclasses.replace(group, domains=tuple(d.strip().lower() for d in group.domains))
    return types.MappingProxyType(found)


def problems(pace: Mapping[str, PaceConfig], providers: Mapping[str, Any]) -> list[str]:
    """What the ranges cannot say: domains well formed and in one group only, providers known."""
    found: list[str] = []
    owner: dict[str, str] = {}
    for name, group in pace.items():
        if not group.domains:
            found.append(f"[pace.{name}] domains: must name at least one domain")
        if group.rate_per_s < MIN_RATE_PER_S:
            found.append(f"[pace.{name}] rate_per_s: must be at least {MIN_RATE_PER_S}")
        for domain in group.domains:
            if not _DOMAIN.fullmatch(domain):
                found.append(f"[pace.{name}] domains: {domain!r} is not a domain name (e.g. gmail.com)")
            elif domain in owner:
                found.append(f"[pace.{name}] domains: {domain} is already in [pace.{owner[domain]}]")
            else:
                owner[domain] = name
        for provider in group.providers:
            if provider not in providers:
                known = ", ".join(sorted(providers)) or "none configured"
                found.append(f"[pace.{name}] providers: unknown provider {provider!r} (configured: {known})")
    return found
