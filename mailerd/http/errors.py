"""Error answers: :class:`ApiError`, JSON responses, and what makes every error JSON.

Three layers answer errors, all with the :class:`~mailerd.http.bodies.ErrorBody` shape: the
handlers (:class:`ApiError`), :func:`errors_as_json` for aiohttp's own HTTP errors (404, 405
with its ``Allow`` header, 413), a database that cannot be reached (503) and any bug (500,
logged), and :class:`JsonErrorRequestHandler` for requests aiohttp cannot even parse (an
over-long header line, a malformed request line), which never reach the application.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
import structlog
from aiohttp import web, web_protocol, web_request

from mailerd import db, decoding
from mailerd.http import bodies

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger(__name__)

_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 500: "internal"}


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` (plus ``errors`` when there are several)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        errors: list[bodies.Problem] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = bodies.ErrorBody(bodies.Problem(code, message, field), errors or [])

    @classmethod
    def invalid(cls, problems: list[decoding.Problem]) -> ApiError:
        """422 naming every invalid field, the first one in ``error``."""
        listed = [bodies.Problem("invalid", str(problem), problem.field) for problem in problems]
        return cls(422, "invalid", listed[0].message, listed[0].field, listed)

    def response(self) -> web.Response:
        return json_response(self.body, status=self.status)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer; Structs are encoded by their wire names, times as ISO-8601."""
    if isinstance(data, msgspec.Struct):
        data = msgspec.to_builtins(data, builtin_types=(dt.datetime,))
    return web.Response(body=orjson.dumps(data, default=str), status=status, content_type="application/json")


def _unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot serve the request now (retry), not that a query
    is wrong: unreachable or going away, but also read-only (a standby after a failover), a
    deadlock or a lock wait that timed out (:func:`mailerd.db.is_transient`)."""
    return db.is_transient(exc)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's (404, 405, 413), answered as a JSON error object."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        code = _CODES.get(exc.status_code, "http_error")
        response = ApiError(exc.status_code, code, exc.reason).response()
        if "Allow" in exc.headers:  # 405 says which methods the path has (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        if _unavailable(exc):
            log.warning("request_database_unavailable", path=request.path, error=str(exc))
            return ApiError(503, "unavailable", "the database is not available right now; retry").response()
        log.exception("request_failed", method=request.method, path=request.path)
        return ApiError(500, "internal", "internal error (logged as request_failed)").response()


class JsonErrorRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse with a JSON error body.

    aiohttp answers such requests (and errors outside every middleware) itself, in plain text,
    and offers no hook for it (aio-libs/aiohttp#3287); this subclass keeps its logging and
    connection handling and replaces only the body.
    """

    def handle_error(
        self,
        request: web_request.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)
        text = message if status != 500 and message else "internal error"
        body = bodies.ErrorBody(bodies.Problem(_CODES.get(status, "http_error"), text.strip(), None))
        response = json_response(body, status=plain.status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """``AppRunner`` whose connections use :class:`JsonErrorRequestHandler`."""

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server here (private, stable since 3.0); we rebuild it with the
        # same handler, request factory and settings, only with our connection handler class.
        server = await super()._make_server()
        return _JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
