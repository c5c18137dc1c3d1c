"""Erasure through the leads API (``DELETE ... erase=true``): the key it needs, what it answers,
no copy of the address left, and an erased suppressed address imported again never sent to."""

from __future__ import annotations

import dataclasses
import hmac
from pathlib import Path

import asyncpg
import orjson

from mailerd import campaigns
from mailerd import config as config_mod
from mailerd.emulator import sink
from mailerd.models import LogStatus
from tests.integration.helpers import (
    add_leads,
    daemon_config,
    new_campaign,
    read_record,
    running_daemon,
    wait_for_status,
)
from tests.integration.leads_api import AUTH, NDJSON, api_client
from tests.integration.test_erasure import ADDRESS, KEY, LOWER, _everywhere, _lead, _text_hits


async def test_without_the_key_nothing_is_erased_and_the_answer_says_why(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    lead_id = await _lead(conn, 1, ADDRESS)
    async with api_client(pool) as client:
        for path, params in (
            (f"/api/leads/{lead_id}", {"account_id": "1", "erase": "true"}),
            ("/api/leads", {"account_id": "1", "email": ADDRESS, "erase": "TRUE"}),
        ):
            response = await client.delete(path, params=params, headers=AUTH)
            answer = await response.json()
            assert response.status == 409, answer
            assert (answer["error"]["code"], answer["error"]["field"]) == ("erasure_unavailable", "erase")
            assert "[privacy] erasure_key" in answer["error"]["message"]
    assert await conn.fetchval("SELECT count(*) FROM leads") == 1
    assert await conn.fetchval("SELECT count(*) FROM erasures") == 0


async def test_erase_by_id_answers_what_was_removed_and_no_copy_is_left(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    lead_id = await _lead(conn, 1, ADDRESS)
    await _everywhere(conn, lead_id)
    async with api_client(pool, erasure_key=KEY) as client:
        response = await client.delete(
            f"/api/leads/{lead_id}", params={"account_id": "1", "erase": "true"}, headers=AUTH
        )
        answer = await response.json()
        assert response.status == 200, answer
        assert answer["deleted"]["id"] == lead_id and answer["deleted"]["email"] == ADDRESS
        record = answer["erasure"]
        assert (record["account_id"], record["lead_ids"]) == (1, [lead_id])
        assert record["email_hashes"] == [hmac.digest(KEY, LOWER.encode(), "sha256").hex()]
        assert (
            record["removed"]["leads_deleted"] == 1 and record["removed"]["suppressions_kept_as_hashes"] == 1
        )
        again = await client.delete(
            f"/api/leads/{lead_id}", params={"account_id": "1", "erase": "true"}, headers=AUTH
        )
        assert again.status == 404
    assert await _text_hits(conn, ADDRESS) == []
    assert await conn.fetchval("SELECT requested_by FROM erasures WHERE id = $1", record["id"]) == "api"


async def test_an_address_erased_without_a_lead_and_imported_again_is_never_sent_to(
    pool: asyncpg.Pool, conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    # Suppressed (a complaint), with no lead: the erasure reaches it all the same.
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason, source) VALUES (1, $1, 'complaint', 'test')",
        LOWER,
    )
    async with api_client(pool, erasure_key=KEY) as client:
        response = await client.delete(
            "/api/leads", params={"account_id": "1", "email": f" {ADDRESS} ", "erase": "true"}, headers=AUTH
        )
        answer = await response.json()
        assert response.status == 200, answer
        assert answer["deleted"] is None
        assert (
            answer["erasure"]["lead_ids"] == []
            and answer["erasure"]["removed"]["suppressions_kept_as_hashes"] == 1
        )
        assert await _text_hits(conn, ADDRESS) == []
        # The host application pushes the person again, with others, through the bulk API.
        await add_leads(conn, 1, 30)
        body = orjson.dumps({"email": ADDRESS, "attributes": {"plan": "pro", "n": 99}})
        bulk = await client.post("/api/leads/bulk", params={"account_id": "1"}, data=body, headers=NDJSON)
        assert (bulk.status, (await bulk.json())["imported"]) == (200, 1)
    again = await conn.fetchval("SELECT id FROM leads WHERE lower(email) = $1", LOWER)
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record)
    port = await emulator.start()
    try:
        config = dataclasses.replace(
            daemon_config(port), privacy=config_mod.PrivacyConfig(erasure_key=config_mod.Secret(KEY.decode()))
        )
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            await wait_for_status(conn, campaign_id)
        await emulator.flush()
    finally:
        await emulator.close()
    sent_to = {line["email"].lower() for line in read_record(record)}
    assert LOWER not in sent_to and len(sent_to) == 10  # every third of 30 leads is on plan "pro"
    status = await conn.fetchval(
        "SELECT status FROM email_log WHERE campaign_id = $1 AND lead_id = $2", campaign_id, again
    )
    assert status == LogStatus.SUPPRESSED
