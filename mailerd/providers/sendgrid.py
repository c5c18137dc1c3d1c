"""SendGrid v3 Mail Send (``POST /v3/mail/send``): one call per batch, one personalization per
recipient (up to 1,000), ``Authorization: Bearer <api_key>``. Events come back through
:mod:`.sendgrid_webhook`.

Each personalization carries the recipient, our ids in ``custom_args`` (they come back as
top-level keys of every event), ``List-Unsubscribe``/``List-Unsubscribe-Post`` in its own
``headers`` (RFC 8058, per recipient), and its content:

- templates of plain variables: the message-level content holds a substitution tag per variable
  (``[%name%]``, or ``[%name:html%]`` for the HTML-escaped value) and each personalization its
  ``substitutions`` (SendGrid applies them to subject, text and HTML); a recipient whose values
  pass SendGrid's 10,000 bytes of substitutions per personalization is rendered here and sent in
  a call of its own with the content inline;
- other templates: each recipient is rendered here and the parts travel as substitutions of
  ``[%mailerd:subject%]`` etc.; a recipient whose substitutions pass SendGrid's 10,000 bytes per
  personalization is sent in a call of its own with the rendered content inline (the calls of a
  batch go at most as many at a time as the pool has connections: :class:`.api_call.ApiSession`);
- a campaign with ``provider_template`` (a dynamic template id, ``d-...``): no content, each
  personalization's ``dynamic_template_data`` is the template model (lead, campaign,
  unsubscribe_url: :func:`mailerd.providers.compose.template_model`).

``region = "eu"`` sends through ``https://api.eu.sendgrid.com`` (EU data residency), else
``https://api.sendgrid.com``; ``endpoint`` overrides both.

How answers are classified (SendGrid v3 API reference, "Mail Send" responses and "Errors"; the
rate-limit headers of "Rate Limits"):

- ``202 Accepted`` -> sent, every recipient of the call: SendGrid answers for the request, never
  per recipient (a recipient it drops later arrives as a ``dropped`` or ``bounce`` event). The
  message id of each is the ``X-Message-Id`` header (the prefix of the events' ``sg_message_id``).
  ``200`` (sandbox mode) too. Any other 2xx, or one whose body is not empty JSON without
  ``errors`` (a proxy's page), -> unknown: it went through and says nothing more.
- ``429`` -> retry, after ``X-RateLimit-Reset`` (the epoch second the limit resets) or
  ``Retry-After``; ``5xx`` -> retry.
- ``401`` (bad API key) and ``403`` (key without mail.send, unverified sender, account
  suspended or over its credits) -> halt: no retry fixes them.
- ``400`` (a field refused; the reasons are the ``errors[].message`` with their ``field``), ``413``
  (payload too large) and other 4xx -> failed, for every recipient of the call. A lead whose
  address is not one ``local@domain`` (SendGrid's "Does not contain a valid address.", which
  refuses the whole request) is failed alone before the call (:func:`.compose.is_mailbox`).
- A timeout or a connection broken after the request went out -> unknown (the mail may have
  gone), never retried silently; a connection that could not be made (or
  not within :func:`.api_call.client_timeout`'s connect timeout) -> retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Final

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

SEND_PATH: Final = "/v3/mail/send"
MAX_BATCH_SIZE: Final = 1000
MAX_SUBSTITUTION_BYTES: Final = 10_000
GLOBAL_ENDPOINT: Final = "https://api.sendgrid.com"
EU_ENDPOINT: Final = "https://api.eu.sendgrid.com"
_PARTS: Final = ("subject", "html", "text")


def endpoint_for(config: ProviderConfig) -> str:
    """The API base URL: ``endpoint``, else the EU or global one by ``region``."""
    if config.region not in ("", "us", "global", "eu"):
        raise ConfigError(f'[providers.{config.name}] region: expected "eu", "us" or empty for kind sendgrid')
    if config.endpoint:
        return config.endpoint.rstrip("/")
    return EU_ENDPOINT if config.region == "eu" else GLOBAL_ENDPOINT


def tag(name: str, html: bool) -> str:
    """The substitution tag of a plain variable (its escaped form for the HTML part)."""
    return f"[%{name}:html%]" if html else f"[%{name}%]"


def classify(answer: api_call.Answer, now: float | None = None) -> ProviderError | None:
    """None for 202 (200 in sandbox mode) with no errors in it; else the error the call's answer
    means (see the module docstring). Any other 2xx, or one that carries errors (a proxy's page,
    a lying gateway), went through without saying what became of it: uncertain."""
    if answer.status in (200, 202):
        body = answer.json() if answer.body.strip() else {}
        if isinstance(body, dict) and not body.get("errors"):
            return None
        return UncertainError(
            f"HTTP {answer.status} with an answer SendGrid does not give: {answer.body[:100]!r}"
        )
    if 200 <= answer.status < 300:
        return UncertainError(f"HTTP {answer.status}: not SendGrid's 202")
    detail = error_reasons(answer.json()) or answer.body[:200].decode("utf-8", "replace")
    reason = f"HTTP {answer.status}: {detail}"
    if answer.status == 429:
        return RetryableError(reason, retry_after(answer.headers, now))
    if answer.status >= 500:
        return RetryableError(reason, backoff.parse_retry_after(answer.headers.get("Retry-After")))
    if answer.status in (401, 403):
        return HaltError(reason)
    return PermanentError(reason)


def error_reasons(body: Any) -> str:
    """``errors[].message`` (with ``field``) of an error body, joined; empty when there are none."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return ""
    reasons = []
    for error in errors[:5]:
        if isinstance(error, dict) and error.get("message"):
            field = error.get("field")
            reasons.append(f"{field}: {error['message']}" if field else str(error["message"]))
    return "; ".join(reasons)


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (epoch seconds), else ``Retry-After``."""
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None and reset.strip().isdigit():
        return max(0.0, int(reset) - (time.time() if now is None else now))
    return backoff.parse_retry_after(headers.get("Retry-After"))


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    composer: compose.Composer
    tagged: tuple[str, str, str] | None


class SendgridProvider:
    """SendGrid v3 Mail Send over one keep-alive session; see the module docstring."""

    max_batch_size: int = MAX_BATCH_SIZE

    def __init__(
        self,
        config: ProviderConfig,
        unsubscribe: compose.UnsubscribeUrl | None = None,
        content_limits: ContentConfig | None = None,
    ) -> None:
        self.name = config.name or config.kind
        if config.api_key is None:
            raise ConfigError(f"[providers.{self.name}] api_key: required for kind sendgrid")
        self._url = endpoint_for(config) + SEND_PATH
        self._api = api_call.ApiSession(
            config,
            {"Authorization": f"Bearer {config.api_key.reveal()}", "Content-Type": "application/json"},
        )
        self._prepared = compose.PerCampaign(
            unsubscribe, content_limits, lambda composer: _Prepared(composer, composer.tagged(tag))
        )

    async def prepare(self, campaign: Campaign) -> None:
        """Compile the campaign's templates (nothing is stored at SendGrid)."""
        self._prepared.get(campaign)

    async def send(self, batch: Batch) -> list[RecipientResult]:
        """One call for the batch (plus one per oversized rendered recipient)."""
        if len(batch.leads) > MAX_BATCH_SIZE:
            raise ValueError(f"SendGrid takes at most {MAX_BATCH_SIZE} personalizations per call")
        prepared = self._prepared.get(batch.campaign)
        builder = _Request(batch.campaign, prepared)
        results: list[RecipientResult | None] = [None] * len(batch.leads)
        for position, lead in enumerate(batch.leads):
            failure = builder.add(position, lead)
            if failure is not None:
                results[position] = RecipientResult(Outcome.FAILED, error=failure)
        calls = builder.calls()
        parts = await asyncio.gather(*(self._call(body, len(positions)) for positions, body in calls))
        combined = api_call.combine(
            [(positions, part) for (positions, _), part in zip(calls, parts, strict=True)],
            len(batch.leads),
            whole=all(result is None for result in results),
            resend_uncertain=batch.campaign.resend_uncertain,
        )
        return [result or combined[i] for i, result in enumerate(results)]

    async def _call(self, body: dict[str, Any], count: int) -> list[RecipientResult] | ProviderError:
        try:
            answer = await self._api.request("POST", self._url, data=orjson.dumps(body))
        except ProviderError as exc:
            return exc
        error = classify(answer)
        if error is not None:
            return error
        message_id = answer.headers.get("X-Message-Id")
        return [RecipientResult(Outcome.SENT, message_id=message_id)] * count

    def forget(self, campaign_id: int) -> None:
        self._prepared.forget(campaign_id)

    async def send_quota(self) -> SendQuota | None:
        return None  # SendGrid publishes no per-second ceiling through the API

    async def close(self) -> None:
        await self._api.close()


class _Request:
    """The calls of one batch: the shared one, and one per recipient too big for substitutions."""

    def __init__(self, campaign: Campaign, prepared: _Prepared) -> None:
        self._campaign = campaign
        self._composer = prepared.composer
        self._tagged = prepared.tagged
        self._positions: list[int] = []
        self._personalizations: list[dict[str, Any]] = []
        self._solo: list[tuple[list[int], dict[str, Any]]] = []

    def add(self, position: int, lead: Any) -> str | None:
        """Add one recipient; returns why it fails instead (an address SendGrid would refuse the
        whole call for, a render error), else None."""
        if not compose.is_mailbox(lead.email):
            return compose.NOT_A_MAILBOX
        composer = self._composer
        url = composer.unsubscribe_url(lead)
        personalization: dict[str, Any] = {
            "to": [{"email": lead.email}],
            "custom_args": dict(compose.ids(self._campaign.id, lead.id)),
        }
        headers = dict(compose.unsubscribe_headers(url))
        if headers:
            personalization["headers"] = headers
        if self._campaign.provider_template:
            personalization["dynamic_template_data"] = compose.template_model(lead, self._campaign, url)
        elif self._tagged is not None:
            substitutions = _substitutions(composer.values(lead, url))
            if _too_big(substitutions):  # refused, for the whole call: alone, rendered
                return self._alone(position, lead, personalization)
            personalization["substitutions"] = substitutions
        else:
            rendered = composer.render(lead)
            if rendered.failure is not None:
                return rendered.failure
            parts = dict(zip(_PARTS, (rendered.subject, rendered.html, rendered.text), strict=True))
            substitutions = {tag(f"mailerd:{name}", False): value for name, value in parts.items()}
            if _too_big(substitutions):
                self._solo.append(([position], self._body([personalization], *parts.values())))
                return None
            personalization["substitutions"] = substitutions
        self._positions.append(position)
        self._personalizations.append(personalization)
        return None

    def _alone(self, position: int, lead: Any, personalization: dict[str, Any]) -> str | None:
        """The recipient in a call of its own, its content rendered inline; or its render error."""
        rendered = self._composer.render(lead)
        if rendered.failure is not None:
            return rendered.failure
        parts = (rendered.subject, rendered.html, rendered.text)
        self._solo.append(([position], self._body([personalization], *parts)))
        return None

    def calls(self) -> list[tuple[list[int], dict[str, Any]]]:
        calls = list(self._solo)
        if self._personalizations:
            if self._tagged is not None:
                subject, html, text = self._tagged
            else:
                subject, html, text = (tag(f"mailerd:{name}", False) for name in _PARTS)
            calls.insert(0, (self._positions, self._body(self._personalizations, subject, html, text)))
        return calls

    def _body(
        self, personalizations: list[dict[str, Any]], subject: str, html: str, text: str
    ) -> dict[str, Any]:
        campaign = self._campaign
        name, address = compose.split_address(campaign.from_address)
        body: dict[str, Any] = {
            "personalizations": personalizations,
            "from": {"email": address, **({"name": name} if name else {})},
        }
        if campaign.provider_template:
            body["template_id"] = campaign.provider_template
        else:
            body["subject"] = subject
            body["content"] = _content(html, text)
        if campaign.reply_to:
            reply_name, reply_address = compose.split_address(campaign.reply_to)
            body["reply_to"] = {"email": reply_address, **({"name": reply_name} if reply_name else {})}
        if campaign.headers:
            body["headers"] = dict(campaign.headers)
        return body


def _content(html: str, text: str) -> list[dict[str, str]]:
    """text/plain first (SendGrid's rule), then text/html; empty parts are left out."""
    content = [{"type": "text/plain", "value": text}] if text else []
    if html or not content:
        content.append({"type": "text/html", "value": html or " "})
    return content


def _too_big(substitutions: dict[str, str]) -> bool:
    """Whether a personalization's substitutions pass SendGrid's 10,000 bytes (it refuses the
    whole request, 400). Serialized only when their length could: a character takes at most 6
    bytes of JSON (``\\u0001``), a pair 6 more (quotes, colon, comma)."""
    chars = sum(len(name) + len(value) + 1 for name, value in substitutions.items())
    return (
        chars * 6 + 2 > MAX_SUBSTITUTION_BYTES and len(orjson.dumps(substitutions)) > MAX_SUBSTITUTION_BYTES
    )


def _substitutions(values: list[tuple[str, str, str]]) -> dict[str, str]:
    substitutions: dict[str, str] = {}
    for name, raw, escaped in values:
        substitutions[tag(name, False)] = raw
        substitutions[tag(name, True)] = escaped
    return substitutions
