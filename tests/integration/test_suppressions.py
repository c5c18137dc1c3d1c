"""The suppression list: admin API, import, audit, and running campaigns skipping new entries."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd import campaigns, events, http, segments, suppressions
from mailerd import config as config_mod
from mailerd.commands import arguments
from mailerd.db import connect as db_connect
from mailerd.db import leads as leads_db
from mailerd.db import suppressions as suppressions_db
from mailerd.emulator import sink
from mailerd.models import Event, EventKind, LogStatus
from tests.integration.helpers import (
    ApiTestServer,
    add_leads,
    daemon_config,
    new_campaign,
    read_record,
    running_daemon,
    wait_for_status,
)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    config = config_mod.from_mapping({}, env={"MAILERD_ADMIN_TOKEN": TOKEN})
    app = http.build_app(http.Services(pool, config, http.Health(started=True)))
    async with TestClient(ApiTestServer(app)) as test_client:
        yield test_client


async def _audit(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT account_id, email, action, reason, source FROM suppression_audit ORDER BY id"
    )
    return [tuple(r) for r in rows]


# --- admin API -------------------------------------------------------------------------------


async def test_add_is_idempotent_and_audited(client: TestClient[Any, Any], conn: asyncpg.Connection) -> None:
    body = {"account_id": 7, "email": "  Ada@Example.COM ", "reason": "asked by phone"}
    first = await client.post("/api/suppressions", json=body, headers=AUTH)
    assert first.status == 201
    created = await first.json()
    assert created["email"] == "ada@example.com"
    assert created["reason"] == "asked by phone" and created["source"] == "api" and created["created"]
    again = await client.post("/api/suppressions", json={**body, "reason": "other"}, headers=AUTH)
    assert again.status == 200
    existing = await again.json()
    assert existing["created"] is False and existing["reason"] == "asked by phone"
    # No reason: recorded as a manual suppression.
    assert (
        await client.post(
            "/api/suppressions", json={"account_id": 7, "email": "bob@example.com"}, headers=AUTH
        )
    ).status == 201
    assert await _audit(conn) == [
        (7, "ada@example.com", "added", "asked by phone", "api"),
        (7, "bob@example.com", "added", "manual", "api"),
    ]
    rows = await conn.fetch("SELECT account_id, email FROM suppressions ORDER BY email")
    assert [tuple(r) for r in rows] == [(7, "ada@example.com"), (7, "bob@example.com")]


async def test_delete_needs_a_reason_and_an_existing_entry(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    await client.post("/api/suppressions", json={"account_id": 1, "email": "ada@example.com"}, headers=AUTH)
    no_reason = await client.delete(
        "/api/suppressions", json={"account_id": 1, "email": "ada@example.com"}, headers=AUTH
    )
    assert no_reason.status == 422
    assert (await no_reason.json())["error"]["field"] == "reason"
    other_account = await client.delete(
        "/api/suppressions",
        json={"account_id": 2, "email": "ada@example.com", "reason": "typo"},
        headers=AUTH,
    )
    assert other_account.status == 404
    removed = await client.delete(
        "/api/suppressions",
        json={"account_id": 1, "email": "ADA@example.com", "reason": "bounced by mistake"},
        headers=AUTH,
    )
    assert removed.status == 200
    assert (await removed.json())["removed"]["email"] == "ada@example.com"
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0
    assert (await _audit(conn))[-1] == (1, "ada@example.com", "removed", "bounced by mistake", "api")
    gone = await client.delete(
        "/api/suppressions",
        json={"account_id": 1, "email": "ada@example.com", "reason": "again"},
        headers=AUTH,
    )
    assert gone.status == 404
    assert len(await _audit(conn)) == 2


async def test_an_add_answers_while_a_remove_commits_between_its_statements(
    dsn: str, conn: asyncpg.Connection
) -> None:
    """DELETE /api/suppressions committing after the add's INSERT found the address there and
    before it read the row back: the add still answers (a 500 before), and the address is on the
    list (the add came last)."""
    body = {"account_id": 3, "email": "Ada@example.com", "reason": "asked again"}
    await suppressions_db.add(conn, 3, "ada@example.com", "asked first")
    remover = await db_connect.connect(dsn)

    class RemovedMidAdd(asyncpg.Connection):
        """Once an INSERT into suppressions finds the address there, a second connection takes it
        off the list (committed) before this one runs its next statement."""

        async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
            row = await super().fetchrow(query, *args, **kwargs)
            if row is None and query.startswith("INSERT INTO suppressions") and not remover.is_closed():
                assert await suppressions_db.remove(remover, args[0], args[1], "by mistake") is not None
                await remover.close()  # once
            return row

    racing = await db_connect.create_pool(dsn, min_size=1, max_size=1, connection_class=RemovedMidAdd)
    config = config_mod.from_mapping({}, env={"MAILERD_ADMIN_TOKEN": TOKEN})
    app = http.build_app(http.Services(racing, config, http.Health(started=True)))
    try:
        async with TestClient(ApiTestServer(app)) as racing_client:
            response = await racing_client.post("/api/suppressions", json=body, headers=AUTH)
            assert response.status == 201, await response.text()
            added = await response.json()
    finally:
        await racing.close()
        await remover.close()
    assert added["created"] is True and added["reason"] == "asked again", added
    assert await conn.fetchval("SELECT reason FROM suppressions WHERE account_id = 3") == "asked again"
    assert [row[2:4] for row in await _audit(conn)] == [
        ("added", "asked first"),
        ("removed", "by mistake"),
        ("added", "asked again"),
    ]


async def test_delete_takes_an_idn_address_in_both_spellings(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    # An SES event stored the A-label spelling it reported (before events took their lead's):
    # removing the address in either spelling takes both off
    await conn.execute(
        """INSERT INTO suppressions (account_id, email, reason, source)
           VALUES (1, 'ann@xn--bcher-kva.de', 'complaint', 'ses'), (1, 'ann@bücher.de', 'manual', 'api')"""
    )
    removed = await client.delete(
        "/api/suppressions",
        json={"account_id": 1, "email": "Ann@XN--Bcher-kva.de", "reason": "asked to be mailed again"},
        headers=AUTH,
    )
    assert removed.status == 200
    assert (await removed.json())["removed"]["email"] == "ann@xn--bcher-kva.de"
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0
    assert sorted(await _audit(conn)) == [
        (1, "ann@bücher.de", "removed", "asked to be mailed again", "api"),
        (1, "ann@xn--bcher-kva.de", "removed", "asked to be mailed again", "api"),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com"}, "account_id"),
        ({"account_id": "1", "email": "a@example.com"}, "account_id"),
        ({"account_id": True, "email": "a@example.com"}, "account_id"),
        ({"account_id": -1, "email": "a@example.com"}, "account_id"),
        ({"account_id": 1}, "email"),
        ({"account_id": 1, "email": 5}, "email"),
        ({"account_id": 1, "email": "not-an-address"}, "email"),
        ({"account_id": 1, "email": "a@example.com", "reason": ""}, "reason"),
        ({"account_id": 1, "email": "a@example.com", "reason": 3}, "reason"),
        ({"account_id": 1, "email": "a@example.com", "reason": "x" * 501}, "reason"),
        ({"account_id": 1, "email": "a@example.com", "source": "me"}, "source"),
    ],
)
async def test_invalid_bodies_name_the_field_and_change_nothing(
    client: TestClient[Any, Any], conn: asyncpg.Connection, body: dict[str, Any], field: str
) -> None:
    for method in ("POST", "DELETE"):
        answer = await client.request(method, "/api/suppressions", json=body, headers=AUTH)
        assert answer.status == 422, method
        assert (await answer.json())["error"]["field"] == field
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await _audit(conn) == []


async def test_non_json_and_unauthenticated_requests(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/api/suppressions", data=b"{", headers=AUTH)).status == 400
    assert (await client.get("/api/suppressions?account_id=1")).status == 401
    body = {"account_id": 1, "email": "a@example.com", "reason": "x"}
    assert (await client.post("/api/suppressions", json=body)).status == 401
    assert (await client.delete("/api/suppressions", json=body)).status == 401


async def test_list_is_keyset_paginated_within_an_account(
    client: TestClient[Any, Any], conn: asyncpg.Connection
) -> None:
    await conn.executemany(
        "INSERT INTO suppressions (account_id, email, reason) VALUES ($1, $2, 'hard_bounce')",
        [(1, f"user{n:02d}@example.com") for n in range(25)] + [(2, "other@example.com")],
    )
    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        answer = await client.get(f"/api/suppressions?account_id=1&limit=10&after={after}", headers=AUTH)
        assert answer.status == 200
        data = await answer.json()
        seen += [row["email"] for row in data["suppressions"]]
        assert all(row["account_id"] == 1 and row["reason"] == "hard_bounce" for row in data["suppressions"])
        pages += 1
        if data["next_after"] is None:
            break
        after = data["next_after"]
    assert seen == [f"user{n:02d}@example.com" for n in range(25)]
    assert pages == 3
    for query, field in (
        ("", "account_id"),
        ("account_id=x", "account_id"),
        ("account_id=1&limit=0", "limit"),
    ):
        answer = await client.get(f"/api/suppressions?{query}", headers=AUTH)
        assert answer.status == 422
        assert (await answer.json())["error"]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"account_id": 1, "email": "a\x00b@example.com", "reason": "r"}, "email"),
        ({"account_id": 1, "email": "ab@example.com\x00", "reason": "r"}, "email"),
        ({"account_id": 1, "email": "ab@example.com", "reason": "x\x00y"}, "reason"),
    ],
)
async def test_nul_characters_are_refused_naming_the_field(
    client: TestClient[Any, Any], conn: asyncpg.Connection, body: dict[str, Any], field: str
) -> None:
    await conn.execute(
        "INSERT INTO suppressions (account_id, email, reason) VALUES (1, 'ab@example.com', 'x')"
    )
    for method in ("POST", "DELETE"):
        answer = await client.request(method, "/api/suppressions", json=body, headers=AUTH)
        assert answer.status == 422, method
        assert answer.content_type == "application/json"
        assert (await answer.json())["error"]["field"] == field
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 1
    assert await _audit(conn) == []


async def test_nul_in_the_list_cursor_is_refused(client: TestClient[Any, Any]) -> None:
    answer = await client.get("/api/suppressions?account_id=1&after=a%00b", headers=AUTH)
    assert answer.status == 422
    assert (await answer.json())["error"]["field"] == "after"


# --- import ----------------------------------------------------------------------------------


async def test_import_plain_list(conn: asyncpg.Connection, tmp_path: Path) -> None:
    await suppressions.add(conn, 1, "known@example.com", "complaint", "webhook")
    path = tmp_path / "list.txt"
    path.write_text(
        "# exported from the old system\n"
        "Ada@Example.com\n"
        "\n"
        "known@example.com\n"
        "not an address\n"
        "bob@example.com  \n"
        "ada@example.com\n"
        "@example.com\n"
    )
    result = await suppressions.import_file(conn, 1, path, reason="legacy list")
    assert (result.imported, result.already, result.rejected) == (2, 2, 2)
    assert [(r.line, r.reason.split(":")[0]) for r in result.first_rejects] == [
        (5, "not an email address"),
        (8, "not an email address"),
    ]
    rows = await conn.fetch(
        "SELECT email, reason, source FROM suppressions WHERE account_id = 1 ORDER BY email"
    )
    assert [tuple(r) for r in rows] == [
        ("ada@example.com", "legacy list", "import"),
        ("bob@example.com", "legacy list", "import"),
        ("known@example.com", "complaint", "webhook"),
    ]
    audit = await _audit(conn)
    assert sorted(a for a in audit if a[4] == "import") == [
        (1, "ada@example.com", "added", "legacy list", "import"),
        (1, "bob@example.com", "added", "legacy list", "import"),
    ]


async def test_import_csv_with_reasons(conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        'name,Email,reason\n"Ada, L",ada@example.com,hard bounce\n'
        "Bob,bob@example.com,\n"
        'Multi,"carol@example.com","a reason\nover two lines"\n'
        "Bad,nope,x\n"
        "Short,dan@example.com\n"
    )
    result = await suppressions.import_file(conn, 4, path)
    assert (result.imported, result.already, result.rejected) == (3, 0, 2)
    assert [(r.line, r.reason.split(":")[0]) for r in result.first_rejects] == [
        (6, "not an email address"),
        (7, "expected 3 fields, got 2"),
    ]
    rows = await conn.fetch("SELECT email, reason FROM suppressions WHERE account_id = 4 ORDER BY email")
    assert [tuple(r) for r in rows] == [
        ("ada@example.com", "hard bounce"),
        ("bob@example.com", "imported"),
        ("carol@example.com", "a reason\nover two lines"),
    ]


async def test_import_csv_stray_quote_rejects_its_line_only(conn: asyncpg.Connection, tmp_path: Path) -> None:
    # The quote opened on line 2 is never closed: it swallowed the rest of the file (and the
    # import reported one malformed line, at the end, with nothing imported).
    path = tmp_path / "list.csv"
    path.write_text('email,reason\na@example.com,"bounced\nb@example.com,complaint\nc@example.com,x\n')
    result = await suppressions.import_file(conn, 1, path)
    assert (result.imported, result.already, result.rejected) == (2, 0, 1)
    assert [(r.line, r.reason.split(":")[0]) for r in result.first_rejects] == [(2, "unbalanced quote")]
    rows = await conn.fetch("SELECT email, reason FROM suppressions WHERE account_id = 1 ORDER BY email")
    assert [tuple(r) for r in rows] == [("b@example.com", "complaint"), ("c@example.com", "x")]


async def test_import_cli_exit_codes_and_summary(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("\n".join(f"user{n}@example.com" for n in range(1000)) + "\n")
    assert await suppressions.run_import_cli(conn, account_id=1, path=good, reason=None) == 0
    assert capsys.readouterr().out.strip() == "imported 1000, already suppressed 0, rejected 0"
    # Again: nothing new, nothing wrong.
    assert await suppressions.run_import_cli(conn, account_id=1, path=good, reason=None) == 0
    assert capsys.readouterr().out.strip() == "imported 0, already suppressed 1000, rejected 0"

    mixed = tmp_path / "mixed.txt"
    mixed.write_text("new@example.com\n" + "bad\n" * 25)
    assert await suppressions.run_import_cli(conn, account_id=1, path=mixed, reason="x") == 2
    out = capsys.readouterr()
    assert out.out.strip() == "imported 1, already suppressed 0, rejected 25"
    errors = out.err.splitlines()
    assert errors[0] == f"{mixed}:2: not an email address: 'bad'"
    assert len(errors) == 21 and errors[-1] == "... and 5 more rejected rows (use --rejects FILE to see all)"
    # --rejects FILE keeps every rejected line, as the lead import does.
    rejects = tmp_path / "rejects.jsonl"
    assert await suppressions.run_import_cli(conn, account_id=1, path=mixed, reason="x", rejects=rejects) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"... and 5 more rejected rows (all in {rejects})"
    kept = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert kept == [{"line": n, "reason": "not an email address: 'bad'", "raw": "bad"} for n in range(2, 27)]

    bad = tmp_path / "bad.txt"
    bad.write_text("bad\nworse\n")
    assert await suppressions.run_import_cli(conn, account_id=1, path=bad, reason=None) == 1
    assert "imported 0, already suppressed 0, rejected 2" in capsys.readouterr().out
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert await suppressions.run_import_cli(conn, account_id=1, path=empty, reason=None) == 1
    assert await suppressions.run_import_cli(conn, account_id=1, path=tmp_path / "missing", reason=None) == 1
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 1001
    assert await conn.fetchval("SELECT count(*) FROM suppression_audit") == 1001


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (
            "list.csv",
            b"email,reason\n"
            b"ok@example.com,fine\n"  # 2
            b"nul\x00x@example.com,x\n"  # 3
            b"reason@example.com,re\x00ason\n"  # 4
            b"\xff@example.com,x\n"  # 5
            b"latin1@example.com,caf\xe9\n"  # 6
            b"last@example.com,\n",  # 7
        ),
        (
            "list.txt",
            b"# list\nok@example.com\nnul\x00x@example.com\nnul@example.com\x00\n\xff@example.com\n"
            b"latin1\xe9@example.com\nlast@example.com\n",
        ),
    ],
)
async def test_import_rejects_lines_postgres_cannot_store_and_imports_the_others(
    conn: asyncpg.Connection, tmp_path: Path, name: str, content: bytes
) -> None:
    # NUL characters and invalid UTF-8 cannot be stored in a text column: such lines are
    # rejected with their line numbers (they aborted the import with a traceback, or were
    # imported with a replacement character).
    path = tmp_path / name
    path.write_bytes(content)
    rejects = tmp_path / "rejects.jsonl"
    result = await suppressions.import_file(conn, 1, path, rejects=rejects)
    assert (result.imported, result.already, result.rejected) == (2, 0, 4)
    found = {r.line: r.reason for r in result.first_rejects}
    assert sorted(found) == [3, 4, 5, 6]
    assert "NUL" in found[3] and "NUL" in found[4]
    assert "invalid UTF-8" in found[5] and "invalid UTF-8" in found[6]
    assert [orjson.loads(line)["line"] for line in rejects.read_bytes().splitlines()] == [3, 4, 5, 6]
    rows = await conn.fetch("SELECT email FROM suppressions WHERE account_id = 1 ORDER BY email")
    assert [r["email"] for r in rows] == ["last@example.com", "ok@example.com"]


@pytest.mark.parametrize(
    ("action", "email", "reason", "message"),
    [
        ("add", "nul\x00x@example.com", None, "email: not an email address"),
        ("remove", "nul\x00x@example.com", "asked", "email: not an email address"),
        ("add", "a@example.com", "re\x00ason", "--reason: contains a NUL character"),
        ("remove", "a@example.com", "re\x00ason", "--reason: contains a NUL character"),
        ("add", "a@example.com", "caf\udce9", "--reason: invalid UTF-8"),
        ("add", "a@example.com", "x" * 501, "--reason: at most 500 characters"),
        ("add", "a@example.com", " ", "--reason: must not be empty"),
    ],
)
async def test_change_cli_names_the_bad_argument_and_changes_nothing(
    conn: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
    action: str,
    email: str,
    reason: str | None,
    message: str,
) -> None:
    await suppressions.add(conn, 1, "a@example.com", "complaint", "webhook")
    status = await suppressions.run_change_cli(conn, action=action, account_id=1, email=email, reason=reason)
    assert status == 2  # a usage error, as in every command (it exited 1, a failure)
    assert capsys.readouterr().err.startswith(f"mailerd suppressions {action}: {message}")
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 1
    assert len(await _audit(conn)) == 1


async def test_import_cli_refuses_a_reason_postgres_cannot_store(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "list.txt"
    path.write_text("a@example.com\n")
    for reason, message in (("re\x00ason", "contains a NUL character"), ("x" * 501, "at most 500")):
        assert await suppressions.run_import_cli(conn, account_id=1, path=path, reason=reason) == 2
        assert capsys.readouterr().err.startswith(f"mailerd suppressions import: --reason: {message}")
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_list_cli_refuses_an_after_postgres_cannot_compare(
    conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    for after, message in (("a\x00", "NUL character"), ("caf\udce9", "invalid UTF-8")):
        assert await suppressions.run_list_cli(conn, account_id=1, after=after, limit=10, as_json=False) == 2
        assert capsys.readouterr().err.startswith(f"mailerd suppressions list: --after: {message}")


# --- effect on running campaigns -------------------------------------------------------------


async def test_running_campaign_skips_addresses_suppressed_mid_campaign(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 3000)  # 1000 match (plan "pro")
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record)
    port = await emulator.start()
    try:
        config = daemon_config(
            port,
            provider={"rate_per_s": 300, "burst": 50},  # about 3 s: time to suppress, even on a busy machine
            scheduler={"shard_size": 100_000, "window_size": 300, "queue_batches": 2},
        )
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            async with asyncio.timeout(30):
                while True:  # the first window is logged: the campaign is under way
                    if await conn.fetchval(
                        "SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id
                    ):
                        break
                    await asyncio.sleep(0.02)
            # The last 60 matched leads: far ahead of what the scheduler has read (a small queue).
            late = await conn.fetch(
                """SELECT id, lower(email) AS email FROM leads
                   WHERE account_id = 1 AND attributes->>'plan' = 'pro' ORDER BY id DESC LIMIT 60"""
            )
            # One statement, so that the suppressions land at once (60 round trips on a busy
            # machine took longer than the rest of the campaign once).
            await suppressions_db.add_many(conn, {(1, row["email"]): ("asked", "api") for row in late})
            logged = await conn.fetchval(
                "SELECT count(*) FROM email_log WHERE campaign_id = $1 AND lead_id = ANY($2::bigint[])",
                campaign_id,
                [r["id"] for r in late],
            )
            assert logged == 0, "the suppression must land while the campaign is running"
            info = await wait_for_status(conn, campaign_id)
        await emulator.flush()
    finally:
        await emulator.close()
    late_ids = {r["id"] for r in late}
    rows = await conn.fetch("SELECT lead_id, status FROM email_log WHERE campaign_id = $1", campaign_id)
    statuses = {r["lead_id"]: r["status"] for r in rows}
    assert len(rows) == len(statuses) == 1000
    assert {lead for lead, status in statuses.items() if status == LogStatus.SUPPRESSED} == late_ids
    sent = collections.Counter(int(line["lead_id"]) for line in read_record(record))
    assert not late_ids & set(sent)
    assert len(sent) == 940 and max(sent.values()) == 1
    assert info["suppressed"] == 60 and info["sent"] == 940


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("email,reason,Email\na@example.com,x,b@example.com\n", "header repeats column(s) email"),
        ("reason,email,Reason\nx,a@example.com,y\n", "header repeats column(s) reason"),
        ("\ufeffemail\na@example.com\n".encode("utf-16"), "UTF-16"),
    ],
)
async def test_import_refuses_an_ambiguous_header_or_a_utf16_file(
    conn: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes,
    message: str,
) -> None:
    path = tmp_path / "list.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert await suppressions.run_import_cli(conn, account_id=1, path=path, reason=None) == 1
    assert message in capsys.readouterr().err
    assert await conn.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_import_rejects_file_cannot_be_the_file_imported(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "list.txt"
    path.write_text("a@example.com\n")
    assert await suppressions.run_import_cli(conn, account_id=1, path=path, reason=None, rejects=path) == 1
    assert path.read_text() == "a@example.com\n"


async def test_list_cli_with_json_tells_where_the_next_page_starts(
    conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    # the runbook promised the hint; --json left it out
    for n in range(3):
        await conn.execute(
            "INSERT INTO suppressions (account_id, email, reason) VALUES (1, $1, 'x')", f"u{n}@example.com"
        )
    assert await suppressions.run_list_cli(conn, account_id=1, after="", limit=2, as_json=True) == 0
    out, err = capsys.readouterr()
    assert [row["email"] for row in orjson.loads(out)] == ["u0@example.com", "u1@example.com"]
    assert err == "next: --after u1@example.com\n"


@pytest.mark.parametrize(
    "last",
    ["-ann@example.com", "a&b|c@example.com", "o'neil@example.com", "$home*@example.com"],
)
async def test_list_cli_next_page_hint_is_a_usable_argument(
    conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str], last: str
) -> None:
    # An address starting with "-" made the hint "--after -ann@..." a usage error, and one with
    # shell characters ("&", "'", "$") was cut or expanded by the shell it was pasted into
    await conn.execute("INSERT INTO suppressions (account_id, email, reason) VALUES (1, $1, 'x')", last)
    assert await suppressions.run_list_cli(conn, account_id=1, after="", limit=1, as_json=False) == 0
    err = capsys.readouterr().err
    assert err.startswith("next: ")
    argv = ["suppressions", "list", "--account", "1", *shlex.split(err.removeprefix("next: "))]
    assert arguments.parser().parse_args(argv).after == last


async def test_an_idn_address_added_in_either_spelling_holds_its_lead(
    client: TestClient[Any, Any], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # An operator copies the address from a provider's dashboard (A-labels, as it was sent) while
    # the lead is stored as typed (U-labels), or the other way round: either way the lead is held
    await conn.execute(
        """INSERT INTO leads (account_id, email, attributes)
           VALUES (1, 'ann@bücher.de', '{}'), (1, 'bob@xn--bcher-kva.de', '{}'),
                  (1, 'cat@bücher.de', '{}'), (1, 'dan@bücher.de', '{}')"""
    )
    everyone = segments.parse({"all": []})
    added = await client.post(
        "/api/suppressions",
        json={"account_id": 1, "email": "Ann@XN--BCHER-KVA.DE", "reason": "complained by phone"},
        headers=AUTH,
    )
    assert added.status == 201
    assert (await added.json())["email"] == "ann@xn--bcher-kva.de"  # the spelling given
    assert (
        await suppressions.run_change_cli(
            conn, action="add", account_id=1, email="bob@bücher.de", reason=None
        )
        == 0
    )
    path = tmp_path / "old-esp.txt"
    path.write_text("cat@xn--bcher-kva.de\ncat@bücher.de\ndan@xn--bcher-kva.de\n")
    result = await suppressions.import_file(conn, 1, path)
    assert (result.imported, result.already, result.rejected) == (2, 1, 0)
    assert await leads_db.count_matching(conn, 1, everyone) == 0
    assert sorted(await _audit(conn)) == [
        (1, "ann@bücher.de", "added", "complained by phone", "api"),
        (1, "ann@xn--bcher-kva.de", "added", "complained by phone", "api"),
        (1, "bob@bücher.de", "added", "manual", "cli"),
        (1, "bob@xn--bcher-kva.de", "added", "manual", "cli"),
        (1, "cat@bücher.de", "added", "imported", "import"),
        (1, "cat@xn--bcher-kva.de", "added", "imported", "import"),
        (1, "dan@bücher.de", "added", "imported", "import"),
        (1, "dan@xn--bcher-kva.de", "added", "imported", "import"),
    ]
    # Added again in the other spelling: already there
    again = await client.post(
        "/api/suppressions", json={"account_id": 1, "email": "ann@bücher.de"}, headers=AUTH
    )
    assert again.status == 200 and (await again.json())["reason"] == "complained by phone"
    # An entry stored in one spelling before: added again, it gains the other, audited as this add
    await conn.execute(
        """INSERT INTO suppressions (account_id, email, reason, source)
           VALUES (1, 'eve@xn--bcher-kva.de', 'complaint', 'ses')"""
    )
    eve = await client.post(
        "/api/suppressions", json={"account_id": 1, "email": "eve@xn--bcher-kva.de"}, headers=AUTH
    )
    assert eve.status == 200 and (await eve.json())["reason"] == "complaint"
    assert (await _audit(conn))[-1] == (1, "eve@bücher.de", "added", "manual", "api")


def _soft_bounce(account_id: int, email: str, receipt: str) -> Event:
    return Event(
        provider="ses",
        kind=EventKind.SOFT_BOUNCE,
        occurred_at=dt.datetime.now(dt.UTC),
        email=email,
        receipt=receipt,
        account_id=account_id,
        provider_type="Transient/MailboxFull",
    )


async def _soft_bounced(conn: asyncpg.Connection, account_id: int, email: str, receipt: str) -> None:
    async with conn.transaction():  # as the writer's flush records them
        await events.record(
            conn, [_soft_bounce(account_id, email, receipt)], soft_bounce_limit=3, soft_bounce_window_s=86400
        )


async def _suppressed(conn: asyncpg.Connection, account_id: int, email: str) -> str | None:
    reason: str | None = await conn.fetchval(
        "SELECT reason FROM suppressions WHERE account_id = $1 AND email = $2", account_id, email
    )
    return reason


@pytest.mark.parametrize("way", ["api", "cli"])
async def test_soft_bounces_before_an_operators_removal_no_longer_count(
    client: TestClient[Any, Any], conn: asyncpg.Connection, way: str
) -> None:
    # The three soft bounces that suppressed the address still counted after the operator took
    # it off the list: the next soft bounce suppressed it again at once
    for n in range(3):
        await _soft_bounced(conn, 1, "full@example.com", f"a{n}")
        await _soft_bounced(conn, 2, "full@example.com", f"b{n}")  # another account's
    assert await _suppressed(conn, 1, "full@example.com") == "soft_bounce_limit"
    if way == "api":
        removed = await client.delete(
            "/api/suppressions",
            json={"account_id": 1, "email": "Full@example.com", "reason": "mailbox emptied"},
            headers=AUTH,
        )
        assert removed.status == 200
    else:
        status = await suppressions.run_change_cli(
            conn, action="remove", account_id=1, email="Full@example.com", reason="mailbox emptied"
        )
        assert status == 0
    assert (await _audit(conn))[-1] == (1, "full@example.com", "removed", "mailbox emptied", way)
    for n in range(2):  # counted from the removal on: two are not yet the limit
        await _soft_bounced(conn, 1, "full@example.com", f"c{n}")
        assert await _suppressed(conn, 1, "full@example.com") is None
    await _soft_bounced(conn, 1, "full@example.com", "c2")  # the third since the removal
    assert await _suppressed(conn, 1, "full@example.com") == "soft_bounce_limit"
    # The other account's list and count were never touched
    assert await _suppressed(conn, 2, "full@example.com") == "soft_bounce_limit"
    assert (await _audit(conn))[-1] == (1, "full@example.com", "added", "soft_bounce_limit", "webhook")
