"""The host application's side of the callbacks, for the relay tests: a real aiohttp server that
verifies every request with the ``standardwebhooks`` package and can fail, stall or throttle on
demand."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import standardwebhooks
from aiohttp import web

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclasses.dataclass
class Receiver:
    """Knobs may change while it runs. ``answer`` (when set) decides the status of a request from
    its records; ``stall_s`` delays every answer."""

    secret: str = SECRET
    answer: Callable[[list[dict[str, Any]]], int] | None = None
    retry_after: str | None = None
    stall_s: float = 0.0
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)
    bad_signatures: int = 0
    message_ids: list[str] = dataclasses.field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/mailerd"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/mailerd", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = standardwebhooks.Webhook(self.secret).verify(body, dict(request.headers))
        except standardwebhooks.WebhookVerificationError:
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
        records = payload["data"]["records"]
        status = self.answer(records) if self.answer is not None else 200
        self.statuses.append(status)
        if 200 <= status < 300:
            self.records += records
            self.message_ids.append(request.headers["webhook-id"])
        headers = {"Retry-After": self.retry_after} if self.retry_after and status in (429, 503) else None
        return web.Response(status=status, body=orjson.dumps({"status": status}), headers=headers)

    def secret_file(self, directory: Path) -> str:
        """The signing secret in a file, as the daemon's configuration takes it."""
        path = directory / "callback-secret"
        path.write_text(self.secret)
        return str(path)

    def ids(self) -> set[str]:
        return {record["id"] for record in self.records}
