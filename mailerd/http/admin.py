"""The admin API: campaigns, segment previews and the suppression list (``/api/...``)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from mailerd import campaigns, decoding, erasure, segments, suppressions
from mailerd.db import campaigns as campaign_rows
from mailerd.db import leads
from mailerd.http import bodies, parsing
from mailerd.http.errors import ApiError, Handler, json_response
from mailerd.http.services import SERVICES, Services, pool

# --- campaigns -------------------------------------------------------------------------------


async def create_campaign(request: web.Request) -> web.Response:
    """POST /api/campaigns: 201 and the campaign; 422 naming every invalid field."""
    config = request.app[SERVICES].config
    new = await parsing.body_with_segment(request, campaigns.NewCampaign)
    errors = campaigns.validate(new, config)
    if errors:
        raise ApiError.invalid([decoding.Problem(error.field, error.message) for error in errors])
    async with pool(request).acquire() as conn:
        try:
            campaign_id = await campaigns.create(conn, new, config)
        except campaigns.CampaignError as error:  # the content budget, checked on a sample lead
            raise ApiError.invalid([decoding.Problem(error.field, error.message)]) from None
        except campaign_rows.ProviderHeld as exc:  # start: true, and the provider is held
            raise ApiError(409, "provider_held", str(exc), "provider") from None
        info = await campaigns.show(conn, campaign_id)
    return json_response(msgspec.convert(info, bodies.Campaign), status=201)


async def list_campaigns(request: web.Request) -> web.Response:
    """GET /api/campaigns?status=&account_id=&after=&limit= (keyset pagination by id)."""
    query = parsing.query(request, bodies.CampaignListQuery)
    async with pool(request).acquire() as conn:
        rows = await campaign_rows.page(
            conn,
            after=query.after,
            limit=query.limit,
            status=None if query.status is None else query.status.value,
            account_id=query.account_id,
        )
    items = msgspec.convert(rows, list[bodies.CampaignSummary])
    next_after = items[-1].id if len(items) == query.limit else None
    return json_response(bodies.CampaignPage(items, next_after))


async def get_campaign(request: web.Request) -> web.Response:
    """GET /api/campaigns/{id}: status, reason, counts, current rate and ETA."""
    campaign_id = parsing.campaign_id(request)
    async with pool(request).acquire() as conn:
        info = await campaigns.show(conn, campaign_id)
    if info is None:
        raise ApiError(404, "not_found", f"no campaign {campaign_id}", "id")
    info.update(_rate_and_eta(request.app[SERVICES], info))
    return json_response(msgspec.convert(info, bodies.CampaignWithRate))


def _rate_and_eta(services: Services, info: dict[str, Any]) -> dict[str, Any]:
    """Rate over the last minute of this node's observations (else since start), and ETA."""
    running = info["status"] == "running"
    rate = services.rates.observe(info["id"], info["processed"], running=running, now=time.monotonic())
    if rate is None:
        rate = 0.0
        if running and info["started_at"] is not None:
            elapsed = (dt.datetime.now(dt.UTC) - info["started_at"]).total_seconds()
            rate = info["processed"] / elapsed if elapsed > 0 else 0.0
    remaining = max(info["matched"] - info["processed"], 0)
    eta = round(remaining / rate, 1) if rate > 0 else None
    return {"rate_per_s": round(rate, 1), "eta_s": eta}


def campaign_action(action: str) -> Handler:
    """The handler of POST /api/campaigns/{id}/``action`` (start, pause, resume, cancel)."""
    if action not in campaigns.API_ACTIONS:
        raise ValueError(f"unknown action {action!r}")

    async def act(request: web.Request) -> web.Response:
        """POST /api/campaigns/{id}/ACTION; 409 with the current status."""
        campaign_id = parsing.campaign_id(request)
        reason = None
        if request.can_read_body:
            # an empty reason is none (null, as the CLI sends for --reason "")
            reason = (await parsing.body(request, bodies.ActionBody)).reason or None
        # One transaction: the answer is the campaign as the action left it (the scheduler
        # cannot move it on before the row lock is released).
        async with pool(request).acquire() as conn, conn.transaction():
            try:
                await campaigns.transition(conn, campaign_id, action, reason)
            except campaign_rows.ProviderHeld as exc:
                raise ApiError(409, "provider_held", str(exc), "provider") from None
            except campaigns.TransitionError as exc:
                if exc.current is None:
                    raise ApiError(404, "not_found", f"no campaign {campaign_id}", "id") from None
                raise ApiError(409, "conflict", str(exc), "status") from None
            info = await campaigns.show(conn, campaign_id)
        return json_response(msgspec.convert(info, bodies.Campaign))

    return act


# --- segments --------------------------------------------------------------------------------


async def preview_segment(request: web.Request) -> web.Response:
    """POST /api/segments/preview {"account_id", "segment"} -> count and ten sample leads."""
    data = await parsing.body_with_segment(request, bodies.PreviewBody)
    try:
        segment = segments.parse(data.segment)
    except segments.SegmentError as exc:
        raise ApiError(422, "invalid", f"segment: {exc}", "segment") from None
    async with pool(request).acquire() as conn:
        # Sending checks the hashes an erasure kept (and refuses without the key): so does this.
        pads = await _erased_pads(conn, request, data.account_id, "account_id")
        count = await leads.count_matching(conn, data.account_id, segment, pads)
        sample = await leads.sample_matching(conn, data.account_id, segment, limit=10, erased_pads=pads)
    return json_response(bodies.Preview(count, msgspec.convert(sample, list[bodies.Lead])))


# --- suppressions ----------------------------------------------------------------------------


def _suppression(data: bodies.SuppressionBody, *, reason_required: bool) -> tuple[str, str | None]:
    """``(normalised email, reason)`` of a POST/DELETE body; 422 naming the field."""
    normalised = suppressions.normalise(data.email, strict=not reason_required)  # a removal: any stored one
    if normalised is None:
        raise ApiError(422, "invalid", f"email: not an email address: {data.email[:100]!r}", "email")
    if data.reason is None:
        if reason_required:
            raise ApiError(422, "invalid", "reason: is required (why the address is removed)", "reason")
        return normalised, None
    if not data.reason.strip():
        raise ApiError(422, "invalid", "reason: expected a non-empty string", "reason")
    return normalised, data.reason.strip()


async def _erased_pads(
    conn: asyncpg.Connection, request: web.Request, account_id: int, field: str
) -> tuple[bytes, bytes] | None:
    """The erasure key's pads when the account keeps erased addresses suppressed as hashes;
    409 naming the setting when it does and this node has no key."""
    try:
        return await erasure.suppression_pads(conn, request.app[SERVICES].config, account_id)
    except erasure.ErasureUnavailable as exc:
        raise ApiError(409, "erasure_unavailable", str(exc), field) from None


def _row(row: suppressions.Suppression) -> bodies.Suppression:
    return bodies.Suppression(row.account_id, row.email, row.reason, row.source, row.at)


async def list_suppressions(request: web.Request) -> web.Response:
    """GET /api/suppressions?account_id=&after=&limit= (keyset pagination by address)."""
    query = parsing.query(request, bodies.SuppressionListQuery)
    async with pool(request).acquire() as conn:
        rows = await suppressions.page(conn, query.account_id, after=query.after.strip(), limit=query.limit)
    next_after = rows[-1].email if len(rows) == query.limit else None
    return json_response(bodies.SuppressionPage([_row(row) for row in rows], next_after))


async def add_suppression(request: web.Request) -> web.Response:
    """POST /api/suppressions {"account_id", "email", "reason"?}: 201 added, 200 already there."""
    data = await parsing.body(request, bodies.SuppressionBody)
    email, reason = _suppression(data, reason_required=False)
    async with pool(request).acquire() as conn:
        row, created = await suppressions.add(conn, data.account_id, email, reason or "manual", "api")
    added = bodies.SuppressionAdded(row.account_id, row.email, row.reason, row.source, row.at, created)
    return json_response(added, status=201 if created else 200)


async def remove_suppression(request: web.Request) -> web.Response:
    """DELETE /api/suppressions {"account_id", "email", "reason"}: 404 when not suppressed."""
    data = await parsing.body(request, bodies.SuppressionBody)
    email, reason = _suppression(data, reason_required=True)
    assert reason is not None
    async with pool(request).acquire() as conn:
        pads = await _erased_pads(conn, request, data.account_id, "email")
        row = await suppressions.remove(conn, data.account_id, email, reason, "api", pads)
    if row is None:
        raise ApiError(404, "not_found", f"{email} is not suppressed in account {data.account_id}", "email")
    return json_response(bodies.SuppressionRemoved(_row(row), reason))
