"""What every provider emulator shares: its lifecycle, its knobs, its record and its webhooks.

An emulator is an async context manager (or ``port = await emulator.start()`` ... ``await
emulator.close()``). Its record and webhook poster run their tasks in their own TaskGroups,
entered on start and left on close (which drains them). Knobs may change while it runs:
``latency_ms``, ``throttle_rate`` (recipients per second before the provider's throttling
answer, 0 = never), ``fail_rate`` (0..1, how the provider fails: see each emulator). Every
recipient it accepts is recorded (``{"campaign_id", "lead_id", "email", "message_id"}``, from the
ids our clients put in the provider's metadata) and may get a bounce or complaint webhook.
``on_arrival`` (tests) is called when a sending request (an SMTP transaction) arrives, before
any check; with ``arrivals`` set to a list, each arrival's monotonic time is kept there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import orjson
import structlog
from aiohttp import web

from mailerd import ratelimit
from mailerd.emulator.recorder import Recorder
from mailerd.emulator.webhooks import WebhookPoster

log = structlog.get_logger(__name__)


@dataclasses.dataclass(slots=True)
class Counters:
    """What the emulator has seen since it started."""

    calls: int = 0
    accepted: int = 0
    throttled_calls: int = 0
    failed_entries: int = 0
    rejected_calls: int = 0


class Emulator:
    """The shared part; subclasses add the provider's endpoints in :meth:`_listen`."""

    api: ClassVar[str] = ""
    burst_floor: ClassVar[int] = 50  # the throttle bucket holds at least one full call

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        record: Path | None = None,
        latency_ms: float = 0.0,
        throttle_rate: float = 0.0,
        fail_rate: float = 0.0,
        seed: int | None = None,
        webhooks: WebhookPoster | None = None,
        api_key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.record = record
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self.webhooks = webhooks
        self.api_key = api_key  # None: any well-formed credential is accepted
        self.counters = Counters()
        self.on_arrival: Callable[[], None] | None = None
        self.arrivals: list[float] | None = None  # tests: a list keeps each arrival's monotonic time
        self._throttle_rate = throttle_rate
        self._bucket = self._throttle_bucket(throttle_rate)
        self._random = random.Random(seed)
        self._message_prefix = f"{self._random.getrandbits(64):016x}"
        self._message_seq = 0
        self._recorder: Recorder | None = None
        self._resources: contextlib.AsyncExitStack | None = None

    @property
    def throttle_rate(self) -> float:
        return self._throttle_rate

    @throttle_rate.setter
    def throttle_rate(self, rate: float) -> None:
        self._throttle_rate = rate
        self._bucket = self._throttle_bucket(rate)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        async with contextlib.AsyncExitStack() as resources:
            if self.record is not None:
                self._recorder = await resources.enter_async_context(Recorder(self.record))
            if self.webhooks is not None:
                await resources.enter_async_context(self.webhooks)
            self.port = await self._listen(resources)
            self._resources = resources.pop_all()
        log.info("sink_started", api=self.api, host=self.host, port=self.port, record=str(self.record))
        return self.port

    async def _listen(self, resources: contextlib.AsyncExitStack) -> int:
        raise NotImplementedError

    async def _serve_app(self, resources: contextlib.AsyncExitStack, app: web.Application) -> int:
        """Run ``app`` on host:port until close; the bound port."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        resources.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        return int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening, then drain the webhooks and flush and close the record."""
        if self._resources is not None:
            resources, self._resources = self._resources, None
            await resources.aclose()
        self._recorder = None
        log.info("sink_stopped", api=self.api, **dataclasses.asdict(self.counters))

    async def flush(self) -> None:
        """Write buffered record lines now (tests read the file after this)."""
        if self._recorder is not None:
            await self._recorder.flush()

    # for the subclasses ---------------------------------------------------------------------

    def arrived(self) -> None:
        """A sending request came in (``counters.calls`` counts those past the auth and body checks)."""
        if self.arrivals is not None:
            self.arrivals.append(time.monotonic())
        if self.on_arrival is not None:
            self.on_arrival()

    def arrivals_since(self, moment: float) -> int:
        return sum(1 for at in self.arrivals or () if at > moment)

    def last_arrival(self) -> float:
        return self.arrivals[-1] if self.arrivals else 0.0

    async def delay(self) -> None:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)

    def fails(self) -> bool:
        """Whether this recipient (or call) draws a failure at ``fail_rate``."""
        return self.fail_rate > 0 and self._random.random() < self.fail_rate

    def coin(self) -> bool:
        return self._random.random() < 0.5

    def throttled(self, recipients: int) -> bool:
        """Take ``recipients`` tokens if there are that many; a call that finds too few takes
        none and is throttled."""
        bucket = self._bucket
        if bucket.unlimited:
            return False
        if bucket.tokens() < recipients:
            self.counters.throttled_calls += 1
            return True
        bucket.reserve(recipients)
        return False

    def new_message_id(self) -> str:
        self._message_seq += 1
        return f"{self._message_prefix}-{self._message_seq:012x}-000000"

    def accept(self, email: str, campaign_id: Any, lead_id: Any, message_id: str) -> None:
        """Count, record and maybe answer with a webhook one accepted recipient."""
        self.counters.accepted += 1
        campaign, lead = _int_or_text(campaign_id), _int_or_text(lead_id)
        if self._recorder is not None:
            line = {"campaign_id": campaign, "lead_id": lead, "email": email, "message_id": message_id}
            self._recorder.add(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        if self.webhooks is not None:
            self.webhooks.offer(email, _int(campaign_id), _int(lead_id), message_id)

    def _throttle_bucket(self, rate: float) -> ratelimit.TokenBucket:
        """Recipients per second with one second of burst (at least one full call); <= 0: never."""
        rate = max(rate, 0.0)
        return ratelimit.TokenBucket(rate, burst=max(rate, float(self.burst_floor)))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _int_or_text(value: Any) -> int | str | None:
    if isinstance(value, int) or value is None:
        return value
    text = str(value)
    return int(text) if text.isdigit() else text
