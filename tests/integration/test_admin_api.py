"""The admin HTTP API against a real database: auth, validation, pagination, transitions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from mailerd import config as config_mod
from mailerd import http
from tests.integration.helpers import add_leads

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _config() -> config_mod.Config:
    return config_mod.from_mapping(
        {
            "http": {"max_body_bytes": 4096},
            "providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}},
        },
        env={"MAILERD_ADMIN_TOKEN": f"other-token,{TOKEN}"},
    )


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    health = http.Health(started=True)
    app = http.build_app(http.Services(pool, _config(), health))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def _campaign(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "account_id": 1,
        "name": "Launch",
        "segment": {"field": "attributes.plan", "op": "eq", "value": "pro"},
        "subject": "Hi {{ lead.attributes.n }}",
        "html": "<p>Hello</p>",
        "text": "Hello",
        "from": "news@example.com",
        "provider": "sink",
    }
    body.update(overrides)
    return body


async def test_api_needs_a_valid_bearer_token(client: TestClient[Any, Any]) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await client.get("/api/campaigns", headers=headers)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    assert (await client.get("/api/campaigns", headers=AUTH)).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_create_show_and_list_campaigns(client: TestClient[Any, Any], conn: asyncpg.Connection) -> None:
    await add_leads(conn, 1, 30)
    created = await client.post("/api/campaigns", json=_campaign(), headers=AUTH)
    assert created.status == 201
    campaign = await created.json()
    assert campaign["status"] == "draft"

    shown = await (await client.get(f"/api/campaigns/{campaign['id']}", headers=AUTH)).json()
    for key in (
        "status",
        "reason",
        "matched",
        "sent",
        "failed",
        "unknown",
        "suppressed",
        "rate_per_s",
        "eta_s",
    ):
        assert key in shown

    for number in range(4):
        await client.post("/api/campaigns", json=_campaign(name=f"c{number}", account_id=2), headers=AUTH)
    first = await (await client.get("/api/campaigns?account_id=2&limit=3", headers=AUTH)).json()
    assert [c["name"] for c in first["campaigns"]] == ["c0", "c1", "c2"]
    rest = await (
        await client.get(f"/api/campaigns?account_id=2&limit=3&after={first['next_after']}", headers=AUTH)
    ).json()
    assert [c["name"] for c in rest["campaigns"]] == ["c3"]
    assert rest["next_after"] is None
    drafts = await (await client.get("/api/campaigns?status=draft", headers=AUTH)).json()
    assert len(drafts["campaigns"]) == 5


async def test_bad_campaign_fields_get_422_naming_each_field_and_store_nothing(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    body = _campaign(name=7, segment={"field": "attributes.x", "op": "gtt", "value": 1}, provider="nope")
    del body["from"]
    response = await client.post("/api/campaigns", json=body, headers=AUTH)
    assert response.status == 422
    errors = (await response.json())["errors"]
    assert {e["field"] for e in errors} >= {"name", "from"}
    response = await client.post(
        "/api/campaigns",
        json=_campaign(segment={"field": "attributes.x", "op": "gtt", "value": 1}, provider="nope"),
        headers=AUTH,
    )
    payload = await response.json()
    assert response.status == 422
    assert {e["field"] for e in payload["errors"]} == {"segment", "provider"}
    assert "gtt" in payload["error"]["message"]
    response = await client.post("/api/campaigns", json=_campaign(html="{% if %}"), headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "html"
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_malformed_and_oversized_bodies(client: TestClient[Any, Any], conn: asyncpg.Connection) -> None:
    response = await client.post("/api/campaigns", data=b"{not json", headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_json"
    response = await client.post("/api/campaigns", json=[1, 2], headers=AUTH)
    assert response.status == 422
    response = await client.post("/api/campaigns", json=_campaign(html="x" * 10_000), headers=AUTH)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "too_large"
    response = await client.get("/api/campaigns?limit=abc", headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "limit"
    assert (await client.get("/api/campaigns/999", headers=AUTH)).status == 404
    huge = await client.get(f"/api/campaigns/{2**70}", headers=AUTH)
    assert huge.status == 404 and (await huge.json())["error"]["field"] == "id"
    response = await client.post("/api/campaigns", json=_campaign(name="bad\x00name"), headers=AUTH)
    assert response.status == 422 and (await response.json())["error"]["field"] == "name"
    response = await client.post("/api/campaigns", json=_campaign(account_id=2**70), headers=AUTH)
    assert response.status == 422 and (await response.json())["error"]["field"] == "account_id"
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_transitions_and_conflicts(client: TestClient[Any, Any], conn: asyncpg.Connection) -> None:
    campaign = await (await client.post("/api/campaigns", json=_campaign(), headers=AUTH)).json()
    url = f"/api/campaigns/{campaign['id']}"
    response = await client.post(f"{url}/resume", headers=AUTH)
    assert response.status == 409
    assert "draft" in (await response.json())["error"]["message"]
    assert (await (await client.post(f"{url}/start", headers=AUTH)).json())["status"] == "scheduled"
    paused = await client.post(f"{url}/pause", json={"reason": "checking copy"}, headers=AUTH)
    assert (await paused.json())["status"] == "paused"
    assert (await paused.json())["reason"] == "checking copy"
    assert (await (await client.post(f"{url}/resume", headers=AUTH)).json())["status"] == "running"
    assert (await (await client.post(f"{url}/cancel", headers=AUTH)).json())["status"] == "cancelled"
    response = await client.post(f"{url}/start", headers=AUTH)
    assert response.status == 409
    assert (await client.post(f"{url}/explode", headers=AUTH)).status == 404
    assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign["id"]) == "cancelled"


async def test_segment_preview(client: TestClient[Any, Any], conn: asyncpg.Connection) -> None:
    await add_leads(conn, 1, 60)
    response = await client.post(
        "/api/segments/preview",
        json={"account_id": 1, "segment": {"field": "attributes.plan", "op": "eq", "value": "pro"}},
        headers=AUTH,
    )
    preview = await response.json()
    assert preview["count"] == 20
    assert len(preview["sample"]) == 10
    response = await client.post(
        "/api/segments/preview", json={"account_id": 1, "segment": {"all": "x"}}, headers=AUTH
    )
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "segment"


async def test_health_readiness_metrics_and_openapi(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/readyz")).status == 200
    client.app[http.SERVICES].health.draining = True  # type: ignore[index]
    assert (await client.get("/readyz")).status == 503
    metrics = await (await client.get("/metrics")).text()
    assert "mailerd_emails_total" in metrics
    spec = await (await client.get("/api/openapi.json", headers=AUTH)).json()
    assert "/api/campaigns/{id}/pause" in spec["paths"]
