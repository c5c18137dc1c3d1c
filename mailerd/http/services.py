"""What the handlers share: the pool, the configuration, the health flags, the writer."""

from __future__ import annotations

import collections
import dataclasses

import asyncpg
from aiohttp import web

from mailerd.config import Config
from mailerd.http.errors import ApiError
from mailerd.http.freshness import Freshness
from mailerd.providers.webhooks import WebhookHandler
from mailerd.writer import Writer


@dataclasses.dataclass(slots=True)
class Health:
    """What ``/readyz`` reports: ready once started, not ready while draining."""

    started: bool = False
    draining: bool = False
    database_ok: bool = True

    def ready(self) -> bool:
        return self.started and not self.draining and self.database_ok


@dataclasses.dataclass(slots=True)
class Services:
    """What the handlers use: the pool, the configuration, the health flags."""

    pool: asyncpg.Pool | None
    config: Config
    health: Health
    writer: Writer | None = None
    reports_pool: asyncpg.Pool | None = None
    freshness: Freshness = dataclasses.field(default_factory=Freshness)  # the reports' as_of
    webhooks: dict[str, WebhookHandler] = dataclasses.field(default_factory=dict)
    rates: dict[int, collections.deque[tuple[float, int]]] = dataclasses.field(default_factory=dict)


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def pool(request: web.Request) -> asyncpg.Pool:
    """The main pool; 503 when the node has none."""
    main = request.app[SERVICES].pool
    if main is None:
        raise ApiError(503, "unavailable", "the database is not available")
    return main
