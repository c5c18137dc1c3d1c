"""The OpenAPI document, derived from the route table and the bodies (never written by hand).

Each route names its request body, query Struct and answers by type; the schemas come from
``msgspec.json.schema_components``, so the document says what the handlers decode and answer.
Answers every route of a kind can give are added here: 401 for ``/api/`` routes (bearer
token), 400/413/415/422 for a JSON body, 422 for a query, 404 for an ``{id}``, 503 for the database.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from mailerd.http import bodies

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_TEXT = {
    200: "OK",
    201: "Created",
    400: (
        "The body is not JSON (code invalid_json), its Content-Encoding does not decode or its compressed"
        " stream ends early (code invalid_body), or the request line is too long (code bad_request)"
    ),
    401: "Missing or invalid bearer token (code unauthorized), with a WWW-Authenticate: Bearer challenge",
    404: "Not found (code not_found; error.field names the path parameter, or the query parameter not found)",
    409: (
        "Not possible in the current state (code conflict: a campaign transition not allowed from its"
        " status; code provider_held: a campaign started or resumed while the provider guard holds its"
        " provider; code erasure_unavailable: no [privacy] erasure_key on this node; code ambiguous: a"
        " provider message id that names several emails, error.field names the parameter that picks one;"
        " code conflict of a bulk import: the database stopped it for a concurrent one writing the same"
        " leads, a deadlock: nothing imported, retry)"
    ),
    413: "The body is larger than [http] max_body_bytes, as sent or decompressed (code too_large)",
    415: "A Content-Encoding other than gzip, deflate or identity (code unsupported_encoding)",
    422: "A field or query parameter is invalid (code invalid; error.field names it)",
    429: "Too many requests of this kind are running on the node (code busy); retry",
    503: (
        "The database is not available right now (code unavailable); retry. Reports without a"
        " reports database (code reports_unavailable): configure [reports]"
    ),
}

_CHALLENGE_HEADER = {
    "required": True,
    "description": 'Bearer realm="mailerd", with error="invalid_token" when a bearer token was refused',
    "schema": {"type": "string"},
}
# The type of each path parameter, by name.
PATH_PARAMETERS: dict[str, Any] = {
    "id": bodies.CampaignId,
    "lead_id": bodies.LeadId,
    "provider": str,
    "token": str,
    "account_id": bodies.AccountId,
    "provider_message_id": bodies.ProviderMessageId,
}
# aiohttp's "{name:regex}" is "{name}" in the document.
_PATTERNED = re.compile(r"{(\w+):[^{}]*}")


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One method on one path: its handler and what the document says about it.

    ``responses`` maps the statuses particular to the route to their body type (None: no
    JSON body); they win over the ones added for every route of a kind.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    responses: Mapping[int, Any]
    body: Any = None
    body_required: bool = True
    body_media_type: str = "application/json"
    answer_media_type: str = "application/json"  # of its 2xx answers (errors are always JSON)
    query: type[msgspec.Struct] | None = None
    uses_database: bool = True
    documented: bool = True

    @property
    def needs_token(self) -> bool:
        return self.path.startswith("/api/")

    @property
    def document_path(self) -> str:
        """The path as the document writes it (without aiohttp's ``:regex``)."""
        return _PATTERNED.sub(r"{\1}", self.path)


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the documented routes."""
    documented = [route for route in routes if route.documented]
    schemas = _Schemas(documented)
    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        paths.setdefault(route.document_path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailerd API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas.components,
        },
        "paths": paths,
    }


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route.method, route.document_path),
        "responses": {
            str(status): _response(status, kind, schemas, route.answer_media_type if status < 300 else None)
            for status, kind in _answers(route)
        },
    }
    if route.needs_token:
        operation["security"] = [{"bearer": []}]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schemas.of(PATH_PARAMETERS[name])}
        for name in re.findall(r"{(\w+)}", route.document_path)
    ]
    if route.query is not None:
        parameters += [
            {
                "name": field.encode_name,
                "in": "query",
                "required": field.required,
                "schema": schemas.of(_without_none(field.type)),
            }
            for field in msgspec.structs.fields(route.query)
        ]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {route.body_media_type: {"schema": schemas.of(route.body)}},
        }
    return operation


def _answers(route: Route) -> list[tuple[int, Any]]:
    """Every status the route can answer, with its body type."""
    answers: dict[int, Any] = {}
    if route.needs_token:
        answers[401] = bodies.ErrorBody
    if route.body is not None:
        answers.update(
            {400: bodies.ErrorBody, 413: bodies.ErrorBody, 415: bodies.ErrorBody, 422: bodies.ErrorBody}
        )
    if route.query is not None:
        answers[422] = bodies.ErrorBody
    if "{id}" in route.path:
        answers[404] = bodies.ErrorBody
    if route.uses_database:
        answers[503] = bodies.ErrorBody
    answers.update(route.responses)
    return sorted(answers.items())


def _response(status: int, kind: Any, schemas: _Schemas, media_type: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": STATUS_TEXT.get(status, "")}
    if kind is not None:
        response["content"] = {media_type or "application/json": {"schema": schemas.of(kind)}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": _CHALLENGE_HEADER}
    return response


def _operation_id(method: str, path: str) -> str:
    words = [part.strip("{}") for part in path.split("/") if part and part != "api"]
    return "_".join([method.lower(), *words])


def _without_none(annotation: Any) -> Any:
    """``X | None`` -> ``X``: a parameter is absent, never null."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation


class _Schemas:
    """The JSON schema of every type the routes use, with shared components."""

    def __init__(self, routes: list[Route]) -> None:
        wanted: list[Any] = [bodies.ErrorBody, *PATH_PARAMETERS.values()]
        for route in routes:
            wanted += [kind for kind in route.responses.values() if kind is not None]
            if route.body is not None:
                wanted.append(route.body)
            if route.query is not None:
                wanted += [_without_none(field.type) for field in msgspec.structs.fields(route.query)]
        self._types = wanted
        found, self.components = msgspec.json.schema_components(
            wanted, ref_template="#/components/schemas/{name}"
        )
        self._schemas = list(found)

    def of(self, kind: Any) -> dict[str, Any]:
        for index, known in enumerate(self._types):
            if known is kind or known == kind:
                schema: dict[str, Any] = self._schemas[index]
                return schema
        raise KeyError(f"no schema collected for {kind!r}")
