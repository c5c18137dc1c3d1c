"""The HTTP side of the daemon: admin API, provider webhooks, one-click unsubscribe, health.

Runs with ``AppRunner`` + ``TCPSite`` inside the daemon's own loop. Every ``/api/`` route needs
``Authorization: Bearer TOKEN`` (compared in constant time). Errors are JSON:
``{"error": {"code": ..., "message": ..., "field": ...}}``; a request that fails validation
changes nothing. Each body is defined once in :mod:`mailerd.http.bodies`; the OpenAPI document
is derived from those and the route table (:mod:`mailerd.http.routes`).
"""

from mailerd.http.encoding import SERVER_OPTIONS
from mailerd.http.errors import ApiError
from mailerd.http.server import bound_port, build_app, build_relay_app, start
from mailerd.http.services import SERVICES, Health, Services
from mailerd.http.webhooks import await_commit, record_events

__all__ = [
    "SERVER_OPTIONS",
    "SERVICES",
    "ApiError",
    "Health",
    "Services",
    "await_commit",
    "bound_port",
    "build_app",
    "build_relay_app",
    "record_events",
    "start",
]
