"""Mailgun Messages API (``POST /v3/{domain}/messages``): one call per batch of up to 1,000
recipients, batch sending with ``recipient-variables``, basic auth ``api:<api_key>``. Events come
back through :mod:`.mailgun_webhook`.

The form: ``from``, one ``to`` per recipient, ``recipient-variables`` (a JSON object keyed by
address) and ``subject``/``text``/``html`` written with ``%recipient.NAME%`` placeholders, which
Mailgun fills per recipient (and each recipient sees only its own address):

- templates of plain variables: a placeholder per variable (``%recipient.NAME__html%`` for the
  HTML-escaped value), the values in each recipient's variables;
- other templates: each recipient is rendered here; its parts are its variables
  ``mailerd_subject``/``mailerd_html``/``mailerd_text``.

Our ids: ``v:mailerd_campaign`` and ``v:mailerd_lead`` = ``%recipient.mailerd_lead%`` (they come
back as the events' ``user-variables``); ``o:tag`` = ``mailerd-campaign-<id>``. Per recipient
``h:List-Unsubscribe: <%recipient.mailerd_unsubscribe%>`` and ``h:List-Unsubscribe-Post``
(RFC 8058); the campaign's headers as ``h:`` fields, its reply-to as ``h:Reply-To``.

``region = "eu"`` sends through ``https://api.eu.mailgun.net``, else ``https://api.mailgun.net``;
``endpoint`` overrides both. ``domain`` (required) is the sending domain.

How answers are classified (Mailgun API reference, "Messages" and its "Errors" table):

- ``200`` ``{"id": "<...>", "message": "Queued. Thank you."}`` -> sent, every recipient of the
  call; the message id (without its angle brackets, as the events' ``message-id`` header has it)
  is shared by the batch's recipients (our ids tell them apart). A 2xx without that id -> unknown
  (it went through; a proxy's page says nothing of the mail).
- ``429`` (rate limited) and ``5xx`` -> retry, after ``Retry-After`` when given.
- ``401`` (bad API key), ``403`` (domain not allowed, sandbox or suspended account) and ``404``
  (no such domain) -> halt: no retry fixes them.
- ``400`` (a parameter refused: the ``message`` is the reason), ``413`` (too large) and other 4xx
  -> failed, for every recipient of the call. A lead whose address is not one ``local@domain``
  is failed alone before the call (:func:`.compose.is_mailbox`): ``to`` takes a list ("a@x.com,
  b@y.com" would mail both, with a's variables found for neither) and Mailgun refuses the whole
  call for an address it cannot parse.
- A timeout or a connection broken after the request went out -> unknown, never retried
  silently; a connection that could not be made (or not within
  :func:`.api_call.client_timeout`'s connect timeout) -> retry.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any, Final

import aiohttp
import orjson

from mailerd import backoff
from mailerd.config import ConfigError, ContentConfig, ProviderConfig
from mailerd.models import (
    Batch,
    Campaign,
    HaltError,
    Outcome,
    PermanentError,
    ProviderError,
    RecipientResult,
    RetryableError,
    SendQuota,
    UncertainError,
)
from mailerd.providers import api_call, compose

MAX_BATCH_SIZE: Final = 1000
US_ENDPOINT: Final = "https://api.mailgun.net"
EU_ENDPOINT: Final = "https://api.eu.mailgun.net"
UNSUBSCRIBE_VARIABLE: Final = "mailerd_unsubscribe"
_PARTS: Final = ("subject", "html", "text")


def endpoint_for(config: ProviderConfig) -> str:
    if config.region not in ("", "us", "eu"):
        raise ConfigError(f'[providers.{config.name}] region: expected "eu", "us" or empty for kind mailgun')
    if config.endpoint:
        return config.endpoint.rstrip("/")
    return EU_ENDPOINT if config.region == "eu" else US_ENDPOINT


def placeholder(name: str, html: bool = False) -> str:
    return f"%recipient.{name}__html%" if html else f"%recipient.{name}%"


def classify(answer: api_call.Answer) -> ProviderError | None:
    """None for 200 with the message's ``id``; else the error the answer means (see the module
    docstring). A 2xx without an id went through without saying what became of it: uncertain."""
    if 200 <= answer.status < 300:
        if answer.status == 200 and message_id(answer) is not None:
            return None
        return UncertainError(f"HTTP {answer.status} without a message id: {answer.body[:100]!r}")
    body = answer.json()
    message = body.get("message") if isinstance(body, dict) else None
    detail = str(message) if message else answer.body[:200].decode("utf-8", "replace")
    reason = f"HTTP {answer.status}: {detail}"
    if answer.status == 429 or answer.status >= 500:
        return RetryableError(reason, backoff.parse_retry_after(answer.headers.get("Retry-After")))
    if answer.status in (401, 403, 404):
        return HaltError(reason)
    return PermanentError(reason)


def message_id(answer: api_call.Answer) -> str | None:
    body = answer.json()
    found = body.get("id") if isinstance(body, dict) else None
    return found.strip("<>") or None if isinstance(found, str) else None


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    composer: compose.Composer
    tagged: tuple[str, str, str] | None


class MailgunProvider:
    """Mailgun batch sending over one keep-alive session; see the module docstring."""

    max_batch_size: int = MAX_BATCH_SIZE

    def __init__(
        self,
        config: ProviderConfig,
        unsubscribe: compose.UnsubscribeUrl | None = None,
        content_limits: ContentConfig | None = None,
    ) -> None:
        self.name = config.name or config.kind
        if config.api_key is None:
            raise ConfigError(f"[providers.{self.name}] api_key: required for kind mailgun")
        if not config.domain:
            raise ConfigError(
                f"[providers.{self.name}] domain: required for kind mailgun (the sending domain)"
            )
        self._url = f"{endpoint_for(config)}/v3/{config.domain}/messages"
        token = base64.b64encode(f"api:{config.api_key.reveal()}".encode()).decode()
        self._api = api_call.ApiSession(config, {"Authorization": f"Basic {token}"})
        self._prepared = compose.PerCampaign(
            unsubscribe, content_limits, lambda composer: _Prepared(composer, composer.tagged(placeholder))
        )

    async def prepare(self, campaign: Campaign) -> None:
        self._prepared.get(campaign)

    async def send(self, batch: Batch) -> list[RecipientResult]:
        if len(batch.leads) > MAX_BATCH_SIZE:
            raise ValueError(f"Mailgun takes at most {MAX_BATCH_SIZE} recipients per call")
        prepared = self._prepared.get(batch.campaign)
        results: list[RecipientResult | None] = [None] * len(batch.leads)
        variables: dict[str, dict[str, str]] = {}
        positions: list[int] = []
        for position, lead in enumerate(batch.leads):
            if not compose.is_mailbox(lead.email):
                # A comma would make two recipients of it; Mailgun refuses the call for a bad one.
                results[position] = RecipientResult(Outcome.FAILED, error=compose.NOT_A_MAILBOX)
                continue
            values = _recipient_variables(prepared, lead)
            if isinstance(values, str):
                results[position] = RecipientResult(Outcome.FAILED, error=values)
            elif lead.email in variables:
                # One address twice in a call would get one email: fail the second, never merge.
                results[position] = RecipientResult(Outcome.FAILED, error="address twice in one batch")
            else:
                variables[lead.email] = values
                positions.append(position)
        if positions:
            outcome = await self._call(_form(batch.campaign, prepared, variables), len(positions))
            answers = api_call.combine(
                [(range(len(positions)), outcome)],
                len(positions),
                whole=len(positions) == len(batch.leads),
                resend_uncertain=batch.campaign.resend_uncertain,
            )
            for position, answer in zip(positions, answers, strict=True):
                results[position] = answer
        return [result for result in results if result is not None]

    async def _call(self, form: aiohttp.FormData, count: int) -> list[RecipientResult] | ProviderError:
        try:
            answer = await self._api.request("POST", self._url, data=form)
        except ProviderError as exc:
            return exc
        error = classify(answer)
        if error is not None:
            return error
        return [RecipientResult(Outcome.SENT, message_id=message_id(answer))] * count

    def forget(self, campaign_id: int) -> None:
        self._prepared.forget(campaign_id)

    async def send_quota(self) -> SendQuota | None:
        return None

    async def close(self) -> None:
        await self._api.close()


def _recipient_variables(prepared: _Prepared, lead: Any) -> dict[str, str] | str:
    """One recipient's variables, or why it fails (a render error)."""
    composer = prepared.composer
    url = composer.unsubscribe_url(lead)
    values = {compose.LEAD_KEY: str(lead.id), UNSUBSCRIBE_VARIABLE: url}
    if prepared.tagged is not None:
        for name, raw, escaped in composer.values(lead, url):
            values[name] = raw
            values[f"{name}__html"] = escaped
        return values
    rendered = composer.render(lead)
    if rendered.failure is not None:
        return rendered.failure
    values.update(mailerd_subject=rendered.subject, mailerd_html=rendered.html, mailerd_text=rendered.text)
    return values


def _form(campaign: Campaign, prepared: _Prepared, variables: dict[str, dict[str, str]]) -> aiohttp.FormData:
    if prepared.tagged is not None:
        subject, html, text = prepared.tagged
    else:
        subject, html, text = (placeholder(f"mailerd_{part}") for part in _PARTS)
    fields: list[tuple[str, str]] = [("from", campaign.from_address)]
    fields += [("to", address) for address in variables]
    fields += [("subject", subject), ("recipient-variables", orjson.dumps(variables).decode())]
    if text:
        fields.append(("text", text))
    if html or not text:
        fields.append(("html", html or " "))
    fields += [
        ("o:tag", f"mailerd-campaign-{campaign.id}"),
        (f"v:{compose.CAMPAIGN_KEY}", str(campaign.id)),
        (f"v:{compose.LEAD_KEY}", placeholder(compose.LEAD_KEY)),
    ]
    if any(values[UNSUBSCRIBE_VARIABLE] for values in variables.values()):
        fields += [
            ("h:List-Unsubscribe", f"<{placeholder(UNSUBSCRIBE_VARIABLE)}>"),
            ("h:List-Unsubscribe-Post", compose.ONE_CLICK),
        ]
    fields += [(f"h:{name}", value) for name, value in prepared.composer.headers]
    form = aiohttp.FormData(quote_fields=False, charset="utf-8")
    for name, value in fields:
        form.add_field(name, value)
    return form
