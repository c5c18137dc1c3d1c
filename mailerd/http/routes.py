"""The route table: every method and path the daemon serves, with what the document says."""

from __future__ import annotations

from aiohttp import web

from mailerd import campaigns
from mailerd.http import admin, bodies, health, unsubscribe, webhooks
from mailerd.http.errors import json_response
from mailerd.http.openapi import Route

OPENAPI: web.AppKey[dict[str, object]] = web.AppKey("openapi", dict)


async def openapi_document(request: web.Request) -> web.Response:
    """GET /api/openapi.json"""
    return json_response(request.app[OPENAPI])


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", health.healthz, "Liveness", {200: bodies.Alive}, uses_database=False),
    Route(
        "GET",
        "/readyz",
        health.readyz,
        "Readiness",
        {200: bodies.Ready, 503: bodies.Ready},
        uses_database=False,
    ),
    Route("GET", "/metrics", health.metrics_page, "Prometheus metrics", {200: None}, documented=False),
    Route("GET", "/api/openapi.json", openapi_document, "This document", {200: dict}, uses_database=False),
    Route(
        "POST",
        "/api/campaigns",
        admin.create_campaign,
        "Create a campaign",
        {201: bodies.Campaign},
        body=bodies.NewCampaignExample,
    ),
    Route(
        "GET",
        "/api/campaigns",
        admin.list_campaigns,
        "List campaigns by id",
        {200: bodies.CampaignPage},
        query=bodies.CampaignListQuery,
    ),
    Route(
        "GET",
        "/api/campaigns/{id}",
        admin.get_campaign,
        "A campaign's status, counts, rate and ETA",
        {200: bodies.CampaignWithRate},
    ),
    Route(
        "GET",
        "/api/campaigns/{id}/emails",
        admin.campaign_emails,
        "Who got the campaign: email_log rows by lead id",
        {200: bodies.EmailPage},
        query=bodies.EmailsQuery,
    ),
    *(
        Route(
            "POST",
            f"/api/campaigns/{{id}}/{action}",
            admin.campaign_action(action),
            f"{action.capitalize()} a campaign on every node",
            {200: bodies.Campaign, 409: bodies.ErrorBody},
            body=bodies.ActionExample,
            body_required=False,
        )
        for action in campaigns.API_ACTIONS
    ),
    Route(
        "POST",
        "/api/segments/preview",
        admin.preview_segment,
        "Count and ten sample leads of a segment",
        {200: bodies.Preview},
        body=bodies.PreviewExample,
    ),
    Route(
        "GET",
        "/api/suppressions",
        admin.list_suppressions,
        "An account's suppression list by address",
        {200: bodies.SuppressionPage},
        query=bodies.SuppressionListQuery,
    ),
    Route(
        "POST",
        "/api/suppressions",
        admin.add_suppression,
        "Suppress an address (idempotent)",
        {200: bodies.SuppressionAdded, 201: bodies.SuppressionAdded},
        body=bodies.SuppressionExample,
    ),
    Route(
        "DELETE",
        "/api/suppressions",
        admin.remove_suppression,
        "Take an address off the list, with a reason",
        {200: bodies.SuppressionRemoved, 404: bodies.ErrorBody},
        body=bodies.SuppressionExample,
    ),
    Route("POST", "/webhooks/{provider}", webhooks.webhook, "Provider events", {200: None}, documented=False),
    Route("GET", "/u/{token}", unsubscribe.page, "Unsubscribe page", {200: None}, documented=False),
    Route(
        "POST", "/u/{token}", unsubscribe.one_click, "One-click unsubscribe", {200: None}, documented=False
    ),
)
