"""``mailerd sink``: a loopback emulator of the SES v2 endpoints the SES provider uses.

Endpoints: ``SendBulkEmail``, ``CreateEmailTemplate``, ``UpdateEmailTemplate`` and
``GetAccount``, with the documented request and response shapes and error answers (error
type in ``x-amzn-ErrorType`` and a JSON body ``{"message": ...}``). Knobs: added latency,
a recipients-per-second token bucket that answers 429 ``TooManyRequestsException``, a
per-entry failure rate (``MESSAGE_REJECTED`` or ``TRANSIENT_FAILURE``, half each) and a forced
whole-call error for tests (e.g. ``SendingPausedException``). The signature is not verified,
but a SigV4-looking ``Authorization`` header is required.

Each accepted recipient can be appended to a JSON-lines record
``{"campaign_id", "lead_id", "email", "message_id"}`` built from the message tags the provider
sent (:mod:`mailerd.emulator.recorder`: buffered, written off the loop every 100 ms and on close).

It sits on the benchmark's hot path (about 1,000 calls/s of 50 recipients), so per-entry work
is kept to a few dictionary reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sys
import types
from pathlib import Path
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from mailerd import ratelimit
from mailerd.emulator.recorder import Recorder
from mailerd.emulator.webhooks import WebhookPoster

log = structlog.get_logger(__name__)

MAX_BULK_ENTRIES: Final = 50
_JSON: Final = "application/json"


class SinkError(Exception):
    """An error answer: HTTP status, SES error type, message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclasses.dataclass(slots=True)
class Counters:
    """What the sink has seen since it started."""

    calls: int = 0
    accepted: int = 0
    throttled_calls: int = 0
    failed_entries: int = 0
    rejected_calls: int = 0


class Sink:
    """The emulator as an object: ``async with Sink(...) as sink`` (or ``port = await
    sink.start()`` ... ``await sink.close()``), knobs, counters.

    Its record and its webhook poster run their tasks in their own TaskGroups, entered on start
    and left on close (which drains them).

    Knobs may change while it runs: ``latency_ms``, ``throttle_rate`` (recipients/s, 0 = never),
    ``fail_rate`` (0..1), ``force_error`` (``(status, error_type, message)`` answered to every
    SendBulkEmail call, or None) and ``max_send_rate`` (what GetAccount reports).
    """

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
        webhooks: WebhookPoster | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.record = record
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self.force_error: tuple[int, str, str] | None = None
        self.max_send_rate = max_send_rate
        self.counters = Counters()
        self.templates: dict[str, dict[str, str]] = {}
        self._throttle_rate = throttle_rate
        self._bucket = _throttle_bucket(throttle_rate)
        self._random = random.Random(seed)
        self._message_prefix = f"{self._random.getrandbits(64):016x}"
        self._message_seq = 0
        self._recorder: Recorder | None = None
        self._runner: web.AppRunner | None = None
        self._resources: contextlib.AsyncExitStack | None = None
        self.webhooks = webhooks

    @property
    def throttle_rate(self) -> float:
        return self._throttle_rate

    @throttle_rate.setter
    def throttle_rate(self, rate: float) -> None:
        self._throttle_rate = rate
        self._bucket = _throttle_bucket(rate)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Sink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        async with contextlib.AsyncExitStack() as resources:
            if self.record is not None:
                self._recorder = await resources.enter_async_context(Recorder(self.record))
            if self.webhooks is not None:
                await resources.enter_async_context(self.webhooks)
            app = web.Application(client_max_size=40 * 1024 * 1024)
            app.router.add_post("/v2/email/outbound-bulk-emails", self._send_bulk_email)
            app.router.add_post("/v2/email/templates", self._create_template)
            app.router.add_put("/v2/email/templates/{name}", self._update_template)
            app.router.add_get("/v2/email/account", self._get_account)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            resources.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            self._runner = runner
            self.port = int(runner.addresses[0][1])
            self._resources = resources.pop_all()
        log.info("sink_started", host=self.host, port=self.port, record=str(self.record))
        return self.port

    async def close(self) -> None:
        """Stop listening, then drain the webhooks and flush and close the record."""
        if self._resources is not None:
            resources, self._resources = self._resources, None
            await resources.aclose()
        self._runner = None
        self._recorder = None
        log.info("sink_stopped", **dataclasses.asdict(self.counters))

    async def flush(self) -> None:
        """Write buffered record lines now (tests read the file after this)."""
        if self._recorder is not None:
            await self._recorder.flush()

    # handlers -------------------------------------------------------------------------------

    async def _send_bulk_email(self, request: web.Request) -> web.Response:
        try:
            _check_auth(request)
            body = await _json_body(request)
            if self.latency_ms > 0:
                await asyncio.sleep(self.latency_ms / 1000)
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
        if not _take(self._bucket, len(entries)):
            self.counters.throttled_calls += 1
            raise SinkError(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
        return {"BulkEmailEntryResults": [self._answer(*p) for p in parsed]}

    def _answer(self, email: str, campaign_id: str | None, lead_id: str | None) -> dict[str, str]:
        if self.fail_rate > 0 and self._random.random() < self.fail_rate:
            self.counters.failed_entries += 1
            if self._random.random() < 0.5:
                return {"Status": "MESSAGE_REJECTED", "Error": "Email address is blacklisted."}
            return {"Status": "TRANSIENT_FAILURE", "Error": "Temporary failure, try again."}
        self._message_seq += 1
        message_id = f"{self._message_prefix}-{self._message_seq:012x}-000000"
        self.counters.accepted += 1
        if self._recorder is not None:
            self._recorder.add(
                orjson.dumps(
                    {
                        "campaign_id": _int_or_none(campaign_id),
                        "lead_id": _int_or_none(lead_id),
                        "email": email,
                        "message_id": message_id,
                    },
                    option=orjson.OPT_APPEND_NEWLINE,
                )
            )
        if self.webhooks is not None:
            self.webhooks.offer(email, _int(campaign_id), _int(lead_id), message_id)
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
                    "Max24HourSend": -1.0,
                    "MaxSendRate": self.max_send_rate,
                    "SentLast24Hours": float(self.counters.accepted),
                },
            },
        )


# --- throttling ----------------------------------------------------------------------------------


def _throttle_bucket(rate: float) -> ratelimit.TokenBucket:
    """Recipients per second with one second of burst (at least one full bulk call); <= 0: never."""
    rate = max(rate, 0.0)
    return ratelimit.TokenBucket(rate, burst=max(rate, float(MAX_BULK_ENTRIES)))


def _take(bucket: ratelimit.TokenBucket, n: int) -> bool:
    """Take ``n`` tokens if there are that many; a call that finds too few takes none (a 429)."""
    if bucket.unlimited:
        return True
    if bucket.tokens() < n:
        return False
    bucket.reserve(n)
    return True


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


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _int_or_none(value: str | None) -> int | str | None:
    if value is not None and value.isdigit():
        return int(value)
    return value


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=_JSON)


def _error(exc: SinkError) -> web.Response:
    return web.Response(
        status=exc.status,
        body=orjson.dumps({"message": exc.message}),
        content_type=_JSON,
        headers={"x-amzn-ErrorType": exc.error_type},
    )


# --- the command ------------------------------------------------------------------------------


async def serve(
    *,
    host: str,
    port: int,
    record: Path | None,
    latency_ms: float,
    throttle_rate: float,
    fail_rate: float,
    seed: int | None,
    stop: asyncio.Event,
    webhook_url: str | None = None,
    webhook_format: str = "ses",
    bounce_rate: float = 0.0,
    complaint_rate: float = 0.0,
    webhook_settings: Path | None = None,
) -> None:
    """Run the sink until ``stop`` is set, then flush the record and return.

    Prints ``sink listening on HOST:PORT`` on stdout once bound (port 0 picks a free port).
    """
    poster = None
    if webhook_url and (bounce_rate > 0 or complaint_rate > 0):
        poster = WebhookPoster(
            webhook_url, webhook_format, bounce_rate=bounce_rate, complaint_rate=complaint_rate, seed=seed
        )
        if webhook_settings is not None:
            write_daemon_settings(poster, webhook_settings)
    sink = Sink(
        host,
        port,
        record=record,
        latency_ms=latency_ms,
        throttle_rate=throttle_rate,
        fail_rate=fail_rate,
        seed=seed,
        webhooks=poster,
    )
    bound = await sink.start()
    try:
        sys.stdout.write(f"sink listening on {host}:{bound}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await sink.close()


def write_daemon_settings(poster: WebhookPoster, directory: Path) -> Path:
    """Write ``webhooks.toml``: the ``[webhooks.<provider>]`` section a daemon needs to verify
    the sink's webhooks (certificates and key files go in the same directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = poster.signer.daemon_settings(directory)
    lines = [f"[webhooks.{poster.format}]"]
    for key, value in settings.items():
        lines.append(f"{key} = {orjson.dumps(value).decode()}")
    path = directory / "webhooks.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
