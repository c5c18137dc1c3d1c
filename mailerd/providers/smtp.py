"""SMTP with ``aiosmtplib``: a pool of ``connections`` per provider, one MIME message per recipient
(:mod:`.smtp_message`), sent one after another on the connection a batch takes from the pool.

``endpoint`` is ``host:port`` (the port defaults to 587 for ``tls = "starttls"``, 465 for
``"tls"`` (implicit TLS), 25 for ``"none"``); AUTH with ``username`` and ``api_key`` (the
password) when a username is set. A connection is replaced after ``messages_per_connection``
messages, and whenever it broke. Batches wait for a free connection (keep ``connections`` at least
``concurrency``).

How answers are classified (RFC 5321, sections 4.2.1 and 4.2.5; aiosmtplib's exceptions):

- ``250`` to the end of DATA -> sent; the message id is our ``Message-ID``.
- ``4xx`` to MAIL, RCPT or DATA -> retry that recipient (the transaction is reset); ``5xx`` to
  RCPT or DATA -> failed with the server's reply. Either carries its reply code
  (``RecipientResult.smtp_code``): the sender records a final rejection as a bounce event
  (:mod:`mailerd.rejections`, docs/guards.md#smtp-rejections). A ``421`` closes the connection
  (aiosmtplib does): that recipient is retried with its reply, the rest of the batch goes on at
  once on a new connection (one recipient's 421 never holds back the others).
- ``5xx`` to MAIL FROM (the sender refused), ``530``/``535`` AUTH failures -> halt when nothing of
  the batch went out; beside sent recipients they are retried (the retry then halts).
- A connection that could not be opened, or lost before DATA -> retry (nothing was handed over).
- A lead's address that cannot go on a MAIL or RCPT line as it is (whitespace, ``<``, ``>`` or
  ``"`` outside a quoted local part, a control character: aiosmtplib refuses it, and would
  otherwise take ``Name <a@b>`` apart and send to ``a@b``) -> failed, that recipient alone,
  before its transaction starts. A sender address aiosmtplib refuses -> halt.
- An address that is not ASCII (the envelope's, or a mailbox in the message whose local part is
  not ASCII) goes with SMTPUTF8 (RFC 6531); a server without it -> failed. A display name that
  is not ASCII needs no SMTPUTF8: it is RFC 2047 encoded (:mod:`.smtp_message`).
- A connection lost (or timed out) from the DATA command on, before the final reply -> unknown:
  the server may have taken the message, so it is never retried silently (``resend_uncertain``
  retries it). The rest of the batch is retried on a new connection.
- A garbled or out-of-place reply (a line that does not parse, a 2xx where 354 was due) counts
  as the connection lost at that point: retry before DATA, unknown from DATA on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Final

import aiosmtplib
import structlog

from mailerd.config import ConfigError, ContentConfig, ProviderConfig, parse_listen
from mailerd.models import (
    Batch,
    Campaign,
    HaltError,
    Outcome,
    RecipientResult,
    RetryableError,
    SendQuota,
)
from mailerd.providers import compose, smtp_message

log = structlog.get_logger(__name__)

MAX_BATCH_SIZE: Final = 1000
DEFAULT_PORTS: Final = {"starttls": 587, "tls": 465, "none": 25}

# What aiosmtplib refuses on a MAIL or RCPT line (ValueError; aiosmtplib.email._validate_address
# and protocol's COMMAND_INJECTION_REGEX): whitespace, <, > or " outside a quoted local part, a
# control character anywhere.
_OFF_THE_LINE: Final = re.compile(r'[\s<>"\x00-\x1f\x7f]')
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_QUOTED_LOCAL_PART: Final = re.compile(r'^"(?:[^"\\\r\n]|\\.)*"')
UNSENDABLE_ADDRESS: Final = (
    "the address cannot go on an SMTP command line (whitespace, <, > or a quote outside a quoted"
    " local part, or a control character)"
)


def sendable(address: str) -> bool:
    """Whether ``address`` goes on a MAIL or RCPT line as it is (see the module docstring)."""
    if address.startswith('"'):
        if _CONTROL.search(address):
            return False
        address = _QUOTED_LOCAL_PART.sub("", address, count=1)
    return _OFF_THE_LINE.search(address) is None


class _Halt(Exception):
    """The account or the sender is refused: no retry fixes it (see the module docstring)."""


class _Lost(Exception):
    """The connection broke; ``uncertain``: it broke from the DATA command on."""

    def __init__(self, reason: str, *, uncertain: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.uncertain = uncertain


def _refusal(code: int) -> bool:
    """A reply code that refuses (4xx, 5xx); anything else where a refusal was read is out of
    place or garbled (aiosmtplib gives -1 for a line it cannot parse)."""
    return 400 <= code < 600


def classify_reply(code: int, message: str) -> RecipientResult:
    """A refused RCPT or DATA: 4xx retry, 5xx failed; the reply code goes with it, so the sender
    records the rejection as a bounce (:mod:`mailerd.rejections`)."""
    reason = f"{code} {message}".strip()
    outcome = Outcome.RETRY if 400 <= code < 500 else Outcome.FAILED
    return RecipientResult(outcome, error=reason, smtp_code=code)


class _Connection:
    """One pooled SMTP client and how many messages it carried."""

    def __init__(self) -> None:
        self.client: aiosmtplib.SMTP | None = None
        self.sent = 0


class SmtpPool:
    """``connections`` lazily opened SMTP clients; a batch holds one while it sends."""

    def __init__(self, config: ProviderConfig) -> None:
        host, port = _host_port(config)
        self._config = config
        self._host, self._port = host, port
        self._free: asyncio.Queue[_Connection] = asyncio.Queue()
        for _ in range(config.connections):
            self._free.put_nowait(_Connection())
        self._all: list[_Connection] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A connected client (a new one past ``messages_per_connection``); returned broken or not,
        closed when an exception leaves the block (it may hold a transaction half done)."""
        slot = await self._free.get()
        try:
            if slot.client is not None and (
                slot.sent >= self._config.messages_per_connection or not slot.client.is_connected
            ):
                await _quit(slot.client)
                slot.client = None
            if slot.client is None:
                slot.client = await self._connect()
                slot.sent = 0
                if slot not in self._all:
                    self._all.append(slot)
            yield slot.client
        except BaseException:
            # Whatever left the block may have left a transaction open (MAIL accepted, no RSET):
            # the next batch's MAIL would get "503 nested MAIL". A new connection is cheaper.
            if slot.client is not None:
                slot.client.close()
                slot.client = None
            raise
        finally:
            self._free.put_nowait(slot)

    def count(self, client: aiosmtplib.SMTP) -> None:
        for slot in self._all:
            if slot.client is client:
                slot.sent += 1

    async def _connect(self) -> aiosmtplib.SMTP:
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=config.tls == "tls",
            start_tls=config.tls == "starttls",
            timeout=config.timeout_s,
        )
        try:
            await client.connect()
            if client.last_ehlo_response is None:
                await client.ehlo()  # know the extensions (SMTPUTF8) before the first message
            if config.username:
                password = config.api_key.reveal() if config.api_key is not None else ""
                await client.login(config.username, password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            raise _Halt(f"AUTH refused: {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise RetryableError(f"connect to {self._host}:{self._port} failed: {exc}") from exc
        return client

    async def close(self) -> None:
        for slot in self._all:
            if slot.client is not None:
                await _quit(slot.client)
                slot.client = None
        self._all.clear()


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


def _host_port(config: ProviderConfig) -> tuple[str, int]:
    section = f"[providers.{config.name}]"
    if not config.endpoint:
        raise ConfigError(f"{section} endpoint: required for kind smtp (host:port, or host)")
    if ":" not in config.endpoint.strip("[]"):
        return config.endpoint, DEFAULT_PORTS[config.tls]
    try:
        return parse_listen(config.endpoint)
    except ConfigError:
        raise ConfigError(f"{section} endpoint: expected host:port, got {config.endpoint!r}") from None


class SmtpProvider:
    """SMTP submission through a connection pool; see the module docstring."""

    max_batch_size: int = MAX_BATCH_SIZE

    def __init__(
        self,
        config: ProviderConfig,
        unsubscribe: compose.UnsubscribeUrl | None = None,
        content_limits: ContentConfig | None = None,
    ) -> None:
        self.name = config.name or config.kind
        self._config = config
        self._pool = SmtpPool(config)
        self._composers = compose.composers(unsubscribe, content_limits)

    async def prepare(self, campaign: Campaign) -> None:
        self._composers.get(campaign)

    async def send(self, batch: Batch) -> list[RecipientResult]:
        """Compose every message first (a budget overrun stops the batch before any is sent),
        then send them one by one on one pooled connection."""
        if len(batch.leads) > MAX_BATCH_SIZE:
            raise ValueError(f"at most {MAX_BATCH_SIZE} recipients per batch")
        campaign = batch.campaign
        composer = self._composers.get(campaign)
        domain = self._config.domain or compose.address_domain(campaign.from_address) or "mailerd.invalid"
        results: list[RecipientResult | None] = [None] * len(batch.leads)
        messages: list[tuple[int, str, str, bytes]] = []
        for position, lead in enumerate(batch.leads):
            recipient = compose.seven_bit_address(lead.email)
            if not sendable(recipient):
                results[position] = RecipientResult(Outcome.FAILED, error=UNSENDABLE_ADDRESS)
                continue
            rendered = composer.render(lead)
            if rendered.failure is not None:
                results[position] = RecipientResult(Outcome.FAILED, error=rendered.failure)
                continue
            try:
                mid, data = smtp_message.build(
                    rendered,
                    campaign_id=campaign.id,
                    sender=campaign.from_address,
                    headers=composer.headers,
                    domain=domain,
                )
            except ValueError as exc:
                results[position] = RecipientResult(Outcome.FAILED, error=f"message refused: {exc}")
                continue
            messages.append((position, recipient, mid.strip("<>"), data))
        if messages:
            await self._deliver(campaign, messages, results)
        return [result or RecipientResult(Outcome.RETRY, error="not sent") for result in results]

    async def _deliver(
        self,
        campaign: Campaign,
        messages: list[tuple[int, str, str, bytes]],
        results: list[RecipientResult | None],
    ) -> None:
        sender = compose.seven_bit_address(compose.split_address(campaign.from_address)[1])
        done = 0
        try:
            while done < len(messages):
                async with self._pool.connection() as client:
                    while done < len(messages):
                        position, recipient, mid, data = messages[done]
                        results[position] = await self._one(client, sender, recipient, mid, data)
                        done += 1
                        if not client.is_connected:
                            break  # closed with its refusal (421): the rest go on a new connection
        except _Lost as lost:
            position = messages[done][0]
            if lost.uncertain and not campaign.resend_uncertain:
                results[position] = RecipientResult(Outcome.UNKNOWN, error=f"uncertain: {lost.reason}")
            else:
                results[position] = RecipientResult(Outcome.RETRY, error=lost.reason)
            log.warning(
                "smtp_connection_lost", provider=self.name, uncertain=lost.uncertain, reason=lost.reason
            )
        except _Halt as halt:
            if done == 0:
                raise HaltError(str(halt)) from None
            results[messages[done][0]] = RecipientResult(Outcome.RETRY, error=str(halt))
        except RetryableError:
            if done == 0:
                raise
        except Exception:  # a bug, or an answer aiosmtplib did not expect: keep what was answered
            log.exception("smtp_recipient_error", provider=self.name)
            if done < len(messages):  # it may have gone (the pool closed the connection)
                outcome = Outcome.RETRY if campaign.resend_uncertain else Outcome.UNKNOWN
                error = "uncertain: unexpected error in the SMTP client"
                results[messages[done][0]] = RecipientResult(outcome, error=error)
        # Recipients after a broken connection or a halt stay None: retried (see send).

    async def _one(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, mid: str, data: bytes
    ) -> RecipientResult:
        """One transaction: MAIL, RCPT, DATA. Raises _Lost / _Halt (see the module docstring)."""
        # A message that is not 7-bit has UTF-8 headers (an address that needs it): RFC 6532.
        utf8 = not (sender.isascii() and recipient.isascii() and data.isascii())
        if utf8 and not client.supports_extension("smtputf8"):
            return RecipientResult(
                Outcome.FAILED, error="the address needs SMTPUTF8, which the server does not offer"
            )
        options, encoding = (["SMTPUTF8"], "utf-8") if utf8 else (None, "ascii")
        command = "MAIL"
        try:
            await client.mail(sender, options=options, encoding=encoding)
            command = "RCPT"
            await client.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            if not _refusal(exc.code):  # a garbled reply: nothing was handed over, the link goes
                client.close()
                raise _Lost(f"unreadable reply: {exc.code} {exc.message}", uncertain=False) from exc
            await _reset(client)
            if isinstance(exc, aiosmtplib.SMTPSenderRefused) and exc.code >= 500:
                raise _Halt(f"sender refused: {exc.code} {exc.message}") from exc
            return classify_reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _Lost(f"{type(exc).__name__}: {exc}", uncertain=False) from exc
        except ValueError as exc:  # aiosmtplib refused an address before sending the command
            await _reset(client)  # MAIL may have been accepted
            if command == "MAIL":
                raise _Halt(f"the sender address cannot go on an SMTP command line: {exc}") from exc
            return RecipientResult(Outcome.FAILED, error=UNSENDABLE_ADDRESS)
        try:
            await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            if not _refusal(exc.code):
                # a 2xx where aiosmtplib wanted 354 (to DATA: the message never went) or 250 (to
                # its end), or a garbled reply: which one it answered is unknown, so the
                # recipient is too; the connection goes
                client.close()
                raise _Lost(f"{exc.code} {exc.message} to DATA", uncertain=True) from exc
            # Refused at DATA or at its end: RSET, as smtplib does, or a server that kept the
            # transaction open answers the next MAIL "503 nested MAIL" (read as the sender refused)
            await _reset_quietly(client)
            return classify_reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _Lost(f"{type(exc).__name__} after DATA: {exc}", uncertain=True) from exc
        except ValueError as exc:  # raised before DATA went out (aiosmtplib checks first)
            await _reset(client)
            return RecipientResult(Outcome.FAILED, error=f"message refused by the SMTP client: {exc}")
        self._pool.count(client)
        return RecipientResult(Outcome.SENT, message_id=mid)

    def forget(self, campaign_id: int) -> None:
        self._composers.forget(campaign_id)

    async def send_quota(self) -> SendQuota | None:
        return None

    async def close(self) -> None:
        await self._pool.close()


async def _reset_quietly(client: aiosmtplib.SMTP) -> None:
    """RSET after a refused DATA; a connection that cannot take it is closed (the next
    transaction then opens another) rather than failing the recipient already answered."""
    try:
        await _reset(client)
    except _Lost:
        client.close()


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refused command, so the connection can carry the next transaction."""
    if not client.is_connected:
        return  # the server closed it with its refusal (421): the next command finds out
    try:
        await client.rset()
    except aiosmtplib.SMTPException as exc:
        raise _Lost(f"RSET failed: {exc}", uncertain=False) from exc
