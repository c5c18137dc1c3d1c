"""Postmark's batch endpoints on a local port (``mailerd sink --api postmark``):
``POST /email/batch`` and ``POST /email/batchWithTemplates``.

Checks what Postmark checks: ``X-Postmark-Server-Token`` (401 ``{"ErrorCode": 10, ...}``
otherwise; with ``api_key`` set, that token only), a JSON body (422 ``ErrorCode`` 402 otherwise),
at most 500 messages (422 ``ErrorCode`` 410), and per message ``From``, ``To`` and a body (or a
``TemplateId``/``TemplateAlias`` and ``TemplateModel``): a message without them gets its own
``ErrorCode`` 300 in the answer. ``200`` with one ``{"ErrorCode", "Message", "MessageID",
"SubmittedAt", "To"}`` per message, in order; its ``Metadata`` names the recipient's campaign and
lead. Throttled: ``429 {"ErrorCode": 429, ...}``. ``fail_rate`` is the share of messages answered
``ErrorCode`` 406 (inactive recipient).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Any, Final

import orjson
from aiohttp import web

from mailerd.emulator.base import Emulator

MAX_MESSAGES: Final = 500
TOKEN_HEADER: Final = "X-Postmark-Server-Token"  # noqa: S105 -- a header name, not a secret


class PostmarkEmulator(Emulator):
    """Postmark's batch sending endpoints; see the module docstring."""

    api = "postmark"
    burst_floor = MAX_MESSAGES

    async def _listen(self, resources: contextlib.AsyncExitStack) -> int:
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_post("/email/batch", self._batch)
        app.router.add_post("/email/batchWithTemplates", self._batch_with_templates)
        return await self._serve_app(resources, app)

    async def _batch(self, request: web.Request) -> web.Response:
        return await self._handle(request, templated=False)

    async def _batch_with_templates(self, request: web.Request) -> web.Response:
        return await self._handle(request, templated=True)

    async def _handle(self, request: web.Request, *, templated: bool) -> web.Response:
        self.arrived()
        token = request.headers.get(TOKEN_HEADER)
        if not token or (self.api_key is not None and token != self.api_key):
            self.counters.rejected_calls += 1
            return _error(401, 10, "Request does not contain a valid Server token.")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            self.counters.rejected_calls += 1
            return _error(422, 402, "Received invalid JSON input.")
        messages = body.get("Messages") if templated and isinstance(body, dict) else body
        if not isinstance(messages, list):
            self.counters.rejected_calls += 1
            return _error(422, 403, "Incompatible JSON input.")
        if len(messages) > MAX_MESSAGES:
            self.counters.rejected_calls += 1
            return _error(422, 410, f"Too many batch messages: at most {MAX_MESSAGES}.")
        await self.delay()
        self.counters.calls += 1
        if self.throttled(len(messages)):
            return _error(429, 429, "Rate limit exceeded.")
        return web.Response(
            body=orjson.dumps([self._answer(message, templated) for message in messages]),
            content_type="application/json",
        )

    def _answer(self, message: Any, templated: bool) -> dict[str, Any]:
        problem = _problem(message, templated)
        if problem is not None:
            return {"ErrorCode": 300, "Message": problem}
        to = str(message["To"])
        if self.fails():
            self.counters.failed_entries += 1
            return {
                "ErrorCode": 406,
                "Message": "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {to}. Inactive recipients are ones that have generated "
                "a hard bounce, a spam complaint, or a manual suppression.",
            }
        message_id = str(uuid.UUID(int=self._random.getrandbits(128)))
        metadata = message.get("Metadata") if isinstance(message.get("Metadata"), dict) else {}
        self.accept(to, metadata.get("mailerd_campaign"), metadata.get("mailerd_lead"), message_id)
        submitted = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        return {"ErrorCode": 0, "Message": "OK", "MessageID": message_id, "SubmittedAt": submitted, "To": to}


def _problem(message: Any, templated: bool) -> str | None:
    """Why Postmark would refuse this message (ErrorCode 300), or None."""
    if not isinstance(message, dict):
        return "Invalid email request: a message must be an object."
    for key in ("From", "To"):
        value = message.get(key)
        if not isinstance(value, str) or "@" not in value:
            return f"Invalid '{key}' address: '{value}'."
    if templated:
        if not (message.get("TemplateId") or message.get("TemplateAlias")):
            return "Invalid email request: TemplateId or TemplateAlias is required."
        if not isinstance(message.get("TemplateModel"), dict):
            return "Invalid email request: TemplateModel is required."
        return None
    if not (message.get("HtmlBody") or message.get("TextBody")):
        return "Provide either email TextBody or HtmlBody or both."
    return None


def _error(status: int, code: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"ErrorCode": code, "Message": message}),
        content_type="application/json",
    )
