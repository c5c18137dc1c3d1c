"""Mailgun's Messages API on a local port (``mailerd sink --api mailgun``):
``POST /v3/{domain}/messages``, form-encoded or multipart.

Checks what Mailgun checks: basic auth ``api:<key>`` (401 ``Forbidden`` otherwise; with
``api_key`` set, that key only), ``from``, 1 to 1,000 ``to``, a body (``text``, ``html`` or
``template``), ``recipient-variables`` as a JSON object when given. A refused request gets
``400 {"message": ...}``. Accepted: ``200 {"id": "<...@domain>", "message": "Queued. Thank
you."}``; each recipient's ids are the ``v:`` variables with its ``%recipient.X%`` placeholders
filled from its recipient variables, as Mailgun does. Throttled: ``429 {"message": ...}``.
Mailgun answers for the whole request, so ``fail_rate`` is the share of calls answered ``500``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from typing import Any, Final

import orjson
from aiohttp import web
from multidict import MultiDictProxy

from mailerd.emulator.base import Emulator

MAX_RECIPIENTS: Final = 1000
_PLACEHOLDER: Final = re.compile(r"%recipient\.([\w-]+)%")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MailgunEmulator(Emulator):
    """Mailgun's Messages endpoint; see the module docstring."""

    api = "mailgun"
    burst_floor = MAX_RECIPIENTS

    async def _listen(self, resources: contextlib.AsyncExitStack) -> int:
        app = _application()
        app.router.add_post("/v3/{domain}/messages", self._messages)
        return await self._serve_app(resources, app)

    async def _messages(self, request: web.Request) -> web.Response:
        self.arrived()
        try:
            self._check_auth(request.headers.get("Authorization", ""))
            form = await request.post()
            recipients = _recipients(form)
            await self.delay()
            self.counters.calls += 1
            if self.throttled(len(recipients)):
                raise _Refused(429, "Too many requests")
            if self.fails():
                self.counters.failed_entries += len(recipients)
                raise _Refused(500, "Internal server error")
        except _Refused as refused:
            self.counters.rejected_calls += 1
            if refused.status == 401:
                return web.Response(status=401, text="Forbidden")
            return web.json_response({"message": refused.message}, status=refused.status)
        message_id = f"{self.new_message_id()}@{request.match_info['domain']}"
        for email, campaign_id, lead_id in recipients:
            self.accept(email, campaign_id, lead_id, message_id)
        return web.json_response({"id": f"<{message_id}>", "message": "Queued. Thank you."})

    def _check_auth(self, header: str) -> None:
        scheme, _, token = header.partition(" ")
        try:
            user, _, key = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _Refused(401, "Forbidden") from None
        if (
            scheme != "Basic"
            or user != "api"
            or not key
            or (self.api_key is not None and key != self.api_key)
        ):
            raise _Refused(401, "Forbidden")


def _application() -> web.Application:
    """Room for 1,000 ``to`` fields and the rest (aiohttp 3.14 counts form fields)."""
    size = 60 * 1024 * 1024
    try:
        return web.Application(client_max_size=size, client_max_fields=MAX_RECIPIENTS + 200)
    except TypeError:  # an aiohttp without a form field limit
        return web.Application(client_max_size=size)


def _recipients(form: MultiDictProxy[Any]) -> list[tuple[str, Any, Any]]:
    """``(email, campaign, lead)`` per ``to``, once the whole request is checked."""
    if not isinstance(form.get("from"), str) or not form["from"]:
        raise _Refused(400, "from parameter is missing")
    to = [value for value in form.getall("to", []) if isinstance(value, str)]
    if not to:
        raise _Refused(400, "to parameter is missing")
    if len(to) > MAX_RECIPIENTS:
        raise _Refused(400, f"Too many recipients: at most {MAX_RECIPIENTS} per request")
    if not any(form.get(key) for key in ("text", "html", "template")):
        raise _Refused(400, "Need at least one of 'text', 'html' or 'template' parameters specified")
    variables: dict[str, Any] = {}
    raw = form.get("recipient-variables")
    if raw is not None:
        try:
            variables = orjson.loads(str(raw))
        except orjson.JSONDecodeError:
            raise _Refused(400, "recipient-variables parameter is not a valid JSON") from None
        if not isinstance(variables, dict):
            raise _Refused(400, "recipient-variables parameter is not a valid JSON object")
    campaign = form.get("v:mailerd_campaign")
    lead = form.get("v:mailerd_lead")
    out = []
    for address in to:
        mine = variables.get(address)
        values = mine if isinstance(mine, dict) else {}
        out.append((address, _fill(campaign, values), _fill(lead, values)))
    return out


def _fill(value: Any, variables: dict[str, Any]) -> Any:
    if not isinstance(value, str):
        return value
    return _PLACEHOLDER.sub(lambda m: str(variables.get(m.group(1), "")), value)
