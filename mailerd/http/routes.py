"""The route table: every method and path the daemon serves, with what the document says."""

from __future__ import annotations

from aiohttp import web

from mailerd import campaigns
from mailerd.http import (
    admin,
    bodies,
    health,
    leads,
    provider_bodies,
    providers,
    report_bodies,
    reports,
    unsubscribe,
    webhooks,
)
from mailerd.http.errors import json_response
from mailerd.http.openapi import Route

# A lead's {lead_id} in /api/leads/...: any one segment but "bulk" and "history".
_LEAD_ID = "{lead_id:(?!(?:bulk|history)$)[^/]+}"
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
        {201: bodies.Campaign, 409: bodies.ErrorBody},
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
    # reports: read from the reports database ([reports]); 503 without it
    Route(
        "GET",
        "/api/campaigns/{id}/report",
        reports.campaign_report,
        "A campaign's report: totals, rates, time series, top domains and bounce reasons",
        {200: report_bodies.CampaignReport},
        query=report_bodies.ReportQuery,
    ),
    Route(
        "GET",
        "/api/campaigns/{id}/emails",
        reports.campaign_emails,
        "Who got the campaign: its emails by lead id (reports database)",
        {200: report_bodies.ReportEmailPage},
        query=report_bodies.ReportEmailsQuery,
    ),
    Route(
        "GET",
        "/api/campaigns/{id}/emails.csv",
        reports.campaign_emails_csv,
        "Every email of the campaign as CSV, streamed",
        {200: str},
        answer_media_type="text/csv",
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
        {200: bodies.Preview, 409: bodies.ErrorBody},
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
        "Take an address off the list (and its keyed hash, if an erasure kept one), with a reason",
        {200: bodies.SuppressionRemoved, 404: bodies.ErrorBody, 409: bodies.ErrorBody},
        body=bodies.SuppressionExample,
    ),
    # leads: {lead_id} is any one segment but the paths of their own (bulk, history), so that
    # GET /api/leads/bulk is a 405, not a lead; what is not an id is the handler's 404 naming
    # lead_id, as a campaign's {id} is (parsing.path_id)
    Route(
        "POST",
        "/api/leads/bulk",
        leads.bulk_import,
        "Import NDJSON lines as a .jsonl file is (streamed, one transaction)",
        {200: bodies.BulkResult, 409: bodies.ErrorBody, 422: bodies.BulkRefused, 429: bodies.ErrorBody},
        body=bodies.BulkLines,
        body_media_type="application/x-ndjson",
        query=bodies.BulkQuery,
    ),
    Route(
        "POST",
        "/api/leads",
        leads.upsert_lead,
        "Insert or update one lead by address (attributes merged, or replaced)",
        {200: bodies.StoredLead, 201: bodies.StoredLead},
        body=bodies.LeadExample,
    ),
    Route(
        "GET",
        "/api/leads",
        leads.list_leads,
        "An account's leads by id (by address, by segment)",
        {200: bodies.LeadPage},
        query=bodies.LeadListQuery,
    ),
    Route(
        "DELETE",
        "/api/leads",
        leads.delete_by_address,
        "Delete the lead with an address (erase=true: erase the address everywhere)",
        {200: bodies.LeadDeleted, 404: bodies.ErrorBody, 409: bodies.ErrorBody},
        query=bodies.AddressDeleteQuery,
    ),
    Route(
        "GET",
        f"/api/leads/{_LEAD_ID}",
        leads.get_lead,
        "One lead",
        {200: bodies.StoredLead, 404: bodies.ErrorBody},
        query=bodies.LeadQuery,
    ),
    Route(
        "DELETE",
        f"/api/leads/{_LEAD_ID}",
        leads.delete_lead,
        "Delete a lead (erase=true: erase it everywhere)",
        {200: bodies.LeadDeleted, 404: bodies.ErrorBody, 409: bodies.ErrorBody},
        query=bodies.LeadDeleteQuery,
    ),
    Route(
        "GET",
        "/api/leads/{lead_id}/history",
        reports.lead_history,
        "A lead's emails and events, newest first",
        {200: report_bodies.History, 404: bodies.ErrorBody},
        query=report_bodies.LeadHistoryQuery,
    ),
    Route(
        "GET",
        "/api/leads/history",
        reports.address_history,
        "Every email and event of an address in an account, newest first",
        {200: report_bodies.History},
        query=report_bodies.AddressHistoryQuery,
    ),
    Route(
        "GET",
        "/api/accounts/{account_id}/usage",
        reports.account_usage,
        "An account's emails and events per UTC day (billing, quotas)",
        {200: report_bodies.Usage, 404: bodies.ErrorBody},
        query=report_bodies.UsageQuery,
    ),
    Route(
        "GET",
        "/api/emails/{provider_message_id}",
        reports.email_by_message,
        "One email by its provider message id, with its events",
        # 400: a request line longer than aiohttp reads (8190 bytes), answered before routing
        {
            200: report_bodies.Message,
            400: bodies.ErrorBody,
            404: bodies.ErrorBody,
            409: bodies.ErrorBody,
            422: bodies.ErrorBody,
        },
        query=report_bodies.MessageQuery,
    ),
    Route(
        "GET",
        "/api/providers",
        providers.list_providers,
        "Every provider account's rolling 24 hours, guard thresholds and hold",
        {200: provider_bodies.ProviderList},
    ),
    Route(
        "GET",
        "/api/providers/{provider}",
        providers.get_provider,
        "A provider account's rolling 24 hours, guard thresholds and hold",
        {200: provider_bodies.ProviderStatus, 404: bodies.ErrorBody},
    ),
    Route(
        "POST",
        "/api/providers/{provider}/resume",
        providers.resume_provider,
        "Release a provider the guard holds (the reason is recorded) and resume its paused campaigns",
        {200: provider_bodies.Released, 404: bodies.ErrorBody, 409: bodies.ErrorBody},
        body=provider_bodies.ResumeExample,
    ),
    Route("POST", "/webhooks/{provider}", webhooks.webhook, "Provider events", {200: None}, documented=False),
    Route("GET", "/u/{token}", unsubscribe.page, "Unsubscribe page", {200: None}, documented=False),
    Route(
        "POST", "/u/{token}", unsubscribe.one_click, "One-click unsubscribe", {200: None}, documented=False
    ),
)
