"""Opening connections: resolve ``embedded``, open pools and dedicated connections."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from mailerd import config as config_mod
from mailerd.db import embedded


def _jsonb_encode(value: Any) -> bytes:
    # jsonb's binary wire format: a version byte (1), then the JSON text.
    return b"\x01" + orjson.dumps(value)


class NumberText(str):
    """A stored JSON number that no double holds (``1e400``; Postgres keeps it exactly, and the
    import stores it so), read back as its text: templates print it as stored, and a provider's
    template model gets it as a string. orjson refuses such a number (it would be infinity): one
    lead holding it made every read of its window raise, and the daemon with it."""

    __slots__ = ()


def _jsonb_decode(data: bytes) -> Any:
    text = memoryview(data)[1:]
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "infinity" not in str(exc):
            raise
    return json.loads(bytes(text), parse_int=_int_or_text, parse_float=_float_or_text)


def _int_or_text(text: str) -> int | NumberText:
    # as orjson would read it (64 bits), else as stored (a double would round or overflow it)
    if len(text) <= 21 and -(2**63) <= (value := int(text)) < 2**64:
        return value
    return NumberText(text)


def _float_or_text(text: str) -> float | NumberText:
    value = float(text)
    return value if math.isfinite(value) else NumberText(text)


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


# A backend notices that its client died only when it next reads from the socket: one that waits
# for a lock or runs a long statement would hold the dead node's locks until it is done. Postgres
# 14+ checks the socket this often (ms) meanwhile, so a SIGKILLed node's sessions end within a
# second whatever they were doing, and its claims and row locks are free for the others.
# TimeZone: the hours and days the queries cut with date_trunc or ::date (provider usage and quota
# hours, partition days) are UTC's on every node, whatever the server's or database's setting (an
# offset of half an hour, Asia/Kolkata's, put the hour buckets on :30, and nodes with different
# settings read different buckets).
SESSION_SETTINGS = {"client_connection_check_interval": "1000", "TimeZone": "UTC"}


def _with_session_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "server_settings": {**SESSION_SETTINGS, **kwargs.get("server_settings", {})}}


EMBEDDED_REPORTS_DATABASE = "mailerd_reports"


def reports_dsn(reports: config_mod.ReportsConfig, main_dsn: str) -> str:
    """The reports database's DSN: its own, or for ``"embedded"`` a second database on the server
    of ``main_dsn`` (the embedded one)."""
    if not reports.is_embedded:
        return reports.dsn.reveal()
    parts = urlsplit(main_dsn)
    path = "/" + EMBEDDED_REPORTS_DATABASE
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


async def ensure_database(main_dsn: str, name: str) -> bool:
    """Create database ``name`` on ``main_dsn``'s server unless it exists (the embedded reports
    database); True when it was created."""
    conn = await asyncpg.connect(main_dsn)
    try:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:  # another process made it meanwhile
            return False
        return True
    finally:
        await conn.close()


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """A dedicated connection (claims, LISTEN, migrations), set up like pooled ones."""
    conn = await asyncpg.connect(dsn, **_with_session_settings(kwargs))
    await init_connection(conn)
    return conn


async def keep_session(_conn: asyncpg.Connection) -> None:
    """A pool's ``reset`` for connections that keep no session state: asyncpg still rolls back
    an open transaction; the reset statement (unlock, close, unlisten, reset all) is skipped. A
    pool made with it must never use SET, session advisory locks, LISTEN or open cursors."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    """A pool for short transactions (windows, flushes, API reads)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=init_connection, **_with_session_settings(kwargs)
    )
    assert pool is not None
    return pool
