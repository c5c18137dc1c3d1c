"""Callbacks: records to one HTTPS endpoint of the host application, in signed batches.

Each request is a JSON ``POST`` of up to ``max_records`` records::

    {"type": "mailerd.records", "timestamp": "2026-01-02T03:04:05Z", "data": {"records": [...]}}

signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``;
see :mod:`mailerd.relay.signing`). The endpoint answers 2xx once it has stored them. 408, 429,
5xx, a timeout, a redirect or a connection failure are retried by the relay with backoff (a
``Retry-After`` is a floor); a 413 splits the request in halves; any other 4xx refuses that
request's records for good: they go to ``relay_dead_letters`` and the stream moves on
(``mailerd relay replay --dead-letters``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections.abc import Callable, Sequence

import aiohttp
import yarl

from mailerd import backoff
from mailerd.config import CallbackConfig
from mailerd.relay import signing
from mailerd.relay.destination import DeliveryRefused, DestinationUnavailable
from mailerd.relay.records import Record

USER_AGENT = "mailerd-relay/1"
DETAIL_S = 1.0  # how long an error answer's body is read for its first 1 KiB
_RETRIED = frozenset({408, 429})


class CallbackDestination:
    """One ``[callbacks.NAME]`` endpoint. ``replay``: it sends an operator's replay, whose
    requests get ``webhook-id`` values of their own (:func:`signing.message_id`)."""

    def __init__(
        self, config: CallbackConfig, *, clock: Callable[[], float] = time.time, replay: bool = False
    ) -> None:
        assert config.secret is not None, "validated by the configuration"
        self.name = f"callbacks.{config.name}"
        self.kinds = frozenset(config.kinds)
        self._config = config
        self._event_types = frozenset(config.event_types)
        self._key = signing.secret_key(config.secret.reveal())
        self._clock = clock
        self._resend = secrets.token_hex(8) if replay else ""
        self._session: aiohttp.ClientSession | None = None

    def wants(self, record: Record) -> bool:
        """Its kinds, and for events its event types (all when none are configured)."""
        if record.kind not in self.kinds:
            return False
        return record.kind != "event" or not self._event_types or record.event_type in self._event_types

    async def deliver(self, records: Sequence[Record]) -> None:
        """POST the wanted records in order, ``max_records`` a request."""
        chunk: list[tuple[int, Record]] = []  # the wanted records with their index in ``records``
        start = 0  # index in ``records`` of the chunk's first record
        for index, record in enumerate(records):
            if not self.wants(record):
                if not chunk:
                    start = index + 1
                continue
            chunk.append((index, record))
            if len(chunk) == self._config.max_records:
                await self._post(chunk, start, index + 1 - start)
                chunk, start = [], index + 1
        if chunk:
            await self._post(chunk, start, len(records) - start)

    async def _post(self, chunk: list[tuple[int, Record]], acknowledged: int, span: int) -> None:
        """One request. On failure, ``acknowledged`` records before it are done; ``span`` is how
        many of ``records`` (wanted or not) it stands for. A 413 (too large) halves the request,
        down to one record: only a record refused alone is refused for good."""
        records = [record for _, record in chunk]
        now = self._clock()
        body = b"".join(
            [
                b'{"type":"mailerd.records","timestamp":"',
                dt.datetime.fromtimestamp(int(now), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode(),
                b'","data":{"records":[',
                b",".join(record.value for record in records),
                b"]}}",
            ]
        )
        headers = signing.headers(
            self._key, signing.message_id([r.id for r in records], self._resend), int(now), body
        )
        headers["content-type"] = "application/json"
        try:
            async with self._client().post(
                self._config.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = backoff.parse_retry_after(response.headers.get("Retry-After"))
                text = await _detail(response) if status >= 300 else ""
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = _without_url(f"{type(exc).__name__}: {exc}".strip(), self._config.url)
            raise DestinationUnavailable(reason, acknowledged=acknowledged) from exc
        if 200 <= status < 300:
            return
        if status == 413 and len(chunk) > 1:
            half = len(chunk) // 2
            second = chunk[half][0]  # everything before the second half is done once the first is
            await self._post(chunk[:half], acknowledged, second - acknowledged)
            await self._post(chunk[half:], second, acknowledged + span - second)
            return
        reason = f"HTTP {status}: {text}".strip()
        if 400 <= status < 500 and status not in _RETRIED:
            raise DeliveryRefused(reason, acknowledged=acknowledged, refused=span, kept=records)
        raise DestinationUnavailable(reason, acknowledged=acknowledged, retry_after=retry_after)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
                headers={"user-agent": USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _without_url(text: str, url: str) -> str:
    """``text`` with the endpoint's URL shown as its origin only (scheme, host, port): aiohttp
    names the whole URL in some errors (a malformed answer's ``ClientResponseError``), and its
    path or query may hold a token; the reason goes to the log, the position's last error and
    ``mailerd relay status``."""
    parsed = yarl.URL(url)
    origin = str(parsed.origin())
    for form in sorted({url, str(parsed), parsed.human_repr()}, key=len, reverse=True):
        text = text.replace(form, origin)
    return text


async def _detail(response: aiohttp.ClientResponse) -> str:
    """What an error answer says, for the log: its first 1 KiB, read for a second at most and
    decoded as UTF-8 whatever charset it names. The status decides, never the body: a 1 GiB body
    was read whole, a trickling one turned a 400 into a retried timeout, and ``charset=base64``
    raised out of the stream (which then retried it forever)."""
    try:
        async with asyncio.timeout(DETAIL_S):
            raw = await response.content.read(1024)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return ""
    return raw.decode("utf-8", "replace")[:200]
