"""The leads API takes leads exactly as `mailerd leads import` does: one table of inputs drives the
CLI import of a .jsonl file, ``POST /api/leads`` line by line and ``POST /api/leads/bulk``, each
into its own account of one database, and every way must store the same leads, touch the same
ones, reject the same lines (the bulk import with the same reasons) and end the same way (exit
0 / 2 / 1 = 200 / 200 with rejects / 422)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd import importer
from tests.integration.leads_api import AUTH, NDJSON, api_client, attributes_by_email

CLI, POST, BULK = 11, 12, 13  # one account per way in


def line(doc: Any) -> bytes:
    return orjson.dumps(doc)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    lines: list[bytes]
    expected: dict[str, Any]  # stored address -> attributes, afterwards
    rejected: dict[int, str] = dataclasses.field(default_factory=dict)  # line -> reason (start)
    before: dict[str, Any] = dataclasses.field(default_factory=dict)  # stored a day before
    touched: set[str] = dataclasses.field(default_factory=set)  # of ``before``: updated_at moves
    status: int = 0  # the CLI's exit status


CASES = [
    Case(
        "new leads: addresses trimmed, lower-cased when ASCII, values as JSON reads them",
        [
            line({"email": "  Ada@Example.COM ", "attributes": {"plan": "pro"}}),
            line({"email": "Zoë@Example.com"}),
            line(
                {
                    "email": "ken@example.com",
                    "attributes": {"n": 1.5, "tags": ["a", "b"], "gone": None, "deep": {"x": {"y": True}}},
                }
            ),
            b'{"email": "big@example.com", "attributes": {"big": 12345678901234567890123, "neg": -0}}',
        ],
        {
            "ada@example.com": {"plan": "pro"},
            "Zoë@Example.com": {},
            "ken@example.com": {"n": 1.5, "tags": ["a", "b"], "gone": None, "deep": {"x": {"y": True}}},
            "big@example.com": {"big": 1.2345678901234568e22, "neg": 0},
        },
    ),
    Case(
        "existing leads: attributes merged, the new values win; a lead left as it was is not written",
        [
            line({"email": "ADA@example.com", "attributes": {"plan": "pro", "score": 3}}),
            line({"email": "same@example.com", "attributes": {"plan": "pro"}}),
            line({"email": "new@example.com"}),
        ],
        {
            "ada@example.com": {"plan": "pro", "city": "London", "score": 3},
            "same@example.com": {"plan": "pro", "n": 1},
            "new@example.com": {},
        },
        before={
            "ada@example.com": {"plan": "free", "city": "London"},
            "same@example.com": {"plan": "pro", "n": 1},
        },
        touched={"ada@example.com"},
    ),
    Case(
        "a later line for the same address wins, as if the lines were applied in order",
        [
            line({"email": "ada@example.com", "attributes": {"plan": "free", "city": "Paris"}}),
            line({"email": "bob@example.com", "attributes": {"plan": "free"}}),
            line({"email": "Ada@Example.com", "attributes": {"plan": "pro"}}),
            line({"email": "BOB@example.com", "attributes": {"city": "Rome"}}),
            line({"email": "bob@example.com", "attributes": {"plan": None}}),
        ],
        {
            "ada@example.com": {"keep": "me", "plan": "pro", "city": "Paris"},
            "bob@example.com": {"plan": None, "city": "Rome"},
        },
        before={"ada@example.com": {"keep": "me", "plan": "old"}},
        touched={"ada@example.com"},
    ),
    Case(
        "bad lines are rejected by number (blank lines count, and are skipped); the others imported",
        [
            line({"email": "ok@example.com", "attributes": {"a": 1}}),
            b'{"email": "ok2@example.com", "attributes": {"a": 1}',
            line({"email": "x@example.com", "attributes": [1, 2]}),
            line({"email": "bad address@example.com"}),
            b'{"email": "y@example.com", "attributes": {"n": "\xff"}}',
            b"[1, 2]",
            line({"email": "z@example.com", "first_name": "Z"}),
            line({"attributes": {}}),
            b"",
            line({"email": 5}),
            line({"email": "n@example.com", "attributes": None}),
            line({"email": "nul@example.com", "attributes": {"k": "a\x00b"}}),
            line({"email": "path@example.com", "attributes": {"p": "C:\\u0000"}}),
            b"   ",
            line({"email": "x@nodot"}),
        ],
        {"ok@example.com": {"a": 1}, "path@example.com": {"p": "C:\\u0000"}},
        rejected={
            2: "invalid JSON",
            3: "attributes is not an object",
            4: "invalid email address",
            5: "invalid UTF-8",
            6: "not a JSON object",
            7: "unexpected key(s) first_name",
            8: "missing email",
            10: "email is not a string",
            11: "attributes is not an object",
            12: "NUL character",
            15: "invalid email address",
        },
        status=2,
    ),
    Case(
        "every line rejected: nothing imported",
        [line({"email": "broken"}), b"[1]"],
        {},
        rejected={1: "invalid email address", 2: "not a JSON object"},
        status=1,
    ),
    Case("no line to import", [b"", b"  "], {}, status=1),
]


@dataclasses.dataclass
class Outcome:
    status: int  # as the CLI's exit status
    rejects: dict[int, str]


async def by_cli(conn: asyncpg.Connection, case: Case, tmp_path: Path) -> Outcome:
    path, rejects = tmp_path / "leads.jsonl", tmp_path / "rejects.jsonl"
    path.write_bytes(b"\n".join(case.lines) + b"\n")
    status = await importer.run_cli(conn, account_id=CLI, path=path, types=None, rejects=rejects)
    found = [orjson.loads(raw) for raw in rejects.read_bytes().splitlines()]
    return Outcome(status, {reject["line"]: reject["reason"] for reject in found})


async def by_post(client: TestClient[Any, Any], case: Case) -> Outcome:
    """Each line that is not blank as the body of ``POST /api/leads`` (the account added)."""
    imported, rejects = 0, {}
    for number, raw in enumerate(case.lines, start=1):
        if not raw.strip():
            continue
        body = raw
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            body = orjson.dumps({"account_id": POST, **doc})
        response = await client.post(
            "/api/leads", data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert response.status in (200, 201, 400, 422), await response.text()
        if response.status < 300:
            imported += 1
        else:
            rejects[number] = (await response.json())["error"]["message"]
    return Outcome(1 if imported == 0 else 2 if rejects else 0, rejects)


async def by_bulk(client: TestClient[Any, Any], case: Case) -> Outcome:
    response = await client.post(
        "/api/leads/bulk", params={"account_id": BULK}, data=b"\n".join(case.lines), headers=NDJSON
    )
    answer = await response.json()
    assert response.status in (200, 422), answer
    rejects = {reject["line"]: reject["reason"] for reject in answer["rejects"]}
    assert answer["rejected"] == len(rejects)
    if response.status == 422:
        assert answer["error"]["code"] == "nothing_imported" and answer["imported"] == 0
        return Outcome(1, rejects)
    return Outcome(2 if rejects else 0, rejects)


async def touched(conn: asyncpg.Connection, account_id: int, case: Case) -> set[str]:
    rows = await conn.fetch(
        "SELECT email FROM leads WHERE account_id = $1 AND email = ANY($2::text[])"
        " AND updated_at > now() - interval '1 hour'",
        account_id,
        list(case.before),
    )
    return {row["email"] for row in rows}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_the_api_stores_and_rejects_what_the_import_does(
    conn: asyncpg.Connection, pool: asyncpg.Pool, tmp_path: Path, case: Case
) -> None:
    for account_id in (CLI, POST, BULK):
        for email, attributes in case.before.items():
            await conn.execute(
                "INSERT INTO leads (account_id, email, attributes, updated_at)"
                " VALUES ($1, $2, $3, now() - interval '1 day')",
                account_id,
                email,
                attributes,
            )
    cli = await by_cli(conn, case, tmp_path)
    async with api_client(pool) as client:
        post = await by_post(client, case)
        bulk = await by_bulk(client, case)

    for account_id in (CLI, POST, BULK):
        assert await attributes_by_email(conn, account_id) == case.expected, account_id
        assert await touched(conn, account_id, case) == case.touched, account_id
    assert cli.status == post.status == bulk.status == case.status
    assert sorted(cli.rejects) == sorted(post.rejects) == sorted(bulk.rejects) == sorted(case.rejected)
    assert bulk.rejects == cli.rejects  # the same code: the same reasons
    for number, reason in case.rejected.items():
        assert cli.rejects[number].startswith(reason), (number, cli.rejects[number])
