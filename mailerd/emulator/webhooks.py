"""The emulator's webhooks: bounces and complaints posted back in a provider's real format.

For a settable share of the recipients the sink accepts, a bounce, a complaint or a block (a
bounce that is the receiver's reputation or authentication block: SES Permanent/General with a
5.7.26 diagnostic, SendGrid ``bounce`` of type ``blocked``, Mailgun permanent ``failed`` with a
5.7.1 delivery status, Postmark ``Bounce`` of type ``Blocked``) is posted to the daemon's
``/webhooks/<provider>`` endpoint, signed the provider's way by that provider's signer in
this package (SNS certificates, SendGrid ECDSA, Mailgun HMAC, Postmark basic auth). Posting runs
in the background with a bounded backlog, so the send path is never slowed by it: ``POSTERS``
named tasks in a TaskGroup that the poster enters when it starts and leaves when it closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import random
import types
from collections.abc import Callable

import aiohttp
import structlog

from mailerd.emulator import mailgun_webhooks, postmark_webhooks, sendgrid_webhooks, ses_webhooks
from mailerd.emulator.signer import EmulatorSigner, SentEmail
from mailerd.models import EventKind

log = structlog.get_logger(__name__)

MAX_BACKLOG = 100_000
POSTERS = 4
SIGNERS: dict[str, Callable[[], EmulatorSigner]] = {
    "ses": ses_webhooks.SnsEmulatorSigner,
    "sendgrid": sendgrid_webhooks.SendgridEmulatorSigner,
    "mailgun": mailgun_webhooks.MailgunEmulatorSigner,
    "postmark": postmark_webhooks.PostmarkEmulatorSigner,
}
FORMATS = tuple(SIGNERS)


def create_signer(fmt: str) -> EmulatorSigner:
    """A fresh signer (new keys) for webhook format ``fmt``."""
    if fmt not in SIGNERS:
        raise ValueError(f"unknown webhook format {fmt!r} (one of {', '.join(FORMATS)})")
    return SIGNERS[fmt]()


@dataclasses.dataclass(slots=True)
class WebhookCounters:
    """What the poster did."""

    bounces: int = 0
    complaints: int = 0
    blocks: int = 0
    posted: int = 0
    failed: int = 0
    dropped: int = 0


class WebhookPoster:
    """Decides which accepted recipients bounce, complain or are blocked, and posts those events.

    An async context manager, or :meth:`start` and :meth:`close`: the posting tasks live in the
    poster's own TaskGroup, and close drains the backlog (for a while) before they end.
    """

    def __init__(
        self,
        url: str,
        fmt: str,
        *,
        bounce_rate: float,
        complaint_rate: float,
        block_rate: float = 0.0,
        seed: int | None = None,
        signer: EmulatorSigner | None = None,
    ) -> None:
        base = url.rstrip("/")
        # A daemon's base URL gets the provider's path; a full webhook URL is taken as it is.
        self.url = base if "/webhooks/" in base else f"{base}/webhooks/{fmt}"
        self.format = fmt
        self.bounce_rate = bounce_rate
        self.complaint_rate = complaint_rate
        self.block_rate = block_rate
        self.signer = signer or create_signer(fmt)
        self.counters = WebhookCounters()
        self._random = random.Random(seed)
        self._backlog: collections.deque[tuple[EventKind, bool, str, int, int, str]] = collections.deque()
        self._ready = asyncio.Event()
        self._group: contextlib.AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    def offer(self, email: str, campaign_id: int | None, lead_id: int | None, message_id: str) -> None:
        """Called for each accepted recipient: maybe queue a bounce, a complaint or a block."""
        if campaign_id is None or lead_id is None:
            return
        draw = self._random.random()
        block = False
        if draw < self.bounce_rate:
            kind = EventKind.HARD_BOUNCE
            self.counters.bounces += 1
        elif draw < self.bounce_rate + self.complaint_rate:
            kind = EventKind.COMPLAINT
            self.counters.complaints += 1
        elif draw < self.bounce_rate + self.complaint_rate + self.block_rate:
            kind, block = EventKind.HARD_BOUNCE, True
            self.counters.blocks += 1
        else:
            return
        if len(self._backlog) >= MAX_BACKLOG:
            self.counters.dropped += 1
            return
        self._backlog.append((kind, block, email, campaign_id, lead_id, message_id))
        self._ready.set()

    async def __aenter__(self) -> WebhookPoster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._closing = False
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._group = contextlib.AsyncExitStack()
        group = await self._group.enter_async_context(asyncio.TaskGroup())
        self._tasks = [
            group.create_task(self._post_loop(), name=f"sink-webhooks-{n}") for n in range(POSTERS)
        ]

    async def close(self, drain_s: float = 5.0) -> None:
        """Post what is queued (up to ``drain_s``), cancel what is still posting, then stop."""
        self._closing = True
        self._ready.set()
        if self._group is not None:
            group, self._group = self._group, None
            try:
                async with asyncio.timeout(drain_s):
                    await asyncio.wait(self._tasks)
            except TimeoutError:
                log.warning("sink_webhooks_not_drained", pending=len(self._backlog))
                for task in self._tasks:
                    task.cancel()
            await group.aclose()
            self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def pending(self) -> int:
        return len(self._backlog)

    async def _post_loop(self) -> None:
        assert self._session is not None
        while True:
            if not self._backlog:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            kind, block, email, campaign_id, lead_id, message_id = self._backlog.popleft()
            headers, body = self.signer.request(
                kind,
                SentEmail(
                    email=email,
                    campaign_id=campaign_id,
                    lead_id=lead_id,
                    message_id=message_id,
                    occurred_at=dt.datetime.now(dt.UTC),
                ),
                block=block,
            )
            try:
                async with self._session.post(self.url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status < 300:
                        self.counters.posted += 1
                        continue
                    log.warning("sink_webhook_refused", status=response.status, url=self.url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("sink_webhook_failed", error=str(exc), url=self.url)
            self.counters.failed += 1
