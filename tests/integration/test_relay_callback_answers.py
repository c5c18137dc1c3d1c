"""What the relay's callbacks make of answers a host application should not give: an absurd
Retry-After, an error body in a charset Python has no codec for, one of a gigabyte, one that
trickles; and a dead-letter replay of which only some records are taken (found by a review)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from mailerd.config import CallbackConfig, RelayConfig, Secret
from mailerd.db import relay as relay_db
from mailerd.relay import operations, position, records
from mailerd.relay.callbacks import CallbackDestination
from mailerd.relay.destination import MAX_RETRY_AFTER_S, DeliveryRefused, DestinationUnavailable
from mailerd.relay.stream import Stream
from tests.callback_receiver import SECRET, Receiver
from tests.integration.relay_rows import NOW, email_record

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _records(count: int) -> list[records.Record]:
    return [email_record(lead) for lead in range(1, count + 1)]


@contextlib.asynccontextmanager
async def endpoint(answer: Answer) -> AsyncIterator[CallbackDestination]:
    app = web.Application()
    app.router.add_post("/hooks", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    destination = CallbackDestination(
        CallbackConfig(name="app", url=url, secret=Secret(SECRET), timeout_s=5.0)
    )
    try:
        yield destination
    finally:
        await destination.close()
        await runner.cleanup()


@pytest.mark.parametrize("retry_after", ["9999999999", "99999999999", "Wed, 01 Jan 2031 00:00:00 GMT"])
async def test_an_absurd_retry_after_waits_an_hour_at_most(retry_after: str) -> None:
    # it stopped the destination (and a replay) for centuries; eleven digits were ignored
    async def throttle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": retry_after})

    async with endpoint(throttle) as destination:
        with pytest.raises(DestinationUnavailable) as caught:
            await destination.deliver(_records(3))
    assert caught.value.retry_after == MAX_RETRY_AFTER_S == 3600.0


async def test_an_error_in_a_charset_without_a_codec_is_refused_not_a_crash() -> None:
    # response.text() raised LookupError out of the stream, which retried the batch forever
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, body=b"no", headers={"Content-Type": "text/plain; charset=base64"})

    async with endpoint(refuse) as destination:
        with pytest.raises(DeliveryRefused, match="HTTP 400: no"):
            await destination.deliver(_records(3))


@pytest.mark.parametrize("trickle", [False, True])
async def test_an_error_body_is_read_a_kilobyte_at_most_and_the_status_decides(trickle: bool) -> None:
    # a 1 GiB body was read whole (2 GB of RSS); a trickling 400 timed out and was retried
    written = 0
    chunks = 10_000 if not trickle else 100  # 655 MB, or 6.5 MB over 10 s (past timeout_s)

    async def big(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(status=400)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client has what it wanted and went
            for _ in range(chunks):
                await response.write(b"x" * (1 << 16))
                written += 1
                if trickle:
                    await asyncio.sleep(0.1)
        return response

    async with endpoint(big) as destination:
        with pytest.raises(DeliveryRefused) as caught:
            await destination.deliver(_records(3))
    assert caught.value.reason.startswith("HTTP 400: xxx") and len(caught.value.reason) < 300
    assert written < chunks  # not read to its end


@pytest.mark.parametrize(("status", "refused"), [(400, 10), (413, 1)])
async def test_a_replay_marks_the_dead_letters_taken_even_when_others_are_refused_again(
    conn: asyncpg.Connection, receiver: Receiver, status: int, refused: int
) -> None:
    # none of the batch was marked when one record was refused again: each replay re-sent the
    # others, and the dead letters never cleared; a 413 is split down to the one record refused
    letters = _records(30)
    await relay_db.add_dead_letters(conn, "callbacks.app", letters, f"HTTP {status}: no")
    refused_id = letters[12].id
    receiver.answer = lambda batch: status if any(r["id"] == refused_id for r in batch) else 200
    destination = CallbackDestination(
        CallbackConfig(name="app", url=receiver.url, secret=Secret(SECRET), max_records=10, timeout_s=5.0)
    )
    try:
        first = await operations.replay_dead_letters(conn, destination, batch=100)
        second = await operations.replay_dead_letters(conn, destination, batch=100)
    finally:
        await destination.close()
    assert (first.delivered, first.refused) == (30 - refused, refused)
    assert (second.delivered, second.refused) == (0, refused)  # those taken are not sent again
    pending: Any = await conn.fetchval("SELECT count(*) FROM relay_dead_letters WHERE replayed_at IS NULL")
    assert pending == refused
    assert len(receiver.records) == 30 - refused


async def test_a_413_halves_the_request_until_only_the_record_too_large_is_refused(
    receiver: Receiver,
) -> None:
    # a 413 refused the whole request for good: 100 records dead-lettered for one too large
    records_ = _records(10)
    too_large = records_[6].id
    receiver.answer = lambda batch: 413 if len(batch) > 3 or any(r["id"] == too_large for r in batch) else 200
    destination = CallbackDestination(
        CallbackConfig(name="app", url=receiver.url, secret=Secret(SECRET), max_records=10, timeout_s=5.0)
    )
    try:
        with pytest.raises(DeliveryRefused) as caught:
            await destination.deliver(records_)
        refused = caught.value
        assert (refused.acknowledged, refused.refused, refused.kept) == (6, 1, [records_[6]])
        await destination.deliver(records_[7:])
    finally:
        await destination.close()
    assert [r["id"] for r in receiver.records] == [r.id for r in records_ if r.id != too_large]


def _throttle_each_request_once() -> Callable[[list[dict[str, Any]]], int]:
    """429 for a request holding a record not seen before, then 200: a throttled endpoint that
    still takes one request between two refusals."""
    seen: set[str] = set()

    def answer(batch: list[dict[str, Any]]) -> int:
        fresh = {r["id"] for r in batch} - seen
        seen.update(fresh)
        return 429 if fresh else 200

    return answer


async def test_a_replay_throttled_now_and_then_goes_on_while_it_makes_progress(
    conn: asyncpg.Connection, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every failure counted towards the replay's attempts, progress between or not: an endpoint
    # throttling one request in ten ended a replay of a few thousand records ("unavailable")
    monkeypatch.setattr(operations, "REPLAY_ATTEMPTS", 3)
    letters = _records(6)
    await relay_db.add_dead_letters(conn, "callbacks.app", letters, "HTTP 400: no")
    receiver.answer = _throttle_each_request_once()
    destination = CallbackDestination(
        CallbackConfig(name="app", url=receiver.url, secret=Secret(SECRET), max_records=1, timeout_s=5.0)
    )
    try:
        result = await operations.replay_dead_letters(conn, destination, batch=100)
    finally:
        await destination.close()
    assert (result.delivered, result.refused) == (6, 0)
    assert receiver.ids() == {r.id for r in letters}
    assert receiver.statuses.count(429) == 6


async def test_the_stream_backs_off_from_the_base_again_after_progress(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    # the attempt count never came down within a batch: a throttled endpoint taking one request
    # in two was waited on up to retry_max_s between every two, however well it went
    receiver.answer = _throttle_each_request_once()
    destination = CallbackDestination(
        CallbackConfig(name="app", url=receiver.url, secret=Secret(SECRET), max_records=1, timeout_s=5.0)
    )
    relay = RelayConfig(retry_base_s=0.01, retry_max_s=0.05)
    stream = Stream(
        destination, pool, relay, epoch=0, position=position.earliest(), as_of=NOW, stop=asyncio.Event()
    )
    try:
        with capture_logs() as logged:
            delivered = await stream._deliver_all(_records(6))
    finally:
        await destination.close()
    assert delivered == 6
    attempts = [entry["attempt"] for entry in logged if entry["event"] == "relay_delivery_failed"]
    assert attempts == [1] * 6


async def test_an_error_naming_the_url_shows_only_its_origin() -> None:
    # a malformed answer's ClientResponseError named the whole URL, token and all, in the log,
    # the position's last error and `mailerd relay status`
    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbled, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/T01/sekrit-path?token=sekrit-query"
    destination = CallbackDestination(
        CallbackConfig(name="app", url=url, secret=Secret(SECRET), timeout_s=5.0)
    )
    try:
        with pytest.raises(DestinationUnavailable) as caught:
            await destination.deliver(_records(1))
    finally:
        await destination.close()
        server.close()
        await server.wait_closed()
    assert "ClientResponseError" in caught.value.reason
    assert f"http://127.0.0.1:{port}" in caught.value.reason
    assert "sekrit" not in caught.value.reason
