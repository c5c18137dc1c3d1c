"""Shared fixtures: a real Postgres (local server or embedded), a migrated template, a fresh
database per test cloned from it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mailerd.db import connect as db_connect
from mailerd.db import migrate

DEFAULT_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The admin DSN of a Postgres server: MAILERD_TEST_DSN if it answers, else embedded."""
    dsn = os.environ.get("MAILERD_TEST_DSN", DEFAULT_TEST_DSN)
    if asyncio.run(_answers(dsn)):
        yield dsn
        return
    from mailerd.db import embedded

    with tempfile.TemporaryDirectory(prefix="mailerd-test-pg-") as data_dir:
        server = embedded._start(Path(data_dir))
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def _migrated_template(pg_server: str, prefix: str, schema: migrate.Schema) -> Iterator[str]:
    """A database created and migrated once per run (per xdist worker), dropped at the end."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await db_connect.connect(with_database(pg_server, name))
        try:
            await migrate.migrate(conn, schema)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(drop())


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    """A database migrated once per run; tests clone it."""
    yield from _migrated_template(pg_server, "mailerd_tpl", migrate.MAIN)


@contextlib.asynccontextmanager
async def cloned_database(pg_server: str, template: str | None) -> AsyncIterator[str]:
    """A fresh database (from ``template``, or empty), dropped afterwards."""
    name = f"mailerd_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    try:
        yield with_database(pg_server, name)
    finally:
        admin = await asyncpg.connect(pg_server)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def dsn(pg_server: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    async with cloned_database(pg_server, template_db) as test_dsn:
        yield test_dsn


@pytest.fixture
async def empty_dsn(pg_server: str) -> AsyncIterator[str]:
    """A fresh database with no schema (for migration tests)."""
    async with cloned_database(pg_server, None) as test_dsn:
        yield test_dsn


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database."""
    connection = await db_connect.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's database."""
    p = await db_connect.create_pool(dsn, min_size=1, max_size=8)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture(scope="session")
def reports_template_db(pg_server: str) -> Iterator[str]:
    """A reports database migrated once per run (mailerd/db/reports_migrations); tests clone it."""
    yield from _migrated_template(pg_server, "mailerd_rtpl", migrate.REPORTS)


@pytest.fixture
async def reports_dsn(pg_server: str, reports_template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated reports database for this test."""
    async with cloned_database(pg_server, reports_template_db) as test_dsn:
        yield test_dsn
