"""The nouns the stages pass to each other. Pure data: no I/O here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any

from mailerd.windows import SendWindow

# The lowest campaign ``rate`` (recipients/s) accepted: 0.864 a day. Far below it a batch's wait
# stops meaning anything (5e-324 made it infinite, the campaign waited for ever); a row stored
# below it is read as the floor.
MIN_CAMPAIGN_RATE = 0.00001


class CampaignStatus(enum.StrEnum):
    """draft -> scheduled -> running <-> paused -> finished | cancelled | failed."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


class LogStatus(enum.IntEnum):
    """``email_log.status``: the one final outcome of one email."""

    SENT = 1
    FAILED = 2
    UNKNOWN = 3  # possibly sent: its batch was in flight when a node died
    SUPPRESSED = 4  # matched, but on the account's suppression list when its window was read


class Outcome(enum.IntEnum):
    """A provider's answer for one recipient."""

    SENT = 1
    FAILED = 2  # permanent: do not retry
    RETRY = 3  # transient: retry with backoff
    UNKNOWN = 4  # the call may have been carried out: log unknown, do not re-send
    ERASED = 5  # not sent: the lead was erased after its window was read (logged suppressed)


@dataclasses.dataclass(frozen=True, slots=True)
class Campaign:
    """What the pipeline needs of a campaign row (content already validated at creation)."""

    id: int
    account_id: int
    name: str
    status: CampaignStatus
    segment: Any
    from_address: str
    subject: str
    html_body: str
    text_body: str
    provider: str
    rate_per_s: float | None = None
    resend_uncertain: bool = False
    status_reason: str | None = None
    generation: int = 0  # campaigns.status_generation when this node read it
    reply_to: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra headers of every email of the campaign
    provider_template: str | None = None  # a template stored at the provider (SendGrid, Postmark)
    send_window: SendWindow | None = None  # when leads may be sent, in their own time zone


@dataclasses.dataclass(slots=True)
class Lead:
    """One recipient as streamed from a window (not frozen: built 50,000 times a second)."""

    id: int
    email: str
    attributes: dict[str, Any]


@dataclasses.dataclass(slots=True)
class RecipientResult:
    """The provider's answer for one recipient of a batch."""

    outcome: Outcome
    message_id: str | None = None
    error: str | None = None
    smtp_code: int | None = None  # the receiver refused it synchronously (SMTP): its reply code


@dataclasses.dataclass(slots=True)
class Batch:
    """Up to ``batch_size`` leads of one campaign shard, sent in one provider call.

    ``seq`` orders the batches of a shard; ``upto`` is the lead id up to which this batch
    accounts for the shard's id range (the last batch of a window covers the window's end).
    """

    campaign: Campaign
    shard_no: int
    seq: int
    leads: list[Lead]
    upto: int
    attempts: int = 0

    @property
    def last_lead_id(self) -> int:
        return self.leads[-1].id if self.leads else self.upto


# One email_log row: (sent_at, campaign_id, lead_id, status, provider_message_id, error).
LogRow = tuple[Any, int, int, int, str | None, str | None]


@dataclasses.dataclass(frozen=True, slots=True)
class SendQuota:
    """An account's own limits, where the provider publishes them (SES ``GetAccount``)."""

    max_send_rate: float | None = None  # emails per second
    max_24_hour_send: int | None = None  # emails per rolling 24 hours (None: unlimited)
    sent_last_24_hours: int | None = None  # what the account sent in them (any sender)


class ProviderError(Exception):
    """A whole provider call failed; subclasses say what to do about it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryableError(ProviderError):
    """Throttling, 5xx, timeouts, resets: retry the whole call after backoff."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class UncertainError(ProviderError):
    """The request went out but no answer came (timeout, reset): the provider may have sent.

    Not retried (that could email a lead twice) unless the campaign says ``resend_uncertain``;
    its recipients are logged ``unknown``.
    """


class PermanentError(ProviderError):
    """The call can never succeed as it is (bad request): fail every recipient with the reason."""


class HaltError(ProviderError):
    """The provider account cannot send (sending paused, suspended): pause the campaign."""


class CampaignBroken(ProviderError):
    """The campaign can never be sent as it is (a lead's render passed the template budget, its
    provider cannot carry its sender or headers): send nothing more of it and fail it, with the
    reason."""


class EventKind(enum.StrEnum):
    """What a provider told us happened to an email after it was sent."""

    DELIVERED = "delivered"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"


SUPPRESSING_KINDS = frozenset({EventKind.HARD_BOUNCE, EventKind.COMPLAINT, EventKind.UNSUBSCRIBE})


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One provider event about one recipient, normalised.

    ``receipt`` is the de-duplication key: the provider's own event id (SNS MessageId, SendGrid
    sg_event_id, Mailgun event id, Postmark record id) plus the recipient, so the same delivery of
    a webhook twice is recorded once. ``campaign_id``/``lead_id``/``account_id`` come from the
    metadata our providers send, else from the provider's message id, else from the address.
    ``suppress`` forces suppression whatever the kind (e.g. Postmark ``Inactive: true``).
    ``also_suppresses``: other addresses of the person that an event which suppresses its own
    suppresses too, in its account, as it does its own (a one-click unsubscribe: the lead's
    address now, when the host changed it since the email went to ``email``); the event is
    stored and counted once, with ``email`` alone.
    """

    provider: str
    kind: EventKind
    occurred_at: dt.datetime
    email: str | None
    receipt: str
    provider_message_id: str | None = None
    campaign_id: int | None = None
    lead_id: int | None = None
    account_id: int | None = None
    provider_type: str | None = None
    reason: str | None = None
    smtp_status: str | None = None
    suppress: bool = False
    guard: str | None = None  # a second key that must also be new (Mailgun: its signature token)
    bounce_class: str | None = None  # set when recorded (mailerd.bounces), None for non-bounces
    also_suppresses: tuple[str, ...] = ()
