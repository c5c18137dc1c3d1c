"""The SES v2 endpoints the SES provider uses, on a local port (``mailerd sink --api ses``).

Endpoints: ``SendBulkEmail``, ``CreateEmailTemplate``, ``UpdateEmailTemplate`` and
``GetAccount``, with the documented request and response shapes and error answers (error
type in ``x-amzn-ErrorType`` and a JSON body ``{"message": ...}``). Knobs (see
:mod:`mailerd.emulator.base`): throttling answers 429 ``TooManyRequestsException``; ``fail_rate``
fails entries (``MESSAGE_REJECTED`` or ``TRANSIENT_FAILURE``, half each); ``force_error``
(``(status, error_type, message)``) answers every SendBulkEmail call with that error (e.g.
``SendingPausedException``). The signature is not verified, but a SigV4-looking
``Authorization`` header is required.

Each accepted recipient is recorded from the message tags the provider sent. It sits on the
benchmark's hot path (about 1,000 calls/s of 50 recipients), so per-entry work is kept to a few
dictionary reads.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from mailerd.emulator.base import Emulator
from mailerd.emulator.webhooks import WebhookPoster

MAX_BULK_ENTRIES: Final = 50
_JSON: Final = "application/json"


class SinkError(Exception):
    """An error answer: HTTP status, SES error type, message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class SesEmulator(Emulator):
    """The SES v2 emulator; ``templates`` holds the created templates, ``max_send_rate`` and
    ``max_24_hour_send`` are what GetAccount reports; a call that would take the recipients
    accepted past ``max_24_hour_send`` is refused, as SES refuses it ("Daily message quota
    exceeded"). The emulator's day never ends: it counts everything it accepted."""

    api = "ses"
    burst_floor = MAX_BULK_ENTRIES

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        record: Path | None = None,
        latency_ms: float = 0.0,
        throttle_rate: float = 0.0,
        fail_rate: float = 0.0,
        seed: int | None = None,
        max_send_rate: float = 50_000.0,
        max_24_hour_send: float = -1.0,
        webhooks: WebhookPoster | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(
            host,
            port,
            record=record,
            latency_ms=latency_ms,
            throttle_rate=throttle_rate,
            fail_rate=fail_rate,
            seed=seed,
            webhooks=webhooks,
            api_key=api_key,
        )
        self.force_error: tuple[int, str, str] | None = None
        self.max_send_rate = max_send_rate
        self.max_24_hour_send = max_24_hour_send  # -1: unlimited; else calls past it are refused
        self.quota_refused_calls = 0
        self.templates: dict[str, dict[str, str]] = {}

    async def _listen(self, resources: contextlib.AsyncExitStack) -> int:
        app = web.Application(client_max_size=40 * 1024 * 1024)
        app.router.add_post("/v2/email/outbound-bulk-emails", self._send_bulk_email)
        app.router.add_post("/v2/email/templates", self._create_template)
        app.router.add_put("/v2/email/templates/{name}", self._update_template)
        app.router.add_get("/v2/email/account", self._get_account)
        return await self._serve_app(resources, app)

    # handlers -------------------------------------------------------------------------------

    async def _send_bulk_email(self, request: web.Request) -> web.Response:
        self.arrived()
        try:
            _check_auth(request)
            body = await _json_body(request)
            await self.delay()
            return _json(200, self._bulk(body))
        except SinkError as exc:
            self.counters.rejected_calls += 1
            return _error(exc)

    def _bulk(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate, then answer each entry; the whole-call checks come before any entry."""
        self.counters.calls += 1
        entries = body.get("BulkEmailEntries")
        if not isinstance(entries, list) or not entries:
            raise SinkError(400, "BadRequestException", "BulkEmailEntries: must be a non-empty list")
        if len(entries) > MAX_BULK_ENTRIES:
            raise SinkError(
                400, "BadRequestException", f"BulkEmailEntries: at most {MAX_BULK_ENTRIES} entries"
            )
        if not isinstance(body.get("FromEmailAddress"), str):
            raise SinkError(400, "BadRequestException", "FromEmailAddress: required string")
        default = body.get("DefaultContent")
        template = default.get("Template") if isinstance(default, dict) else None
        name = template.get("TemplateName") if isinstance(template, dict) else None
        if not isinstance(name, str) or not name:
            raise SinkError(400, "BadRequestException", "DefaultContent.Template.TemplateName: required")
        parsed = [_parse_entry(i, entry) for i, entry in enumerate(entries)]
        if self.force_error is not None:
            raise SinkError(*self.force_error)
        if name not in self.templates:
            raise SinkError(404, "NotFoundException", f"Template {name} does not exist.")
        if 0 <= self.max_24_hour_send < self.counters.accepted + len(entries):
            self.quota_refused_calls += 1
            raise SinkError(429, "TooManyRequestsException", "Daily message quota exceeded.")
        if self.throttled(len(entries)):
            raise SinkError(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
        return {"BulkEmailEntryResults": [self._answer(*p) for p in parsed]}

    def _answer(self, email: str, campaign_id: str | None, lead_id: str | None) -> dict[str, str]:
        if self.fails():
            self.counters.failed_entries += 1
            if self.coin():
                return {"Status": "MESSAGE_REJECTED", "Error": "Email address is blacklisted."}
            return {"Status": "TRANSIENT_FAILURE", "Error": "Temporary failure, try again."}
        message_id = self.new_message_id()
        self.accept(email, campaign_id, lead_id, message_id)
        return {"Status": "SUCCESS", "MessageId": message_id}

    async def _create_template(self, request: web.Request) -> web.Response:
        try:
            _check_auth(request)
            body = await _json_body(request)
            name = body.get("TemplateName")
            if not isinstance(name, str) or not name:
                raise SinkError(400, "BadRequestException", "TemplateName: required")
            template = _template_content(body)
            if name in self.templates:
                raise SinkError(400, "AlreadyExistsException", f"Template {name} already exists.")
            self.templates[name] = template
            return _json(200, {})
        except SinkError as exc:
            return _error(exc)

    async def _update_template(self, request: web.Request) -> web.Response:
        try:
            _check_auth(request)
            body = await _json_body(request)
            name = request.match_info["name"]
            template = _template_content(body)
            if name not in self.templates:
                raise SinkError(404, "NotFoundException", f"Template {name} does not exist.")
            self.templates[name] = template
            return _json(200, {})
        except SinkError as exc:
            return _error(exc)

    async def _get_account(self, request: web.Request) -> web.Response:
        try:
            _check_auth(request)
        except SinkError as exc:
            return _error(exc)
        sending = self.force_error is None
        return _json(
            200,
            {
                "ProductionAccessEnabled": True,
                "SendingEnabled": sending,
                "EnforcementStatus": "HEALTHY",
                "SendQuota": {
                    "Max24HourSend": self.max_24_hour_send,
                    "MaxSendRate": self.max_send_rate,
                    "SentLast24Hours": float(self.counters.accepted),
                },
            },
        )


# --- request checks (per entry: a handful of dict reads) ----------------------------------------


def _check_auth(request: web.Request) -> None:
    auth = request.headers.get("Authorization")
    if not auth:
        raise SinkError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    if not (auth.startswith("AWS4-HMAC-SHA256 ") and "Credential=" in auth and "Signature=" in auth):
        raise SinkError(403, "IncompleteSignatureException", "Authorization header is not SigV4.")


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SinkError(400, "BadRequestException", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise SinkError(400, "BadRequestException", "the body must be a JSON object")
    return body


def _bad(index: int, what: str) -> SinkError:
    return SinkError(400, "BadRequestException", f"BulkEmailEntries[{index}].{what}")


def _parse_entry(index: int, entry: Any) -> tuple[str, str | None, str | None]:
    """``(email, campaign tag, lead tag)`` of one entry, or a BadRequest naming the field."""
    if not isinstance(entry, dict):
        raise _bad(index, "Destination: required")
    destination = entry.get("Destination")
    to = destination.get("ToAddresses") if isinstance(destination, dict) else None
    if not isinstance(to, list) or len(to) != 1 or not isinstance(to[0], str) or "@" not in to[0]:
        raise _bad(index, "Destination.ToAddresses: one email address expected")
    replacement = entry.get("ReplacementEmailContent")
    if replacement is not None:
        template = replacement.get("ReplacementTemplate") if isinstance(replacement, dict) else None
        data = template.get("ReplacementTemplateData") if isinstance(template, dict) else None
        if not isinstance(data, str) or not data.startswith("{"):
            raise _bad(index, "ReplacementTemplateData: a JSON object string expected")
    campaign_id = lead_id = None
    tags = entry.get("ReplacementTags")
    if tags is not None:
        if not isinstance(tags, list):
            raise _bad(index, "ReplacementTags: a list expected")
        for tag in tags:
            if not isinstance(tag, dict):
                raise _bad(index, "ReplacementTags: {Name, Value} objects expected")
            tag_name, value = tag.get("Name"), tag.get("Value")
            if not isinstance(tag_name, str) or not isinstance(value, str):
                raise _bad(index, "ReplacementTags: Name and Value must be strings")
            if tag_name == "mailerd_campaign":
                campaign_id = value
            elif tag_name == "mailerd_lead":
                lead_id = value
    return to[0], campaign_id, lead_id


def _template_content(body: dict[str, Any]) -> dict[str, str]:
    content = body.get("TemplateContent")
    if not isinstance(content, dict):
        raise SinkError(400, "BadRequestException", "TemplateContent: required object")
    parts = {k: content.get(k) for k in ("Subject", "Html", "Text")}
    if not all(v is None or isinstance(v, str) for v in parts.values()):
        raise SinkError(400, "BadRequestException", "TemplateContent: parts must be strings")
    if not parts["Html"] and not parts["Text"]:
        raise SinkError(400, "BadRequestException", "TemplateContent: Html or Text required")
    return {k: v for k, v in parts.items() if isinstance(v, str)}


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=_JSON)


def _error(exc: SinkError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=orjson.dumps({"message": exc.message}),
        content_type=_JSON,
        headers={"x-amzn-ErrorType": exc.error_type},
    )
