"""What the HTTP API clients (SendGrid, Mailgun, Postmark) share: one keep-alive session, the
line between "not sent" and "maybe sent", and how the answers of several calls for one batch
become the batch's outcome.

A call that could not connect never left: retrying it is always safe (:class:`RetryableError`).
That includes a connect that timed out (a black-holed route) and a wait for a free pooled
connection that did: both are bounded by :func:`client_timeout`'s ``connect``, a part of
``timeout_s``, so they end as aiohttp's ``ConnectionTimeoutError``, never as the whole call's
timeout.
A call that broke after the request went out (a timeout, a reset, a connection closed before the
answer) may have been carried out: :class:`UncertainError`, never retried silently (the sender
logs its recipients ``unknown`` unless the campaign says ``resend_uncertain``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final

import aiohttp
import orjson

from mailerd.config import ProviderConfig
from mailerd.models import (
    HaltError,
    Outcome,
    PermanentError,
    ProviderError,
    RecipientResult,
    RetryableError,
    UncertainError,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, headers, raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The decoded body, or None when it is not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None


CONNECT_TIMEOUT_S: Final = 10.0  # a TLS connect takes well under a second on a working route


def client_timeout(config: ProviderConfig) -> aiohttp.ClientTimeout:
    """``timeout_s`` for the whole call; a part of it (half, at most :data:`CONNECT_TIMEOUT_S`)
    for getting a connection (a pooled one, or a new one with its TLS handshake), so a connect
    that hangs ends as ``ConnectionTimeoutError`` (nothing sent: retry) before the total does
    (maybe sent: unknown)."""
    total = config.timeout_s
    return aiohttp.ClientTimeout(total=total, connect=min(CONNECT_TIMEOUT_S, total / 2))


class ApiSession:
    """One aiohttp session per provider, sized for its concurrency, created on first use.

    Calls beyond its pool wait for a slot before they start, outside their ``timeout_s``: a
    batch sent in many calls (SendGrid's oversized renders) would otherwise have them wait for a
    pooled connection inside it, and time out before they were sent."""

    def __init__(self, config: ProviderConfig, headers: Mapping[str, str]) -> None:
        self._config = config
        self._headers = dict(headers)
        self._session: aiohttp.ClientSession | None = None
        self._pool_size = max(1, config.concurrency) + 2
        self._slots = asyncio.Semaphore(self._pool_size)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=client_timeout(self._config),
                headers=self._headers,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def request(
        self, method: str, url: str, *, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """One call; its answer whatever the status, or Retryable/Uncertain/HaltError (module
        doc). Redirects are not followed (:func:`refuse_redirect`), and the answer's body is
        read up to :data:`MAX_ANSWER_BYTES` (:func:`read_answer`)."""
        try:
            async with (
                self._slots,
                self._http().request(
                    method, url, data=data, headers=headers, allow_redirects=False
                ) as response,
            ):
                refuse_redirect(response)
                return Answer(response.status, response.headers, await read_answer(response))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise RetryableError(_describe(exc)) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UncertainError(_describe(exc)) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


MAX_ANSWER_BYTES = 1 << 20  # a provider's answer is a few kB; past this it is not one


def refuse_redirect(response: aiohttp.ClientResponse) -> None:
    """A 3xx is not followed: the request (recipients, content, the API key in a header) would
    be sent again to wherever it points, or turned into a GET whose 200 looks like success. It
    halts the provider: its endpoint is wrong, and nothing was sent."""
    if 300 <= response.status < 400:
        where = response.headers.get("Location", "")[:200]
        raise HaltError(f"HTTP {response.status}: the endpoint redirects to {where!r}; check its endpoint")


async def read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, at most :data:`MAX_ANSWER_BYTES`. A refusal (4xx, 5xx) keeps its status
    whatever becomes of its body: cut short, unreadable or too long, the body is only its
    detail. A 2xx whose body breaks or is too long is uncertain (the call went through)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                if response.status >= 400:
                    break
                raise UncertainError(f"HTTP {response.status} with an answer over {MAX_ANSWER_BYTES:,} bytes")
            chunks.append(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        if response.status < 400:
            raise
        chunks.append(f" (the rest unreadable: {_describe(exc)})".encode())
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


Part = tuple[Sequence[int], "list[RecipientResult] | ProviderError"]


def combine(
    parts: Sequence[Part], size: int, *, whole: bool, resend_uncertain: bool
) -> list[RecipientResult]:
    """The outcome of a batch sent in several calls (``parts``: the batch positions of each call
    and its results or its error; ``whole``: the calls carry every lead of the batch, none failed
    before it was sent).

    When every call failed the same way, that error is raised, so the sender treats the batch as
    one failed call (Retry-After honoured: the longest one); but not an uncertain one when some
    leads were never sent (not ``whole``, as in :func:`uncertain_part`): the sender would log them
    unknown too. Otherwise each failed call's recipients get the outcome its error means: retry,
    failed, unknown (retry with ``resend_uncertain``), and retry for a halt (the retry then
    halts), so a recipient whose call went through is never reported as anything else.
    """
    errors = [result for _, result in parts if isinstance(result, ProviderError)]
    same = parts and len(errors) == len(parts) and len({type(e) for e in errors}) == 1
    if same and (whole or not isinstance(errors[0], UncertainError)):
        raise _merged(errors)
    results: list[RecipientResult] = [RecipientResult(Outcome.FAILED, error="not sent")] * size
    for positions, result in parts:
        answers = (
            result if isinstance(result, list) else [outcome_of(result, resend_uncertain)] * len(positions)
        )
        for position, answer in zip(positions, answers, strict=True):
            results[position] = answer
    return results


def _merged(errors: list[ProviderError]) -> ProviderError:
    first = errors[0]
    if isinstance(first, RetryableError):
        waits = [e.retry_after for e in errors if isinstance(e, RetryableError) and e.retry_after is not None]
        return RetryableError(first.reason, max(waits) if waits else None)
    return first


def uncertain_part(
    error: UncertainError, count: int, *, whole: bool, resend_uncertain: bool
) -> list[RecipientResult]:
    """The results of a call that may have gone through (``error``) for its ``count`` recipients.

    A call that carried the ``whole`` batch raises ``error`` again: the sender takes the batch as
    one uncertain call. A call of part of it (others failed to render before it) makes only its
    own recipients unknown (retry with ``resend_uncertain``); a render-failed one stays failed.
    """
    if whole:
        raise error
    return [outcome_of(error, resend_uncertain)] * count


def outcome_of(error: ProviderError, resend_uncertain: bool) -> RecipientResult:
    if isinstance(error, RetryableError | HaltError):
        return RecipientResult(Outcome.RETRY, error=error.reason)
    if isinstance(error, UncertainError):
        if resend_uncertain:
            return RecipientResult(Outcome.RETRY, error=error.reason)
        return RecipientResult(Outcome.UNKNOWN, error=f"uncertain: {error.reason}")
    if isinstance(error, PermanentError):
        return RecipientResult(Outcome.FAILED, error=error.reason)
    return RecipientResult(Outcome.FAILED, error=error.reason)  # pragma: no cover - no other kind
