"""SES events as the loopback sink posts them: event-publishing records inside signed SNS messages.

:class:`SnsEmulatorSigner` plays SNS: it makes its own RSA-2048 key and self-signed certificate
and signs with SignatureVersion 2 (or 1), exactly as :mod:`mailerd.providers.sns` verifies.
:func:`ses_event_record` writes the SES record inside, in the documented shape, tagged with our
ids the way :mod:`mailerd.providers.ses` sends them.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind
from mailerd.providers import ses, sns

SINK_TOPIC_ARN: Final = "arn:aws:sns:us-east-1:000000000000:mailerd-sink"
SINK_CERT_URL: Final = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-mailerd-sink.pem"


def iso_timestamp(when: dt.datetime) -> str:
    """SNS/SES timestamp style: ``2016-01-27T14:59:38.237Z``."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sign(fields: Mapping[str, str], key: rsa.RSAPrivateKey, version: str = "2") -> str:
    """The base64 ``Signature`` SNS would put on ``fields``."""
    data = sns.canonical_string(fields)
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), sns.SIGNATURE_HASHES[version]())).decode()


# Gmail refusing unauthenticated mail, as SES reports it: a Permanent/General bounce (SES does not
# tell it from a bad address; only the diagnostic does).
BLOCK_STATUS: Final = "5.7.26"
BLOCK_DIAGNOSTIC: Final = (
    "smtp; 550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and "
    "Gmail users, and has been blocked. The sender must authenticate with at least one of SPF or DKIM. "
    "For this message, DKIM checks did not pass and SPF check for [example.com] did not pass with "
    "ip: [192.0.2.1]. https://support.google.com/mail/answer/81126#authentication"
)


def ses_event_record(kind: EventKind, sent: SentEmail, *, block: bool = False) -> dict[str, Any]:
    """An SES event-publishing record in the documented shape, tagged with our ids; ``block``: a
    bounce of an authentication block (Permanent/General with a 5.7.26 diagnostic)."""
    email, campaign_id, lead_id, message_id, occurred_at = sent
    when = iso_timestamp(occurred_at)
    mail = {
        "timestamp": when,
        "source": "mailerd-sink@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:000000000000:identity/example.com",
        "sendingAccountId": "000000000000",
        "messageId": message_id,
        "destination": [email],
        "headersTruncated": False,
        "tags": {
            "ses:configuration-set": ["mailerd-sink"],
            ses.CAMPAIGN_TAG: [str(campaign_id)],
            ses.LEAD_TAG: [str(lead_id)],
        },
    }
    feedback_id = f"{message_id}-feedback"
    if block or kind in (EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE):
        hard = block or kind == EventKind.HARD_BOUNCE
        status, text = ("5.1.1", "550 5.1.1 user unknown") if hard else ("4.2.2", "452 4.2.2 mailbox full")
        bounce = {
            "bounceType": "Permanent" if hard else "Transient",
            "bounceSubType": "General" if hard else "MailboxFull",
            "bouncedRecipients": [
                {
                    "emailAddress": email,
                    "action": "failed",
                    "status": BLOCK_STATUS if block else status,
                    "diagnosticCode": BLOCK_DIAGNOSTIC if block else f"smtp; {text}",
                }
            ],
            "timestamp": when,
            "feedbackId": feedback_id,
            "reportingMTA": "dsn; sink.mailerd.invalid",
        }
        return {"eventType": "Bounce", "bounce": bounce, "mail": mail}
    if kind == EventKind.COMPLAINT:
        complaint = {
            "complainedRecipients": [{"emailAddress": email}],
            "timestamp": when,
            "feedbackId": feedback_id,
            "userAgent": "mailerd-sink",
            "complaintFeedbackType": "abuse",
            "arrivalDate": when,
        }
        return {"eventType": "Complaint", "complaint": complaint, "mail": mail}
    if kind == EventKind.DELIVERED:
        delivery = {
            "timestamp": when,
            "processingTimeMillis": 120,
            "recipients": [email],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "sink.mailerd.invalid",
        }
        return {"eventType": "Delivery", "mail": mail, "delivery": delivery}
    preferences = {"unsubscribeAll": True, "topicSubscriptionStatus": []}
    subscription = {
        "contactList": "mailerd-sink",
        "timestamp": when,
        "source": "UnsubscribeHeader",
        "newTopicPreferences": preferences,
        "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []},
    }
    return {"eventType": "Subscription", "mail": mail, "subscription": subscription}


class SnsEmulatorSigner:
    """The loopback sink's SNS: signs SES event records as SNS does (SignatureVersion 2).

    It makes its own RSA-2048 key and self-signed certificate; :meth:`daemon_settings` writes
    that certificate where the daemon's ``cert_dir`` finds it, so no network is involved.
    """

    topic_arn: Final = SINK_TOPIC_ARN
    cert_url: Final = SINK_CERT_URL

    def __init__(self, clock: sns.Clock | None = None) -> None:
        self._clock: sns.Clock = clock or (lambda: dt.datetime.now(dt.UTC))
        now = self._clock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self._key, hashes.SHA256())
        )

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def envelope(
        self,
        message: str,
        *,
        type: str = sns.NOTIFICATION,
        version: str = "2",
        message_id: str | None = None,
        timestamp: dt.datetime | None = None,
        topic_arn: str | None = None,
        **extra: str,
    ) -> dict[str, str]:
        """A signed SNS message of any type (``extra``: Subject, SubscribeURL, Token, ...)."""
        fields = {
            "Type": type,
            "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": topic_arn or self.topic_arn,
            "Message": message,
            "Timestamp": iso_timestamp(timestamp or self._clock()),
            "SignatureVersion": version,
            "SigningCertURL": self.cert_url,
            **extra,
        }
        fields["Signature"] = sign(fields, self._key, version)
        if type == sns.NOTIFICATION:
            fields["UnsubscribeURL"] = (
                "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
                f"&SubscriptionArn={self.topic_arn}:{fields['MessageId']}"
            )
        return fields

    def request(
        self, kind: EventKind, sent: SentEmail, *, block: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of one SNS delivery of an SES event record about ``email``."""
        record = ses_event_record(kind, sent, block=block)
        fields = self.envelope(orjson.dumps(record).decode())
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "User-Agent": "Amazon Simple Notification Service Agent",
            "x-amz-sns-message-type": sns.NOTIFICATION,
            "x-amz-sns-message-id": fields["MessageId"],
            "x-amz-sns-topic-arn": self.topic_arn,
            "x-amz-sns-subscription-arn": f"{self.topic_arn}:00000000-0000-0000-0000-000000000000",
        }
        return headers, orjson.dumps(fields)

    def daemon_settings(self, work_dir: Path) -> dict[str, Any]:
        """Write the signing certificate into ``work_dir``; the ``[webhooks.ses]`` values (its
        certificate's directory and its one topic)."""
        (work_dir / sns.cert_file_name(self.cert_url)).write_bytes(self.certificate_pem())
        return {"cert_dir": str(work_dir), "topic_arns": [self.topic_arn]}
