"""Amazon SES v2: ``SendBulkEmail`` with one SES template per campaign, signed with SigV4.

SES events (bounces, complaints, deliveries through SNS) are parsed in :mod:`.ses_webhook`.

Kind ``sink`` is the same client pointed at the loopback emulator (:mod:`mailerd.emulator.sink`),
where missing credentials are replaced by dummy ones. Kind ``ses`` signs with ``access_key_id``
and ``secret_access_key``, or without them with the AWS credential chain, refreshed before the
credentials expire (:mod:`.aws_credentials`).

The campaign's sender goes in ``FromEmailAddress``, its ``reply_to`` in ``ReplyToAddresses``
(both 7-bit, as SES requires: a display name that is not ASCII RFC 2047 encoded, a domain in
Punycode; SES does not support SMTPUTF8, so a local part that is not ASCII cannot go), its
``headers`` in the template's ``Headers`` (``DefaultContent.Template``) and each recipient's
``List-Unsubscribe`` pair in its entry's ``ReplacementHeaders`` (SES v2 ``MessageHeader``:
printable ASCII, a value that is not ASCII RFC 2047 encoded; at most 15 headers a message). A
campaign SES cannot carry that way raises :class:`CampaignBroken` out of ``send`` with the
reason (the sender fails it): nothing of it is dropped silently.

Each recipient carries our ids as message tags (``mailerd_campaign``, ``mailerd_lead``) so
SES events and the sink map back to a lead without a lookup. The daemon does not render
bodies when the campaign's templates only print plain variables: SES fills its own template
from each recipient's ``ReplacementTemplateData`` (see :mod:`mailerd.content`).

How answers are classified (SES v2 API reference, ``BulkEmailEntryResult.Status`` and the
``SendBulkEmail`` errors):

- ``SUCCESS`` -> sent; ``TRANSIENT_FAILURE``, ``ACCOUNT_THROTTLED`` -> retry;
  ``TEMPLATE_NOT_FOUND`` -> retry (the template is created again first);
  ``MESSAGE_REJECTED``, ``INVALID_PARAMETER``, ``FAILED`` (the non-transient catch-all) and any
  status this code does not know -> failed, reason ``STATUS: Error``.
- Account or configuration states that no retry fixes (``ACCOUNT_SUSPENDED``,
  ``ACCOUNT_SENDING_PAUSED``, ``CONFIGURATION_SET_SENDING_PAUSED``,
  ``ACCOUNT_DAILY_QUOTA_EXCEEDED``, ``MAIL_FROM_DOMAIN_NOT_VERIFIED``,
  ``CONFIGURATION_SET_NOT_FOUND``, ``INVALID_SENDING_POOL_NAME``) halt the campaign when no
  entry of the call succeeded or is unknown (missing, unreadable); beside those they are
  retried (the retry then halts), so a sent recipient is never reported as anything but sent
  and an unknown one is never dropped.
- Whole call: 429, ``TooManyRequestsException``, ``LimitExceededException``, 5xx, timeouts and
  connection errors -> :class:`RetryableError`; ``SendingPausedException``,
  ``AccountSuspendedException``, ``MailFromDomainNotVerifiedException``, 401/403 ->
  :class:`HaltError`; ``NotFoundException`` -> retryable (template re-created); other 4xx ->
  :class:`PermanentError`.
- A lead whose address is not one ``local@domain`` (SES answers ``BadRequestException`` for the
  whole call) is failed alone before the call (:func:`.compose.is_mailbox`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from email.header import Header
from typing import Any, Final

import aiohttp
import orjson
import structlog
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from mailerd import backoff
from mailerd import content as content_mod
from mailerd.config import ConfigError, ContentConfig, ProviderConfig
from mailerd.models import (
    Batch,
    Campaign,
    CampaignBroken,
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
from mailerd.providers import api_call, aws_credentials, compose

log = structlog.get_logger(__name__)

# (campaign, lead) -> the lead's one-click unsubscribe URL (see mailerd/unsubscribe.py).
UnsubscribeUrl = Callable[[Campaign, Lead], str]

SEND_BULK_PATH: Final = "/v2/email/outbound-bulk-emails"
TEMPLATES_PATH: Final = "/v2/email/templates"
ACCOUNT_PATH: Final = "/v2/email/account"
CAMPAIGN_TAG: Final = "mailerd_campaign"
LEAD_TAG: Final = "mailerd_lead"
MAX_BATCH_SIZE: Final = 50
DEFAULT_SINK_ENDPOINT: Final = "http://127.0.0.1:8026"
DEFAULT_REGION: Final = "us-east-1"
# SES v2 MessageHeader / MessageHeaderList (API reference; botocore's sesv2 service model)
MAX_MESSAGE_HEADERS: Final = 15  # "no more than 15 headers in one message"
MAX_HEADER_LINE: Final = 996  # name and value together
_NEEDS_SMTPUTF8 = "SES does not support SMTPUTF8: the part of the address before @ must be ASCII"
UNSUBSCRIBE_HEADERS: Final = 2  # List-Unsubscribe, List-Unsubscribe-Post: in each entry
_HEADER_NAME: Final = re.compile(r"[!-9;-@A-~]{1,126}")
_HEADER_VALUE: Final = re.compile(r"[ -~]{1,995}")

RETRY_STATUSES: Final = frozenset(
    {"TRANSIENT_FAILURE", "ACCOUNT_THROTTLED", "TEMPLATE_NOT_FOUND", "TEMPLATE_DOES_NOT_EXIST"}
)
TEMPLATE_MISSING_STATUSES: Final = frozenset({"TEMPLATE_NOT_FOUND", "TEMPLATE_DOES_NOT_EXIST"})
HALT_STATUSES: Final = frozenset(
    {
        "ACCOUNT_SUSPENDED",
        "ACCOUNT_SENDING_PAUSED",
        "CONFIGURATION_SET_SENDING_PAUSED",
        "ACCOUNT_DAILY_QUOTA_EXCEEDED",
        "MAIL_FROM_DOMAIN_NOT_VERIFIED",
        "CONFIGURATION_SET_NOT_FOUND",
        "CONFIGURATION_SET_DOES_NOT_EXIST",
        "INVALID_SENDING_POOL_NAME",
    }
)
RETRY_ERRORS: Final = frozenset(
    {
        "TooManyRequestsException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "InternalServiceErrorException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ConcurrentModificationException",
        "NotFoundException",  # the campaign's template vanished: re-created before the retry
    }
)
HALT_ERRORS: Final = frozenset(
    {"SendingPausedException", "AccountSuspendedException", "MailFromDomainNotVerifiedException"}
)


# --- pure: classification ---------------------------------------------------------------------


def classify_entry(status: str | None, error: str | None, message_id: str | None = None) -> RecipientResult:
    """One ``BulkEmailEntryResult`` as our outcome; halting statuses come back as RETRY."""
    if status == "SUCCESS":
        return RecipientResult(Outcome.SENT, message_id=message_id)
    reason = f"{status}: {error}" if error else str(status)
    if status in RETRY_STATUSES or status in HALT_STATUSES:
        return RecipientResult(Outcome.RETRY, error=reason)
    return RecipientResult(Outcome.FAILED, error=reason)


def parse_results(entries: Sequence[Any], expected: int) -> list[RecipientResult]:
    """``BulkEmailEntryResults`` -> one result per entry sent; raises HaltError (see module doc).

    The call went through, so SES may have sent every email it names: an entry that is missing,
    or not an object with a text ``Status``, is ``unknown``, never retried and never failed.
    """
    results: list[RecipientResult] = []
    halt: str | None = None
    maybe_sent = False  # an entry sent, or unknown: a halt would drop it
    append = results.append
    for entry in entries[:expected]:
        status = entry.get("Status") if isinstance(entry, dict) else None
        if status == "SUCCESS":  # the common case, inline
            maybe_sent = True
            found = entry.get("MessageId")
            append(RecipientResult(Outcome.SENT, found if type(found) is str else _message_id(found)))
            continue
        if not isinstance(status, str):
            maybe_sent = True
            append(
                RecipientResult(Outcome.UNKNOWN, error="uncertain: an unreadable SES result for this entry")
            )
            continue
        error = entry.get("Error")
        result = classify_entry(
            status, error if isinstance(error, str) else None, _message_id(entry.get("MessageId"))
        )
        if result.outcome is Outcome.SENT:
            maybe_sent = True
        elif halt is None and status in HALT_STATUSES:
            halt = result.error
        append(result)
    if halt is not None and not maybe_sent and len(results) == expected:
        raise HaltError(halt)
    missing = RecipientResult(Outcome.UNKNOWN, error="uncertain: no result from SES for this entry")
    results.extend(missing for _ in range(expected - len(results)))
    return results


def _destination(address: str) -> str | RecipientResult:
    """A lead's address as SES takes it, or its failure: SES refuses the whole call (400) for
    one address it cannot parse, and takes 7-bit addresses only (the domain in A-labels)."""
    if not compose.is_mailbox(address):
        return RecipientResult(Outcome.FAILED, error=compose.NOT_A_MAILBOX)
    if address.isascii():
        return address
    to = compose.seven_bit_address(address)
    if not to.isascii():
        return RecipientResult(Outcome.FAILED, error=_NEEDS_SMTPUTF8)
    # IDNA can map a domain character to a space (U+037A, U+FE70-FE7E): checked again as sent
    return to if compose.is_mailbox(to) else RecipientResult(Outcome.FAILED, error=compose.NOT_A_MAILBOX)


def _status(entry: Any) -> str | None:
    status = entry.get("Status") if isinstance(entry, dict) else None
    return status if isinstance(status, str) else None


def _message_id(value: Any) -> str | None:
    """SES's message id as text (a number written as one; anything else is no id): the writer's
    COPY takes text only, and one bad id would have dead-lettered the batch's rows."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def classify_error(
    http_status: int, error_type: str | None, message: str | None, retry_after: float | None
) -> ProviderError:
    """A failed call (non-2xx) as the error the sender acts on."""
    reason = f"{error_type or f'HTTP {http_status}'}: {message}" if message else None
    reason = reason or error_type or f"HTTP {http_status}"
    if error_type in HALT_ERRORS or http_status in (401, 403):
        return HaltError(reason)
    if error_type in RETRY_ERRORS or http_status == 429 or http_status >= 500:
        return RetryableError(reason, retry_after)
    return PermanentError(reason)


def parse_error(
    http_status: int, headers: Mapping[str, str], body: bytes
) -> tuple[str | None, str | None, float | None]:
    """``(error_type, message, retry_after)`` of an error response (header first, then body)."""
    error_type = headers.get("x-amzn-ErrorType") or None
    message: str | None = None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        raw = data.get("message") or data.get("Message")
        message = str(raw) if raw is not None else None
        if error_type is None:
            found = data.get("__type") or data.get("code") or data.get("Code")
            error_type = str(found) if found else None
    elif body and http_status >= 400:
        message = body[:200].decode("utf-8", "replace")
    if error_type:
        error_type = error_type.split(":", 1)[0].rsplit("#", 1)[-1]
    return error_type, message, backoff.parse_retry_after(headers.get("Retry-After"))


def template_name(campaign_id: int) -> str:
    return f"mailerd-campaign-{campaign_id}"


def message_fields(
    from_address: str, reply_to: str | None, extra_headers: Iterable[tuple[str, str]], per_recipient: int
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The request's ``FromEmailAddress`` and ``ReplyToAddresses``, and the template's
    ``Headers``, as SES takes them (see the module docstring); ``per_recipient``: how many
    headers each entry adds. ValueError, naming the campaign field, for what SES cannot carry
    (campaign creation asks first: :func:`mailerd.campaigns.validate`)."""
    fields: dict[str, Any] = {"FromEmailAddress": _seven_bit("from", from_address)}
    if reply_to:
        fields["ReplyToAddresses"] = [_seven_bit("reply_to", reply_to)]
    headers = [_message_header(name, value) for name, value in extra_headers]
    if len(headers) + per_recipient > MAX_MESSAGE_HEADERS:
        raise ValueError(
            f"headers: SES takes {MAX_MESSAGE_HEADERS} headers a message, {per_recipient} of them "
            f"mailerd's own: at most {MAX_MESSAGE_HEADERS - per_recipient}, got {len(headers)}"
        )
    return fields, headers


def _seven_bit(field: str, text: str) -> str:
    try:
        return compose.seven_bit_mailbox(text)
    except compose.NeedsSmtpUtf8:
        raise ValueError(
            f"{field}: SES does not support SMTPUTF8: the part before @ must be ASCII ({text[:100]!r})"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _message_header(name: str, value: str) -> dict[str, str]:
    """One ``MessageHeader``: printable ASCII, so a value that is not ASCII is RFC 2047 encoded
    (as the SMTP client writes it), on one line."""
    if not value.isascii():
        value = Header(value, "utf-8", header_name=name).encode(linesep="")
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"headers.{name[:40]}: SES takes a header name of printable ASCII without ':'")
    if not _HEADER_VALUE.fullmatch(value) or len(name) + len(value) > MAX_HEADER_LINE:
        raise ValueError(
            f"headers.{name[:40]}: SES takes a value of 1 to {MAX_HEADER_LINE - len(name)} printable "
            f"ASCII characters (one that is not ASCII counted RFC 2047 encoded), got {len(value)}"
        )
    return {"Name": name, "Value": value}


# --- the client ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    """What ``send`` needs of a campaign, computed once."""

    content: content_mod.Content
    template: content_mod.SesTemplate
    default_content: dict[str, Any]
    campaign_tag: dict[str, str]
    fields: dict[str, Any]  # FromEmailAddress, ReplyToAddresses
    unsendable: str | None = None  # why SES cannot carry the campaign (message_fields)


class SesProvider:
    """SES v2 over one keep-alive aiohttp session; see the module docstring for outcomes."""

    max_batch_size: int = MAX_BATCH_SIZE

    def __init__(
        self,
        config: ProviderConfig,
        unsubscribe: UnsubscribeUrl | None = None,
        content_limits: ContentConfig | None = None,
    ) -> None:
        self.name = config.name or config.kind
        self._config = config
        self._unsubscribe = unsubscribe
        self._limits = content_limits or ContentConfig()
        default = DEFAULT_SINK_ENDPOINT if config.kind == "sink" else ""
        self._region = config.region or DEFAULT_REGION
        endpoint = config.endpoint or default or f"https://email.{self._region}.amazonaws.com"
        self._endpoint = endpoint.rstrip("/")
        if (config.access_key_id is None) != (config.secret_access_key is None):
            raise ConfigError(
                f"[providers.{self.name}] access_key_id and secret_access_key go together "
                "(or leave both out to use the AWS credential chain)"
            )
        self._credentials = aws_credentials.AwsCredentials(config)
        self._session: aiohttp.ClientSession | None = None
        self._prepared: dict[int, _Prepared] = {}
        self._prepare_lock = asyncio.Lock()

    # Provider protocol --------------------------------------------------------------------

    async def prepare(self, campaign: Campaign) -> None:
        """Compile the content and create (or update) the campaign's SES template."""
        async with self._prepare_lock:
            if campaign.id in self._prepared:
                return
            try:
                content = content_mod.compile_content(
                    campaign.subject, campaign.html_body, campaign.text_body, limits=self._limits
                )
            except content_mod.TemplateError as exc:
                raise PermanentError(f"template error: {exc}") from None
            template = content_mod.ses_template(content)
            name = template_name(campaign.id)
            tag = {"Name": CAMPAIGN_TAG, "Value": str(campaign.id)}
            default_content: dict[str, Any] = {"Template": {"TemplateName": name, "TemplateData": "{}"}}
            per_recipient = UNSUBSCRIBE_HEADERS if self._unsubscribe is not None else 0
            try:
                fields, headers = message_fields(
                    campaign.from_address, campaign.reply_to, campaign.headers, per_recipient
                )
            except ValueError as exc:
                # Not raised here: a failed prepare is tried again at every poll. send raises it.
                reason = f"SES cannot send this campaign: {exc}"
                self._prepared[campaign.id] = _Prepared(content, template, default_content, tag, {}, reason)
                log.error("ses_campaign_unsendable", campaign_id=campaign.id, reason=reason)
                return
            if headers:
                default_content["Template"]["Headers"] = headers
            await self._put_template(name, template)
            self._prepared[campaign.id] = _Prepared(content, template, default_content, tag, fields)
            log.info(
                "ses_template_prepared",
                campaign_id=campaign.id,
                template=name,
                generic=template.generic,
                variables=len(template.variables),
            )

    async def send(self, batch: Batch) -> list[RecipientResult]:
        """One ``SendBulkEmail`` call for the batch; render failures fail only their lead."""
        if len(batch.leads) > MAX_BATCH_SIZE:
            raise ValueError(f"SES takes at most {MAX_BATCH_SIZE} recipients per call")
        campaign = batch.campaign
        prepared = self._prepared.get(campaign.id)
        if prepared is None:
            await self.prepare(campaign)
            prepared = self._prepared[campaign.id]
        if prepared.unsendable is not None:
            raise CampaignBroken(prepared.unsendable)
        results: list[RecipientResult | None] = [None] * len(batch.leads)
        entries: list[dict[str, Any]] = []
        positions: list[int] = []
        template, content, campaign_tag = prepared.template, prepared.content, prepared.campaign_tag
        template_data, dumps = content_mod.template_data, orjson.dumps
        unsubscribe = self._unsubscribe
        for position, lead in enumerate(batch.leads):
            to = _destination(lead.email)
            if isinstance(to, RecipientResult):
                results[position] = to
                continue
            url = unsubscribe(campaign, lead) if unsubscribe is not None else ""
            try:
                data = template_data(template, content, lead, campaign, url)
            except content_mod.BudgetExceeded as exc:
                # Tenant content that passed the creation check but not this lead: sending the
                # rest would render the same template again; the campaign fails with the reason.
                raise CampaignBroken(f"lead {lead.id}: {exc}") from None
            except content_mod.RenderError as exc:
                results[position] = RecipientResult(Outcome.FAILED, error=f"render failed: {exc}")
                continue
            entry: dict[str, Any] = {
                "Destination": {"ToAddresses": [to]},
                "ReplacementTags": [campaign_tag, {"Name": LEAD_TAG, "Value": str(lead.id)}],
                "ReplacementEmailContent": {
                    "ReplacementTemplate": {"ReplacementTemplateData": dumps(data).decode()}
                },
            }
            if url:
                # Per-recipient headers, so the provider's DKIM signature covers them (RFC 8058).
                entry["ReplacementHeaders"] = [
                    {"Name": "List-Unsubscribe", "Value": f"<{url}>"},
                    {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
                ]
            entries.append(entry)
            positions.append(position)
        if entries:
            sent = await self._send_entries(
                campaign, prepared, entries, whole=len(positions) == len(batch.leads)
            )
            for position, result in zip(positions, sent, strict=True):
                results[position] = result
        return [r for r in results if r is not None]

    async def _send_entries(
        self, campaign: Campaign, prepared: _Prepared, entries: list[dict[str, Any]], *, whole: bool
    ) -> list[RecipientResult]:
        """The ``SendBulkEmail`` call of a batch's entries (``whole``: every lead of the batch;
        else some failed to render, and only the entries' results may be uncertain)."""
        request: dict[str, Any] = {
            **prepared.fields,
            "DefaultContent": prepared.default_content,
            "BulkEmailEntries": entries,
        }
        if self._config.configuration_set:
            request["ConfigurationSetName"] = self._config.configuration_set
        try:
            answer = await self._call("POST", SEND_BULK_PATH, request, idempotent=False)
            return self._entry_results(answer, len(entries), campaign.id)
        except RetryableError as exc:
            if exc.reason.startswith("NotFoundException"):
                self._prepared.pop(campaign.id, None)
            raise
        except UncertainError as exc:
            return api_call.uncertain_part(
                exc, len(entries), whole=whole, resend_uncertain=campaign.resend_uncertain
            )

    def forget(self, campaign_id: int) -> None:
        """Drop the compiled content and template of a campaign this node no longer sends."""
        self._prepared.pop(campaign_id, None)

    async def send_quota(self) -> SendQuota | None:
        """``GetAccount`` -> ``SendQuota``: ``MaxSendRate`` (emails per second) and
        ``Max24HourSend`` (emails per rolling 24 hours; -1: unlimited) and ``SentLast24Hours``."""
        answer = await self._call("GET", ACCOUNT_PATH, None)
        quota = answer.get("SendQuota") if isinstance(answer, dict) else None
        if not isinstance(quota, dict):
            return None
        rate, daily = _positive(quota.get("MaxSendRate")), _positive(quota.get("Max24HourSend"))
        sent = _positive(quota.get("SentLast24Hours"))
        return SendQuota(rate, None if daily is None else int(daily), None if sent is None else int(sent))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # internals ----------------------------------------------------------------------------

    def _entry_results(self, answer: Any, expected: int, campaign_id: int) -> list[RecipientResult]:
        entries = answer.get("BulkEmailEntryResults") if isinstance(answer, dict) else None
        if not isinstance(entries, list):
            # The call succeeded, so SES may have sent: never retried, each one unknown.
            raise UncertainError("an unreadable SendBulkEmail response")
        results = parse_results(entries, expected)
        if any(_status(e) in TEMPLATE_MISSING_STATUSES for e in entries[:expected]):
            self._prepared.pop(campaign_id, None)
        return results

    async def _put_template(self, name: str, template: content_mod.SesTemplate) -> None:
        """CreateEmailTemplate; when it exists (a restart, another node) overwrite its content.

        Overwriting matters: a template left by an older database with the same campaign id
        must not be sent in place of this campaign's content.
        """
        template_content = {
            "Subject": template.subject,
            "Html": template.html,
            "Text": template.text,
        }
        try:
            await self._call(
                "POST", TEMPLATES_PATH, {"TemplateName": name, "TemplateContent": template_content}
            )
        except PermanentError as exc:
            if not exc.reason.startswith("AlreadyExistsException"):
                raise
            await self._call("PUT", f"{TEMPLATES_PATH}/{name}", {"TemplateContent": template_content})

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=max(1, self._config.concurrency) + 2, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=api_call.client_timeout(self._config),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _call(
        self, method: str, path: str, payload: dict[str, Any] | None, *, idempotent: bool = True
    ) -> Any:
        """Sign and send one request; the decoded JSON answer, or a ProviderError."""
        url = self._endpoint + path
        body = orjson.dumps(payload) if payload is not None else b""
        try:
            credentials = await self._credentials.current()
        except HaltError:
            raise
        except Exception as exc:  # STS or a metadata service down: nothing was sent
            raise RetryableError(f"AWS credentials: {type(exc).__name__}: {exc}") from exc
        headers = self._sign(method, url, body, credentials)
        try:
            async with self._http().request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                api_call.refuse_redirect(response)
                raw = await api_call.read_answer(response)
                status = response.status
                if status >= 300:
                    error_type, message, retry_after = parse_error(status, response.headers, raw)
                    raise classify_error(status, error_type, message, retry_after)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Not connected (refused, or no connection within the connect timeout, waiting for a
            # pooled one included): the request never left, so trying again is always safe.
            raise RetryableError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The request may have gone out: SES may have sent. Only idempotent calls retry.
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if idempotent:
                raise RetryableError(reason) from exc
            raise UncertainError(reason) from exc
        if not raw:
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None

    def _sign(self, method: str, url: str, body: bytes, credentials: ReadOnlyCredentials) -> dict[str, str]:
        """SigV4 over host, x-amz-date and content-type only: fewer headers, less hashing."""
        request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
        SigV4Auth(credentials, "ses", self._region).add_auth(request)
        return dict(request.headers.items())


def _positive(value: Any) -> float | None:
    """A positive number of the answer (SES writes -1 for "unlimited"), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
