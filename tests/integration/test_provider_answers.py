"""What the HTTP provider clients make of answers no provider should give: a redirect, a body that
is not what the API documents, one too large, a refusal whose body breaks. Against a real aiohttp
server in the test that answers as told (a proxy in front of the provider, a gateway that lies)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import EndpointConnectionError

from mailerd import campaigns
from mailerd.config import ProviderConfig, Secret
from mailerd.models import Batch, HaltError, Lead, Outcome, RetryableError, UncertainError
from mailerd.providers import api_call, create
from mailerd.providers.base import Provider
from tests.integration import providers_env as env
from tests.integration.helpers import add_leads, daemon_config, new_campaign, running_daemon, wait_for_status

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
KINDS = ("ses", "sendgrid", "mailgun", "postmark")


@contextlib.asynccontextmanager
async def hostile(
    kind: str, answer: Answer, **settings: Any
) -> AsyncIterator[tuple[Provider, list[web.Request]]]:
    """A client of ``kind`` pointed at a server that answers every request with ``answer``, and
    the requests that server (and the host a redirect names) received."""
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(request)
        return await answer(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    values: dict[str, Any] = {
        "name": kind,
        "kind": kind,
        "endpoint": f"http://127.0.0.1:{port}",
        "timeout_s": 5.0,
    }
    if kind == "ses":
        values.update(access_key_id=Secret("AKIDEXAMPLE"), secret_access_key=Secret("secret"))
    else:
        values["api_key"] = Secret(env.API_KEY)
    if kind == "mailgun":
        values["domain"] = "mg.example.com"
    if kind == "postmark":
        values["message_stream"] = "broadcast"
    client = create(ProviderConfig(**{**values, **settings}))
    try:
        yield client, seen
    finally:
        await client.close()
        await runner.cleanup()


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_smtp(serve: Serve) -> AsyncIterator[int]:
    """A raw SMTP server on a free port running ``serve`` per connection; on exit, every
    connection's handler has finished and its socket is closed (no stream left to the GC)."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await serve(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)


async def _send(client: Provider, count: int = 3) -> Any:
    campaign = env.campaign()
    await client.prepare(campaign)
    return await client.send(env.batch(campaign, count))


def _ses_prepared(request: web.Request) -> web.Response | None:
    """SES: the template calls before the send succeed."""
    if "/templates" in request.path:
        return web.json_response({})
    return None


def answering(status: int, body: bytes = b"", **headers: str) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return _ses_prepared(request) or web.Response(status=status, body=body, headers=headers)

    return answer


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_redirect_is_not_followed_and_halts(kind: str, status: int) -> None:
    # followed, it replayed the request (addresses, content, Postmark's token header) to another
    # host, or turned it into a GET whose 200 counted every lead sent
    answer = answering(status, Location="http://127.0.0.2:9/elsewhere")
    async with hostile(kind, answer) as (client, seen):
        with pytest.raises(HaltError, match=f"HTTP {status}: the endpoint redirects"):
            await _send(client)
    assert all(request.method != "GET" for request in seen)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_answer_too_large_is_not_read_whole(kind: str) -> None:
    huge = b"x" * (api_call.MAX_ANSWER_BYTES + 10)
    async with hostile(kind, answering(200 if kind != "sendgrid" else 202, huge)) as (client, _):
        with pytest.raises(UncertainError, match="over 1,048,576 bytes"):
            await _send(client)
    async with hostile(kind, answering(500, huge)) as (client, _):
        with pytest.raises(RetryableError, match="HTTP 500"):  # a refusal stays one
            await _send(client)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_throttle_whose_body_breaks_is_still_a_throttle(kind: str) -> None:
    # it was uncertain: its recipients were logged unknown and never sent
    async def broken(request: web.Request) -> web.StreamResponse:
        if (prepared := _ses_prepared(request)) is not None:
            return prepared
        response = web.StreamResponse(status=429, headers={"Retry-After": "2", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"message": "slow do')
        assert request.transport is not None
        request.transport.close()  # mid-body
        return response

    async with hostile(kind, broken) as (client, _):
        with pytest.raises(RetryableError) as caught:
            await _send(client)
    assert "429" in caught.value.reason


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("ses", b'{"BulkEmailEntryResults": [null, "x", {"Status": ["SUCCESS"]}]}'),
        ("ses", b"<html>gateway</html>"),
        ("postmark", b'[{"ErrorCode": [406]}, {"ErrorCode": {"a": 1}}, {"ErrorCode": false}]'),
        ("postmark", b"{}"),
        ("sendgrid", b"<html>gateway</html>"),
        ("mailgun", b"{}"),
    ],
)
async def test_an_answer_the_api_does_not_give_is_unknown_not_sent_failed_or_a_crash(
    kind: str, body: bytes, tmp_path: Path
) -> None:
    status = 202 if kind == "sendgrid" else 200
    async with hostile(kind, answering(status, body)) as (client, _):
        try:
            results = await _send(client)
        except UncertainError:
            return  # the whole call uncertain: the sender logs its recipients unknown
    assert [r.outcome for r in results] == [Outcome.UNKNOWN] * 3


async def test_postmark_a_2xx_other_than_200_is_unknown_not_failed() -> None:
    # the call went through; it was read as a refusal and every message failed
    async with hostile("postmark", answering(202)) as (client, _):
        with pytest.raises(UncertainError, match="HTTP 202"):
            await _send(client)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("ses", b'{"BulkEmailEntryResults": [{"Status": "ACCOUNT_DAILY_QUOTA_EXCEEDED", "Error": "q"}]}'),
        ("postmark", b'[{"ErrorCode": 412, "Message": "pending"}, {"ErrorCode": "?"}]'),
    ],
)
async def test_a_halt_never_drops_a_message_whose_fate_is_unknown(kind: str, body: bytes) -> None:
    # a halting code beside a message with no readable answer (it may have gone): the halt put
    # both back to be sent again after the resume
    async with hostile(kind, answering(200, body)) as (client, _):
        results = await _send(client, 2)
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.UNKNOWN]


async def test_a_retry_after_of_centuries_is_capped_and_the_campaign_finishes(
    conn: asyncpg.Connection, dsn: str
) -> None:
    # Retry-After: 9999999999 held the worker (the whole lane at concurrency 1) for 317 years
    # while the campaign looked running
    calls = 0

    async def throttle_once(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response(
                {"ErrorCode": 429, "Message": "slow down"}, status=429, headers={"Retry-After": "9999999999"}
            )
        messages = await request.json()
        return web.json_response(
            [{"ErrorCode": 0, "MessageID": f"m-{calls}-{i}"} for i in range(len(messages))]
        )

    await add_leads(conn, 1, 9)  # 3 match
    async with hostile("postmark", throttle_once) as (client, _):
        endpoint = client._endpoint  # type: ignore[attr-defined]
        config = daemon_config(
            0,
            env={"MAILERD_PROVIDERS__SINK__API_KEY": env.API_KEY},
            provider={
                "kind": "postmark",
                "endpoint": endpoint,
                "message_stream": "broadcast",
                "concurrency": 1,
                "max_retry_after_s": 0.2,
            },
        )
        async with running_daemon(config, dsn):
            campaign_id = await campaigns.create(conn, new_campaign(), config)
            info = await wait_for_status(conn, campaign_id, timeout=30)
    assert (info["sent"], calls) == (3, 2)


async def test_smtp_resets_after_a_refused_data_so_the_next_message_goes() -> None:
    # Without RSET a server that keeps the transaction open answers the next MAIL "503 nested
    # MAIL", read as the sender refused: the provider halted and the campaign paused.
    refused_once = False

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal refused_once
        in_transaction = False
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-test\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                writer.write(b"503 5.5.1 nested MAIL command\r\n" if in_transaction else b"250 ok\r\n")
                in_transaction = True
            elif verb == b"RCPT":
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA" and not refused_once:
                refused_once = True
                writer.write(b"554 5.7.1 refused\r\n")  # the transaction stays open
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                in_transaction = False
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"RSET":
                in_transaction = False
                writer.write(b"250 ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"502 no\r\n")
            await writer.drain()

    async with raw_smtp(serve) as port:
        results = await _smtp_send(port, 2)
    assert [(r.outcome, r.smtp_code) for r in results] == [(Outcome.FAILED, 554), (Outcome.SENT, None)]


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("ses", 200, b'{"unexpected": 1}'),
        ("postmark", 200, b"{}"),
        ("sendgrid", 202, b"<html>gateway</html>"),
        ("mailgun", 200, b"{}"),
    ],
)
async def test_an_uncertain_call_leaves_a_render_failed_lead_failed(
    kind: str, status: int, body: bytes
) -> None:
    # it was never sent: the uncertain whole-call answer made it unknown too
    async with hostile(kind, answering(status, body)) as (client, _):
        campaign = env.campaign(subject="{{ 10 // lead.attributes.n }}", html_body="<p>{{ lead.id }}</p>")
        await client.prepare(campaign)
        leads = [Lead(1, "a@example.com", {"n": 2}), Lead(2, "b@example.com", {"n": 0})]  # 10 // 0
        results = await client.send(Batch(campaign=campaign, shard_no=0, seq=0, leads=leads, upto=2))
    assert [r.outcome for r in results] == [Outcome.UNKNOWN, Outcome.FAILED]
    assert (results[1].error or "").startswith("render failed")


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """The URL of a listener whose accept queue is full: the kernel drops further SYNs, so a
    connect to it hangs (a black-holed route, a firewall dropping packets)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield f"http://127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_connect_that_times_out_is_retried_not_unknown(kind: str) -> None:
    # nothing of the request left, yet the call's total timeout made its recipients unknown
    with black_hole() as url:
        async with hostile(kind, answering(200, b"{}"), timeout_s=1.0) as (client, _):
            campaign = env.campaign()
            await client.prepare(campaign)  # SES: its template, at the server that answers
            where = "_endpoint" if kind in ("ses", "postmark") else "_url"
            setattr(client, where, url if where == "_endpoint" else url + "/send")
            with pytest.raises(RetryableError, match="ConnectionTimeoutError"):
                await client.send(env.batch(campaign, 2))


async def test_mailgun_an_uncertain_call_leaves_an_address_twice_in_the_batch_failed() -> None:
    async with hostile("mailgun", answering(200, b"{}")) as (client, _):
        campaign = env.campaign()
        leads = [Lead(1, "a@example.com", {}), Lead(2, "a@example.com", {})]
        results = await client.send(Batch(campaign=campaign, shard_no=0, seq=0, leads=leads, upto=2))
    assert [r.outcome for r in results] == [Outcome.UNKNOWN, Outcome.FAILED]
    assert results[1].error == "address twice in one batch"


async def test_sendgrid_calls_past_the_pool_wait_for_a_slot_outside_their_timeout() -> None:
    # one call per lead (a render over 10 kB each), all started at once: those waiting for a
    # pooled connection timed out inside their timeout_s, never sent, and were logged unknown
    async def slow_accept(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.4)  # an API under load; 3 rounds of it pass timeout_s
        return web.Response(status=202, headers={"X-Message-Id": "m"})

    # concurrency 1: a pool of 3 connections
    async with hostile("sendgrid", slow_accept, timeout_s=1.0, concurrency=1) as (client, seen):
        big = "{% if lead.id > 0 %}" + "x" * 12_000 + "{% endif %}<p>{{ lead.email }}</p>"
        results = await client.send(env.batch(env.campaign(html_body=big), 12))
    assert [r.outcome for r in results] == [Outcome.SENT] * 12
    assert len(seen) == 12


async def test_ses_credentials_that_cannot_be_refreshed_are_retried_not_uncertain() -> None:
    # STS down in the mandatory refresh window: nothing went out, yet the sender logged the
    # batch unknown (final) and kept its quota share
    def refresh() -> dict[str, str]:
        raise EndpointConnectionError(endpoint_url="https://sts.amazonaws.com")

    expired = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    no_keys = {"access_key_id": None, "secret_access_key": None}  # the credential chain's
    async with hostile("ses", answering(200, b"{}"), **no_keys) as (client, seen):
        credentials = RefreshableCredentials("AKID", "s", "t", expired, refresh_using=refresh, method="sts")
        client._credentials.use(credentials)  # type: ignore[attr-defined]
        with pytest.raises(RetryableError, match="AWS credentials"):
            await client.send(env.batch(env.campaign(), 3))
    assert seen == []


async def test_smtp_a_2xx_where_354_was_due_is_unknown_not_sent() -> None:
    # aiosmtplib cannot say whether the 2xx answered DATA (the message never went) or its end
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            writer.write(
                b"250-test\r\n250 8BITMIME\r\n"
                if verb == b"EHLO"
                else b"221 bye\r\n"
                if verb == b"QUIT"
                else b"250 ok\r\n"
            )
            await writer.drain()
            if verb == b"QUIT":
                break

    async with raw_smtp(serve) as port:
        results = await _smtp_send(port, 1)
    assert [r.outcome for r in results] == [Outcome.UNKNOWN]


@pytest.mark.parametrize(
    ("garbled_at", "outcome"),
    [(b"RCPT", Outcome.RETRY), (b"DATA", Outcome.UNKNOWN), (b".\r\n", Outcome.UNKNOWN)],
)
async def test_smtp_a_garbled_reply_is_a_lost_connection_not_a_refusal(
    garbled_at: bytes, outcome: Outcome
) -> None:
    # a garbled reply to DATA or to its end was read as code -1 and classified a permanent
    # failure (smtp_code -1): a message the server may have taken was reported failed
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == garbled_at:
                writer.write(b"hello there\r\n")
            elif verb == b"EHLO":
                writer.write(b"250-test\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                while (line := await reader.readline()) not in (b".\r\n", b""):
                    pass
                writer.write(b"hello there\r\n" if garbled_at == line else b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    async with raw_smtp(serve) as port:
        results = await _smtp_send(port, 1)
    assert [(r.outcome, r.smtp_code) for r in results] == [(outcome, None)]


async def _smtp_send(port: int, count: int) -> list[Any]:
    config = ProviderConfig(
        name="smtp", kind="smtp", endpoint=f"127.0.0.1:{port}", tls="none", connections=1, timeout_s=5.0
    )
    client = create(config)
    try:
        campaign = env.campaign()
        await client.prepare(campaign)
        return await client.send(env.batch(campaign, count))
    finally:
        await client.close()
