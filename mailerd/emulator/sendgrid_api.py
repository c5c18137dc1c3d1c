"""SendGrid v3 Mail Send on a local port (``mailerd sink --api sendgrid``): ``POST /v3/mail/send``.

Checks what SendGrid checks: ``Authorization: Bearer <key>`` (401 otherwise; with ``api_key``
set, that key only), a JSON body, 1 to 1,000 ``personalizations`` each with a ``to`` address,
``from.email``, and ``subject`` plus ``content`` unless a ``template_id`` is given; substitutions
up to 10,000 bytes per personalization. A refused request gets SendGrid's error body
``{"errors": [{"message", "field"}]}`` with 400. Accepted: ``202`` with an empty body
and ``X-Message-Id``; each personalization's ``custom_args`` name the recipient's campaign and
lead. Throttled: ``429`` with ``X-RateLimit-Limit``/``-Remaining``/``-Reset``. SendGrid answers
for the whole request, never per recipient, so ``fail_rate`` is the share of calls answered
``500`` (the client retries them).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Final

import orjson
from aiohttp import web

from mailerd.emulator.base import Emulator

MAX_PERSONALIZATIONS: Final = 1000
MAX_SUBSTITUTION_BYTES: Final = 10_000


class _Refused(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class SendgridEmulator(Emulator):
    """SendGrid's Mail Send endpoint; see the module docstring."""

    api = "sendgrid"
    burst_floor = MAX_PERSONALIZATIONS

    async def _listen(self, resources: contextlib.AsyncExitStack) -> int:
        app = web.Application(client_max_size=40 * 1024 * 1024)
        app.router.add_post("/v3/mail/send", self._mail_send)
        return await self._serve_app(resources, app)

    async def _mail_send(self, request: web.Request) -> web.Response:
        self.arrived()
        try:
            self._check_auth(request.headers.get("Authorization", ""))
            body = _json(await request.read())
            recipients = _recipients(body)
            await self.delay()
            self.counters.calls += 1
            if self.throttled(len(recipients)):
                return _throttled()
            if self.fails():
                self.counters.failed_entries += len(recipients)
                raise _Refused(500, "internal error")
        except _Refused as refused:
            self.counters.rejected_calls += 1
            errors = [{"message": refused.message, "field": refused.field}]
            return web.json_response({"errors": errors}, status=refused.status, dumps=_dumps)
        message_id = self.new_message_id()
        for email, campaign_id, lead_id in recipients:
            self.accept(email, campaign_id, lead_id, message_id)
        return web.Response(status=202, headers={"X-Message-Id": message_id})

    def _check_auth(self, header: str) -> None:
        scheme, _, key = header.partition(" ")
        if scheme != "Bearer" or not key or (self.api_key is not None and key != self.api_key):
            raise _Refused(401, "The provided authorization grant is invalid, expired, or revoked")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Refused(400, "Bad Request", None) from None
    if not isinstance(body, dict):
        raise _Refused(400, "The request body must be a JSON object.", None)
    return body


def _recipients(body: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(email, campaign, lead)`` of every personalization, once the whole body is checked."""
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        raise _Refused(
            400, "The personalizations field is required and must have at least one.", "personalizations"
        )
    if len(personalizations) > MAX_PERSONALIZATIONS:
        raise _Refused(400, "The personalizations field must have 1000 or fewer items.", "personalizations")
    sender = body.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str) or "@" not in sender["email"]:
        raise _Refused(400, "The from object must be provided for every email send.", "from")
    if "template_id" not in body:
        if not isinstance(body.get("subject"), str) or not body["subject"]:
            raise _Refused(400, "The subject is required.", "subject")
        content = body.get("content")
        if not isinstance(content, list) or not content:
            raise _Refused(
                400, "The content value must be a string at least one character in length.", "content"
            )
    return [_personalization(index, item) for index, item in enumerate(personalizations)]


def _personalization(index: int, item: Any) -> tuple[str, Any, Any]:
    field = f"personalizations.{index}"
    to = item.get("to") if isinstance(item, dict) else None
    if not isinstance(to, list) or not to or not isinstance(to[0], dict):
        raise _Refused(400, "The to array is required for all personalization objects.", f"{field}.to")
    email = to[0].get("email")
    if not isinstance(email, str) or "@" not in email:
        raise _Refused(400, "Does not contain a valid address.", f"{field}.to.0.email")
    substitutions = item.get("substitutions")
    if substitutions is not None and len(orjson.dumps(substitutions)) > MAX_SUBSTITUTION_BYTES:
        raise _Refused(
            400, "Substitutions may not exceed 10000 bytes per personalization.", f"{field}.substitutions"
        )
    args = item.get("custom_args") or {}
    return email, args.get("mailerd_campaign"), args.get("mailerd_lead")


def _throttled() -> web.Response:
    reset = math.ceil(time.time()) + 1
    headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    body = {"errors": [{"field": None, "message": "too many requests"}]}
    return web.json_response(body, status=429, headers=headers, dumps=_dumps)
