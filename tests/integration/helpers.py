"""Shared pieces of the pipeline tests: leads, a daemon in-process, waiting for a campaign."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from mailerd import app, campaigns, http, scheduler
from mailerd import config as config_mod
from mailerd.emulator import sink
from mailerd.relay.destination import Destination
from mailerd.relay.leader import Relay


async def add_leads(conn: asyncpg.Connection, account_id: int, count: int, start: int = 0) -> None:
    """``count`` leads numbered from ``start``; every third one on plan "pro"."""
    await conn.copy_records_to_table(
        "leads",
        records=[
            (account_id, f"user{n}@example.com", {"n": n, "plan": "pro" if n % 3 == 0 else "free"})
            for n in range(start, start + count)
        ],
        columns=("account_id", "email", "attributes"),
    )


def daemon_config(sink_port: int, env: dict[str, str] | None = None, **sections: Any) -> config_mod.Config:
    """A configuration for a daemon in the test process, talking to a sink (``env``: secrets)."""
    provider = {"kind": "sink", "endpoint": f"http://127.0.0.1:{sink_port}", "concurrency": 4}
    provider.update(sections.pop("provider", {}))
    raw: dict[str, Any] = {
        "http": {"listen": "127.0.0.1:0"},
        "providers": {"sink": provider},
        "scheduler": {"shard_size": 1000, "window_size": 500, "poll_interval_s": 0.2},
        "writer": {"flush_interval_ms": 50},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_mod.from_mapping(raw, env=env or {})


def new_campaign(**overrides: Any) -> campaigns.NewCampaign:
    fields: dict[str, Any] = {
        "account_id": 1,
        "name": "test",
        "segment": {"field": "attributes.plan", "op": "eq", "value": "pro"},
        "subject": "Hi {{ lead.attributes.n }}",
        "html_body": "<p>Hello {{ lead.email }}</p>",
        "text_body": "Hello {{ lead.email }}",
        "from_address": "news@example.com",
        "provider": "sink",
        "start": True,
    }
    fields.update(overrides)
    return campaigns.NewCampaign(**fields)


@dataclasses.dataclass
class Daemon:
    """A daemon running in the test process."""

    stop: asyncio.Event
    port: int


@contextlib.asynccontextmanager
async def running_daemon(
    config: config_mod.Config,
    dsn: str,
    clock: scheduler.Clock = scheduler.utc_now,
    sender_timing: app.SenderTiming | None = None,
) -> AsyncIterator[Daemon]:
    """The daemon's stages in this process until the block ends (then a clean drain); ``clock``
    is the scheduler's (send windows), ``sender_timing`` the senders' buckets' clock and their
    rate-limit sleep."""
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        app.run_with_dsn(
            config, dsn, stop, on_ready=bound.set_result, clock=clock, sender_timing=sender_timing
        )
    )
    try:
        done, _ = await asyncio.wait({task, bound}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            raise RuntimeError(f"the daemon stopped at start: {task.result()}")
        yield Daemon(stop, bound.result())
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


class VirtualTime:
    """A clock that moves only when a sender sleeps for the rate limiters: to the sleep's end.

    Arrival times read from it are exact while one sender worker sleeps at a time (provider
    ``concurrency = 1``); with more, a sleep moves the clock under another worker's call."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float, stopped: asyncio.Event) -> None:
        if not stopped.is_set():
            self.now = max(self.now, self.now + delay)
        await asyncio.sleep(0)


def recording_emulator(kind: str, time: VirtualTime, arrivals: list[tuple[float, str]], **knobs: Any) -> Any:
    """The kind's emulator, noting each accepted recipient's address at the virtual time."""

    class Timed(sink.EMULATORS[kind]):  # type: ignore[misc,valid-type]  # a class chosen at run time
        def accept(self, email: str, campaign_id: Any, lead_id: Any, message_id: str) -> None:
            arrivals.append((time.now, email))
            super().accept(email, campaign_id, lead_id, message_id)

    return Timed(**knobs)


async def wait_for_status(
    conn: asyncpg.Connection, campaign_id: int, statuses: tuple[str, ...] = ("finished",), timeout: float = 30
) -> dict[str, Any]:
    """Poll ``campaigns.show`` until the campaign reaches one of ``statuses``."""
    async with asyncio.timeout(timeout):
        while True:
            info = await campaigns.show(conn, campaign_id)
            assert info is not None
            if info["status"] in statuses:
                return info
            await asyncio.sleep(0.05)


async def wait_for_logged(
    conn: asyncpg.Connection, campaign_id: int, at_least: int = 1, timeout: float = 20
) -> None:
    """Poll until the campaign has ``at_least`` rows in ``email_log``."""
    async with asyncio.timeout(timeout):
        while (
            await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id)
            < at_least
        ):
            await asyncio.sleep(0.02)


def read_record(path: Path) -> list[dict[str, Any]]:
    """The sink's record: one JSON object per accepted recipient."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def run_campaign(
    conn: asyncpg.Connection,
    dsn: str,
    emulator: sink.Sink,
    *,
    until: tuple[str, ...] = ("finished",),
    **sections: Any,
) -> tuple[int, dict[str, Any]]:
    """Start ``emulator``, send the default campaign through a daemon configured with
    ``sections`` until it reaches ``until``, then flush and close the emulator."""
    port = await emulator.start()
    try:
        config = daemon_config(port, **sections)
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            info = await wait_for_status(conn, campaign_id, until)
        await emulator.flush()
    finally:
        await emulator.close()
    return campaign_id, info


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m mailerd ARGS`` without the environment's MAILERD_* (plus ``env``):
    (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MAILERD_")}, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class ApiTestServer(TestServer):
    """aiohttp's ``TestServer`` serving an app as ``mailerd.http.start`` does: with
    ``http.SERVER_OPTIONS`` (request bodies decoded by mailerd, not aiohttp). ``TestServer``
    drops the runner options given to its constructor, hence the override."""

    def __init__(self, application: web.Application) -> None:
        super().__init__(application)

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, **{**kwargs, **http.SERVER_OPTIONS})


@contextlib.asynccontextmanager
async def leading_relay(
    dsn: str, destinations: Sequence[Destination]
) -> AsyncIterator[tuple[Relay, asyncio.Event, asyncio.Task[None]]]:
    """A relay in this process, once it leads: (the relay, its stop event, its task). At the
    end of the block it is stopped and awaited."""
    stop = asyncio.Event()
    relay = Relay(
        config=config_mod.from_mapping({"relay": {"lock_retry_s": 0.05}}),
        dsn=dsn, stop=stop, destinations=lambda: list(destinations), node="test",
    )  # fmt: skip
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(10):
            while not relay.leading:
                await asyncio.sleep(0.02)
        yield relay, stop, task
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
