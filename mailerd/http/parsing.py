"""Requests into typed values: JSON bodies and query strings into their Structs, path ids.

Every problem becomes a 4xx JSON answer naming the field: 400 when the body is not JSON, 422
when a field or parameter is invalid (all of them listed; a body nested deeper than the JSON
reader goes names the top-level field nested deepest), 404 for an id that cannot exist.
"""

from __future__ import annotations

import asyncio
import decimal
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import orjson
from aiohttp import http_exceptions, web

from mailerd import decoding
from mailerd.http import encoding
from mailerd.http.errors import ApiError
from mailerd.importer import parsing as lead_rules

T = TypeVar("T", bound=msgspec.Struct)
U = TypeVar("U")
MAX_ID = decoding.MAX_ID
_MAX_QUERY_DIGITS = 100  # of a whole-number parameter: beyond every bound, far below int()'s limit
_BOOLEANS = {"true": True, "false": False}
# What a nesting depth depends on: strings (whole, so brackets in them do not count), brackets, colons
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]', re.DOTALL)
_MAX_FIELD_NAME = 100  # of a field named in a too-deeply-nested answer
_THREAD_BYTES = 64 * 1024  # a body larger than this is read off the event loop (json_object)


async def read_body(request: web.Request) -> bytes:
    """The body's bytes, decompressed; 400 when its ``Content-Encoding`` does not decode (a gzip
    or deflate stream that ends early included), 415 for an encoding other than those, 413 when
    it is larger than ``[http] max_body_bytes`` (compressed, from aiohttp, or decoded)."""
    decoding = encoding.decoder(request)
    try:
        raw = await request.read()
    except (web.RequestPayloadError, http_exceptions.HttpProcessingError) as exc:
        reason = " ".join(str(exc).split())
        raise ApiError(400, "invalid_body", f"the body cannot be read: {reason}") from None
    if decoding is None:
        return raw
    try:
        return encoding.decode_whole(decoding, raw, request.client_max_size)
    except encoding.BodyUndecodable as exc:
        raise ApiError(400, "invalid_body", f"the body cannot be read: {exc}") from None


async def json_object(request: web.Request, loads: Callable[[bytes], Any] = orjson.loads) -> dict[str, Any]:
    """The body as a JSON object (read by ``loads``): 400 when it is not JSON, 422 when it is
    not an object. A large body is read in a worker thread: the exact reader
    (:func:`~mailerd.importer.parsing.loads_exact`) is pure Python for a body with numbers a
    double may not hold, and took 0.2-0.6 s for 1 MiB of them on the loop that sends (and
    :func:`_deepest_field` 0.5 s for 1 MiB of brackets)."""
    raw = await read_body(request)
    try:
        data = await _off_loop(loads, raw)
    except ValueError as exc:  # orjson.JSONDecodeError among them
        if lead_rules.nested_too_deeply(exc):
            field = await _off_loop(_deepest_field, raw)
            if field is None:
                raise ApiError(422, "invalid", "the body is nested too deeply") from None
            raise ApiError(422, "invalid", f"{field}: nested too deeply", field) from None
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    return data


async def _off_loop(read: Callable[[bytes], U], raw: bytes) -> U:
    """``read(raw)``, in a worker thread when ``raw`` is large."""
    return await asyncio.to_thread(read, raw) if len(raw) > _THREAD_BYTES else read(raw)


def _deepest_field(raw: bytes) -> str | None:
    """The key of the body's top-level object whose value is nested deepest (the first such),
    read without parsing the body (it is too deep for the parser); None when the body is not an
    object or the key cannot be read."""
    depth = deepest = 0
    key = string = found = None
    for match in _JSON_TOKENS.finditer(raw):
        token = match.group()
        if token[0] == ord('"'):
            string = token
        elif token == b":":
            if depth == 1:
                key = string
        elif token in (b"{", b"["):
            depth += 1
            if depth > deepest:
                deepest, found = depth, key
        else:
            depth -= 1
    if found is None:
        return None
    try:
        name = orjson.loads(found)
    except orjson.JSONDecodeError:
        return None
    return name[:_MAX_FIELD_NAME] if isinstance(name, str) else None


def struct(cls: type[T], data: dict[str, Any]) -> T:
    """``data`` as a ``cls``, or 422 naming every invalid field."""
    try:
        return decoding.decode(cls, data)
    except decoding.Invalid as exc:
        raise ApiError.invalid(exc.problems) from None


async def body(request: web.Request, cls: type[T]) -> T:
    """The JSON body as a ``cls``. A number no double holds (``1e400``, 30 digits) is JSON all
    the same: read exactly, it is refused by its field's type (422), as in a campaign's body."""
    return struct(cls, await json_object(request, lead_rules.loads_exact))


async def body_with_segment(request: web.Request, cls: type[T]) -> T:
    """The JSON body as a ``cls`` whose ``segment`` keeps its numbers as written (a ``Decimal``
    where a double would change one: segments compare numbers exactly, and a campaign stores its
    segment as it was sent). A number no double holds elsewhere in the body is refused by its
    field's type (422), never read as a rounded or infinite float."""
    data = await json_object(request, lead_rules.loads_exact)
    if "segment" in data:
        try:
            data["segment"] = _decimals(data["segment"])
        except RecursionError:  # far deeper than a segment may be (segments.MAX_DEPTH)
            raise ApiError(422, "invalid", "segment: nested too deeply", "segment") from None
    return struct(cls, data)


def _decimals(value: Any) -> Any:
    """``value`` with every :class:`~mailerd.importer.parsing.ExactNumber` as a ``Decimal``."""
    if isinstance(value, lead_rules.ExactNumber):
        return decimal.Decimal(value.text)
    if isinstance(value, dict):
        return {key: _decimals(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decimals(item) for item in value]
    return value


def path_id(request: web.Request, key: str, what: str, minimum: int = 1) -> int:
    """The path's ``{key}`` as an id from ``minimum`` to 2^63 - 1; 404 ``no such WHAT`` naming
    ``key`` otherwise (such an id cannot exist)."""
    value = decoding.whole_number(request.match_info[key])
    if value is None or value < minimum:
        raise ApiError(404, "not_found", f"no such {what}", key)
    return value


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
            # int() would also take "١٢", " 12 ", "1_0", "+5", and refuses 4,300 digits (a 500)
            if not (text.isascii() and text.isdigit()):
                got = f"got {text[:40]!r}"
                problems.append(decoding.Problem(name, f"expected a whole number (digits 0-9), {got}"))
            elif len(text) > _MAX_QUERY_DIGITS:
                problems.append(decoding.Problem(name, f"expected at most {_MAX_QUERY_DIGITS} digits"))
            else:
                values[name] = int(text)  # the field's own bounds are checked with the rest
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
    return path_id(request, "id", "campaign")
