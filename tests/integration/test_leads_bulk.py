"""POST /api/leads/bulk: NDJSON streamed into the import, its limits, and its ways to fail."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from mailerd.http import leads as leads_http
from mailerd.http import openapi, routes
from mailerd.importer import loading
from mailerd.importer import source as source_mod
from tests.integration.leads_api import AUTH, NDJSON, api_client, attributes_by_email

ACCOUNT = 3


async def bulk(client: TestClient[Any, Any], body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/api/leads/bulk", params={"account_id": str(ACCOUNT)}, data=body, headers={**NDJSON, **headers}
    )
    return response.status, await response.json()


def good(n: int) -> bytes:
    return orjson.dumps({"email": f"lead{n}@example.com", "attributes": {"n": n}})


async def test_many_lines_over_many_chunks_and_batches_keep_their_numbers(
    pool: asyncpg.Pool, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 2000)  # many chunks...
    monkeypatch.setattr(loading, "BATCH_ROWS", 150)  # ... and batches
    lines = [good(n) for n in range(1, 2001)]
    bad = {17: b"{", 333: b'{"email": "nope"}', 1500: b"[]", 2000: b'{"email": "x@example.com", "x": 1}'}
    for number, raw in bad.items():
        lines[number - 1] = raw
    async with api_client(pool) as client:
        status, answer = await bulk(client, b"\r\n".join(lines) + b"\r\n")
    assert status == 200, answer
    assert (answer["imported"], answer["rejected"]) == (1996, 4)
    assert [reject["line"] for reject in answer["rejects"]] == sorted(bad)
    stored = await attributes_by_email(conn, ACCOUNT)
    assert len(stored) == 1996 and stored["lead1999@example.com"] == {"n": 1999}
    assert "lead17@example.com" not in stored


async def test_rejects_listed_are_bounded_and_all_are_counted(pool: asyncpg.Pool) -> None:
    lines = [b'{"email": "bad"}'] * 250 + [good(1)]
    async with api_client(pool) as client:
        status, answer = await bulk(client, b"\n".join(lines))
    assert status == 200
    assert (answer["imported"], answer["rejected"]) == (1, 250)
    assert [reject["line"] for reject in answer["rejects"]] == list(
        range(1, leads_http.BULK_REJECTS_LISTED + 1)
    )


async def test_a_line_longer_than_max_body_bytes_is_rejected_by_number(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    long = orjson.dumps({"email": "long@example.com", "attributes": {"text": "x" * 5000}})
    body = b"\n".join([good(1), long, good(3), long]) + b" \t"  # the last one has no line end
    async with api_client(pool, max_body_bytes=4096) as client:
        status, answer = await bulk(client, body)
    assert status == 200, answer
    assert answer["rejects"] == [
        {"line": 2, "reason": "the line is longer than 4,096 bytes"},
        {"line": 4, "reason": "the line is longer than 4,096 bytes"},
    ]
    assert set(await attributes_by_email(conn, ACCOUNT)) == {"lead1@example.com", "lead3@example.com"}


async def _chunks(lines: list[bytes], gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    for number, raw in enumerate(lines):
        if number == 1 and gate is not None:
            await gate.wait()
        yield raw + b"\n"


async def test_a_body_past_max_bulk_bytes_is_refused_and_nothing_imported(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    lines = [good(n) for n in range(100)]  # about 4,600 bytes
    async with api_client(pool, max_bulk_bytes=2048) as client:
        status, answer = await bulk(client, b"\n".join(lines))  # its length said up front
        assert (status, answer["error"]["code"]) == (413, "too_large")
        status, answer = await bulk(client, _chunks(lines))  # chunked: found out on the way
        assert (status, answer["error"]["code"]) == (413, "too_large")
        assert "max_bulk_bytes" in answer["error"]["message"]
        status, answer = await bulk(client, b"\n".join(lines[:10]))  # within the limit
        assert status == 200
    assert len(await attributes_by_email(conn, ACCOUNT)) == 10


async def test_a_gzip_body_is_read_and_a_broken_one_is_a_400(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    body = gzip.compress(b"\n".join(good(n) for n in range(5)))
    async with api_client(pool) as client:
        status, answer = await bulk(client, body, **{"Content-Encoding": "gzip"})
        assert (status, answer["imported"]) == (200, 5)
        status, answer = await bulk(client, b"hello, not gzip", **{"Content-Encoding": "gzip"})
        assert (status, answer["error"]["code"]) == (400, "invalid_body"), answer
    assert len(await attributes_by_email(conn, ACCOUNT)) == 5


def _cut_gzip(lines: list[bytes]) -> bytes:
    """A gzip stream of ``lines`` that breaks off after a whole line: the decoded text looks like
    a shorter, complete body; only the compressed stream says it is not."""
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(b"".join(line + b"\n" for line in lines)) + compressor.flush(zlib.Z_FULL_FLUSH)


async def test_a_compressed_body_that_ends_early_imports_nothing(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    lines = [good(n) for n in range(1000)]
    deflated = zlib.compress(b"\n".join(lines))
    async with api_client(pool) as client:
        # cut after line 1,000 of 2,000: was 200 with 1,000 imported
        status, answer = await bulk(client, _cut_gzip(lines), **{"Content-Encoding": "gzip"})
        assert (status, answer["error"]["code"]) == (400, "invalid_body"), answer
        assert "ends before its compressed stream does" in answer["error"]["message"]
        whole = gzip.compress(b"\n".join(lines))
        status, answer = await bulk(client, whole[: len(whole) // 2], **{"Content-Encoding": "gzip"})
        assert (status, answer["error"]["code"]) == (400, "invalid_body"), answer
        status, answer = await bulk(client, deflated[: len(deflated) // 2], **{"Content-Encoding": "deflate"})
        assert (status, answer["error"]["code"]) == (400, "invalid_body"), answer
        status, answer = await bulk(client, b"x", **{"Content-Encoding": "br"})
        assert (status, answer["error"]["code"], answer["error"]["field"]) == (
            415,
            "unsupported_encoding",
            "Content-Encoding",
        ), answer
        assert await attributes_by_email(conn, ACCOUNT) == {}
        # complete ones: two gzip members one after the other (cat a.gz b.gz), deflate, raw deflate
        members = gzip.compress(b"\n".join(lines[:400]) + b"\n") + gzip.compress(b"\n".join(lines[400:]))
        status, answer = await bulk(client, members, **{"Content-Encoding": "gzip"})
        assert (status, answer["imported"]) == (200, 1000), answer
        status, answer = await bulk(client, deflated, **{"Content-Encoding": "deflate"})
        assert (status, answer["imported"]) == (200, 1000), answer
        raw = zlib.compressobj(wbits=-15)
        status, answer = await bulk(
            client, raw.compress(b"\n".join(lines)) + raw.flush(), **{"Content-Encoding": "deflate"}
        )
        assert (status, answer["imported"]) == (200, 1000), answer


async def test_nothing_to_import_is_a_422_with_the_counts(pool: asyncpg.Pool) -> None:
    async with api_client(pool) as client:
        status, answer = await bulk(client, b"")
        assert status == 422
        assert answer["error"] == {
            "code": "nothing_imported",
            "message": "nothing imported: the body has no lines to import",
            "field": "body",
        }
        assert (answer["imported"], answer["rejected"], answer["rejects"]) == (0, 0, [])
        response = await client.post("/api/leads/bulk", data=good(1), headers=NDJSON)
        assert response.status == 422
        assert (await response.json())["error"]["field"] == "account_id"


async def test_rows_the_database_refuses_are_rejected_as_the_import_rejects_them(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await conn.execute("ALTER TABLE leads ADD CONSTRAINT small_n CHECK ((attributes->>'n')::int < 50)")
    async with api_client(pool) as client:
        status, answer = await bulk(client, b"\n".join(good(n) for n in range(45, 55)))
    assert status == 200
    assert [reject["line"] for reject in answer["rejects"]] == [6, 7, 8, 9, 10]
    assert all(reject["reason"].startswith("refused by the database: ") for reject in answer["rejects"])
    assert len(await attributes_by_email(conn, ACCOUNT)) == 5


async def _wait_running(count: int) -> None:
    async with asyncio.timeout(10):
        while leads_http._BULK_RUNNING[0] != count:
            await asyncio.sleep(0.01)


async def test_at_most_two_bulk_imports_run_at_once(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    gate = asyncio.Event()
    async with api_client(pool) as client:
        running = [asyncio.create_task(bulk(client, _chunks([good(n), good(n + 100)], gate))) for n in (1, 2)]
        await _wait_running(2)
        status, answer = await bulk(client, good(3))
        assert (status, answer["error"]["code"]) == (429, "busy")
        gate.set()
        assert [status for status, _ in await asyncio.gather(*running)] == [200, 200]
        await _wait_running(0)
        assert (await bulk(client, good(3)))[0] == 200
    assert len(await attributes_by_email(conn, ACCOUNT)) == 5


async def test_a_client_gone_mid_body_imports_nothing_and_frees_its_connection(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    async with api_client(pool) as client:
        assert client.port is not None
        _, writer = await asyncio.open_connection("127.0.0.1", client.port)
        head = (
            f"POST /api/leads/bulk?account_id={ACCOUNT} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 100000\r\n\r\n"
        )
        writer.write(head.encode() + b"\n".join(good(n) for n in range(50)) + b"\n")
        await writer.drain()
        await _wait_running(1)
        writer.close()
        await writer.wait_closed()
        await _wait_running(0)
        status, answer = await bulk(client, good(7))
        assert (status, answer["imported"]) == (200, 1)
    assert list(await attributes_by_email(conn, ACCOUNT)) == ["lead7@example.com"]


async def test_two_bulk_imports_that_deadlock_answer_retry_not_a_500(
    pool: asyncpg.Pool, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two bodies update the same two leads in opposite orders: each holds the first lead's row
    # while it waits for the other's. Postgres ends one transaction (deadlock detected), which
    # the API answered 500 "internal error" with a traceback logged, for a request to retry.
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 1)  # each line is a chunk...
    monkeypatch.setattr(loading, "BATCH_ROWS", 1)  # ... and a batch, written as it arrives
    for n in (1, 2):
        await conn.execute(
            "INSERT INTO leads (account_id, email, attributes) VALUES ($1, $2, '{}')",
            ACCOUNT,
            f"lead{n}@example.com",
        )
    gate = asyncio.Event()
    async with api_client(pool) as client:
        bodies = [[good(1), good(2)], [good(2), good(1)]]
        running = [asyncio.create_task(bulk(client, _chunks(lines, gate))) for lines in bodies]
        writers = (
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'leads' AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()"
        )
        async with asyncio.timeout(10):  # until each body's first lead is written by its import
            while await conn.fetchval(writers) < 2:
                await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(*running)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 409], answers
    [refused] = [answer for status, answer in answers if status == 409]
    assert refused["error"]["code"] == "conflict" and "retry" in refused["error"]["message"]
    assert await attributes_by_email(conn, ACCOUNT) == {
        "lead1@example.com": {"n": 1},
        "lead2@example.com": {"n": 2},
    }


def test_the_openapi_document_says_what_the_bulk_409_means() -> None:
    # The route lists 409 for a deadlock, but its description was the shared one of every 409
    # ("a campaign transition not allowed from its status"...): a client reading the document
    # could not tell that this 409 means "nothing imported, send it again".
    document = openapi.document(routes.ROUTES)
    described = document["paths"]["/api/leads/bulk"]["post"]["responses"]["409"]["description"]
    assert "bulk import" in described and "retry" in described
