"""The SES v2 endpoints the SES provider uses, on a local port (``mailerd sink --api ses``).

Endpoints: ``SendBulkEmail``, ``CreateEmailTemplate``, ``UpdateEmailTemplate`` and
``GetAccount``, with the documented request and response shapes and error answers (error
type in ``x-amzn-ErrorType`` and a JSON body ``{"message": ...}``). Knobs (see
:mod:`mailerd.emulator.base`): throttling answers 429 ``TooManyRequestsException``; ``fail_rate``
fails entries (``MESSAGE_REJECTED`` or ``TRANSIENT_FAILURE``, half each); ``force_error``
(``(status, error_type, message)``) answers every SendBulkEmail call with that error (e.g.
``SendingPausedException``); ``template_error`` answers every template call (Create and Update)
with its error, and ``template_calls`` counts them. The signature is not verified, but a SigV4-looking
``Authorization`` header is required.

Requests are checked as the SES v2 API reference describes them: ``FromEmailAddress`` and each
of ``ReplyToAddresses`` 7-bit ASCII (SES does not support SMTPUTF8: a display name RFC 2047
encoded, a domain in Punycode); ``DefaultContent.Template.Headers`` and each entry's
``ReplacementHeaders`` lists of ``MessageHeader`` (a name of printable ASCII without ``:``, at
most 126; a value of 1 to 995 printable ASCII characters, name and value at most 996), at most
15 headers a message (an entry's header replaces the template's of the same name). A request
that breaks one is a 400 ``BadRequestException`` naming the field. ``kept`` (tests): set to a
list to keep, for each accepted recipient, the header fields SES would write from the request
(``From``, ``To``, ``Reply-To``, then the template's and the entry's headers).

Each accepted recipient is recorded from the message tags the provider sent. It sits on the
benchmark's hot path (about 1,000 calls/s of 50 recipients), so per-entry work is kept to a few
dictionary reads and string checks (about 1 µs more for an entry's two unsubscribe headers).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from mailerd.emulator.base import Emulator
from mailerd.emulator.webhooks import WebhookPoster

MAX_BULK_ENTRIES: Final = 50
MAX_MESSAGE_HEADERS: Final = 15
MAX_HEADER_LINE: Final = 996  # MessageHeader: name and value together
_HEADER_NAME: Final = re.compile(r"[!-9;-@A-~]{1,126}")
_HEADER_VALUE: Final = re.compile(r"[ -~]{1,995}")
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
        self.template_error: tuple[int, str, str] | None = None
        self.template_calls = 0
        self.max_send_rate = max_send_rate
        self.max_24_hour_send = max_24_hour_send  # -1: unlimited; else calls past it are refused
        self.quota_refused_calls = 0
        self.templates: dict[str, dict[str, str]] = {}
        self.kept: list[list[tuple[str, str]]] | None = None  # tests: see the module docstring

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
        sender, reply_to = _addresses(body)
        default = body.get("DefaultContent")
        template = default.get("Template") if isinstance(default, dict) else None
        if not isinstance(template, dict):
            template = {}
        name = template.get("TemplateName")
        if not isinstance(name, str) or not name:
            raise SinkError(400, "BadRequestException", "DefaultContent.Template.TemplateName: required")
        headers = _headers("DefaultContent.Template.Headers", template.get("Headers"))
        parsed = [_parse_entry(i, entry, headers) for i, entry in enumerate(entries)]
        if self.force_error is not None:
            raise SinkError(*self.force_error)
        if name not in self.templates:
            raise SinkError(404, "NotFoundException", f"Template {name} does not exist.")
        if 0 <= self.max_24_hour_send < self.counters.accepted + len(entries):
            self.quota_refused_calls += 1
            raise SinkError(429, "TooManyRequestsException", "Daily message quota exceeded.")
        if self.throttled(len(entries)):
            raise SinkError(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
        if self.kept is None:
            return {"BulkEmailEntryResults": [self._answer(*p[:3]) for p in parsed]}
        head = [("From", sender), *([("Reply-To", ", ".join(reply_to))] if reply_to else [])]
        return {"BulkEmailEntryResults": [self._answer_kept(self.kept, head, headers, *p) for p in parsed]}

    def _answer_kept(
        self,
        kept: list[list[tuple[str, str]]],
        head: list[tuple[str, str]],
        headers: list[tuple[str, str]],
        email: str,
        campaign_id: str | None,
        lead_id: str | None,
        replacement: list[tuple[str, str]],
    ) -> dict[str, str]:
        """:meth:`_answer`, keeping an accepted recipient's header fields (tests)."""
        answer = self._answer(email, campaign_id, lead_id)
        if answer["Status"] == "SUCCESS":
            kept.append([head[0], ("To", email), *head[1:], *_merged(headers, replacement)])
        return answer

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
        self.template_calls += 1
        try:
            _check_auth(request)
            if self.template_error is not None:
                raise SinkError(*self.template_error)
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
        self.template_calls += 1
        try:
            _check_auth(request)
            if self.template_error is not None:
                raise SinkError(*self.template_error)
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
    return _bad_request(f"BulkEmailEntries[{index}].{what}")


def _bad_request(message: str) -> SinkError:
    return SinkError(400, "BadRequestException", message)


def _addresses(body: dict[str, Any]) -> tuple[str, list[str]]:
    """``FromEmailAddress`` and ``ReplyToAddresses`` of a SendBulkEmail request."""
    sender = body.get("FromEmailAddress")
    if not isinstance(sender, str):
        raise _bad_request("FromEmailAddress: required string")
    _check_address("FromEmailAddress", sender)
    return sender, _reply_to(body.get("ReplyToAddresses"))


def _check_address(field: str, address: str) -> None:
    if not address.isascii() or "@" not in address:
        raise _bad_request(
            f"{field}: an email address of 7-bit ASCII expected (a display name RFC 2047 encoded, "
            f"a domain in Punycode): {address[:100]!r}"
        )


def _reply_to(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(address, str) for address in value):
        raise _bad_request("ReplyToAddresses: a list of strings expected")
    for address in value:
        _check_address("ReplyToAddresses", address)
    return value


def _headers(field: str, value: Any) -> list[tuple[str, str]]:
    """A ``MessageHeaderList`` as ``(name, value)`` pairs, or a BadRequest naming the field."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_MESSAGE_HEADERS:
        raise _bad_request(f"{field}: a list of at most {MAX_MESSAGE_HEADERS} expected")
    out = []
    for header in value:
        name = header.get("Name") if isinstance(header, dict) else None
        text = header.get("Value") if isinstance(header, dict) else None
        if not (type(name) is str and type(text) is str and _good_header(name, text)):
            raise _header_error(field, name, text)
        out.append((name, text))
    return out


def _good_header(name: str, text: str) -> bool:
    """The patterns below without a regex (the emulator's hot path): ASCII 33-126 but ':' for
    the name, ASCII 32-126 for the value."""
    return (
        0 < len(name) <= 126
        and len(text) > 0
        and len(name) + len(text) <= MAX_HEADER_LINE
        and name.isascii()
        and name.isprintable()
        and " " not in name
        and ":" not in name
        and text.isascii()
        and text.isprintable()
    )


def _header_error(field: str, name: Any, text: Any) -> SinkError:
    """What is wrong with a ``MessageHeader`` (off the common path: one regex checks a good one)."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        return _bad_request(f"{field}: Name: printable ASCII without ':' expected")
    if not isinstance(text, str) or not _HEADER_VALUE.fullmatch(text):
        return _bad_request(f"{field}: {name}: Value: 1 to 995 printable ASCII characters expected")
    return _bad_request(f"{field}: {name}: Name and Value: at most {MAX_HEADER_LINE} characters")


def _merged(template: list[tuple[str, str]], entry: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The template's headers but those the entry names (it replaces them), then the entry's."""
    replaced = {name.lower() for name, _ in entry}
    return [header for header in template if header[0].lower() not in replaced] + entry


def _parse_entry(
    index: int, entry: Any, template_headers: list[tuple[str, str]]
) -> tuple[str, str | None, str | None, list[tuple[str, str]]]:
    """``(email, campaign tag, lead tag, replacement headers)`` of one entry, or a BadRequest
    naming the field."""
    if not isinstance(entry, dict):
        raise _bad(index, "Destination: required")
    destination = entry.get("Destination")
    to = destination.get("ToAddresses") if isinstance(destination, dict) else None
    if not isinstance(to, list) or len(to) != 1 or not isinstance(to[0], str) or "@" not in to[0]:
        raise _bad(index, "Destination.ToAddresses: one email address expected")
    if not to[0].isascii():  # as for FromEmailAddress: no SMTPUTF8, a domain in Punycode
        raise _bad(index, "Destination.ToAddresses: an email address of 7-bit ASCII expected")
    replacement = entry.get("ReplacementEmailContent")
    if replacement is not None:
        template = replacement.get("ReplacementTemplate") if isinstance(replacement, dict) else None
        data = template.get("ReplacementTemplateData") if isinstance(template, dict) else None
        if not isinstance(data, str) or not data.startswith("{"):
            raise _bad(index, "ReplacementTemplateData: a JSON object string expected")
    campaign_id, lead_id = _ids(index, entry.get("ReplacementTags"))
    found = entry.get("ReplacementHeaders")
    if found is None:
        return to[0], campaign_id, lead_id, []
    headers = _headers(f"BulkEmailEntries[{index}].ReplacementHeaders", found)
    if (
        len(template_headers) + len(headers) > MAX_MESSAGE_HEADERS
        and len(_merged(template_headers, headers)) > MAX_MESSAGE_HEADERS
    ):
        raise _bad(index, f"ReplacementHeaders: at most {MAX_MESSAGE_HEADERS} headers a message")
    return to[0], campaign_id, lead_id, headers


def _ids(index: int, tags: Any) -> tuple[str | None, str | None]:
    """Our campaign and lead tags of an entry's ``ReplacementTags``."""
    campaign_id = lead_id = None
    if tags is None:
        return campaign_id, lead_id
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
    return campaign_id, lead_id


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
