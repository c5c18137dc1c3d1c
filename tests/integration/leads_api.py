"""What the leads API tests share: an API client on the test's database, and reading leads back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from mailerd import config as config_mod
from mailerd import http
from tests.integration.helpers import ApiTestServer

TOKEN = "leads-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NDJSON = {**AUTH, "Content-Type": "application/x-ndjson"}


@contextlib.asynccontextmanager
async def api_client(
    pool: asyncpg.Pool, *, erasure_key: bytes | None = None, **limits: int
) -> AsyncIterator[TestClient[Any, Any]]:
    """A client of the admin API (``[http]`` ``limits`` such as ``max_body_bytes``; with
    ``erasure_key`` as ``[privacy] erasure_key``)."""
    env = {"MAILERD_ADMIN_TOKEN": TOKEN}
    if erasure_key is not None:
        env["MAILERD_PRIVACY__ERASURE_KEY"] = erasure_key.decode()
    config = config_mod.from_mapping(
        {
            "http": {"max_body_bytes": 4096, **limits},
            "providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}},
        },
        env=env,
    )
    app = http.build_app(http.Services(pool, config, http.Health(started=True)))
    async with TestClient(ApiTestServer(app)) as client:
        yield client


async def attributes_by_email(conn: asyncpg.Connection, account_id: int) -> dict[str, Any]:
    """The account's leads as ``{stored address: attributes}``."""
    rows = await conn.fetch(
        "SELECT email, attributes FROM leads WHERE account_id = $1 ORDER BY id", account_id
    )
    return {row["email"]: row["attributes"] for row in rows}
