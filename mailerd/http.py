"""The HTTP side of the daemon: health, readiness and Prometheus metrics (admin API and
webhooks join here). Runs with ``AppRunner`` + ``TCPSite`` inside the daemon's own loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import prometheus_client
from aiohttp import web

READY: web.AppKey[Callable[[], bool]] = web.AppKey("ready", Callable[[], bool])  # type: ignore[arg-type]


@dataclasses.dataclass(slots=True)
class Health:
    """What ``/readyz`` reports: ready once started, not ready while draining."""

    started: bool = False
    draining: bool = False
    database_ok: bool = True

    def ready(self) -> bool:
        return self.started and not self.draining and self.database_ok


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 503 while starting, draining, or unable to write the log."""
    ready = request.app[READY]()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the default registry."""
    body = prometheus_client.generate_latest()
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def build_app(health: Health) -> web.Application:
    """The aiohttp application; later issues add the admin API and webhooks."""
    app = web.Application()
    app[READY] = health.ready
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Bind and serve; returns the runner to clean up at the very end of the shutdown."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
