"""A TCP proxy in front of Postgres that can stop answering without closing anything: the
network partition (packets dropped) that a stopped server (connections refused) is not."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


class Blackhole:
    """Forwards to the server of ``dsn`` until ``dropping``; then reads and drops every byte,
    and accepts new connections without answering them."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._dsn = parts
        self.dropping = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def dsn(self) -> str:
        """The DSN that goes through this proxy."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        user = f"{self._dsn.username}@" if self._dsn.username else ""
        return self._dsn._replace(netloc=f"{user}127.0.0.1:{port}").geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.dropping:
                await reader.read()  # accepted, never answered
                return
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.dropping:
                    writer.write(data)
                    await writer.drain()
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
