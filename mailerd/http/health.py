"""Liveness, readiness and Prometheus metrics (no token: keep them inside the network)."""

from __future__ import annotations

import prometheus_client
from aiohttp import web

from mailerd import metrics
from mailerd.http import bodies
from mailerd.http.errors import json_response
from mailerd.http.services import SERVICES


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers."""
    return json_response(bodies.Alive("ok"))


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 while starting, draining, or unable to write the log."""
    ready = request.app[SERVICES].health.ready()
    return json_response(bodies.Ready(ready), status=200 if ready else 503)


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus exposition of the default registry (``mailerd_ready`` as of this request)."""
    services = request.app.get(SERVICES)  # a `mailerd relay run` process serves none
    if services is not None:
        metrics.READY.set(1 if services.health.ready() else 0)
    body = prometheus_client.generate_latest()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
