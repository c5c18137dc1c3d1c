"""Provider webhooks: ``POST /webhooks/{provider}``: verify, normalise, map, and answer 2xx only
once the events are committed (so a provider never hears "ok" for an event a crash could lose)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog
from aiohttp import web

from mailerd import db, metrics
from mailerd import events as events_mod
from mailerd.db import events as events_db
from mailerd.http import bodies, parsing
from mailerd.http.errors import ApiError, json_response
from mailerd.http.services import SERVICES, pool
from mailerd.models import Event
from mailerd.providers import webhooks as webhooks_mod
from mailerd.providers.webhooks import WebhookError, WebhookRequest
from mailerd.writer import EventsRefused, Writer

log = structlog.get_logger(__name__)


async def webhook(request: web.Request) -> web.Response:
    """POST /webhooks/{provider}: verify, normalise, map, and answer 2xx only once committed."""
    services = request.app[SERVICES]
    provider = request.match_info["provider"]
    handler = services.webhooks.get(provider)
    if handler is None:
        raise ApiError(404, "not_found", f"no webhook for provider {provider!r}", "provider")
    if services.writer is None:
        raise ApiError(503, "unavailable", "events cannot be recorded right now")
    body = await parsing.read_body(request)
    hook_request = WebhookRequest(body, request.headers, request.remote, request.content_type)
    try:
        events = webhooks_mod.scrub(await handler.parse(hook_request))
    except WebhookError as exc:
        metrics.WEBHOOK_REJECTED.labels(provider, str(exc.status)).inc()
        log.info(
            "webhook_refused", provider=provider, status=exc.status, code=exc.code, remote=request.remote
        )
        await _claim(request, provider, hook_request.claims)  # verified, then refused: spent too
        raise ApiError(exc.status, exc.code, exc.message, exc.field) from None
    # A claim no event carries as its guard (a verified post with no event of ours) on its own.
    await _claim(request, provider, [c for c in hook_request.claims if all(e.guard != c for e in events)])
    if events:
        try:
            kinds = {name: section.kind for name, section in services.config.providers.items()}
            async with pool(request).acquire() as conn:
                events = await events_mod.resolve(conn, events, provider_kinds=kinds)
            await record_events(services.writer, events)
        except db.DB_ERRORS as exc:
            # The provider retries on 5xx: nothing is lost by refusing now.
            log.warning("webhook_not_recorded", provider=provider, error=str(exc))
            raise ApiError(503, "unavailable", "events cannot be recorded right now; retry") from None
    for event in events:
        metrics.WEBHOOK_EVENTS.labels(provider, str(event.kind)).inc()
    return json_response(bodies.Received(len(events)))


async def _claim(request: web.Request, provider: str, claims: list[str]) -> None:
    """Claim a verified request's one-time keys in ``webhook_receipts`` (no event: no flush)."""
    if not claims:
        return
    try:
        async with pool(request).acquire() as conn:
            await events_db.claim_receipts(conn, {(provider, events_mod.receipt_key(c)) for c in claims})
    except db.DB_ERRORS as exc:
        log.warning("webhook_not_recorded", provider=provider, error=str(exc))
        raise ApiError(503, "unavailable", "the request cannot be recorded right now; retry") from None


async def await_commit(future: Awaitable[None]) -> None:
    """Wait for the writer's commit (shielded: a client that hangs up does not cancel it)."""
    await asyncio.shield(future)


async def record_events(writer: Writer, events: list[Event]) -> None:
    """Hand events to the writer and wait for their commit; errors as JSON answers."""
    try:
        await await_commit(await writer.submit_events(events))
    except EventsRefused as exc:
        raise ApiError(400, "unstorable", f"the events hold data that cannot be stored: {exc}") from None
    except RuntimeError:  # the writer closed: the node is at the end of its drain
        raise ApiError(503, "unavailable", "this node is shutting down; retry") from None
