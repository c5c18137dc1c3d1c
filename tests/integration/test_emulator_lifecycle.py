"""The emulator's background work is structured: its record and its webhook poster run named
tasks in their own TaskGroups, which end with them, and closing still writes and posts
everything that was queued."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from mailerd.config import ProviderConfig
from mailerd.emulator import sink as sink_mod
from mailerd.emulator.recorder import Recorder
from mailerd.emulator.webhooks import POSTERS, WebhookPoster
from mailerd.models import Outcome
from mailerd.providers import ses
from tests.integration.test_ses_sink import make_batch, make_campaign


def task_names() -> set[str]:
    return {task.get_name() for task in asyncio.all_tasks() if not task.done()}


async def wait_for(condition: object, within: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


class Receiver:
    """A daemon stand-in that counts webhook posts; ``hold`` makes it answer only at its close."""

    def __init__(self) -> None:
        self.posts = 0
        self.hold = False
        self._release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        await request.read()
        if self.hold:
            await self._release.wait()
        self.posts += 1
        return web.json_response({"received": 1})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/{provider}", self._post)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_recorder_task_is_named_flushes_by_itself_and_ends_with_the_recorder(tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    async with Recorder(path) as recorder:
        assert "sink-recorder" in task_names()
        recorder.add(b'{"n": 1}\n')
        await wait_for(lambda: path.exists() and path.read_bytes() == b'{"n": 1}\n')
        for n in range(2, 1002):
            recorder.add(b'{"n": %d}\n' % n)
    assert "sink-recorder" not in task_names()
    assert len(path.read_bytes().splitlines()) == 1001


async def test_recorder_task_is_cancelled_with_its_caller(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def record_forever() -> None:
        async with Recorder(tmp_path / "record.jsonl"):
            started.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(record_forever(), name="holder")
    await started.wait()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert "sink-recorder" not in task_names()


async def test_webhook_poster_drains_its_backlog_on_close(receiver: Receiver) -> None:
    poster = WebhookPoster(receiver.url, "postmark", bounce_rate=1.0, complaint_rate=0.0, seed=1)
    async with poster:
        assert {f"sink-webhooks-{n}" for n in range(POSTERS)} <= task_names()
        for n in range(200):
            poster.offer(f"user{n}@example.com", 7, n + 1, f"message-{n}")
    assert receiver.posts == poster.counters.posted == 200
    assert not any(name.startswith("sink-webhooks-") for name in task_names())


async def test_webhook_poster_close_cancels_posts_past_the_drain_time(receiver: Receiver) -> None:
    receiver.hold = True
    poster = WebhookPoster(receiver.url, "postmark", bounce_rate=1.0, complaint_rate=0.0, seed=1)
    await poster.start()
    for n in range(10):
        poster.offer(f"user{n}@example.com", 7, n + 1, f"message-{n}")
    await poster.close(drain_s=0.2)
    assert poster.counters.posted == 0
    assert not any(name.startswith("sink-webhooks-") for name in task_names())


async def test_sink_closes_its_record_and_webhooks_with_it(tmp_path: Path, receiver: Receiver) -> None:
    poster = WebhookPoster(receiver.url, "ses", bounce_rate=1.0, complaint_rate=0.0, seed=2)
    record = tmp_path / "record.jsonl"
    async with sink_mod.Sink(record=record, seed=1, webhooks=poster) as emulator:
        client = ses.SesProvider(ProviderConfig(name="loop", kind="sink", endpoint=emulator.url))
        try:
            results = await client.send(make_batch(make_campaign(), 20))
        finally:
            await client.close()
        assert [r.outcome for r in results] == [Outcome.SENT] * 20
    assert len(record.read_bytes().splitlines()) == 20
    assert poster.counters.bounces == 20
    assert receiver.posts + poster.counters.failed == 20
    assert not any(name.startswith(("sink-webhooks-", "sink-recorder")) for name in task_names())
