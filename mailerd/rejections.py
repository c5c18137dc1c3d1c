"""Synchronous SMTP rejections as bounce events: the receiver said no while we were talking to it.

Pure: no I/O. An SMTP provider answers a refused RCPT or DATA with its reply code
(``RecipientResult.smtp_code``); the sender turns each recipient whose *final* outcome is such a
rejection into one :class:`~mailerd.models.Event`, which the writer records in the same flush as
the recipient's ``email_log`` row, exactly as a webhook bounce is recorded: classified by
:func:`mailerd.bounces.classify`, suppressing only an invalid recipient, counting a policy,
reputation or authentication block as ``blocked`` (so the campaign guard sees SMTP blocks too).

How a reply maps onto retries and events (docs/guards.md#smtp-rejections):

- ``5xx`` -> that recipient fails at once (never retried; the rest of the batch goes on) and a
  ``hard_bounce`` event is recorded.
- ``4xx`` -> retried with backoff (``max_attempts``). Accepted on a later attempt: no event (a
  deferral is no bounce, as with an API provider). Still refused at the last attempt: the
  recipient fails and a ``soft_bounce`` event with the last reply is recorded.

The ``email_log`` row keeps its status (``failed``) and the reply as its error; the event's
receipt is ``smtp:<campaign>:<lead>``: one final outcome per lead and campaign, so a replay of the
same flush records it once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence

from mailerd import bounces
from mailerd.models import Campaign, Event, EventKind, Lead, Outcome, RecipientResult

PROVIDER_TYPE = "smtp"


def kind_of(code: int) -> EventKind:
    """A 5xx reply is a hard bounce, anything else (4xx) a soft one."""
    return EventKind.HARD_BOUNCE if code >= 500 else EventKind.SOFT_BOUNCE


def events(
    provider: str,
    campaign: Campaign,
    leads: Sequence[Lead],
    results: Sequence[RecipientResult | None],
    deferred: Mapping[int, RecipientResult],
    now: dt.datetime,
    scrub: Callable[[str | None, str], str | None] = lambda text, _address: text,
) -> list[Event]:
    """One bounce event per recipient that finally failed on an SMTP rejection: its own 5xx
    answer, or the last 4xx answer of ``deferred`` (by position) when it failed after the
    retries ran out, classified once here (the sender counts the class, the writer stores it).
    ``scrub`` cleans a reply before it is stored (the sender's log rule)."""
    found: list[Event] = []
    for position, result in enumerate(results):
        if result is None or result.outcome is not Outcome.FAILED:
            continue
        answer = result if result.smtp_code is not None else deferred.get(position)
        if answer is None or answer.smtp_code is None:
            continue
        lead = leads[position]
        kind, reason, status = kind_of(answer.smtp_code), scrub(answer.error, lead.email), _status(answer)
        bounce_class = bounces.classify(provider, kind, PROVIDER_TYPE, status, reason)
        found.append(
            Event(
                provider=provider,
                kind=kind,
                occurred_at=now,
                email=lead.email,
                receipt=f"smtp:{campaign.id}:{lead.id}",
                campaign_id=campaign.id,
                lead_id=lead.id,
                account_id=campaign.account_id,
                provider_type=PROVIDER_TYPE,
                reason=reason,
                smtp_status=status,
                bounce_class=None if bounce_class is None else str(bounce_class),
            )
        )
    return found


def _status(answer: RecipientResult) -> str:
    """The enhanced status code of the reply (``5.7.26``) when it has one, else its reply code."""
    code = bounces.enhanced_code(answer.error)
    return ".".join(map(str, code)) if code else str(answer.smtp_code)
