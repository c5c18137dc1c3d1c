"""``mailerd sink``: run one provider's emulator on a local port until stopped.

``--api ses`` (the default; :mod:`.ses_api`), ``sendgrid`` (:mod:`.sendgrid_api`), ``mailgun``
(:mod:`.mailgun_api`), ``postmark`` (:mod:`.postmark_api`), or ``--smtp HOST:PORT``
(:mod:`.smtp_server`). Each answers its provider's documented request and response shapes,
refuses what the provider refuses, and takes the same knobs (:mod:`.base`); webhooks go back in
the provider's own format unless ``--webhook-format`` says otherwise.

:class:`Sink` is the SES emulator (the name the demo and the tests have always used).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Final

import orjson

from mailerd.emulator.base import Counters, Emulator
from mailerd.emulator.mailgun_api import MailgunEmulator
from mailerd.emulator.postmark_api import PostmarkEmulator
from mailerd.emulator.sendgrid_api import SendgridEmulator
from mailerd.emulator.ses_api import SesEmulator
from mailerd.emulator.smtp_server import SmtpEmulator
from mailerd.emulator.webhooks import WebhookPoster

Sink = SesEmulator
EMULATORS: Final[dict[str, type[Emulator]]] = {
    "ses": SesEmulator,
    "sendgrid": SendgridEmulator,
    "mailgun": MailgunEmulator,
    "postmark": PostmarkEmulator,
    "smtp": SmtpEmulator,
}
APIS: Final = ("ses", "sendgrid", "mailgun", "postmark")

__all__ = ["APIS", "EMULATORS", "Counters", "Sink", "serve", "write_daemon_settings"]


async def serve(
    *,
    host: str,
    port: int,
    record: Path | None,
    latency_ms: float,
    throttle_rate: float,
    fail_rate: float,
    seed: int | None,
    stop: asyncio.Event,
    api: str = "ses",
    api_key: str | None = None,
    webhook_url: str | None = None,
    webhook_format: str | None = None,
    bounce_rate: float = 0.0,
    complaint_rate: float = 0.0,
    block_rate: float = 0.0,
    webhook_settings: Path | None = None,
    max_24_hour_send: float = -1.0,
) -> None:
    """Run the ``api`` emulator (``smtp`` for the SMTP server) until ``stop`` is set, then drain.

    Prints ``sink listening on HOST:PORT`` on stdout once bound (port 0 picks a free port).
    """
    poster = None
    if webhook_url and (bounce_rate > 0 or complaint_rate > 0 or block_rate > 0):
        fmt = webhook_format or (api if api in APIS else "ses")
        poster = WebhookPoster(
            webhook_url,
            fmt,
            bounce_rate=bounce_rate,
            complaint_rate=complaint_rate,
            block_rate=block_rate,
            seed=seed,
        )
        if webhook_settings is not None:
            write_daemon_settings(poster, webhook_settings)
    emulator = EMULATORS[api](
        host,
        port,
        record=record,
        latency_ms=latency_ms,
        throttle_rate=throttle_rate,
        fail_rate=fail_rate,
        seed=seed,
        webhooks=poster,
        api_key=api_key,
    )
    if isinstance(emulator, SesEmulator):
        emulator.max_24_hour_send = max_24_hour_send
    async with emulator:
        sys.stdout.write(f"sink listening on {host}:{emulator.port}\n")
        sys.stdout.flush()
        await stop.wait()


def write_daemon_settings(poster: WebhookPoster, directory: Path) -> Path:
    """Write ``webhooks.toml``: the ``[webhooks.<provider>]`` section a daemon needs to verify
    the sink's webhooks (certificates and key files go in the same directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = poster.signer.daemon_settings(directory)
    lines = [f"[webhooks.{poster.format}]"]
    for key, value in settings.items():
        lines.append(f"{key} = {orjson.dumps(value).decode()}")
    path = directory / "webhooks.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
