"""An SMTP server on a local port (``mailerd sink --smtp HOST:PORT``), aiosmtpd on this event loop.

It speaks ESMTP as a submission server would (no TLS, no AUTH: for tests and benchmarks on the
loopback interface). Per message: throttling answers ``451 4.7.1`` to RCPT (the client retries);
``fail_rate`` answers RCPT ``550 5.1.1`` (failed) or ``450 4.2.0`` (retried), half each;
``drop_rate`` (tests) takes the message and then closes the connection without the final reply,
the case a client can only log as ``unknown``; ``refuse`` (tests) answers RCPT for chosen
addresses with a real receiver's refusal; ``smtputf8 = False`` (tests) serves as a server
without the SMTPUTF8 extension (RFC 6531). An accepted message is recorded from its
``X-Mailerd-Campaign``/``X-Mailerd-Lead`` headers, with its ``Message-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from email.parser import BytesHeaderParser
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailerd.emulator.base import Emulator

_PARSER: Final = BytesHeaderParser()


class SmtpEmulator(Emulator):
    """The SMTP server; ``drop_rate`` (0..1) drops connections after DATA (module docstring)."""

    api = "smtp"
    burst_floor = 50

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop_rate = 0.0
        self.smtputf8 = True  # tests: False offers no SMTPUTF8 to the connections opened after
        self.dropped = 0
        self.kept: list[bytes] | None = None  # tests: set to a list to keep every message taken
        # Tests: the reply to RCPT for an address (a real receiver's refusal), None to go on.
        self.refuse: Callable[[str], str | None] | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    async def _listen(self, resources: contextlib.AsyncExitStack) -> int:
        loop = asyncio.get_running_loop()
        handler = _Handler(self)
        server = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="mailerd-sink",
                ident="mailerd sink",
                enable_SMTPUTF8=self.smtputf8,
                loop=loop,
            ),
            self.host,
            self.port,
            reuse_address=True,
        )

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        resources.push_async_callback(stop)
        return int(server.sockets[0].getsockname()[1])


class _Handler:
    """aiosmtpd's handler hooks, answering for the emulator."""

    def __init__(self, emulator: SmtpEmulator) -> None:
        self._emulator = emulator

    async def handle_MAIL(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self._emulator.arrived()
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        emulator = self._emulator
        await emulator.delay()
        emulator.counters.calls += 1
        if emulator.throttled(1):
            return "451 4.7.1 Rate limited, try again later"
        refusal = emulator.refuse(address) if emulator.refuse is not None else None
        if refusal is not None:
            emulator.counters.failed_entries += 1
            return refusal
        if emulator.fails():
            emulator.counters.failed_entries += 1
            if emulator.coin():
                return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            return "450 4.2.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        emulator = self._emulator
        data = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        headers = _PARSER.parsebytes(head)
        message_id = str(headers.get("Message-ID", "")).strip().strip("<>")
        if emulator.kept is not None:
            emulator.kept.append(data)
        for recipient in envelope.rcpt_tos:
            emulator.accept(
                recipient, headers.get("X-Mailerd-Campaign"), headers.get("X-Mailerd-Lead"), message_id
            )
        if emulator.drop_rate > 0 and emulator._random.random() < emulator.drop_rate:
            emulator.dropped += 1
            transport = server.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # taken, but the client never hears so
        return "250 2.0.0 OK: queued"
