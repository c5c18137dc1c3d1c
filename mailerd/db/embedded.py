"""An embedded Postgres (pgserver) for laptops and CI machines that have no server of their own.

The server lives in a data directory that is reused on the next start; it is stopped when the
last process using it exits (pgserver counts its users).
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class EmbeddedUnavailable(RuntimeError):
    """pgserver is not installed (it is the ``embedded`` extra)."""


def _start(data_dir: str | Path) -> Any:
    data_dir = Path(data_dir).expanduser()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            import pgserver  # optional dependency, imported only when asked for
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "database.dsn = \"embedded\" needs pgserver: pip install 'mailerd[embedded]'"
        ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]  # pgserver ships no stubs for it


@contextlib.asynccontextmanager
async def embedded_postgres(data_dir: str | Path) -> AsyncIterator[str]:
    """Start (or join) the embedded server in ``data_dir``; yield its DSN; stop it on exit."""
    path = str(data_dir)
    server = await asyncio.to_thread(_start, path)
    dsn: str = server.get_uri()
    log.info("embedded_postgres_started", data_dir=path)
    try:
        yield dsn
    finally:
        await asyncio.to_thread(server.cleanup)
        log.info("embedded_postgres_stopped", data_dir=path)
