"""Liveness, readiness and Prometheus metrics (no token: keep them inside the network)."""

from __future__ import annotations

from collections.abc import Iterable

import prometheus_client
from aiohttp import web
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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


class _WithoutDaemonState(Collector):
    """The default registry less :data:`mailerd.metrics.DAEMON_ONLY`: a ``mailerd relay run``
    process never sets them, and their default 0 reads as a node not ready, without its
    database (MailerdNodeNotReady, MailerdDatabaseUnreachable would fire for it forever)."""

    def collect(self) -> Iterable[Metric]:
        return (m for m in prometheus_client.REGISTRY.collect() if m.name not in metrics.DAEMON_ONLY)


async def metrics_page(request: web.Request) -> web.Response:
    """Prometheus exposition of the default registry (``mailerd_ready`` as of this request)."""
    services = request.app.get(SERVICES)  # a `mailerd relay run` process serves none
    if services is not None:
        metrics.READY.set(1 if services.health.ready() else 0)
        body = prometheus_client.generate_latest()
    else:
        body = prometheus_client.generate_latest(_WithoutDaemonState())
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})
