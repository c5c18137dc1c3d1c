"""Issue 11, erasure: a person erased from an account is gone from every table, stays
suppressed if they were, and every erasure is recorded without the address."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from mailerd import campaigns, erasure, events, http, suppressions
from mailerd import config as config_mod
from mailerd.db import relay as relay_db
from mailerd.emulator import sink
from mailerd.models import Event, EventKind, LogStatus
from mailerd.relay import records
from tests.integration.helpers import (
    ApiTestServer,
    add_leads,
    daemon_config,
    new_campaign,
    read_record,
    running_daemon,
    wait_for_status,
)

KEY = b"erasure-key-for-tests-0123456789"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
ADDRESS = "Erin.Person@Example.com"
LOWER = ADDRESS.lower()


def _with_key(config: config_mod.Config) -> config_mod.Config:
    return dataclasses.replace(
        config, privacy=config_mod.PrivacyConfig(erasure_key=config_mod.Secret(KEY.decode()))
    )


async def _lead(conn: asyncpg.Connection, account_id: int, email: str, plan: str = "pro") -> int:
    lead_id: int = await conn.fetchval(
        "INSERT INTO leads (account_id, email, attributes) VALUES ($1, $2, $3) RETURNING id",
        account_id,
        email,
        {"plan": plan, "n": 0},
    )
    return lead_id


def _event(kind: EventKind, receipt: str, **fields: object) -> Event:
    return dataclasses.replace(
        Event(
            provider="sendgrid",
            kind=kind,
            occurred_at=dt.datetime.now(dt.UTC),
            email=ADDRESS,
            receipt=receipt,
        ),
        **fields,  # type: ignore[arg-type]
    )


async def _text_hits(conn: asyncpg.Connection, needle: str) -> list[str]:
    """Every (table, column) of every mailerd table whose text holds ``needle``, any case."""
    columns = await conn.fetch(
        """SELECT c.table_name, c.column_name FROM information_schema.columns c
           JOIN information_schema.tables t ON t.table_name = c.table_name AND t.table_schema = c.table_schema
           WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
             AND c.data_type IN ('text', 'character varying', 'jsonb', 'json', 'ARRAY', 'bytea')"""
    )
    hits = []
    for row in columns:
        table, column = row["table_name"], row["column_name"]
        found = await conn.fetchval(
            f'SELECT count(*) FROM "{table}" WHERE strpos(lower("{column}"::text), $1) > 0', needle.lower()
        )
        if found:
            hits.append(f"{table}.{column}")
    return hits


def _complaint_record(account_id: int | None) -> records.Record:
    fields: dict[str, Any] = dict.fromkeys(
        [
            "campaign_id",
            "lead_id",
            "provider_message_id",
            "provider_type",
            "reason",
            "smtp_status",
            "bounce_class",
        ]
    )
    return records.event(
        fields | {"tx": 1, "kind": "complaint", "account_id": account_id, "email": LOWER, "provider": "ses",
                  "provider_event_id": f"stray-{account_id}", "occurred_at": NOW, "received_at": NOW}
    )  # fmt: skip


async def _everywhere(conn: asyncpg.Connection, lead_id: int) -> int:
    """The address stored in every place mailerd can keep it; returns a campaign id."""
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    await conn.execute(
        """INSERT INTO email_log (sent_at, campaign_id, lead_id, status, provider_message_id, error)
           VALUES (now(), $1, $2, $3, 'm-erin', NULL)""",
        campaign_id,
        lead_id,
        int(LogStatus.SENT),
    )
    bounce = _event(
        EventKind.HARD_BOUNCE,
        "evt-1",
        campaign_id=campaign_id,
        lead_id=lead_id,
        reason=f"550 5.1.1 <{ADDRESS.upper()}>: Recipient address rejected",  # in a case never stored
        provider_message_id="m-erin",
    )
    unmatched = _event(EventKind.DELIVERED, "evt-2", email=LOWER)
    resolved = await events.resolve(conn, [bounce, unmatched], provider_kinds={})
    async with conn.transaction():
        await events.record(conn, resolved, soft_bounce_limit=3, soft_bounce_window_s=3600)
    await conn.execute(
        """INSERT INTO dead_letters (flush_id, kind, entries, error, payload)
           VALUES (gen_random_uuid(), 'events', 1, $1, $2)""",
        f"refused {ADDRESS.upper()}",
        f'[{{"email": "{LOWER}"}}]',
    )
    # Records a relay destination refused: events matched by address (no lead id), or by none.
    stray = [_complaint_record(account_id) for account_id in (1, None)]
    await relay_db.add_dead_letters(conn, "callbacks.app", stray, "HTTP 400: no")
    return campaign_id


async def test_after_an_erasure_the_address_is_in_no_text_column_of_any_table(
    conn: asyncpg.Connection,
) -> None:
    lead_id = await _lead(conn, 1, ADDRESS)
    other_account_lead = await _lead(conn, 2, ADDRESS)
    await _everywhere(conn, lead_id)
    assert "suppressions.email" in await _text_hits(conn, ADDRESS)  # the hard bounce suppressed it
    done = await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=lead_id)
    assert done.lead_ids == [lead_id]
    assert done.removed["leads_deleted"] == 1
    assert done.removed["suppressions_kept_as_hashes"] == 1
    assert done.removed["events_scrubbed"] == 2  # the bounce, and account 1's copy of the delivery
    # Account 2 still has the person as a lead, and its own copy of the delivery (matched by
    # address in both accounts): only account 1 forgot them.
    assert sorted(await _text_hits(conn, ADDRESS)) == [
        "email_events.email",
        "email_events_default.email",
        "leads.email",
    ]
    assert await conn.fetchval("SELECT id FROM leads WHERE email = $1", ADDRESS) == other_account_lead
    holders = await conn.fetch("SELECT DISTINCT account_id FROM email_events WHERE email IS NOT NULL")
    assert [r["account_id"] for r in holders] == [2]
    # The events and their counts stay; only the address went.
    kinds = await conn.fetch("SELECT kind, email FROM email_events WHERE account_id = 1 ORDER BY kind")
    assert [(r["kind"], r["email"]) for r in kinds] == [("delivered", None), ("hard_bounce", None)]
    assert await conn.fetchval("SELECT count(*) FROM email_log WHERE lead_id = $1", lead_id) == 1


async def test_the_erasure_is_recorded_with_a_keyed_hash_not_the_address(conn: asyncpg.Connection) -> None:
    lead_id = await _lead(conn, 1, ADDRESS)
    done = await erasure.erase(conn, account_id=1, key=KEY, by="privacy-team", emails=[ADDRESS.upper()])
    row = await conn.fetchrow("SELECT * FROM erasures WHERE id = $1", done.id)
    expected = hmac.digest(KEY, LOWER.encode(), "sha256")
    assert row["email_hashes"] == [expected] and done.email_hashes == [expected.hex()]
    assert (row["account_id"], row["lead_ids"], row["requested_by"]) == (1, [lead_id], "privacy-team")
    assert row["removed"]["leads_deleted"] == 1
    assert LOWER not in str(dict(row)).lower()


async def test_an_erased_suppressed_address_imported_again_is_not_sent_to(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    lead_id = await _lead(conn, 1, ADDRESS)
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason, source) VALUES (1, $1, 'complaint', 'test')",
        LOWER,
    )
    await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=lead_id)
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0
    # The host application adds the person again, and other leads.
    again = await _lead(conn, 1, ADDRESS)
    await add_leads(conn, 1, 30)
    emulator = sink.Sink(record=tmp_path / "record.jsonl")
    port = await emulator.start()
    try:
        config = _with_key(daemon_config(port))
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            await wait_for_status(conn, campaign_id)
        await emulator.flush()
    finally:
        await emulator.close()
    sent_to = {r["email"].lower() for r in read_record(tmp_path / "record.jsonl")}
    assert LOWER not in sent_to and len(sent_to) == 10  # every third of 30 leads is on plan "pro"
    status = await conn.fetchval(
        "SELECT status FROM email_log WHERE campaign_id = $1 AND lead_id = $2", campaign_id, again
    )
    assert status == LogStatus.SUPPRESSED


def test_without_a_key_no_erasure_is_made() -> None:
    with pytest.raises(erasure.ErasureUnavailable, match="erasure_key"):
        erasure.configured_key(daemon_config(1))


async def test_leads_erase_command(conn: asyncpg.Connection, dsn: str, tmp_path: Path) -> None:
    await _lead(conn, 1, ADDRESS)
    config_file = tmp_path / "mailerd.toml"
    config_file.write_text(f'[database]\ndsn = "{dsn}"\n', encoding="utf-8")
    env = {"MAILERD_PRIVACY__ERASURE_KEY": KEY.decode(), "PATH": "/usr/bin:/bin"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        "leads",
        "erase",
        "--config",
        str(config_file),
        "--account",
        "1",
        ADDRESS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert "leads_deleted 1" in out.decode()
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        "leads",
        "erase",
        "--config",
        str(config_file),
        "--account",
        "1",
        ADDRESS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1 and b"erasure_key" in err


async def test_segment_preview_does_not_count_an_erased_suppressed_address(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    lead_id = await _lead(conn, 1, ADDRESS)
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason, source) VALUES (1, $1, 'complaint', 'test')",
        LOWER,
    )
    await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=lead_id)
    again = await _lead(conn, 1, ADDRESS)  # imported again: its hash is still suppressed
    await add_leads(conn, 1, 30)  # 10 on plan "pro"
    await _lead(conn, 2, ADDRESS)  # another account never had it suppressed
    token = "preview-token-0123456789"
    raw = {"providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}}}
    segment = {"field": "attributes.plan", "op": "eq", "value": "pro"}

    async def preview(config: config_mod.Config, account_id: int) -> tuple[int, Any]:
        app = http.build_app(http.Services(pool, config, http.Health(started=True)))
        async with TestClient(ApiTestServer(app)) as client:
            response = await client.post(
                "/api/segments/preview",
                json={"account_id": account_id, "segment": segment},
                headers={"Authorization": f"Bearer {token}"},
            )
            return response.status, await response.json()

    keyed = config_mod.from_mapping(
        raw, env={"MAILERD_ADMIN_TOKEN": token, "MAILERD_PRIVACY__ERASURE_KEY": KEY.decode()}
    )
    status, body = await preview(keyed, 1)
    assert status == 200, body
    assert body["count"] == 10 and again not in {lead["id"] for lead in body["sample"]}  # as sending does
    status, body = await preview(keyed, 2)
    assert (status, body["count"]) == (200, 1)
    # Without the key the preview cannot tell: it refuses, naming the setting (sending refuses too).
    status, body = await preview(config_mod.from_mapping(raw, env={"MAILERD_ADMIN_TOKEN": token}), 1)
    assert status == 409 and body["error"]["code"] == "erasure_unavailable", body
    assert "erasure_key" in body["error"]["message"] and body["error"]["field"] == "account_id"


async def _erased_and_suppressed(conn: asyncpg.Connection) -> None:
    lead_id = await _lead(conn, 1, ADDRESS)
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason, source) VALUES (1, $1, 'complaint', 'test')",
        LOWER,
    )
    await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=lead_id)
    assert await conn.fetchval("SELECT count(*) FROM erased_suppressions") == 1


async def test_suppressions_remove_takes_an_erased_address_off_by_its_keyed_hash(
    conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    await _erased_and_suppressed(conn)
    change = {"action": "remove", "account_id": 1, "reason": "the person asked to be mailed again"}
    # Without the key the command cannot tell whether the address is kept as a hash: it refuses.
    assert await suppressions.run_change_cli(conn, email=ADDRESS, config=daemon_config(1), **change) == 1
    assert "erasure_key" in capsys.readouterr().err
    keyed = _with_key(daemon_config(1))
    assert await suppressions.run_change_cli(conn, email="nobody@example.com", config=keyed, **change) == 3
    assert await suppressions.run_change_cli(conn, email=ADDRESS, config=keyed, **change) == 0
    assert capsys.readouterr().out.strip().endswith(f"removed: {LOWER} (kept as a keyed hash by an erasure)")
    assert await conn.fetchval("SELECT count(*) FROM erased_suppressions") == 0
    audit = await conn.fetch("SELECT email, action, source FROM suppression_audit WHERE action = 'removed'")
    assert [tuple(r) for r in audit] == [(LOWER, "removed", "cli")]
    assert await suppressions.run_change_cli(conn, email=ADDRESS, config=keyed, **change) == 3  # gone


async def test_the_api_removes_an_erased_address_by_its_keyed_hash(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await _erased_and_suppressed(conn)
    token = "remove-token-0123456789"
    raw = {"providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}}}
    body = {"account_id": 1, "email": ADDRESS, "reason": "asked to be mailed again"}

    async def remove(env: dict[str, str]) -> tuple[int, Any]:
        config = config_mod.from_mapping(raw, env={"MAILERD_ADMIN_TOKEN": token, **env})
        app = http.build_app(http.Services(pool, config, http.Health(started=True)))
        async with TestClient(ApiTestServer(app)) as client:
            response = await client.delete(
                "/api/suppressions", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            return response.status, await response.json()

    status, answer = await remove({})
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (
        409,
        "erasure_unavailable",
        "email",
    )
    status, answer = await remove({"MAILERD_PRIVACY__ERASURE_KEY": KEY.decode()})
    assert status == 200, answer
    assert answer["removed"]["email"] == LOWER and answer["removed"]["source"] == "erasure"
    assert await conn.fetchval("SELECT count(*) FROM erased_suppressions") == 0


async def test_an_erasure_scrubs_whole_addresses_only(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    # ann@ was replaced inside joann@ too ("<jo<erased>>"), in every account's dead letters;
    # and "@" was taken for an address to erase: every "@" of every dead letter went
    ann = await _lead(conn, 1, "ann@example.com")
    joann = await _lead(conn, 1, "joann@example.com")
    texts = [
        "550 5.1.1 <joann@example.com>: unknown",
        "to ann@example.com.uk",
        "ANN@Example.com.",
        "The recipient 'ann@example.com' does not exist",  # and these were missed by a first fix
        "rcpt=ann@example.com /ann@example.com/",
        "550 no such user o'ann@example.com",  # someone else: a second fix had scrubbed it
    ]
    for n, text in enumerate(texts):
        event = _event(
            EventKind.HARD_BOUNCE, f"evt-{n}", email="joann@example.com", lead_id=joann, reason=text
        )
        async with conn.transaction():
            await events.record(conn, [dataclasses.replace(event, account_id=1)], soft_bounce_limit=3,
                                soft_bounce_window_s=3600)  # fmt: skip
    await erasure.erase(conn, account_id=1, key=KEY, by="test", lead_id=ann)
    reasons = await conn.fetch("SELECT reason FROM email_events ORDER BY provider_event_id")
    assert [r["reason"] for r in reasons] == [
        *texts[:2],
        "<erased>.",
        "The recipient '<erased>' does not exist",
        "rcpt=<erased> /<erased>/",
        texts[5],
    ]
    config = config_mod.from_mapping(
        {},
        env={"MAILERD_ADMIN_TOKEN": "erase-token-0123456789", "MAILERD_PRIVACY__ERASURE_KEY": KEY.decode()},
    )
    async with TestClient(
        ApiTestServer(http.build_app(http.Services(pool, config, http.Health(started=True))))
    ) as client:
        response = await client.delete(
            "/api/leads?account_id=1&email=@&erase=true",
            headers={"Authorization": "Bearer erase-token-0123456789"},
        )
        assert response.status == 422 and (await response.json())["error"]["field"] == "email"


async def test_an_erasure_by_address_takes_the_lead_in_either_unicode_form(conn: asyncpg.Connection) -> None:
    # an account keeping a decomposed lead beside the composed one (stored before addresses were
    # put in NFC): erasing the address took the composed lead only, the other was still mailed
    decomposed, composed = "zoe\u0308@example.com", "zo\u00eb@example.com"
    both = [await _lead(conn, 1, decomposed), await _lead(conn, 1, composed)]
    done = await erasure.erase(conn, account_id=1, key=KEY, by="test", emails=[composed])
    assert sorted(done.lead_ids) == sorted(both)
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0


@pytest.mark.parametrize("by_address", [None, "ann@xn--bcher-kva.de", "ann@bücher.de"])
async def test_an_erasure_takes_an_idn_address_in_both_spellings(
    conn: asyncpg.Connection, by_address: str | None
) -> None:
    # SES was sent, and reported, the A-label spelling: before events took their lead's, a
    # complaint stored it so (event and suppression), and the erasure of the lead left it
    lead_id = await _lead(conn, 1, "ann@bücher.de")
    await conn.execute(
        """INSERT INTO suppressions (account_id, email, reason, source)
           VALUES (1, 'ann@xn--bcher-kva.de', 'complaint', 'ses'), (1, 'ann@bücher.de', 'complaint', 'ses')"""
    )
    await conn.execute(
        """INSERT INTO email_events (occurred_at, account_id, lead_id, email, kind, provider)
           VALUES (now(), 1, $1, 'ann@xn--bcher-kva.de', 'complaint', 'ses')""",
        lead_id,
    )
    emails = [by_address] if by_address else []
    done = await erasure.erase(
        conn, account_id=1, key=KEY, by="test", lead_id=None if by_address else lead_id, emails=emails
    )
    assert done.lead_ids == [lead_id]
    assert done.removed["suppressions_kept_as_hashes"] == 2
    assert done.removed["events_scrubbed"] == 1
    assert await _text_hits(conn, "ann@xn--bcher-kva.de") == []
    assert await _text_hits(conn, "ann@bücher.de") == []
