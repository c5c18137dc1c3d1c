"""Requests into typed values: JSON bodies and query strings into their Structs, path ids.

Every problem becomes a 4xx JSON answer naming the field: 400 when the body is not JSON, 422
when a field or parameter is invalid (all of them listed), 404 for an id that cannot exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import orjson
from aiohttp import http_exceptions, web

from mailerd import decoding
from mailerd.http.errors import ApiError

T = TypeVar("T", bound=msgspec.Struct)
MAX_ID = 2**63 - 1
_BOOLEANS = {"true": True, "false": False}


async def read_body(request: web.Request) -> bytes:
    """The body's bytes, decompressed; 400 when its ``Content-Encoding`` does not decode (413 when
    it is larger than ``[http] max_body_bytes``, from aiohttp)."""
    try:
        return await request.read()
    except (web.RequestPayloadError, http_exceptions.HttpProcessingError) as exc:
        reason = " ".join(str(exc).split())
        raise ApiError(400, "invalid_body", f"the body cannot be read: {reason}") from None


async def json_object(request: web.Request, loads: Callable[[bytes], Any] = orjson.loads) -> dict[str, Any]:
    """The body as a JSON object (read by ``loads``): 400 when it is not JSON, 422 when it is
    not an object."""
    raw = await read_body(request)
    try:
        data = loads(raw)
    except ValueError as exc:  # orjson.JSONDecodeError among them
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    return data


def struct(cls: type[T], data: dict[str, Any]) -> T:
    """``data`` as a ``cls``, or 422 naming every invalid field."""
    try:
        return decoding.decode(cls, data)
    except decoding.Invalid as exc:
        raise ApiError.invalid(exc.problems) from None


async def body(request: web.Request, cls: type[T]) -> T:
    """The JSON body as a ``cls``."""
    return struct(cls, await json_object(request))


def query(request: web.Request, cls: type[T]) -> T:
    """The query string as a ``cls``: one parameter per field, an empty value counts as absent,
    other parameters are ignored."""
    values: dict[str, Any] = {}
    problems: list[decoding.Problem] = []
    lowercase: frozenset[str] = getattr(cls, "lowercase", frozenset())
    for field in msgspec.structs.fields(cls):
        name = field.encode_name
        text = request.query.get(name)
        if text is None or text == "":
            continue
        if name in lowercase:
            text = text.lower()
        if int in decoding.base_types(field.type):
            if text.isascii() and text.isdigit():  # int() would also take "١٢", " 12 ", "1_0", "+5"
                values[name] = int(text)
            else:
                problems.append(decoding.Problem(name, f"expected a whole number (digits 0-9), got {text!r}"))
        elif bool in decoding.base_types(field.type):
            if text.lower() in _BOOLEANS:
                values[name] = _BOOLEANS[text.lower()]
            else:
                problems.append(decoding.Problem(name, f"expected true or false, got {text!r}"))
        else:
            values[name] = text
    if problems:
        raise ApiError.invalid(problems)
    return struct(cls, values)


def campaign_id(request: web.Request) -> int:
    """The ``{id}`` of the path; 404 when it is not a whole number from 1 to 2^63 - 1."""
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_ID:
        raise ApiError(404, "not_found", "no such campaign", "id")
    return int(text)
