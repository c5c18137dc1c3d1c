"""Email providers: one module each, behind :class:`mailerd.providers.base.Provider`."""

from __future__ import annotations

from mailerd.config import ProviderConfig
from mailerd.providers.base import Provider


def create(config: ProviderConfig) -> Provider:
    """Build the provider a ``[providers.NAME]`` section describes."""
    if config.kind in ("ses", "sink"):
        from mailerd.providers import ses  # each provider loads only if configured

        return ses.SesProvider(config)
    raise NotImplementedError(f"provider kind {config.kind!r} is not implemented yet")
