"""The admin HTTP API against a real database: auth, validation, pagination, transitions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd import campaigns, http
from mailerd import config as config_mod
from mailerd.db import campaigns as campaigns_db
from mailerd.db import connect as db_connect
from mailerd.db import leads as leads_db
from mailerd.http.services import CampaignRates
from mailerd.splitting import campaign_from_row
from tests.integration.helpers import ApiTestServer, add_leads, new_campaign

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
    async with TestClient(ApiTestServer(app)) as test_client:
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
    # credentials = auth-scheme 1*SP token68 (RFC 9110 section 11.4): any number of spaces
    assert (await client.get("/api/campaigns", headers={"Authorization": f"Bearer   {TOKEN}"})).status == 200


async def test_a_401_carries_the_bearer_challenge(client: TestClient[Any, Any]) -> None:
    """RFC 9110 requires WWW-Authenticate on a 401; RFC 6750 says invalid_token for a refused token."""
    for headers, challenge in (
        ({}, 'Bearer realm="mailerd"'),
        ({"Authorization": f"Basic {TOKEN}"}, 'Bearer realm="mailerd"'),
        ({"Authorization": "Bearer wrong"}, 'Bearer realm="mailerd", error="invalid_token"'),
    ):
        for path in ("/api/campaigns", "/api/no-such-path"):
            response = await client.get(path, headers=headers)
            assert response.status == 401
            assert response.headers.get("WWW-Authenticate") == challenge
            assert (await response.json())["error"]["code"] == "unauthorized"
    spec = await (await client.get("/api/openapi.json", headers=AUTH)).json()
    unauthorized = spec["paths"]["/api/campaigns"]["get"]["responses"]["401"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True


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


async def test_rate_observations_are_kept_only_for_what_can_still_count(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """GET /api/campaigns/{id} kept every campaign's observations for good (a node polled for
    thousands of finished campaigns grew without bound): only running campaigns observed in the
    last window are kept, at most ``max_campaigns`` of them."""
    services = http.Services(pool, _config(), http.Health(started=True))
    async with TestClient(ApiTestServer(http.build_app(services))) as client:
        ids = []
        for number in range(5):
            created = await client.post("/api/campaigns", json=_campaign(name=f"c{number}"), headers=AUTH)
            ids.append((await created.json())["id"])
        await client.post(f"/api/campaigns/{ids[0]}/cancel", headers=AUTH)
        await conn.execute(
            "UPDATE campaigns SET status = 'running', started_at = now() WHERE id = $1", ids[1]
        )
        for campaign_id in ids * 2:
            assert (await client.get(f"/api/campaigns/{campaign_id}", headers=AUTH)).status == 200
        assert len(services.rates) == 1  # the running one
        await client.post(f"/api/campaigns/{ids[1]}/pause", headers=AUTH)
        assert (await client.get(f"/api/campaigns/{ids[1]}", headers=AUTH)).status == 200
        assert len(services.rates) == 0

    rates = CampaignRates(window_s=60, max_campaigns=2)
    assert rates.observe(1, 0, running=True, now=0) is None
    assert rates.observe(1, 30, running=True, now=10) == 3.0
    rates.observe(2, 0, running=True, now=20)
    rates.observe(3, 0, running=True, now=30)  # over max_campaigns: 1, the least recently seen, goes
    assert len(rates) == 2
    # 2 was last seen 65 s before: forgotten, its old observations with it; 3 (55 s) is kept
    assert rates.observe(2, 10, running=True, now=85) is None
    assert len(rates) == 2
    assert rates.observe(2, 20, running=True, now=95) == 1.0  # and 3 is forgotten now
    assert len(rates) == 1
    rates.observe(2, 30, running=False, now=97)
    assert len(rates) == 0


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


@pytest.mark.parametrize("rate", [5e-324, 1e-300, 9.9e-06])
async def test_a_rate_below_the_floor_is_refused_naming_the_field(
    client: TestClient[Any, Any], conn: asyncpg.Connection, rate: float
) -> None:
    # 5e-324 made every wait of the campaign's bucket infinite; anything below 0.00001/s is refused
    response = await client.post("/api/campaigns", json=_campaign(rate=rate), headers=AUTH)
    problem = (await response.json())["error"]
    assert response.status == 422 and problem["field"] == "rate", problem
    assert problem["message"] == "rate: must be at least 1e-05", problem
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0
    floor = await client.post("/api/campaigns", json=_campaign(rate=0.00001), headers=AUTH)
    assert floor.status == 201, await floor.text()
    # a row stored before the floor existed is sent at the floor, never waited on for ever
    campaign_id = (await floor.json())["id"]
    await conn.execute("UPDATE campaigns SET rate_per_s = $1 WHERE id = $2", rate, campaign_id)
    row = await campaigns_db.get(conn, campaign_id)
    assert row is not None and campaign_from_row(row).rate_per_s == 0.00001


@pytest.mark.parametrize(
    ("field", "template"),
    [
        ("subject", "{{ " + "(" * 300 + "1" + ")" * 300 + " }}"),
        ("html", "{{ " + "[" * 200 + "]" * 200 + " }}"),
        ("text", "{% for a in [1] %}" * 25 + "x" + "{% endfor %}" * 25),
    ],
)
async def test_a_template_nested_too_deeply_is_a_422_naming_its_field(
    client: TestClient[Any, Any], conn: asyncpg.Connection, field: str, template: str
) -> None:
    # it was a 500: RecursionError and SyntaxError escaped the template check
    response = await client.post("/api/campaigns", json=_campaign(**{field: template}), headers=AUTH)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["field"] == field and "nested too deeply" in error["message"], error
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


def _nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # past orjson's 1,024 levels: its error said "not JSON" (400 invalid_json)
        ("/api/segments/preview", '{"account_id": 1, "segment": ' + _nested(1100) + "}", "segment"),
        # a bracket in a string counts for nothing
        ("/api/campaigns", '{"name": "[[[[{{", "segment": ' + _nested(1500) + "}", "segment"),
        # a number no double holds: read by the exact reader, which holds 255 levels at most
        ("/api/campaigns", '{"segment": ' + _nested(600, "1e400") + "}", "segment"),
        (
            "/api/suppressions",
            '{"account_id": 1, "reason": ' + _nested(1100) + ', "email": "a@b.c"}',
            "reason",
        ),
        ("/api/segments/preview", _nested(1100), None),
    ],
)
async def test_json_nested_too_deeply_is_a_422_naming_the_field(
    client: TestClient[Any, Any], conn: asyncpg.Connection, path: str, body: str, field: str | None
) -> None:
    response = await client.post(
        path, data=body.encode(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    message = "the body is nested too deeply" if field is None else f"{field}: nested too deeply"
    assert (error["code"], error["field"], error["message"]) == ("invalid", field, message)
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize("number", ["1e400", "-1e400", "123456789012345678901234567890"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/suppressions", '{"account_id": NUMBER, "email": "ann@example.com"}'),
        ("/api/campaigns/1/pause", '{"reason": "x", "other": NUMBER}'),
        ("/api/campaigns", None),
    ],
)
async def test_a_number_no_double_holds_is_a_422_naming_its_field_on_every_json_body(
    client: TestClient[Any, Any], conn: asyncpg.Connection, path: str, body: str | None, number: str
) -> None:
    """1e400 is JSON (RFC 8259): refused by the field's type as on POST /api/campaigns, not 400."""
    if body is None:
        body = orjson.dumps(_campaign(account_id=0)).decode().replace('"account_id":0', '"account_id":NUMBER')
    await campaigns.create(conn, new_campaign(start=False, provider="sink"), _config())
    response = await client.post(path, data=body.replace("NUMBER", number).encode(), headers=AUTH)
    if path.endswith("/pause"):  # other keys are ignored, whatever their value
        assert response.status == 409, await response.text()
        return
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("invalid", "account_id")
    assert "beyond a double" in error["message"]
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0


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
    started = await (await client.post(f"{url}/start", headers=AUTH)).json()
    assert started["status"] == "scheduled"
    paused = await client.post(f"{url}/pause", json={"reason": "checking copy"}, headers=AUTH)
    assert (await paused.json())["status"] == "paused"
    assert (await paused.json())["reason"] == "checking copy"
    # Paused before it ran: resumed, it waits for its send_at again (the due sweep starts it).
    resumed = await (await client.post(f"{url}/resume", headers=AUTH)).json()
    assert (resumed["status"], resumed["send_at"], resumed["started_at"]) == (
        "scheduled",
        started["send_at"],
        None,
    )
    await conn.execute(
        "UPDATE campaigns SET status = 'running', started_at = now() WHERE id = $1", campaign["id"]
    )
    paused = await client.post(f"{url}/pause", json={"reason": "second look"}, headers=AUTH)
    assert (await paused.json())["status"] == "paused"
    resumed = await (await client.post(f"{url}/resume", json={"reason": ""}, headers=AUTH)).json()
    assert (resumed["status"], resumed["reason"]) == ("running", None)  # an empty reason is stored as none
    cancelled = await (await client.post(f"{url}/cancel", headers=AUTH)).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
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


async def test_a_segment_key_with_a_lone_surrogate_is_a_422_naming_it(client: TestClient[Any, Any]) -> None:
    """A segment sent as JSON text may spell a lone surrogate as an escape; the unknown key's
    message quoted it raw, and the answer (JSON, UTF-8) could not be written: a 500."""
    text = r'{"field": "attributes.plan", "op": "eq", "value": "pro", "\ud800": 1}'
    unknown = r'$["\ud800"]: unknown key "\ud800"'
    answers = [
        await client.post("/api/segments/preview", json={"account_id": 1, "segment": text}, headers=AUTH),
        await client.post("/api/campaigns", json=_campaign(segment=text), headers=AUTH),
        await client.get("/api/leads", params={"account_id": "1", "segment": text}, headers=AUTH),
    ]
    for response in answers:
        assert response.status == 422, await response.text()
        payload = await response.json()
        error = payload["error"] if "error" in payload else payload["errors"][0]
        assert error["field"] == "segment"
        assert unknown in error["message"]


BIG = "123456789012345678901234567890"  # no double holds it (orjson reads 1.2345678901234568e29)
PRECISE = "0.1000000000000000055"  # a double reads 0.1


async def test_segment_numbers_no_double_holds_select_and_are_stored_as_sent(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    await conn.execute(
        f"""INSERT INTO leads (account_id, email, attributes) VALUES
            (1, 'big@example.com', '{{"n": {BIG}, "p": {PRECISE}}}'),
            (1, 'near@example.com', '{{"n": 123456789012345680000000000000, "p": 0.1}}')"""
    )
    segment = f'{{"all": [{{"field": "attributes.n", "op": "eq", "value": {BIG}}}, ' + (
        f'{{"field": "attributes.p", "op": "gte", "value": {PRECISE}}}]}}'
    )
    # as a JSON object in the body (orjson would have read both numbers as doubles)
    preview = await client.post(
        "/api/segments/preview",
        data=f'{{"account_id": 1, "segment": {segment}}}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert preview.status == 200
    assert [lead["email"] for lead in (await preview.json())["sample"]] == ["big@example.com"]
    body = orjson.dumps(_campaign(segment="SEGMENT")).replace(b'"SEGMENT"', segment.encode())
    created = await client.post(
        "/api/campaigns", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert created.status == 201, await created.text()
    as_string = await client.post("/api/campaigns", json=_campaign(segment=segment), headers=AUTH)
    assert as_string.status == 201, await as_string.text()
    for answer in (created, as_string):
        campaign_id = (await answer.json())["id"]
        stored = await conn.fetchval("SELECT segment::text FROM campaigns WHERE id = $1", campaign_id)
        assert BIG in stored and PRECISE in stored, stored
        row = await campaigns_db.get(conn, campaign_id)
        assert row is not None
        parsed = campaign_from_row(row).segment
        assert await leads_db.count_segment(conn, 1, parsed) == 1
    # beyond a double's range: stored (Postgres numeric holds it), no longer a 500
    huge = await client.post(
        "/api/campaigns",
        json=_campaign(segment='{"field": "attributes.n", "op": "lt", "value": 1e400}'),
        headers=AUTH,
    )
    assert huge.status == 201, await huge.text()
    # elsewhere in the body such a number is refused by the field's type, never read as inf
    bad_rate = await client.post(
        "/api/campaigns",
        data=orjson.dumps(_campaign(rate="RATE")).replace(b'"RATE"', b"1e400"),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    problem = (await bad_rate.json())["error"]
    assert bad_rate.status == 422 and problem["field"] == "rate", problem
    assert "beyond a double's range or precision" in problem["message"]


async def test_a_segment_number_is_refused_unless_its_stored_form_reads_back(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    """Postgres writes a stored number out in full (``1e1000`` as 1001 digits) and a campaign's
    segment is parsed again from that text: a number whose full form is beyond the digit limit
    was accepted (201), then failed the campaign ("segment no longer valid") once it started."""
    for value, status in (
        ("1e1000", 422),
        ("-12.5e999", 422),
        ("9.99e999", 201),
        ("-1e999", 201),
        ("1e-1000", 201),
        ("0e1000", 201),
        ("1.000e-997", 201),
    ):
        text = f'{{"field": "attributes.n", "op": "lt", "value": {value}}}'
        answer = await client.post("/api/campaigns", json=_campaign(segment=text), headers=AUTH)
        assert answer.status == status, (value, await answer.text())
        if status == 422:
            assert "segment: $.value: number out of range" in (await answer.json())["error"]["message"]
            continue
        row = await campaigns_db.get(conn, (await answer.json())["id"])
        assert row is not None
        assert await leads_db.count_segment(conn, 1, campaign_from_row(row).segment) == 0


async def test_health_readiness_metrics_and_openapi(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/readyz")).status == 200
    assert (await client.head("/healthz")).status == 200
    client.app[http.SERVICES].health.draining = True  # type: ignore[index]
    assert (await client.get("/readyz")).status == 503
    metrics = await (await client.get("/metrics")).text()
    assert "mailerd_emails_total" in metrics
    spec = await (await client.get("/api/openapi.json", headers=AUTH)).json()
    assert "/api/campaigns/{id}/pause" in spec["paths"]


async def test_the_document_declares_parameters_and_every_answer(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/api/openapi.json", headers=AUTH)).json()
    emails = spec["paths"]["/api/campaigns/{id}/emails"]["get"]
    assert [(p["name"], p["in"]) for p in emails["parameters"]] == [
        ("id", "path"),
        ("after", "query"),
        ("limit", "query"),
        ("status", "query"),
        ("event", "query"),
    ]
    assert emails["parameters"][0]["schema"]["minimum"] == 1
    assert set(emails["responses"]) == {"200", "401", "404", "422", "503"}
    create = spec["paths"]["/api/campaigns"]["post"]
    assert set(create["responses"]) == {"201", "400", "401", "409", "413", "415", "422", "503"}
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert create["responses"]["422"]["content"]["application/json"]["schema"] == error
    new_campaign = spec["components"]["schemas"]["NewCampaign"]
    assert new_campaign["properties"]["name"]["maxLength"] == 200
    assert "html_body" not in new_campaign["properties"] and "html" in new_campaign["required"]
    pause = spec["paths"]["/api/campaigns/{id}/pause"]["post"]
    assert set(pause["responses"]) == {"200", "400", "401", "404", "409", "413", "415", "422", "503"}
    assert pause["requestBody"]["required"] is False


# --- bad input gets a 4xx JSON answer naming the field, and changes nothing (issue 9) ---------


@pytest.mark.parametrize(
    "send_at", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "0000-01-01T00:00:00Z"]
)
async def test_send_at_outside_what_postgres_stores_is_refused(
    client: TestClient[Any, Any], conn: asyncpg.Connection, send_at: str
) -> None:
    response = await client.post("/api/campaigns", json=_campaign(send_at=send_at), headers=AUTH)
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "send_at"
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize(
    "sender",
    [
        "a@b.c\r\nBcc: x@y.z",
        "news@example.com\nBcc: x@y.z",
        "news@example.com\rBcc: x@y.z",
        '"News\r\nBcc: x@y.z" <news@example.com>',
        "news@example.com\x00",
        "news@example.com\t",
        "news@example.com, other@example.com",
        "list: news@example.com;",
        "News <news@example.com> trailing",
        "news@",
        "@example.com",
        "news",
    ],
)
async def test_from_is_exactly_one_address_without_line_breaks(
    client: TestClient[Any, Any], conn: asyncpg.Connection, sender: str
) -> None:
    response = await client.post("/api/campaigns", json=_campaign(**{"from": sender}), headers=AUTH)
    assert response.status == 422, sender
    assert (await response.json())["error"]["field"] == "from"
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize(
    "sender", ["news@example.com", "News Team <news@example.com>", '"Doe, Jo" <jo@example.com>']
)
async def test_from_may_carry_a_display_name(
    client: TestClient[Any, Any], conn: asyncpg.Connection, sender: str
) -> None:
    response = await client.post("/api/campaigns", json=_campaign(**{"from": sender}), headers=AUTH)
    assert response.status == 201
    assert await conn.fetchval("SELECT from_address FROM campaigns") == sender


async def test_the_subject_cannot_carry_a_line_break(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    for subject in ("Hi\r\nBcc: x@y.z", "Hi\nthere", "Hi\x00"):
        response = await client.post("/api/campaigns", json=_campaign(subject=subject), headers=AUTH)
        assert response.status == 422
        assert (await response.json())["error"]["field"] == "subject"
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_names_and_reasons_have_length_limits(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    response = await client.post("/api/campaigns", json=_campaign(name="n" * 201), headers=AUTH)
    assert response.status == 422 and (await response.json())["error"]["field"] == "name"
    response = await client.post("/api/campaigns", json=_campaign(name="n" * 200), headers=AUTH)
    assert response.status == 201
    url = f"/api/campaigns/{(await response.json())['id']}"
    for reason in ("r" * 501, "a\x00b"):
        answer = await client.post(f"{url}/start", json={"reason": reason}, headers=AUTH)
        assert answer.status == 422
        assert (await answer.json())["error"]["field"] == "reason"
    assert await conn.fetchval("SELECT status FROM campaigns") == "draft"
    answer = await client.post(f"{url}/start", json={"reason": "r" * 500}, headers=AUTH)
    assert answer.status == 200


@pytest.mark.parametrize("text", ["١٢", " 12 ", "12 ", "1_0", "+5", "0x10", "1e2", "²"])
async def test_query_integers_are_ascii_digits_only(client: TestClient[Any, Any], text: str) -> None:
    for path, field in (
        ("/api/campaigns?limit=", "limit"),
        ("/api/campaigns?account_id=", "account_id"),
        ("/api/campaigns/1/emails?after=", "after"),
        ("/api/suppressions?account_id=", "account_id"),
    ):
        response = await client.get(path + quote(text), headers=AUTH)
        assert response.status == 422, (path, text)
        assert (await response.json())["error"]["field"] == field


async def test_405_answers_keep_their_allow_header(client: TestClient[Any, Any]) -> None:
    for method, path, allowed in (
        ("DELETE", "/api/campaigns/1", {"GET", "HEAD"}),
        ("PUT", "/api/campaigns", {"GET", "HEAD", "POST"}),
        ("GET", "/api/campaigns/1/pause", {"POST"}),
        ("PATCH", "/api/suppressions", {"GET", "HEAD", "POST", "DELETE"}),
    ):
        response = await client.request(method, path, headers=AUTH)
        assert response.status == 405
        assert {name.strip() for name in response.headers["Allow"].split(",")} == allowed
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_a_database_that_cannot_be_reached_answers_503_json(dsn: str) -> None:
    closed = await db_connect.create_pool(dsn, min_size=1, max_size=1)
    await closed.close()
    app = http.build_app(http.Services(closed, _config(), http.Health(started=True)))
    async with TestClient(ApiTestServer(app)) as client:
        for method, path, body in (
            ("GET", "/api/campaigns", None),
            ("POST", "/api/campaigns", _campaign()),
            ("GET", "/api/suppressions?account_id=1", None),
        ):
            response = await client.request(method, path, json=body, headers=AUTH)
            assert response.status == 503, path
            assert response.content_type == "application/json"
            assert (await response.json())["error"]["code"] == "unavailable"


async def test_a_database_that_cannot_serve_the_request_now_answers_503_not_500(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """A read-only database (a standby after a failover, SQLSTATE 25006) and a lock wait that
    timed out (55P03) are for retrying, not bugs: 503 ``unavailable``, never 500 ``internal``."""
    await add_leads(conn, 1, 3)
    name = await conn.fetchval("SELECT current_database()")
    campaign_id = await campaigns.create(conn, new_campaign(start=False, provider="sink"), _config())
    await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    read_only = await db_connect.create_pool(dsn, min_size=1, max_size=1)
    await conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    await conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '100ms'")
    locking = await db_connect.create_pool(dsn, min_size=1, max_size=1)
    try:
        for pool, method, path, body in (
            (read_only, "POST", "/api/suppressions", {"account_id": 1, "email": "ann@example.com"}),
            (read_only, "POST", "/api/campaigns", _campaign()),
            (locking, "POST", f"/api/campaigns/{campaign_id}/cancel", None),
        ):
            app = http.build_app(http.Services(pool, _config(), http.Health(started=True)))
            async with TestClient(ApiTestServer(app)) as client, conn.transaction():
                await conn.execute("SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE", campaign_id)
                response = await client.request(method, path, json=body, headers=AUTH)
                assert response.status == 503, (path, await response.text())
                assert (await response.json())["error"]["code"] == "unavailable"
    finally:
        await read_only.close()
        await locking.close()
        await conn.execute(f'ALTER DATABASE "{name}" RESET lock_timeout')


async def _raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def test_protocol_errors_answer_json_too(pool: asyncpg.Pool) -> None:
    runner = await http.start(
        http.build_app(http.Services(pool, _config(), http.Health(started=True))), "127.0.0.1", 0
    )
    try:
        port = http.bound_port(runner)
        long_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
        for request in (long_header, b"BLAH\x00 / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
            status, headers, body = await _raw_request(port, request)
            assert status == 400
            assert headers["content-type"].startswith("application/json")
            assert orjson.loads(body)["error"]["code"] == "bad_request"
    finally:
        await runner.cleanup()


async def test_undecodable_bodies_and_headers_answer_4xx_json(pool: asyncpg.Pool) -> None:
    runner = await http.start(
        http.build_app(http.Services(pool, _config(), http.Health(started=True))), "127.0.0.1", 0
    )
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    try:
        port = http.bound_port(runner)
        for encoding in (b"gzip", b"deflate"):
            status, _, body = await _raw_request(
                port,
                b"POST /api/campaigns HTTP/1.1\r\nHost: x\r\n"
                + auth
                + b"Content-Encoding: "
                + encoding
                + b"\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            )
            assert status == 400, encoding
            assert orjson.loads(body)["error"]["code"] == "invalid_body"
        not_utf8 = b"Authorization: Bearer \xff\xfe\r\n"
        status, _, body = await _raw_request(
            port, b"GET /api/campaigns HTTP/1.1\r\nHost: x\r\n" + not_utf8 + b"Connection: close\r\n\r\n"
        )
        assert status == 401
        assert orjson.loads(body)["error"]["code"] == "unauthorized"
    finally:
        await runner.cleanup()


async def test_a_send_window_is_validated_field_by_field_and_shown(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    for window, field in (
        ({"start": "9am", "end": "17:00"}, "send_window.start"),
        ({"start": "09:00", "end": "25:00"}, "send_window.end"),
        ({"start": "09:00", "end": "09:00"}, "send_window.end"),
        ({"start": "09:00", "end": "17:00", "days": ["funday"]}, "send_window.days"),
        (
            {"start": "09:00", "end": "17:00", "default_timezone": "Europe/Nowhere"},
            "send_window.default_timezone",
        ),
        ({"start": "09:00", "end": "17:00", "zone": "UTC"}, "send_window.zone"),
        ({"end": "17:00"}, "send_window.start"),
        ("09:00-17:00", "send_window"),
    ):
        response = await client.post("/api/campaigns", json=_campaign(send_window=window), headers=AUTH)
        assert response.status == 422, window
        assert (await response.json())["error"]["field"] == field, window
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0

    window = {"days": ["mon", "fri"], "start": "22:00", "end": "06:00", "default_timezone": "Europe/Berlin"}
    created = await client.post("/api/campaigns", json=_campaign(send_window=window), headers=AUTH)
    assert created.status == 201
    shown = await (await client.get(f"/api/campaigns/{(await created.json())['id']}", headers=AUTH)).json()
    assert shown["send_window"] == {**window, "timezone_attribute": "timezone"}
    assert shown["shards_waiting"] == 0 and shown["waiting_until"] is None
