"""Postmark batch sending: ``POST /email/batch`` (up to 500 messages a call, each rendered here)
or, when the campaign names a Postmark template (``provider_template``: its alias, or its numeric
id), ``POST /email/batchWithTemplates`` with each recipient's ``TemplateModel``
(:func:`mailerd.providers.compose.template_model`). ``X-Postmark-Server-Token: <api_key>``.
Events come back through :mod:`.postmark_webhook`.

Each message: ``From``, ``To``, its parts, ``ReplyTo``, ``Headers`` (the campaign's, plus
``List-Unsubscribe`` and ``List-Unsubscribe-Post`` per recipient, RFC 8058), ``Metadata`` with our
ids (they come back in every webhook), ``Tag`` ``mailerd-campaign-<id>`` and ``MessageStream``
(the provider's ``message_stream``: bulk mail must go through a broadcast stream). ``To`` takes
a comma-separated list: a lead whose address is not one ``local@domain`` is failed alone before
the call (:func:`.compose.is_mailbox`).

How answers are classified (Postmark API reference, "Email API: send batch emails" and the
"API error codes" table of the API overview):

- ``200``: one answer per message, in order (a missing answer, or one whose ``ErrorCode`` is not
  a JSON integer, -> unknown; an answer that is not a list -> unknown for the call). ``ErrorCode``
  0 -> sent (``MessageID``). 403 halts, as 401 does. 406
  (inactive recipient: a hard bounce, complaint or manual suppression at Postmark), 300 (invalid
  email request) and other codes -> failed with ``Message``. Codes that say the account or server
  cannot send (10 bad token, 400/401 sender signature missing or unconfirmed, 405 not allowed to
  send, 412 account pending, 413 account may not send) halt the campaign when no message of the
  call went out or is unknown; beside those they are retried (the retry then halts). 429 and
  100 (maintenance) -> retry.
- Another 2xx -> unknown for the call: it went through and says nothing of the messages.
- ``401`` -> halt. ``422`` (the whole request refused: the body's ``ErrorCode``/``Message``):
  the same codes halt, 429 and 100 retry, others fail every message. ``429`` and ``5xx`` ->
  retry, after ``Retry-After`` when given.
- A timeout or a connection broken after the request went out -> unknown, never retried
  silently; a connection that could not be made (or not within
  :func:`.api_call.client_timeout`'s connect timeout) -> retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from mailerd import backoff
from mailerd.config import ConfigError, ContentConfig, ProviderConfig
from mailerd.models import (
    Batch,
    Campaign,
    HaltError,
    Lead,
    Outcome,
    PermanentError,
    ProviderError,
    RecipientResult,
    RetryableError,
    SendQuota,
    UncertainError,
)
from mailerd.providers import api_call, compose

MAX_BATCH_SIZE: Final = 500
DEFAULT_ENDPOINT: Final = "https://api.postmarkapp.com"
BATCH_PATH: Final = "/email/batch"
TEMPLATE_BATCH_PATH: Final = "/email/batchWithTemplates"
TOKEN_HEADER: Final = "X-Postmark-Server-Token"  # noqa: S105 -- a header name, not a secret
HALT_CODES: Final = frozenset({10, 400, 401, 405, 412, 413})
RETRY_CODES: Final = frozenset({100, 429})


def _code(value: Any) -> int | None:
    """An ``ErrorCode`` (a JSON integer; ``false`` is not 0), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def classify_entry(entry: Any) -> RecipientResult:
    """One message's answer; halting codes come back as RETRY (see :func:`parse_results`). The
    call went through: an answer that cannot be read is ``unknown``, never failed or retried."""
    code = _code(entry.get("ErrorCode")) if isinstance(entry, dict) else None
    if code is None:
        return RecipientResult(
            Outcome.UNKNOWN, error="uncertain: an unreadable Postmark answer for this message"
        )
    if code == 0:
        found = entry.get("MessageID")
        return RecipientResult(Outcome.SENT, message_id=str(found) if found else None)
    reason = f"{code}: {entry.get('Message') or 'error'}"
    if code in RETRY_CODES or code in HALT_CODES:
        return RecipientResult(Outcome.RETRY, error=reason)
    return RecipientResult(Outcome.FAILED, error=reason)


def parse_results(entries: Any, expected: int) -> list[RecipientResult]:
    """The batch answer -> one result per message; HaltError when a halting code came and no
    message was sent or is unknown. A missing answer is unknown, never retried: Postmark may
    have sent it."""
    if not isinstance(entries, list):
        raise UncertainError("an unreadable Postmark batch answer")  # the call went through
    results = [classify_entry(entry) for entry in entries[:expected]]
    halting = [
        e for e in entries[:expected] if isinstance(e, dict) and _code(e.get("ErrorCode")) in HALT_CODES
    ]
    maybe_sent = len(results) < expected or any(r.outcome in (Outcome.SENT, Outcome.UNKNOWN) for r in results)
    if halting and not maybe_sent:
        first = halting[0]
        raise HaltError(f"{first.get('ErrorCode')}: {first.get('Message')}")
    missing = RecipientResult(Outcome.UNKNOWN, error="uncertain: no answer from Postmark for this message")
    return results + [missing] * (expected - len(results))


def classify_error(answer: api_call.Answer) -> ProviderError:
    """A non-200 answer as the error the sender acts on; another 2xx went through without saying
    what became of the messages: uncertain."""
    if 200 <= answer.status < 300:
        return UncertainError(f"HTTP {answer.status}: not Postmark's 200")
    body = answer.json()
    code = _code(body.get("ErrorCode")) if isinstance(body, dict) else None
    message = body.get("Message") if isinstance(body, dict) else None
    detail = f"{code}: {message}" if code is not None else answer.body[:200].decode("utf-8", "replace")
    reason = f"HTTP {answer.status}: {detail}"
    if answer.status == 429 or answer.status >= 500 or code in RETRY_CODES:
        return RetryableError(reason, backoff.parse_retry_after(answer.headers.get("Retry-After")))
    if answer.status in (401, 403) or code in HALT_CODES:  # as every other provider halts on 403
        return HaltError(reason)
    return PermanentError(reason)


class PostmarkProvider:
    """Postmark batch sending over one keep-alive session; see the module docstring."""

    max_batch_size: int = MAX_BATCH_SIZE

    def __init__(
        self,
        config: ProviderConfig,
        unsubscribe: compose.UnsubscribeUrl | None = None,
        content_limits: ContentConfig | None = None,
    ) -> None:
        self.name = config.name or config.kind
        if config.api_key is None:
            raise ConfigError(
                f"[providers.{self.name}] api_key: required for kind postmark (the server token)"
            )
        if not config.message_stream:
            raise ConfigError(f"[providers.{self.name}] message_stream: required for kind postmark")
        self._endpoint = (config.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._stream = config.message_stream
        self._api = api_call.ApiSession(
            config,
            {
                TOKEN_HEADER: config.api_key.reveal(),
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        self._composers = compose.composers(unsubscribe, content_limits)

    async def prepare(self, campaign: Campaign) -> None:
        self._composers.get(campaign)

    async def send(self, batch: Batch) -> list[RecipientResult]:
        if len(batch.leads) > MAX_BATCH_SIZE:
            raise ValueError(f"Postmark takes at most {MAX_BATCH_SIZE} messages per call")
        composer = self._composers.get(batch.campaign)
        results: list[RecipientResult | None] = [None] * len(batch.leads)
        messages: list[dict[str, Any]] = []
        positions: list[int] = []
        for position, lead in enumerate(batch.leads):
            message = self._message(composer, lead)
            if isinstance(message, str):
                results[position] = RecipientResult(Outcome.FAILED, error=message)
                continue
            messages.append(message)
            positions.append(position)
        if messages:
            templated = bool(batch.campaign.provider_template)
            path, body = (
                (TEMPLATE_BATCH_PATH, {"Messages": messages}) if templated else (BATCH_PATH, messages)
            )
            try:
                sent = await self._call(path, body, len(messages))
            except UncertainError as exc:
                sent = api_call.uncertain_part(
                    exc,
                    len(positions),
                    whole=len(positions) == len(batch.leads),
                    resend_uncertain=batch.campaign.resend_uncertain,
                )
            for position, result in zip(positions, sent, strict=True):
                results[position] = result
        return [result for result in results if result is not None]

    async def _call(self, path: str, body: Any, expected: int) -> list[RecipientResult]:
        answer = await self._api.request("POST", self._endpoint + path, data=orjson.dumps(body))
        if answer.status != 200:
            raise classify_error(answer)
        return parse_results(answer.json(), expected)

    def _message(self, composer: compose.Composer, lead: Lead) -> dict[str, Any] | str:
        """One message of the batch, or why this recipient fails (an address that is not one
        mailbox: ``To`` reads a comma as a second recipient; a render error)."""
        if not compose.is_mailbox(lead.email):
            return compose.NOT_A_MAILBOX
        campaign = composer.campaign
        url = composer.unsubscribe_url(lead)
        message: dict[str, Any] = {"From": campaign.from_address, "To": lead.email}
        template = campaign.provider_template
        if template:
            key = "TemplateId" if template.isdigit() else "TemplateAlias"
            message[key] = int(template) if template.isdigit() else template
            message["TemplateModel"] = compose.template_model(lead, campaign, url)
        else:
            rendered = composer.render(lead)
            if rendered.failure is not None:
                return rendered.failure
            message["Subject"] = rendered.subject
            if rendered.html:
                message["HtmlBody"] = rendered.html
            if rendered.text or not rendered.html:
                message["TextBody"] = rendered.text or " "
        if campaign.reply_to:
            message["ReplyTo"] = campaign.reply_to
        headers = [*campaign.headers, *compose.unsubscribe_headers(url)]
        if headers:
            message["Headers"] = _headers(headers)
        message["Metadata"] = dict(compose.ids(campaign.id, lead.id))
        message["Tag"] = f"mailerd-campaign-{campaign.id}"
        message["MessageStream"] = self._stream
        return message

    def forget(self, campaign_id: int) -> None:
        self._composers.forget(campaign_id)

    async def send_quota(self) -> SendQuota | None:
        return None

    async def close(self) -> None:
        await self._api.close()


def _headers(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"Name": name, "Value": value} for name, value in pairs]
