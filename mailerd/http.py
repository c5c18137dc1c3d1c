"""The HTTP side of the daemon: admin API, health, readiness and Prometheus metrics.

Runs with ``AppRunner`` + ``TCPSite`` inside the daemon's own loop. Every ``/api/`` route needs
``Authorization: Bearer TOKEN`` (compared in constant time). Errors are JSON:
``{"error": {"code": ..., "message": ..., "field": ...}}``; a request that fails validation
changes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import prometheus_client
import structlog
from aiohttp import web

from mailerd import campaigns, db, metrics, segments, suppressions, unsubscribe
from mailerd import events as events_mod
from mailerd.config import Config
from mailerd.db import leads
from mailerd.models import CampaignStatus, Event, EventKind, LogStatus
from mailerd.providers import webhooks as webhooks_mod
from mailerd.providers.webhooks import WebhookError, WebhookHandler, WebhookRequest
from mailerd.writer import EventsRefused, Writer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger(__name__)

HTTP_SHUTDOWN_S = 3.0


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
    webhooks: dict[str, WebhookHandler] = dataclasses.field(default_factory=dict)
    rates: dict[int, collections.deque[tuple[float, int]]] = dataclasses.field(default_factory=dict)


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` (plus ``errors`` when there are several)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": {"code": code, "message": message, "field": field}}
        if errors:
            self.body["errors"] = errors

    def response(self) -> web.Response:
        return _json(self.body, status=self.status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status, content_type="application/json")


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's (404, 405, 413), answered as a JSON error object."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return ApiError(exc.status_code, code, exc.reason).response()


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``/api/`` needs a configured admin token; compared in constant time."""
    if request.path.startswith("/api/"):
        tokens = request.app[SERVICES].config.http.admin_tokens
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        valid = False
        if scheme.lower() == "bearer" and given:
            for token in tokens:  # check all: the time taken does not say which one matched
                valid |= hmac.compare_digest(given.encode(), token.reveal().encode())
        if not valid:
            raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer TOKEN' header is required")
    return await handler(request)


# --- health and metrics ----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers."""
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 while starting, draining, or unable to write the log."""
    ready = request.app[SERVICES].health.ready()
    return _json({"ready": ready}, status=200 if ready else 503)


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus exposition of the default registry."""
    body = prometheus_client.generate_latest()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


# --- request parsing -------------------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    return data


def _pool(request: web.Request) -> asyncpg.Pool:
    pool = request.app[SERVICES].pool
    if pool is None:
        raise ApiError(503, "unavailable", "the database is not available")
    return pool


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(422, "invalid", f"{name}: expected a whole number, got {text!r}", name) from None
    if not low <= value <= high:
        raise ApiError(422, "invalid", f"{name}: must be from {low} to {high}", name)
    return value


def _campaign_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 2**63:
        raise ApiError(404, "not_found", "no such campaign", "id")
    return int(text)


_CREATE_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "account_id": (int, True),
    "name": (str, True),
    "segment": ((dict, list, str, int, float, bool), True),
    "subject": (str, True),
    "html": (str, True),
    "text": (str, True),
    "from": (str, True),
    "provider": (str, True),
    "start": (bool, False),
    "send_at": (str, False),
    "rate": ((int, float), False),
    "resend_uncertain": (bool, False),
}


def _new_campaign(data: dict[str, Any], config: Config) -> campaigns.NewCampaign:
    """Type-check the body field by field, then the campaign's own validation; 422 with all."""
    problems: list[dict[str, str]] = []

    def problem(field: str, message: str) -> None:
        problems.append({"code": "invalid", "field": field, "message": f"{field}: {message}"})

    for key in data:
        if key not in _CREATE_FIELDS:
            problem(key, "unknown field")
    for key, (kind, required) in _CREATE_FIELDS.items():
        if key not in data or data[key] is None:
            if required:
                problem(key, "is required")
            continue
        value = data[key]
        if (
            isinstance(value, bool)
            and kind is not bool
            and bool not in (kind if isinstance(kind, tuple) else ())
        ):
            problem(key, f"expected {_kind_name(kind)}, got a boolean")
        elif not isinstance(value, kind):
            problem(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
    send_at = None
    if isinstance(data.get("send_at"), str):
        try:
            send_at = dt.datetime.fromisoformat(data["send_at"])
        except ValueError:
            problem("send_at", f"not an ISO-8601 time: {data['send_at']!r}")
    if problems:
        raise ApiError(422, "invalid", problems[0]["message"], problems[0]["field"], problems)
    new = campaigns.NewCampaign(
        account_id=data["account_id"],
        name=data["name"],
        segment=data["segment"],
        subject=data["subject"],
        html_body=data["html"],
        text_body=data["text"],
        from_address=data["from"],
        provider=data["provider"],
        start=bool(data.get("start", False)),
        send_at=send_at,
        rate_per_s=float(data["rate"]) if data.get("rate") is not None else None,
        resend_uncertain=bool(data.get("resend_uncertain", False)),
    )
    errors = campaigns.validate(new, config)
    if errors:
        listed = [{"code": "invalid", "field": e.field, "message": str(e)} for e in errors]
        raise ApiError(422, "invalid", listed[0]["message"], listed[0]["field"], listed)
    return new


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", bool: "true or false", float: "a number", dict: "an object"}
    if isinstance(kind, tuple):
        return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kind if k is not list))
    return names.get(kind, kind.__name__)


# --- the admin API ---------------------------------------------------------------------------


async def create_campaign(request: web.Request) -> web.Response:
    """POST /api/campaigns"""
    services = request.app[SERVICES]
    new = _new_campaign(await _body(request), services.config)
    async with _pool(request).acquire() as conn:
        campaign_id = await campaigns.create(conn, new, services.config)
        info = await campaigns.show(conn, campaign_id)
    return _json(info, status=201)


async def list_campaigns(request: web.Request) -> web.Response:
    """GET /api/campaigns?status=&account_id=&after=&limit= (keyset pagination by id)."""
    status = request.query.get("status") or None
    if status is not None and status not in {s.value for s in CampaignStatus}:
        raise ApiError(422, "invalid", f"status: unknown status {status!r}", "status")
    account_id = _int_param(request, "account_id", None, 0, 2**63 - 1)
    after = _int_param(request, "after", 0, 0, 2**63 - 1)
    limit = _int_param(request, "limit", 50, 1, 500)
    async with _pool(request).acquire() as conn:
        rows = await conn.fetch(
            """SELECT c.id, c.account_id, c.name, c.status, c.status_reason AS reason, c.provider,
                      c.created_at, c.started_at, c.finished_at,
                      coalesce(s.matched, 0) AS matched, coalesce(s.sent, 0) AS sent,
                      coalesce(s.failed, 0) AS failed
               FROM campaigns c LEFT JOIN campaign_stats s ON s.campaign_id = c.id
               WHERE c.id > $1 AND ($2::text IS NULL OR c.status = $2)
                 AND ($3::bigint IS NULL OR c.account_id = $3)
               ORDER BY c.id LIMIT $4""",
            after,
            status,
            account_id,
            limit,
        )
    items = [dict(r) for r in rows]
    next_after = items[-1]["id"] if len(items) == limit else None
    return _json({"campaigns": items, "next_after": next_after})


async def get_campaign(request: web.Request) -> web.Response:
    """GET /api/campaigns/{id}: status, reason, counts, current rate and ETA."""
    campaign_id = _campaign_id(request)
    async with _pool(request).acquire() as conn:
        info = await campaigns.show(conn, campaign_id)
    if info is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}", "id")
    info.update(_rate_and_eta(request.app[SERVICES], info))
    return _json(info)


def _rate_and_eta(services: Services, info: dict[str, Any]) -> dict[str, Any]:
    """Rate over the last minute of this node's observations (else since start), and ETA."""
    now = time.monotonic()
    samples = services.rates.setdefault(info["id"], collections.deque(maxlen=120))
    samples.append((now, info["processed"]))
    while samples and now - samples[0][0] > 60:
        samples.popleft()
    rate = 0.0
    if len(samples) >= 2 and now - samples[0][0] >= 1:
        rate = (samples[-1][1] - samples[0][1]) / (now - samples[0][0])
    elif info["started_at"] is not None and info["status"] == "running":
        elapsed = (dt.datetime.now(dt.UTC) - info["started_at"]).total_seconds()
        rate = info["processed"] / elapsed if elapsed > 0 else 0.0
    if info["status"] != "running":
        rate = 0.0
    remaining = max(info["matched"] - info["processed"], 0)
    eta = round(remaining / rate, 1) if rate > 0 else None
    return {"rate_per_s": round(rate, 1), "eta_s": eta}


async def campaign_emails(request: web.Request) -> web.Response:
    """GET /api/campaigns/{id}/emails?after=&limit=&status=: who got the campaign, one row per
    lead, read through email_log's (campaign_id, lead_id) index with keyset pagination (on the
    reports database when ``[database] reports_dsn`` is set)."""
    services = request.app[SERVICES]
    campaign_id = _campaign_id(request)
    after = _int_param(request, "after", 0, 0, 2**63 - 1)
    limit = _int_param(request, "limit", 1000, 1, 10_000)
    status_name = request.query.get("status") or None
    status = None
    if status_name is not None:
        try:
            status = LogStatus[status_name.upper()]
        except KeyError:
            raise ApiError(422, "invalid", f"status: unknown status {status_name!r}", "status") from None
    pool = services.reports_pool or _pool(request)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT lead_id, status, sent_at, provider_message_id, error FROM email_log
               WHERE campaign_id = $1 AND lead_id > $2 AND ($3::smallint IS NULL OR status = $3)
               ORDER BY lead_id LIMIT $4""",
            campaign_id,
            after,
            status,
            limit,
        )
    emails = [{**dict(r), "status": LogStatus(r["status"]).name.lower()} for r in rows]
    next_after = emails[-1]["lead_id"] if len(emails) == limit else None
    return _json({"emails": emails, "next_after": next_after})


async def campaign_action(request: web.Request) -> web.Response:
    """POST /api/campaigns/{id}/start|pause|resume|cancel; 409 with the current status."""
    campaign_id = _campaign_id(request)
    action = request.match_info["action"]
    if action not in campaigns.TRANSITIONS:
        raise ApiError(404, "not_found", f"unknown action {action!r}", "action")
    reason = None
    if request.can_read_body:
        data = await _body(request)
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ApiError(422, "invalid", "reason: expected a string", "reason")
    async with _pool(request).acquire() as conn:
        try:
            await campaigns.transition(conn, campaign_id, action, reason)
        except campaigns.TransitionError as exc:
            if exc.current is None:
                raise ApiError(404, "not_found", f"no campaign {campaign_id}", "id") from None
            raise ApiError(409, "conflict", str(exc), "status") from None
        info = await campaigns.show(conn, campaign_id)
    return _json(info)


async def preview_segment(request: web.Request) -> web.Response:
    """POST /api/segments/preview {"account_id", "segment"} -> count and ten sample leads."""
    data = await _body(request)
    account_id = data.get("account_id")
    if isinstance(account_id, bool) or not isinstance(account_id, int) or not 0 <= account_id < 2**63:
        raise ApiError(422, "invalid", "account_id: expected a non-negative integer", "account_id")
    if "segment" not in data:
        raise ApiError(422, "invalid", "segment: is required", "segment")
    try:
        segment = segments.parse(data["segment"])
    except segments.SegmentError as exc:
        raise ApiError(422, "invalid", f"segment: {exc}", "segment") from None
    async with _pool(request).acquire() as conn:
        count = await leads.count_matching(conn, account_id, segment)
        sample = await leads.sample_matching(conn, account_id, segment, limit=10)
    return _json({"count": count, "sample": sample})


# --- webhooks --------------------------------------------------------------------------------


async def webhook(request: web.Request) -> web.Response:
    """POST /webhooks/{provider}: verify, normalise, map, and answer 2xx only once committed."""
    services = request.app[SERVICES]
    provider = request.match_info["provider"]
    handler = services.webhooks.get(provider)
    if handler is None:
        raise ApiError(404, "not_found", f"no webhook for provider {provider!r}", "provider")
    if services.writer is None:
        raise ApiError(503, "unavailable", "events cannot be recorded right now")
    body = await request.read()
    hook_request = WebhookRequest(body, request.headers, request.remote, request.content_type)
    try:
        events = webhooks_mod.scrub(await handler.parse(hook_request))
    except WebhookError as exc:
        metrics.WEBHOOK_REJECTED.labels(provider, str(exc.status)).inc()
        log.info(
            "webhook_refused", provider=provider, status=exc.status, code=exc.code, remote=request.remote
        )
        raise ApiError(exc.status, exc.code, exc.message, exc.field) from None
    if events:
        try:
            async with _pool(request).acquire() as conn:
                events = await events_mod.resolve(conn, events)
            await record_events(services.writer, events)
        except db.DB_ERRORS as exc:
            # The provider retries on 5xx: nothing is lost by refusing now.
            log.warning("webhook_not_recorded", provider=provider, error=str(exc))
            raise ApiError(503, "unavailable", "events cannot be recorded right now; retry") from None
    for event in events:
        metrics.WEBHOOK_EVENTS.labels(provider, str(event.kind)).inc()
    return _json({"received": len(events)})


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


# --- suppressions ----------------------------------------------------------------------------

_SUPPRESSION_FIELDS = frozenset({"account_id", "email", "reason"})


def _suppression_body(data: dict[str, Any], *, reason_required: bool) -> tuple[int, str, str | None]:
    """``(account_id, normalised email, reason)`` of a POST/DELETE body; 422 naming the field."""
    for key in data:
        if key not in _SUPPRESSION_FIELDS:
            raise ApiError(422, "invalid", f"{key}: unknown field", key)
    account_id = data.get("account_id")
    if isinstance(account_id, bool) or not isinstance(account_id, int) or not 0 <= account_id < 2**63:
        raise ApiError(422, "invalid", "account_id: expected a non-negative integer", "account_id")
    email = data.get("email")
    if not isinstance(email, str):
        raise ApiError(422, "invalid", "email: expected a string", "email")
    normalised = suppressions.normalise(email)
    if normalised is None:
        raise ApiError(422, "invalid", f"email: not an email address: {email[:100]!r}", "email")
    reason = data.get("reason")
    if reason is None:
        if reason_required:
            raise ApiError(422, "invalid", "reason: is required (why the address is removed)", "reason")
        return account_id, normalised, None
    if not isinstance(reason, str) or not reason.strip():
        raise ApiError(422, "invalid", "reason: expected a non-empty string", "reason")
    if len(reason) > suppressions.MAX_REASON_LENGTH:
        raise ApiError(
            422, "invalid", f"reason: at most {suppressions.MAX_REASON_LENGTH} characters", "reason"
        )
    return account_id, normalised, reason.strip()


async def list_suppressions(request: web.Request) -> web.Response:
    """GET /api/suppressions?account_id=&after=&limit= (keyset pagination by address)."""
    account_id = _int_param(request, "account_id", None, 0, 2**63 - 1)
    if account_id is None:
        raise ApiError(422, "invalid", "account_id: is required", "account_id")
    after = request.query.get("after", "").strip().lower()
    limit = _int_param(request, "limit", 100, 1, 1000)
    assert limit is not None
    async with _pool(request).acquire() as conn:
        rows = await suppressions.page(conn, account_id, after=after, limit=limit)
    next_after = rows[-1].email if len(rows) == limit else None
    return _json({"suppressions": [r.as_dict() for r in rows], "next_after": next_after})


async def add_suppression(request: web.Request) -> web.Response:
    """POST /api/suppressions {"account_id", "email", "reason"?}: 201 added, 200 already there."""
    account_id, email, reason = _suppression_body(await _body(request), reason_required=False)
    async with _pool(request).acquire() as conn:
        row, created = await suppressions.add(conn, account_id, email, reason or "manual", "api")
    return _json({**row.as_dict(), "created": created}, status=201 if created else 200)


async def remove_suppression(request: web.Request) -> web.Response:
    """DELETE /api/suppressions {"account_id", "email", "reason"}: 404 when not suppressed."""
    account_id, email, reason = _suppression_body(await _body(request), reason_required=True)
    assert reason is not None
    async with _pool(request).acquire() as conn:
        row = await suppressions.remove(conn, account_id, email, reason, "api")
    if row is None:
        raise ApiError(404, "not_found", f"{email} is not suppressed in account {account_id}", "email")
    return _json({"removed": row.as_dict(), "reason": reason})


# --- one-click unsubscribe -------------------------------------------------------------------


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _unsubscribe_secret(request: web.Request) -> bytes:
    secret = request.app[SERVICES].config.unsubscribe.secret
    if secret is None:
        raise ApiError(404, "not_found", "one-click unsubscribe is not configured")
    return secret.reveal().encode()


async def unsubscribe_page(request: web.Request) -> web.Response:
    """GET /u/{token}: a page with a button; changes nothing (mail scanners prefetch links)."""
    try:
        unsubscribe.read_token(_unsubscribe_secret(request), request.match_info["token"])
    except unsubscribe.BadToken:
        return _html(unsubscribe.invalid_page(), status=400)
    return _html(unsubscribe.confirm_page())


async def unsubscribe_one_click(request: web.Request) -> web.Response:
    """POST /u/{token} with ``List-Unsubscribe=One-Click`` (RFC 8058): unsubscribe, answer 200.

    Recorded as an ``unsubscribe`` event whose receipt is ``campaign:lead``, so a repeat is
    recorded once; answered only once committed, never with a redirect.
    """
    services = request.app[SERVICES]
    try:
        account_id, campaign_id, lead_id = unsubscribe.read_token(
            _unsubscribe_secret(request), request.match_info["token"]
        )
    except unsubscribe.BadToken:
        return _html(unsubscribe.invalid_page(), status=400)
    try:
        form = await request.post()  # application/x-www-form-urlencoded or multipart/form-data
    except ValueError:
        return _html(unsubscribe.not_one_click_page(), status=400)
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if not unsubscribe.is_one_click(fields):
        return _html(unsubscribe.not_one_click_page(), status=400)
    if services.writer is None:
        raise ApiError(503, "unavailable", "events cannot be recorded right now")
    try:
        async with _pool(request).acquire() as conn:
            email = await conn.fetchval(
                "SELECT email FROM leads WHERE account_id = $1 AND id = $2", account_id, lead_id
            )
    except db.DB_ERRORS:
        raise ApiError(503, "unavailable", "cannot unsubscribe right now; please try again") from None
    event = Event(
        provider="list-unsubscribe",
        kind=EventKind.UNSUBSCRIBE,
        occurred_at=dt.datetime.now(dt.UTC),
        email=email,
        receipt=f"{campaign_id}:{lead_id}",
        campaign_id=campaign_id,
        lead_id=lead_id,
        account_id=account_id,
        provider_type="one-click",
    )
    await record_events(services.writer, [event])
    metrics.WEBHOOK_EVENTS.labels("list-unsubscribe", str(EventKind.UNSUBSCRIBE)).inc()
    return _html(unsubscribe.done_page())


async def openapi(request: web.Request) -> web.Response:
    """GET /api/openapi.json"""
    return _json(OPENAPI)


def build_app(services: Services) -> web.Application:
    """The aiohttp application of the daemon."""
    app = web.Application(
        middlewares=[errors_as_json, bearer_auth], client_max_size=services.config.http.max_body_bytes
    )
    app[SERVICES] = services
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_post("/api/campaigns", create_campaign)
    app.router.add_get("/api/campaigns", list_campaigns)
    app.router.add_get("/api/campaigns/{id}", get_campaign)
    app.router.add_get("/api/campaigns/{id}/emails", campaign_emails)
    app.router.add_post("/api/campaigns/{id}/{action}", campaign_action)
    app.router.add_post("/api/segments/preview", preview_segment)
    app.router.add_post("/webhooks/{provider}", webhook)
    # --- suppressions ---
    app.router.add_get("/api/suppressions", list_suppressions)
    app.router.add_post("/api/suppressions", add_suppression)
    app.router.add_delete("/api/suppressions", remove_suppression)
    # --- one-click unsubscribe ---
    app.router.add_get("/u/{token}", unsubscribe_page)
    app.router.add_post("/u/{token}", unsubscribe_one_click)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Bind and serve; returns the runner to clean up at the very end of the shutdown."""
    # By the time the runner is cleaned up the drain is over: requests still running get a few
    # seconds, not aiohttp's default minute (every waiting webhook has had its answer by then).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=HTTP_SHUTDOWN_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("not bound")


def _op(summary: str, *, body: str | None = None, responses: tuple[int, ...] = (200,)) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {str(code): {"description": _STATUS_TEXT[code]} for code in (*responses, 401)},
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return operation


_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: "Body is not JSON",
    401: "Missing or invalid bearer token",
    404: "Not found",
    409: "Transition not allowed from the current status",
    413: "Body too large",
    422: "A field is invalid (error.field names it)",
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "mailerd admin API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "NewCampaign": {
                "type": "object",
                "required": ["account_id", "name", "segment", "subject", "html", "text", "from", "provider"],
                "properties": {
                    "account_id": {"type": "integer"},
                    "name": {"type": "string"},
                    "segment": {"description": "segment condition (see docs/segments.md)"},
                    "subject": {"type": "string", "description": "Jinja2 template"},
                    "html": {"type": "string", "description": "Jinja2 template"},
                    "text": {"type": "string", "description": "Jinja2 template"},
                    "from": {"type": "string"},
                    "provider": {"type": "string"},
                    "start": {"type": "boolean"},
                    "send_at": {"type": "string", "format": "date-time"},
                    "rate": {"type": "number", "description": "per-campaign cap, recipients per second"},
                    "resend_uncertain": {"type": "boolean"},
                },
            },
            "Preview": {
                "type": "object",
                "required": ["account_id", "segment"],
                "properties": {"account_id": {"type": "integer"}, "segment": {}},
            },
        },
    },
    "paths": {
        "/api/campaigns": {
            "post": _op("Create a campaign", body="NewCampaign", responses=(201, 400, 413, 422)),
            "get": _op("List campaigns (status, account_id, after, limit)", responses=(200, 422)),
        },
        "/api/campaigns/{id}": {
            "get": _op("A campaign's status, counts, rate and ETA", responses=(200, 404))
        },
        "/api/campaigns/{id}/emails": {
            "get": _op(
                "Who got the campaign: email_log rows by lead id (after, limit, status)", responses=(200, 422)
            )
        },
        **{
            f"/api/campaigns/{{id}}/{action}": {
                "post": _op(f"{action.capitalize()} a campaign", responses=(200, 404, 409))
            }
            for action in ("start", "pause", "resume", "cancel")
        },
        "/api/segments/preview": {
            "post": _op("Count and ten sample leads of a segment", body="Preview", responses=(200, 400, 422))
        },
    },
}


# --- suppressions (OpenAPI) ------------------------------------------------------------------

OPENAPI["components"]["schemas"]["Suppression"] = {
    "type": "object",
    "required": ["account_id", "email"],
    "properties": {
        "account_id": {"type": "integer"},
        "email": {"type": "string", "format": "email"},
        "reason": {"type": "string", "description": "required on DELETE: why it is removed"},
    },
}
OPENAPI["paths"]["/api/suppressions"] = {
    "get": _op("List an account's suppressions (account_id, after, limit)", responses=(200, 422)),
    "post": _op("Suppress an address (idempotent)", body="Suppression", responses=(200, 201, 400, 422)),
    "delete": _op("Remove an address, with a reason", body="Suppression", responses=(200, 400, 404, 422)),
}
