"""``Server-Timing: app;dur=MS`` on every answer: how long the node spent on the request.

A client's latency minus this is the time outside the handler (the network, the client's own
wait for a CPU, the node's wait to read the request): what tells a slow node from a slow
path to it (bench/reports.py reads it). Streamed answers (the CSV export) have sent their
headers before the time is known and carry none.
"""

from __future__ import annotations

import time

from aiohttp import web

from mailerd.http.errors import Handler


@web.middleware
async def server_timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time the handler (and every middleware inside this one) and say so in the answer."""
    started = time.perf_counter()
    response = await handler(request)
    if not response.prepared:
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
    return response
