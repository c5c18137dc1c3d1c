"""The provider API: each provider account's rolling 24 hours and hold, and the operator's
release of a hold (``/api/providers``; docs/guards.md "The provider guard")."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from mailerd import provider_guard
from mailerd.db import provider_quota, provider_usage
from mailerd.http import parsing
from mailerd.http import provider_bodies as bodies
from mailerd.http.errors import ApiError, json_response
from mailerd.http.services import SERVICES, pool


def _answer(found: provider_guard.Status) -> bodies.ProviderStatus:
    usage, limits = found.usage, found.limits
    bounce, complaint, blocked = provider_guard.rates(usage)
    hold = found.hold
    release = found.last_release
    return bodies.ProviderStatus(
        name=found.provider,
        sent=usage.sent,
        hard_bounced=usage.hard_bounced,
        complained=usage.complained,
        blocked=usage.blocked,
        rejected=usage.rejected,
        bounce_rate=bounce,
        complaint_rate=complaint,
        blocked_rate=blocked,
        limits=bodies.Limits(
            limits.min_sample, limits.max_bounce_rate, limits.max_complaint_rate, limits.max_blocked_rate
        ),
        hold=None if hold is None else bodies.Hold(hold.signal, hold.reason, hold.since),
        last_release=None
        if release is None
        else bodies.Release(release.reason, release.by, release.at, release.held_for),
        quota=None if found.quota is None else _quota(found.quota),
    )


def _quota(state: provider_quota.State) -> bodies.Quota:
    fields = dataclasses.asdict(state)
    del fields["provider"]
    return bodies.Quota(**fields)


async def _statuses(request: web.Request, names: list[str]) -> list[bodies.ProviderStatus]:
    config = request.app[SERVICES].config
    async with pool(request).acquire() as conn:
        found = await provider_guard.status(conn, config.guards, config.providers, names)
    return [_answer(f) for f in found]


async def _known(request: web.Request, name: str) -> None:
    """404 naming the path parameter unless the provider is configured or named anywhere."""
    if name in request.app[SERVICES].config.providers:
        return
    async with pool(request).acquire() as conn:
        if name in await provider_usage.known_providers(conn):
            return
    raise ApiError(404, "not_found", f"no provider {name!r}", "provider")


async def list_providers(request: web.Request) -> web.Response:
    """GET /api/providers: every provider's rolling 24 hours, thresholds and hold."""
    async with pool(request).acquire() as conn:
        names = set(await provider_usage.known_providers(conn))
    names |= set(request.app[SERVICES].config.providers)
    return json_response(bodies.ProviderList(await _statuses(request, sorted(names))))


async def get_provider(request: web.Request) -> web.Response:
    """GET /api/providers/{provider}"""
    name = request.match_info["provider"]
    await _known(request, name)
    return json_response((await _statuses(request, [name]))[0])


async def resume_provider(request: web.Request) -> web.Response:
    """POST /api/providers/{provider}/resume {"reason", "by"?}: release the hold and resume the
    campaigns it paused; 409 when the provider is not held."""
    name = request.match_info["provider"]
    data = await parsing.body(request, bodies.ResumeBody)
    reason = data.reason.strip()
    if not reason:
        raise ApiError(422, "invalid", "reason: expected a non-empty string", "reason")
    await _known(request, name)
    async with pool(request).acquire() as conn:
        done = await provider_guard.release(conn, name, reason, data.by.strip() or "api")
    if done is None:
        raise ApiError(409, "conflict", f"provider {name} is not held", "provider")
    hold, resumed = done
    status = (await _statuses(request, [name]))[0]
    return json_response(bodies.Released(status, bodies.Hold(hold.signal, hold.reason, hold.since), resumed))
