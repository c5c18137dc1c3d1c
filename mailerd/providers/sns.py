"""Amazon SNS HTTP(S) deliveries: parse the envelope, verify its signature, confirm subscriptions.

What is checked, in order (a refused request is a :class:`WebhookError`):

- The body is an SNS JSON envelope (sent as ``text/plain``) of type ``Notification``,
  ``SubscriptionConfirmation`` or ``UnsubscribeConfirmation``, with every field its canonical
  string needs -> else **400**, naming the field.
- ``TopicArn`` is one of ``topic_arns`` -> else **403** (like an IP allow-list: no signature
  makes another topic acceptable; SNS signs every account's topics with the same certificates).
  With no ``topic_arns``, every message is refused (**403** ``not_configured``) unless
  ``accept_any_topic`` is true or ``verify_signatures`` is false.
- ``SignatureVersion`` 1 (SHA1withRSA) or 2 (SHA256withRSA) over the canonical string of the
  message type; ``SigningCertURL`` is https on ``sns.<region>.amazonaws.com`` (China regions:
  ``.amazonaws.com.cn``), the region of a real region's shape (:data:`SNS_HOST`), with a path
  ending in ``.pem``; the certificate is within its validity dates -> else **401**,
  like every failed authentication of the other providers (see :mod:`webhook_auth`).
- ``Timestamp`` within ``max_age_s`` of now, either way (0 turns this off) -> else **401**.
- A certificate that cannot be fetched right now -> **503**, so SNS retries later.

Certificates come from ``cert_dir`` first (a file named after the last path segment of the
``SigningCertURL``, so verification works with no network), else over verified TLS, and are
kept in a small in-memory LRU cache. A ``SubscriptionConfirmation`` is confirmed by fetching
its ``SubscribeURL`` (host checked like the certificate URL) unless ``confirm_subscriptions``
is false (then it is only logged); an ``UnsubscribeConfirmation`` is only logged, never
re-subscribed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import datetime as dt
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailerd.config import SesWebhookConfig
from mailerd.providers import webhook_auth
from mailerd.providers.webhooks import WebhookError, WebhookRequest

log = structlog.get_logger(__name__)

# GET a URL (already checked to be https on an SNS host); the body, or raise FetchError.
Fetch = Callable[[str], Awaitable[bytes]]
Clock = Callable[[], dt.datetime]

NOTIFICATION: Final = "Notification"
SUBSCRIPTION_CONFIRMATION: Final = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION: Final = "UnsubscribeConfirmation"
# The fields of each message type's canonical string, in byte order ("Subject" only if present).
SIGNED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    UNSUBSCRIBE_CONFIRMATION: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
OPTIONAL_FIELDS: Final = frozenset({"Subject"})
SIGNATURE_HASHES: Final[Mapping[str, Callable[[], hashes.HashAlgorithm]]] = {
    "1": hashes.SHA1,  # SNS SignatureVersion 1 is SHA1withRSA by definition
    "2": hashes.SHA256,
}
# SNS's own host in a region, per partition, with the region shapes of the AWS SDKs' partition
# data (botocore endpoints.json "regionRegex"): aws, aws-us-gov (.amazonaws.com) and aws-cn
# (.amazonaws.com.cn). Anything looser lets other AWS hosts in: "sns.s3.amazonaws.com" and
# "sns.s3-us-west-2.amazonaws.com" are S3 addresses of a bucket named "sns", whose owner could
# serve a certificate and sign notifications.
SNS_HOST: Final = re.compile(
    r"sns\.(?:(?:us|eu|ap|sa|ca|me|af|il|mx|us-gov)-[a-z]+-\d{1,2}\.amazonaws\.com"
    r"|cn-[a-z]+-\d{1,2}\.amazonaws\.com\.cn)"
)
CERT_FILE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.pem")
MAX_CERTIFICATES: Final = 64
MAX_FETCH_BYTES: Final = 64 * 1024


class FetchError(Exception):
    """A certificate or confirmation URL could not be fetched (network, non-200 answer)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One SNS message as delivered; ``fields`` keeps the raw values the signature covers."""

    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: dt.datetime
    fields: Mapping[str, str]

    @property
    def subject(self) -> str | None:
        return self.fields.get("Subject")


# --- pure: parsing and verification --------------------------------------------------------


def parse_timestamp(value: str, field: str = "Timestamp") -> dt.datetime:
    """ISO 8601 (``2016-01-27T14:59:38.237Z``) as an aware datetime; naive means UTC."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise webhook_auth.bad_request(
            "invalid_timestamp", f"{field} is not an ISO 8601 timestamp: {value[:40]!r}", field
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def parse_envelope(body: bytes, headers: Mapping[str, str] | None = None) -> Envelope:
    """The SNS JSON envelope of a request body; 400 naming what is wrong."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise webhook_auth.bad_request(
            "invalid_json", "body is not JSON (an SNS message is expected)"
        ) from None
    if not isinstance(data, dict):
        raise webhook_auth.bad_request("not_sns", "body is not an SNS message (a JSON object is expected)")
    kind = data.get("Type")
    if not isinstance(kind, str) or kind not in SIGNED_FIELDS:
        raise webhook_auth.bad_request("not_sns", f"Type is not an SNS message type: {str(kind)[:40]!r}")
    header_type = (headers or {}).get("x-amz-sns-message-type")
    if header_type is not None and header_type != kind:
        raise webhook_auth.bad_request(
            "not_sns", f"x-amz-sns-message-type {header_type[:40]!r} does not match Type"
        )
    fields: dict[str, str] = {}
    required = (*SIGNED_FIELDS[kind], "SignatureVersion", "Signature", "SigningCertURL")
    for name in required:
        value = data.get(name)
        if value is None and name in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            problem = "missing" if value is None else "not a string"
            raise webhook_auth.bad_request("missing_field", f"{name} is {problem} in the SNS {kind}", name)
        fields[name] = value
    return Envelope(
        type=kind,
        message_id=webhook_auth.bounded_id(fields["MessageId"], "MessageId"),
        topic_arn=fields["TopicArn"],
        message=fields["Message"],
        timestamp=parse_timestamp(fields["Timestamp"]),
        fields=fields,
    )


def canonical_string(fields: Mapping[str, Any]) -> bytes:
    """The bytes SNS signs: ``"Key\\nValue\\n"`` for each signed field of the message type."""
    parts: list[str] = []
    for name in SIGNED_FIELDS[str(fields["Type"])]:
        value = fields.get(name)
        if value is None and name in OPTIONAL_FIELDS:
            continue
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


def check_sns_url(url: str, field: str, *, pem: bool = False) -> urllib.parse.SplitResult:
    """An https URL on ``sns.<region>.amazonaws.com(.cn)`` (path ending ``.pem`` when asked)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise webhook_auth.unauthorized("bad_url", f"{field} is not a URL") from None
    host = parts.hostname or ""
    if parts.scheme != "https":
        raise webhook_auth.unauthorized("bad_url", f"{field} must be https")
    if not SNS_HOST.fullmatch(host) or parts.username or parts.password or port not in (None, 443):
        raise webhook_auth.unauthorized("bad_url", f"{field} is not on an Amazon SNS host: {host[:80]!r}")
    if pem and (not parts.path.endswith(".pem") or parts.query or parts.fragment):
        raise webhook_auth.unauthorized("bad_url", f"{field} is not a .pem file")
    return parts


def cert_file_name(url: str) -> str:
    """The file a certificate of ``url`` is kept in under ``cert_dir``: its last path segment."""
    return urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]


def verify_signature(fields: Mapping[str, str], certificate: x509.Certificate, now: dt.datetime) -> None:
    """SignatureVersion 1/2 over the canonical string with ``certificate``; 403 when it fails."""
    version = fields.get("SignatureVersion", "")
    algorithm = SIGNATURE_HASHES.get(version)
    if algorithm is None:
        raise webhook_auth.unauthorized("bad_signature", f"unsupported SignatureVersion {version[:10]!r}")
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise webhook_auth.unauthorized(
            "bad_certificate", "the signing certificate is outside its validity dates"
        )
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise webhook_auth.unauthorized("bad_certificate", "the signing certificate does not hold an RSA key")
    try:
        signature = base64.b64decode(fields.get("Signature", ""), validate=True)
        key.verify(signature, canonical_string(fields), padding.PKCS1v15(), algorithm())
    except (binascii.Error, ValueError, InvalidSignature):
        raise webhook_auth.unauthorized("bad_signature", "the SNS signature does not verify") from None


def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise webhook_auth.unauthorized(
            "bad_certificate", "the signing certificate is not a PEM certificate"
        ) from None


# --- I/O: certificates and confirmations ---------------------------------------------------


class HttpsFetch:
    """GET over verified TLS (aiohttp's default SSL context), no redirects, size-capped."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            # No redirects: the checked host must be the one that answers.
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise FetchError(f"HTTP {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > MAX_FETCH_BYTES:
                        raise FetchError("answer too large")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        return bytes(body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class CertificateStore:
    """Signing certificates by URL: an LRU in memory, then ``cert_dir``, then the network."""

    def __init__(self, cert_dir: str, fetch: Fetch, max_entries: int = MAX_CERTIFICATES) -> None:
        self._dir = Path(cert_dir) if cert_dir else None
        self._fetch = fetch
        self._max = max_entries
        self._cache: collections.OrderedDict[str, x509.Certificate] = collections.OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, url: str) -> x509.Certificate:
        """The certificate of an already checked ``SigningCertURL``."""
        found = self._cache.get(url)
        if found is not None:
            self._cache.move_to_end(url)
            return found
        async with self._lock:  # one fetch per URL when many requests arrive at once
            found = self._cache.get(url)
            if found is None:
                found = load_certificate(await self._load(url))
                self._cache[url] = found
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
            return found

    async def _load(self, url: str) -> bytes:
        name = cert_file_name(url)
        if self._dir is not None and CERT_FILE_NAME.fullmatch(name):
            path = self._dir / name
            if path.is_file():
                log.info("sns_certificate_loaded", url=url, path=str(path))
                return await asyncio.to_thread(path.read_bytes)
        try:
            pem = await self._fetch(url)
        except FetchError as exc:
            log.warning("sns_certificate_fetch_failed", url=url, error=str(exc))
            raise WebhookError(
                503, "certificate_unavailable", "the signing certificate could not be fetched"
            ) from None
        log.info("sns_certificate_fetched", url=url)
        return pem


class SnsReceiver:
    """SNS-level handling shared by every SNS-fed webhook: verify, then confirm or hand over.

    :meth:`receive` returns the envelope of a verified ``Notification`` and ``None`` for a
    (handled) subscription or unsubscribe confirmation.
    """

    def __init__(
        self,
        config: SesWebhookConfig,
        *,
        fetch: Fetch | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._owned_fetch: HttpsFetch | None = None
        if fetch is None:
            self._owned_fetch = fetch = HttpsFetch()
        self._fetch = fetch
        self._clock: Clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._certificates = CertificateStore(config.cert_dir, self._fetch)
        self._topics = frozenset(config.topic_arns)

    async def receive(self, request: WebhookRequest) -> Envelope | None:
        """Check the request (see the module docstring); raise :class:`WebhookError` to refuse."""
        envelope = parse_envelope(request.body, request.headers)
        if self._topics and envelope.topic_arn not in self._topics:
            log.warning("sns_topic_refused", topic_arn=envelope.topic_arn, message_id=envelope.message_id)
            raise webhook_auth.forbidden(
                "topic_not_allowed", "TopicArn is not one of the configured topic_arns"
            )
        if not self._topics and self._config.verify_signatures and not self._config.accept_any_topic:
            # SNS signs every topic alike: with no topic of ours named, a valid signature could
            # come from anybody's topic (a subscription they made to this endpoint).
            log.warning("sns_topic_refused", topic_arn=envelope.topic_arn, message_id=envelope.message_id)
            raise webhook_auth.forbidden("not_configured", "no [webhooks.ses] topic_arns are configured")
        now = self._clock()
        if self._config.verify_signatures:
            cert_url = envelope.fields["SigningCertURL"]
            if envelope.fields["SignatureVersion"] not in SIGNATURE_HASHES:
                version = envelope.fields["SignatureVersion"][:10]
                raise webhook_auth.unauthorized("bad_signature", f"unsupported SignatureVersion {version!r}")
            check_sns_url(cert_url, "SigningCertURL", pem=True)
            verify_signature(envelope.fields, await self._certificates.get(cert_url), now)
        webhook_auth.check_fresh(
            envelope.timestamp.timestamp(), now.timestamp(), self._config.max_age_s, "Timestamp"
        )
        if envelope.type == SUBSCRIPTION_CONFIRMATION:
            await self._confirm(envelope)
            return None
        if envelope.type == UNSUBSCRIBE_CONFIRMATION:
            # Never re-subscribe: whoever unsubscribed the endpoint meant it.
            log.info("sns_unsubscribe_confirmation_received", topic_arn=envelope.topic_arn)
            return None
        return envelope

    async def _confirm(self, envelope: Envelope) -> None:
        url = envelope.fields["SubscribeURL"]
        check_sns_url(url, "SubscribeURL")
        if not self._config.confirm_subscriptions:
            log.info(
                "sns_subscription_not_confirmed",
                topic_arn=envelope.topic_arn,
                reason="confirm_subscriptions = false",
            )
            return
        try:
            await self._fetch(url)
        except FetchError as exc:
            log.warning("sns_subscription_confirm_failed", topic_arn=envelope.topic_arn, error=str(exc))
            raise WebhookError(503, "confirm_failed", "the subscription could not be confirmed") from None
        log.info("sns_subscription_confirmed", topic_arn=envelope.topic_arn)

    async def close(self) -> None:
        if self._owned_fetch is not None:
            await self._owned_fetch.close()
