"""The aiohttp application: routes, the bearer-token and JSON-error middlewares, serving."""

from __future__ import annotations

import hmac

from aiohttp import hdrs, web

from mailerd.http import encoding, health, openapi, routes
from mailerd.http.errors import ApiError, Handler, JsonErrorRunner, errors_as_json
from mailerd.http.services import SERVICES, Services
from mailerd.http.timing import server_timing

HTTP_SHUTDOWN_S = 3.0
# RFC 9110 section 11.6.1: a 401 says how to authenticate; RFC 6750 section 3 spells it for bearer tokens
CHALLENGE = 'Bearer realm="mailerd"'


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``/api/`` needs a configured admin token; compared in constant time. A 401 carries the
    ``WWW-Authenticate`` challenge, as a client library needs it to retry with its token."""
    if request.path.startswith("/api/"):
        tokens = request.app[SERVICES].config.http.admin_tokens
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        given = given.lstrip(" ")  # RFC 9110 section 11.4: one or more spaces after the scheme
        offered = scheme.lower() == "bearer" and bool(given)
        valid = False
        if offered:
            for token in tokens:  # check all: the time taken does not say which one matched
                # surrogateescape: a header that is not UTF-8 compares as its bytes, never raises
                valid |= hmac.compare_digest(given.encode(errors="surrogateescape"), token.reveal().encode())
        if not valid:
            message = "a valid 'Authorization: Bearer TOKEN' header is required"
            response = ApiError(401, "unauthorized", message).response()
            # a bearer token that was given and refused: RFC 6750's invalid_token
            challenge = f'{CHALLENGE}, error="invalid_token"' if offered else CHALLENGE
            response.headers[hdrs.WWW_AUTHENTICATE] = challenge
            return response
    return await handler(request)


def build_app(services: Services) -> web.Application:
    """The aiohttp application of the daemon."""
    app = web.Application(
        middlewares=[server_timing, errors_as_json, bearer_auth],
        client_max_size=services.config.http.max_body_bytes,
    )
    app[SERVICES] = services
    app[routes.OPENAPI] = openapi.document(routes.ROUTES)
    for route in routes.ROUTES:
        if route.method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path, route.handler)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Bind and serve; returns the runner to clean up at the very end of the shutdown."""
    # By the time the runner is cleaned up the drain is over: requests still running get a few
    # seconds, not aiohttp's default minute (every waiting webhook has had its answer by then).
    runner = JsonErrorRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=HTTP_SHUTDOWN_S,
        **encoding.SERVER_OPTIONS,  # bodies are decoded by mailerd.http.encoding
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("not bound")


def build_relay_app() -> web.Application:
    """The application of a ``mailerd relay run`` process: liveness and its metrics only."""
    app = web.Application(middlewares=[errors_as_json])
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/metrics", health.metrics_page)
    return app
