"""Error answers: :class:`ApiError`, JSON responses, and the middleware that makes every error
(ours or aiohttp's) a JSON :class:`~mailerd.http.bodies.ErrorBody`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import orjson
from aiohttp import web

from mailerd import decoding
from mailerd.http import bodies

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


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
        return ApiError(exc.status_code, code, exc.reason).response()
