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


RATE_WINDOW_S = 60.0  # GET /api/campaigns/{id}'s rate_per_s is measured over this much time
RATE_SAMPLES = 120  # observations kept per campaign (a client polling twice a second fills it)
RATE_CAMPAIGNS = 10_000  # campaigns observed at most (the least recently observed go first)


class CampaignRates:
    """The ``processed`` counts this node saw of each running campaign in the last
    :data:`RATE_WINDOW_S` (the rate ``GET /api/campaigns/{id}`` shows). Only what can still
    count is kept: a campaign no longer running is forgotten when next seen, one not seen for a
    window is forgotten on the next observation of any, and at most ``max_campaigns`` are kept."""

    def __init__(self, window_s: float = RATE_WINDOW_S, max_campaigns: int = RATE_CAMPAIGNS) -> None:
        self._window_s = window_s
        self._max_campaigns = max_campaigns
        # least recently observed first: the stale ones are found at the front
        self._seen: collections.OrderedDict[int, collections.deque[tuple[float, int]]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, campaign_id: int, processed: int, *, running: bool, now: float) -> float | None:
        """Note ``processed`` at monotonic time ``now``; the rate over the window, or None with
        fewer than two observations at least 1 s apart (or when the campaign is not running)."""
        self._forget_stale(now)
        if not running:
            self._seen.pop(campaign_id, None)
            return None
        samples = self._seen.get(campaign_id)
        if samples is None:
            samples = self._seen[campaign_id] = collections.deque(maxlen=RATE_SAMPLES)
            if len(self._seen) > self._max_campaigns:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(campaign_id)
        samples.append((now, processed))
        while now - samples[0][0] > self._window_s:
            samples.popleft()
        if len(samples) < 2 or now - samples[0][0] < 1:
            return None
        return (samples[-1][1] - samples[0][1]) / (now - samples[0][0])

    def _forget_stale(self, now: float) -> None:
        while self._seen:
            campaign_id, samples = next(iter(self._seen.items()))
            if now - samples[-1][0] <= self._window_s:
                return
            del self._seen[campaign_id]


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
    rates: CampaignRates = dataclasses.field(default_factory=CampaignRates)


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


def pool(request: web.Request) -> asyncpg.Pool:
    """The main pool; 503 when the node has none."""
    main = request.app[SERVICES].pool
    if main is None:
        raise ApiError(503, "unavailable", "the database is not available")
    return main
