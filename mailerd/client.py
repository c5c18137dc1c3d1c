"""A small client of the admin HTTP API, used by the ``mailerd campaign ...`` commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import aiohttp
import orjson

from mailerd.config import Config, ConfigError


class ApiFailure(Exception):
    """The API answered with an error (or could not be reached)."""

    def __init__(self, status: int, payload: dict[str, Any] | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.payload = payload or {}

    def lines(self) -> list[str]:
        """One line per error, naming the field when there is one."""
        errors = self.payload.get("errors") or [self.payload.get("error") or {"message": str(self)}]
        return [str(e.get("message", e)) for e in errors]


def base_url(args: argparse.Namespace, config: Config) -> str:
    """``--url``, else the daemon's ``[http] listen`` address."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    host, port = config.http.host_port
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 - a listen address, mapped to loopback here
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def token(args: argparse.Namespace, config: Config) -> str:
    """``--token``, else the first admin token of the configuration (``MAILERD_ADMIN_TOKEN``)."""
    if getattr(args, "token", None):
        return str(args.token)
    if config.http.admin_tokens:
        return config.http.admin_tokens[0].reveal()
    raise ConfigError("no admin token: pass --token or set MAILERD_ADMIN_TOKEN")


async def call(
    method: str, url: str, bearer: str, body: Any = None, *, timeout_s: float = 30.0
) -> dict[str, Any]:
    """One API call; the decoded JSON answer, or :class:`ApiFailure`."""
    headers = {"Authorization": f"Bearer {bearer}"}
    data = None
    if body is not None:
        try:
            data = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:  # text from a terminal that is not UTF-8 (a surrogate)
            raise ApiFailure(400, None, f"an argument cannot be sent as JSON: {exc}") from None
        headers["Content-Type"] = "application/json"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.request(method, url, data=data, headers=headers) as response,
        ):
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ApiFailure(0, None, f"cannot reach the mailerd API at {url}: {exc}") from None
    try:
        payload = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        payload = {"error": {"message": raw.decode(errors="replace")[:200]}}
    if status >= 400:
        message = (payload.get("error") or {}).get("message") or f"HTTP {status}"
        raise ApiFailure(status, payload, message)
    return payload if isinstance(payload, dict) else {"result": payload}


def report_failure(command: str, failure: ApiFailure) -> int:
    """Print the failure as the CLI does; exit status 2 for invalid input, 1 otherwise."""
    for line in failure.lines():
        print(f"mailerd {command}: {line}", file=sys.stderr)
    return 2 if failure.status in (400, 409, 413, 422) else 1
