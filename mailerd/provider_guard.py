"""The provider guard: hold a provider account before the provider reviews or pauses it.

The writer keeps ``provider_usage`` (per provider and hour: sent, hard bounces, complaints,
blocks) in each flush transaction, and calls :meth:`ProviderGuard.check` after each flush that
committed, with the campaigns it counted something for. The check sums the rolling 24 hours of
their providers (at most 25 rows each, never the log) and, when a rate passes its maximum with at
least ``provider_min_sample`` emails sent, holds the provider: a ``provider_holds`` row naming
the rate, the threshold and the sample, and every scheduled or running campaign of the provider
paused (cause ``guard``) in the same transaction. While held, no campaign of the provider starts
or resumes (:class:`mailerd.db.provider_usage.ProviderHeld`), until an operator releases it with
a reason (:func:`release`): the release is recorded (who, why, when) and the guard judges only
what is sent after it, like the campaign guard after a resume (the bounces and complaints of
earlier emails that arrive after it are not counted: :func:`mailerd.events.record`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

import asyncpg
import structlog

from mailerd import guards, metrics
from mailerd.config import GuardsConfig, ProviderConfig
from mailerd.db import campaigns as campaigns_db
from mailerd.db import provider_quota as quota_db
from mailerd.db import provider_usage as usage_db

log = structlog.get_logger(__name__)

WINDOW = " in 24 h"


def limits_for(config: GuardsConfig, provider: ProviderConfig | None) -> guards.Limits:
    """The provider's thresholds: its ``guard_*`` keys where set (non-zero), else ``[guards]
    provider_*``."""
    own = (
        (0, 0.0, 0.0, 0.0)
        if provider is None
        else (
            provider.guard_min_sample,
            provider.guard_max_bounce_rate,
            provider.guard_max_complaint_rate,
            provider.guard_max_blocked_rate,
        )
    )
    return guards.Limits(
        own[0] or config.provider_min_sample,
        own[1] or config.provider_max_bounce_rate,
        own[2] or config.provider_max_complaint_rate,
        own[3] or config.provider_max_blocked_rate,
    )


def counts_of(usage: usage_db.Usage) -> guards.Counts:
    return guards.Counts(usage.sent, usage.hard_bounced, usage.complained, usage.blocked, usage.rejected)


def judge(usage: usage_db.Usage, limits: guards.Limits) -> guards.Verdict | None:
    """The campaign guard's rule over the provider's rolling window, with the provider keys."""
    return guards.judge(
        counts_of(usage), limits, scope=f"provider {usage.provider}", prefix="provider_", window=WINDOW
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """What ``GET /api/providers`` shows of one provider."""

    provider: str
    usage: usage_db.Usage
    limits: guards.Limits
    hold: usage_db.Hold | None
    last_release: usage_db.Release | None
    quota: quota_db.State | None = None  # daily quota and warm-up, as last reserved


class ProviderGuard:
    """Judges the providers of the campaigns a flush touched; holds those past a threshold."""

    def __init__(self, config: GuardsConfig, providers: Mapping[str, ProviderConfig] | None = None) -> None:
        self.config = config
        self.providers = dict(providers or {})

    def limits(self, provider: str) -> guards.Limits:
        return limits_for(self.config, self.providers.get(provider))

    async def check(self, conn: asyncpg.Connection, campaign_ids: Collection[int]) -> list[str]:
        """Hold each provider of ``campaign_ids`` past a threshold. Returns the providers held."""
        if not self.config.enabled or not campaign_ids:
            return []
        names = await usage_db.unheld_providers_of(conn, sorted(campaign_ids))
        if not names:
            return []
        held = []
        for usage in await usage_db.usage(conn, names):
            verdict = judge(usage, self.limits(usage.provider))
            if verdict is not None and await hold(conn, usage.provider, verdict):
                held.append(usage.provider)
                if usage.provider in self.providers:
                    # At once, not at the next sample. Only for a provider this node samples:
                    # a webhook's bounces can make any node hold any provider, and a 1 set here
                    # for another would never be reset (:func:`sample`), so ``max`` would say held.
                    metrics.PROVIDER_HELD.labels(usage.provider).set(1)
        return held


async def hold(conn: asyncpg.Connection, provider: str, verdict: guards.Verdict) -> bool:
    """Hold the provider and pause its scheduled and running campaigns, in one transaction.
    False: another node held it first."""
    async with conn.transaction():
        await usage_db.lock(conn, provider, shared=False)
        if not await usage_db.put_hold(conn, provider, verdict.signal, verdict.reason):
            return False
        paused = await campaigns_db.pause_provider(
            conn, provider, verdict.reason, cause=campaigns_db.GUARD_CAUSE
        )
    metrics.GUARD_PAUSES.labels("provider", verdict.signal).inc(len(paused))
    log.warning("provider_held_by_guard", provider=provider, reason=verdict.reason, campaigns_paused=paused)
    return True


async def release(
    conn: asyncpg.Connection, provider: str, reason: str, by: str
) -> tuple[usage_db.Hold, list[int]] | None:
    """An operator's override: release the hold (recorded with who and why) and resume the
    campaigns it paused that are still paused; the guard starts over from now. Returns the hold
    released and the campaigns resumed; None when the provider was not held."""
    async with conn.transaction():
        await usage_db.lock(conn, provider, shared=False)
        released = await usage_db.release(conn, provider, reason, by)
        if released is None:
            return None
        resumed = await campaigns_db.resume_provider(conn, provider, released.reason, reason)
    metrics.PROVIDER_HELD.labels(provider).set(0)
    log.warning(
        "provider_released", provider=provider, reason=reason, by=by, hold=released.reason, resumed=resumed
    )
    return released, resumed


async def status(
    conn: asyncpg.Connection, config: GuardsConfig, providers: Mapping[str, ProviderConfig], names: list[str]
) -> list[Status]:
    """The rolling counters, thresholds, hold, last release and quota of each provider of
    ``names``."""
    holds = await usage_db.holds(conn)
    quotas = await quota_db.states(conn, names)
    result = []
    for usage in await usage_db.usage(conn, names):
        name = usage.provider
        release_row = await usage_db.last_release(conn, name)
        result.append(
            Status(
                name,
                usage,
                limits_for(config, providers.get(name)),
                holds.get(name),
                release_row,
                quotas.get(name),
            )
        )
    return result


async def sample(
    conn: asyncpg.Connection, config: GuardsConfig, providers: Mapping[str, ProviderConfig]
) -> None:
    """Set the gauges of the configured providers: held or not, sent and rates over 24 h."""
    if not providers:
        return
    for found in await status(conn, config, providers, sorted(providers)):
        name = found.provider
        metrics.PROVIDER_HELD.labels(name).set(1 if found.hold else 0)
        metrics.PROVIDER_SENT_24H.labels(name).set(found.usage.sent)
        for signal, rate in zip(guards.SIGNALS, rates(found.usage), strict=True):
            metrics.PROVIDER_RATE.labels(name, signal).set(rate)


def rates(usage: usage_db.Usage) -> tuple[float, float, float]:
    """(bounce, complaint, blocked) rates over the window's sample (sent, and rejected by an SMTP
    server), as the guard judges them; zeros before the first email."""
    sample = usage.sample
    if sample <= 0:
        return 0.0, 0.0, 0.0
    return usage.hard_bounced / sample, usage.complained / sample, usage.blocked / sample
