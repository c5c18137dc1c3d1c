"""Opening connections: resolve ``embedded``, open pools and dedicated connections."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson

from mailerd import config as config_mod
from mailerd.db import embedded


def _jsonb_encode(value: Any) -> bytes:
    # jsonb's binary wire format: a version byte (1), then the JSON text.
    return b"\x01" + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(memoryview(data)[1:])


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: jsonb in and out as Python objects via orjson (binary format, so
    COPY can carry it too)."""
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )


@contextlib.asynccontextmanager
async def resolved_dsn(database: config_mod.DatabaseConfig) -> AsyncIterator[str]:
    """Yield a libpq DSN for the configured database, starting the embedded one if asked."""
    if database.is_embedded:
        async with embedded.embedded_postgres(database.embedded_data_dir) as dsn:
            yield dsn
    else:
        yield database.dsn.reveal()


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """A dedicated connection (claims, LISTEN, migrations), set up like pooled ones."""
    conn = await asyncpg.connect(dsn, **kwargs)
    await init_connection(conn)
    return conn


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """A pool for short transactions (windows, flushes, API reads)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection, **kwargs
    )
    assert pool is not None
    return pool
