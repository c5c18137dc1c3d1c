"""Provider events after verification: mapped to their lead, then recorded once.

:func:`resolve` runs in the webhook handler (before the events go to the writer): it fills each
event's campaign, lead and account from the ids mailerd put in the provider's metadata, else
from the provider's message id in the recent log, else from the address. :func:`record` runs
inside the writer's flush transaction, so a webhook's events commit together with whatever else
that flush carries, and the webhook is answered only after that commit. Nothing here UPDATEs
``email_log``: events are appended, counters added, suppressions inserted.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping

import asyncpg
import structlog

from mailerd import bounces, idn, rejections
from mailerd.db import erasure as erasure_db
from mailerd.db import events as events_db
from mailerd.db import leads as leads_db
from mailerd.db import stats as stats_db
from mailerd.db import suppressions as suppressions_db
from mailerd.models import Event, EventKind

log = structlog.get_logger(__name__)

# How far back a provider message id is looked for in email_log (it has no index on it: the
# metadata our providers send is the normal path, this is the fallback).
MESSAGE_ID_LOOKBACK = dt.timedelta(days=3)

# Given to one sender, not a fact about the mailbox: never carried across accounts.
CONSENT_KINDS = frozenset({EventKind.COMPLAINT, EventKind.UNSUBSCRIBE})

_BLOCKING_NAMES = frozenset(str(c) for c in bounces.BLOCKING)
_STAT_FOR_KIND = {
    EventKind.DELIVERED: 0,
    EventKind.HARD_BOUNCE: 1,
    EventKind.SOFT_BOUNCE: 1,
    EventKind.COMPLAINT: 2,
    EventKind.UNSUBSCRIBE: 3,
}


def receipt_key(receipt: str) -> str:
    """What ``webhook_receipts`` stores of a receipt: its SHA-256, so the table holds no address
    (a receipt is the provider's event id and the recipient) and still recognises a redelivery
    after the recipient was erased."""
    return hashlib.sha256(receipt.encode("utf-8", "surrogatepass")).hexdigest()


def unique(events: list[Event]) -> list[Event]:
    """Drop repeats of the same receipt within one batch (first one wins)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for event in events:
        key = (event.provider, event.receipt)
        if key not in seen:
            seen.add(key)
            kept.append(event)
    return kept


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """What :func:`record` stored: the new events, and their counters per campaign as the
    provider guard counts them (:func:`counts`, less the bounces and complaints of emails sent
    before the provider's last release)."""

    events: list[Event]
    provider_counts: dict[int, list[int]]


async def record(
    conn: asyncpg.Connection,
    events: list[Event],
    *,
    soft_bounce_limit: int,
    soft_bounce_window_s: float,
    erased_pads: tuple[bytes, bytes] | None = None,
) -> Recorded:
    """Append the events not seen before; suppress and count. Returns the new ones as stored,
    and what of them the provider guard counts (:class:`Recorded`).

    With ``erased_pads`` (the erasure key's HMAC pads), an event about a person erased before it
    arrived is stored without the address (:func:`_scrubbed`). Must run inside a transaction
    (the writer's flush).
    """
    events = unique(events)
    if not events:
        return Recorded([], {})
    keys = {(e.provider, receipt_key(e.receipt)) for e in events}
    keys.update((e.provider, receipt_key(e.guard)) for e in events if e.guard)
    new_keys = await events_db.claim_receipts(conn, keys)
    fresh = [
        e
        for e in events
        if (e.provider, receipt_key(e.receipt)) in new_keys
        and (e.guard is None or (e.provider, receipt_key(e.guard)) in new_keys)
    ]
    if not fresh:
        return Recorded([], {})
    fresh = [_classified(e) for e in await _lowered(conn, fresh)]
    others = await _others(conn, fresh)
    # One look-up, and one taking of the address locks, for the events and their other addresses.
    scrubbed, erased = await _scrubbed(conn, [*fresh, *others], erased_pads)
    fresh, others = scrubbed[: len(fresh)], scrubbed[len(fresh) :]
    await events_db.append(conn, fresh, dt.datetime.now(dt.UTC))
    await _suppress(conn, [*fresh, *others], soft_bounce_limit, soft_bounce_window_s)  # none of the erased
    if erased and erased_pads is not None:
        await _suppress_erased(conn, erased, erased_pads)
    counted = counts(fresh)
    late_campaign, late_provider = await _late(conn, fresh)
    await stats_db.add_events(conn, counted, late_campaign)
    provider_counts = {campaign_id: list(row) for campaign_id, row in counted.items()}
    for campaign_id, (hard_bounced, complained, blocked) in late_provider.items():
        row = provider_counts[campaign_id]
        row[4] -= hard_bounced
        row[2] -= complained
        row[5] -= blocked
    return Recorded(fresh, provider_counts)


_JUDGED_KINDS = frozenset({EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.COMPLAINT})


def judged_campaigns(events: list[Event]) -> set[int]:
    """The campaigns of the webhook events a guard may count (bounces, which may be blocks, and
    complaints): the writer shares their providers' locks before anything else in the flush
    (:func:`mailerd.db.provider_usage.share_locks_of`). SMTP rejections need none: their emails
    are logged in their own flush, after any baseline that flush could straddle, and that flush
    holds the campaign's counters (its outcomes) before it reads a baseline."""
    return {
        e.campaign_id
        for e in events
        if e.campaign_id is not None and e.kind in _JUDGED_KINDS and not _is_rejection(e)
    }


def _is_rejection(event: Event) -> bool:
    """An SMTP rejection (:mod:`mailerd.rejections`): the one final outcome of its lead, recorded
    with its log row."""
    return event.provider_type == rejections.PROVIDER_TYPE and event.receipt.startswith("smtp:")


def _guard_signal(event: Event) -> int | None:
    """Which of a guard's (hard_bounced, complained, blocked) the event counts in (as
    :func:`counts` counts it), or None."""
    if event.campaign_id is None or bounces.never_sent(event.provider, event.provider_type):
        return None
    if event.bounce_class in _BLOCKING_NAMES:
        return 2
    if event.kind is EventKind.HARD_BOUNCE:
        return 0
    if event.kind is EventKind.COMPLAINT:
        return 1
    return None


async def _late(
    conn: asyncpg.Connection, events: list[Event]
) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """(hard_bounced, complained, blocked) per campaign of the events about emails sent before
    the campaign guard's baseline (an operator's resume), and the same before the provider
    guard's (a release). After an override a guard judges only the emails sent from then on: a
    bounce of an earlier email, arriving late, counted against them would pause on clean sends
    (1,100 bounces "of" 1,000 sent). Asked of the database only for the events a guard counts.

    An event about an email a guard has counted for the same signal already (a provider that
    reports a temporary failure at each delivery attempt, Mailgun's ``failed``/``temporary``;
    a second complaint) is left out of both guards the same way: an email counts once per
    signal, so no rate passes 100 % (the counters still count every event)."""
    judged = [(event, signal) for event in events if (signal := _guard_signal(event)) is not None]
    late_campaign: dict[int, list[int]] = {}
    late_provider: dict[int, list[int]] = {}
    if not judged:
        return late_campaign, late_provider
    # Locked before the baselines are read: a resume committing in between would otherwise have
    # its new baseline charged with this flush's late events (mailerd.db.stats.lock_for_guard).
    webhook = [event.campaign_id or 0 for event, _ in judged if not _is_rejection(event)]
    if webhook:
        await stats_db.lock_for_guard(conn, webhook)
    before = await events_db.before_baselines(
        conn, [(event.campaign_id or 0, event.lead_id) for event, _ in judged]
    )
    repeated = await _repeated(conn, judged)
    for position, (event, signal) in enumerate(judged):
        campaign, provider = (True, True) if position in repeated else before.get(position, (False, False))
        assert event.campaign_id is not None
        if campaign:
            late_campaign.setdefault(event.campaign_id, [0, 0, 0])[signal] += 1
        if provider:
            late_provider.setdefault(event.campaign_id, [0, 0, 0])[signal] += 1
    return late_campaign, late_provider


async def _repeated(conn: asyncpg.Connection, judged: list[tuple[Event, int]]) -> set[int]:
    """Positions in ``judged`` of the events about an email (campaign and lead) that a guard
    counted for the same signal already: earlier in this flush, or stored by an earlier one (one
    look-up per flush, :func:`mailerd.db.events.counted_before`). An event naming no lead cannot
    be told; an SMTP rejection is the one final outcome of its lead (not looked up)."""
    repeated: set[int] = set()
    seen: set[tuple[int | None, int, int]] = set()
    asked: list[int] = []
    for position, (event, signal) in enumerate(judged):
        if event.lead_id is None:
            continue
        key = (event.campaign_id, event.lead_id, signal)
        if key in seen:
            repeated.add(position)
            continue
        seen.add(key)
        if not _is_rejection(event):
            asked.append(position)
    if asked:
        found = await events_db.counted_before(
            conn,
            [(judged[p][0].campaign_id or 0, judged[p][0].lead_id or 0, judged[p][1]) for p in asked],
            sorted(_BLOCKING_NAMES),
        )
        repeated.update(asked[index] for index in found)
    return repeated


async def _scrubbed(
    conn: asyncpg.Connection, events: list[Event], pads: tuple[bytes, bytes] | None
) -> tuple[list[Event], list[tuple[Event, int]]]:
    """The events as they may be stored, and those about an erased person with their erasure.

    A complaint or a bounce for an email sent before an erasure can arrive after it: stored as
    it came, it would put the address back in ``email_events`` and on the suppression list,
    and the relay would publish it after the erasure record, so every copy downstream would
    keep it. Such an event (its address's keyed hash is in an erasure of its account, or of any
    account when it matched none, and the address is no lead there again) is stored as
    :func:`mailerd.db.erasure.scrub_events` leaves the others: no address, the provider event id
    replaced by its SHA-256 (:func:`receipt_key`), the address cut out of its texts. Without
    the key there is no erasure (none can be made): nothing is looked up."""
    if pads is None:
        return events, []
    addressed = [(n, e, e.email) for n, e in enumerate(events) if e.email]
    if not addressed:
        return events, []
    # Held to the flush's commit: an erasure of one of them under way commits first (then it is
    # seen below) or waits for this one (then it scrubs what this stores).
    await erasure_db.lock_addresses(conn, [email for _, _, email in addressed], shared=True)
    found = await erasure_db.erased_among(
        conn,
        [(e.account_id, email, e.reason, e.provider_type, _pattern(e, email)) for _, e, email in addressed],
        *pads,
    )
    if not found:
        return events, []
    stored = list(events)
    erased = []
    for position, scrubbed in found.items():
        n, event, _ = addressed[position]
        erased.append((event, scrubbed.erasure_id))
        stored[n] = dataclasses.replace(
            event,
            email=None,
            receipt=receipt_key(event.receipt),
            reason=scrubbed.reason,
            provider_type=scrubbed.provider_type,
        )
    log.info("erased_events_scrubbed", events=len(erased))
    return stored, erased


def _pattern(event: Event, email: str) -> str | None:
    """The pattern that finds ``email`` in the event's texts, in either IDNA spelling (a
    diagnostic quotes the address as it was sent: ``<erin@xn--bcher-kva.de>`` for the lead
    ``erin@bücher.de``); None when they hold no ``@`` (they cannot quote it), which spares
    building one for most events."""
    if "@" in (event.reason or "") or "@" in (event.provider_type or ""):
        return erasure_db.any_address_pattern(idn.spellings(email))
    return None


async def _suppress_erased(
    conn: asyncpg.Connection, erased: list[tuple[Event, int]], pads: tuple[bytes, bytes]
) -> None:
    """What an erased person's event suppresses stays suppressed as the erasure keeps it: as a
    keyed hash in ``erased_suppressions``, never as the address (soft bounces are not counted
    towards the limit: their events hold no address to count by)."""
    entries: dict[tuple[int, str], tuple[str, str, int]] = {}
    for event, erasure_id in erased:
        if event.account_id is not None and event.email and _suppresses_at_once(event):
            entries.setdefault((event.account_id, event.email), (str(event.kind), event.provider, erasure_id))
    if entries:
        await erasure_db.suppress_hashed(conn, [(*key, *value) for key, value in entries.items()], *pads)


async def _others(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """The other addresses the events suppress (:attr:`Event.also_suppresses`), each as a copy
    of its event (never stored, never counted) that :func:`_scrubbed` and :func:`_suppress` treat
    as they treat the event: suppressed with the same reason and source, or, when it is an erased
    person's, as the erasure keeps it. Lower-cased by the database as the events' own are."""
    others = [
        dataclasses.replace(event, email=address, also_suppresses=())
        for event in events
        if event.account_id is not None and _suppresses_at_once(event)
        for address in event.also_suppresses
        if address
    ]
    return await _lowered(conn, others) if others else []


def _suppresses_at_once(event: Event) -> bool:
    bounce_class = bounces.BounceClass(event.bounce_class) if event.bounce_class else None
    return bounces.suppresses(event.kind, bounce_class) or event.suppress


def _classified(event: Event) -> Event:
    """The event with its bounce class (:mod:`mailerd.bounces`); others unchanged. An SMTP
    rejection comes classified already (:mod:`mailerd.rejections`)."""
    if event.bounce_class is not None:
        return event
    bounce_class = bounces.classify(
        event.provider, event.kind, event.provider_type, event.smtp_status, event.reason
    )
    return event if bounce_class is None else dataclasses.replace(event, bounce_class=str(bounce_class))


async def _suppress(
    conn: asyncpg.Connection, events: list[Event], soft_bounce_limit: int, window_s: float
) -> None:
    direct: dict[tuple[int, str], tuple[str, str]] = {}
    soft: set[tuple[int, str]] = set()
    for event in events:
        if event.account_id is None or not event.email:
            continue
        key = (event.account_id, event.email)
        bounce_class = bounces.BounceClass(event.bounce_class) if event.bounce_class else None
        if _suppresses_at_once(event):
            direct.setdefault(key, (str(event.kind), event.provider))
        elif event.kind in bounces.BOUNCE_KINDS and bounce_class not in bounces.BLOCKING:
            soft.add(key)
    if soft:
        blocking = [str(c) for c in bounces.BLOCKING]
        found = await events_db.repeated_soft_bounces(conn, soft, window_s, soft_bounce_limit, blocking)
        for key in found:
            direct.setdefault(key, ("soft_bounce_limit", "webhook"))
    await suppressions_db.add_many(conn, direct)


def counts(events: list[Event]) -> dict[int, list[int]]:
    """(delivered, bounced, complained, unsubscribed, hard_bounced, blocked) per campaign:
    ``hard_bounced`` are hard bounces that were no block, ``blocked`` the blocks of either kind.
    An email the provider never sent (:func:`bounces.never_sent`) counts as ``bounced`` only:
    neither a complaint nor a hard bounce of ours, so no guard pauses on it."""
    counts: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for event in events:
        if event.campaign_id is not None and bounces.never_sent(event.provider, event.provider_type):
            counts[event.campaign_id][1] += 1
        elif event.campaign_id is not None:
            row = counts[event.campaign_id]
            row[_STAT_FOR_KIND[event.kind]] += 1
            if event.bounce_class in _BLOCKING_NAMES:
                row[5] += 1
            elif event.kind is EventKind.HARD_BOUNCE:
                row[4] += 1
    return counts


async def resolve(
    conn: asyncpg.Connection, events: list[Event], *, provider_kinds: Mapping[str, str]
) -> list[Event]:
    """Fill ``campaign_id``/``lead_id``/``account_id``: metadata, else message id, else address.

    Accounts stay apart. Metadata counts only when its campaign exists and its lead is of no
    other account (a deleted one too). A message id names only emails whose campaign's provider
    is of the event's kind (``provider_kinds``: each configured provider's ``kind``; two providers
    may hand out the same id). An event matched by address alone is a fact about the mailbox when
    it is a bounce (it becomes one event per account that has the address); a complaint or an
    unsubscribe is consent withdrawn from one sender, so by address alone it is attributed only
    when exactly one account has the address. An event that matches nothing is kept as it is
    (unmatched: recorded, suppressing nothing).

    An address with an IDN domain ends in its lead's spelling: SES and SMTP servers are sent,
    and report, its A-labels (:mod:`mailerd.idn`), and what the event suppresses must match
    ``lower(leads.email)`` as the lead is stored (the lead stream's check).
    """
    events = await _by_metadata(conn, await _lowered(conn, _u_labels(events)))
    events = await _by_message_id(conn, events, provider_kinds)
    events = await _by_address(conn, events)
    return await _with_addresses(conn, events)


_ascii_like_python: bool | None = None  # the database's lower() on A-Z, read once per process


async def _lowers_ascii_like_python(conn: asyncpg.Connection) -> bool:
    """Whether Python's ``str.lower`` is the database's ``lower()`` on ASCII (not under a Turkish
    locale); asked once (the database's locale does not change under a running process)."""
    global _ascii_like_python
    if _ascii_like_python is None:
        _ascii_like_python = await leads_db.lowers_ascii_like_python(conn)
    return _ascii_like_python


async def _lowered(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """The events with their addresses lower-cased by the database (:func:`events_db.lowered`):
    the form every lookup, suppression and stored event uses. Events that did not come through
    :func:`resolve` (an SMTP rejection, a one-click unsubscribe) carry the lead's address as
    written."""
    addresses = {e.email for e in events if e.email}
    if not addresses:
        return events
    if all(address.isascii() for address in addresses) and await _lowers_ascii_like_python(conn):
        folded = {address: address.lower() for address in addresses}  # no round trip (4% of the CPU)
    else:
        folded = await events_db.lowered(conn, addresses)
    return [
        dataclasses.replace(e, email=folded[e.email]) if e.email and folded[e.email] != e.email else e
        for e in events
    ]


def _u_labels(events: list[Event]) -> list[Event]:
    """The events with an A-label domain (``xn--``) read in U-labels, the form leads are typed
    in; the match with a lead then takes the lead's own spelling (:func:`_in_lead_spelling`)."""
    result = []
    for event in events:
        decoded = idn.u_label_address(event.email) if event.email else None
        result.append(dataclasses.replace(event, email=decoded) if decoded != event.email else event)
    return result


def _in_lead_spelling(event: Event, lead_email: str | None) -> Event:
    """The event with its lead's address when it names the same mailbox in another IDNA spelling
    (a lead stored with ``xn--`` labels, or a domain IDNA 2003 maps: ``straße.de`` is sent as
    ``strasse.de``), so that what it suppresses is what the lead stream compares."""
    if event.email and lead_email and event.email != lead_email and idn.same_mailbox(event.email, lead_email):
        return dataclasses.replace(event, email=lead_email)
    return event


async def _with_addresses(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """Some events name no address (Postmark's unsubscribe record carries only the message
    id): once matched to a lead, they take the lead's, so they can suppress it."""
    wanted = {key for e in events if not e.email and (key := _lead_key(e)) is not None}
    if not wanted:
        return events
    found = await events_db.lead_emails(conn, wanted)
    result = []
    for event in events:
        key = _lead_key(event)
        address = found.get(key) if key is not None and not event.email else None
        result.append(dataclasses.replace(event, email=address) if address else event)
    return result


def _lead_key(event: Event) -> tuple[int, int] | None:
    if event.account_id is None or event.lead_id is None:
        return None
    return event.account_id, event.lead_id


def _matched(event: Event) -> bool:
    return event.account_id is not None


async def _by_metadata(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """Campaign and lead ids travelled with the email: only the account is needed. Metadata
    naming a campaign we do not have, or a lead of another account, is not ours (or forged):
    it is dropped, and the event is mapped the other ways. A lead that no longer exists (the
    host deleted the contact after the send) is the campaign's account's: its complaint still
    suppresses the address there."""
    campaign_ids = {e.campaign_id for e in events if e.campaign_id is not None}
    if not campaign_ids:
        return events
    accounts = await events_db.campaign_accounts(conn, campaign_ids)
    lead_ids = {e.lead_id for e in events if e.campaign_id in accounts and e.lead_id is not None}
    lead_accounts = await events_db.lead_accounts(conn, lead_ids) if lead_ids else {}
    result = []
    for event in events:
        if event.campaign_id is None:
            result.append(event)
            continue
        account_id = accounts.get(event.campaign_id)
        # A lead deleted since keeps the campaign's account; one of another account is not ours.
        lead_account, lead_email = lead_accounts.get(event.lead_id or 0, (account_id, None))
        if account_id is not None and (event.lead_id is None or lead_account == account_id):
            result.append(_in_lead_spelling(dataclasses.replace(event, account_id=account_id), lead_email))
            continue
        if account_id is not None:
            log.warning(
                "webhook_metadata_refused",
                provider=event.provider,
                campaign_id=event.campaign_id,
                lead_id=event.lead_id,
                reason="lead not in the campaign's account",
            )
        result.append(dataclasses.replace(event, campaign_id=None, lead_id=None))
    return result


async def _by_message_id(
    conn: asyncpg.Connection, events: list[Event], provider_kinds: Mapping[str, str]
) -> list[Event]:
    """The provider's message id, in the recent email_log partitions, among the emails of the
    event's provider (:func:`_sent_by`). An id that names several emails (one request sent a
    batch: SendGrid, Mailgun) names the one whose lead has the event's address. When no one lead
    has it (the event names no address, or the lead was deleted or changed its address since),
    the event gets the batch's campaign and account and no lead: any lead picked could be one
    who did not bounce or complain, and the address step would find leads the batch did not
    email (or, for a complaint, another account's)."""
    wanted = {e.provider_message_id for e in events if not _matched(e) and e.provider_message_id}
    if not wanted:
        return events
    found = await events_db.by_message_id(conn, wanted, MESSAGE_ID_LOOKBACK)
    result = []
    for event in events:
        if _matched(event) or not event.provider_message_id:
            result.append(event)
            continue
        candidates = [
            sent for sent in found.get(event.provider_message_id, []) if _sent_by(sent, event, provider_kinds)
        ]
        hit = _one_email(candidates, event)
        if hit is not None:
            result.append(
                _in_lead_spelling(
                    dataclasses.replace(
                        event, campaign_id=hit.campaign_id, lead_id=hit.lead_id, account_id=hit.account_id
                    ),
                    hit.address,
                )
            )
        elif (batch := _one_campaign(candidates)) is not None:
            # One batch, no one lead: the campaign and account are known all the same (counted
            # in its stats, the address suppressed in its account), the lead is not.
            result.append(
                dataclasses.replace(event, campaign_id=batch.campaign_id, account_id=batch.account_id)
            )
        else:
            result.append(event)
    return result


def _sent_by(sent: events_db.Sent, event: Event, provider_kinds: Mapping[str, str]) -> bool:
    """Whether the event's provider can have sent the email: its campaign's provider is of the
    webhook's kind, or the ``sink`` (it posts events in any provider's format). A provider no
    longer configured is not ruled out."""
    kind = provider_kinds.get(sent.provider)
    return kind is None or kind == event.provider or kind == "sink"


def _one_email(candidates: list[events_db.Sent], event: Event) -> events_db.Sent | None:
    """The email of ``candidates`` (those of the event's message id) the event is about."""
    if len(candidates) == 1:
        return candidates[0]
    email = event.email
    same = [sent for sent in candidates if email and sent.address and idn.same_mailbox(sent.address, email)]
    if len(same) == 1:
        return same[0]
    if candidates:
        log.info("webhook_message_id_ambiguous", provider=event.provider, emails=len(candidates))
    return None


def _one_campaign(candidates: list[events_db.Sent]) -> events_db.Sent | None:
    """One of ``candidates`` when they are all of one campaign (a batch is one campaign's leads,
    sent in one call), else None."""
    if candidates and len({sent.campaign_id for sent in candidates}) == 1:
        return candidates[0]
    return None


async def _by_address(conn: asyncpg.Connection, events: list[Event]) -> list[Event]:
    """The address, in every account that has it as a lead (for a complaint or an unsubscribe,
    only in the one account that has it), in either IDNA spelling (the event then takes the
    lead's)."""
    wanted = {spelling for e in events if not _matched(e) and e.email for spelling in idn.spellings(e.email)}
    owners = await events_db.leads_by_address(conn, wanted) if wanted else {}
    result: list[Event] = []
    for event in events:
        if _matched(event) or not event.email:
            result.append(event)
            continue
        matches = list(
            {  # one lead per account, the event's own spelling first
                account_id: (account_id, lead_id, spelling)
                for spelling in reversed(idn.spellings(event.email))
                for account_id, lead_id in owners.get(spelling, [])
            }.values()
        )
        if len(matches) > 1 and event.kind in CONSENT_KINDS:
            log.info(
                "webhook_event_ambiguous",
                provider=event.provider,
                kind=str(event.kind),
                accounts=len(matches),
            )
            matches = []
        if not matches:
            result.append(event)
            log.info("webhook_event_unmatched", provider=event.provider, kind=str(event.kind))
            continue
        # The receipt names the account always, not only when several match: the accounts that
        # hold an address may change between two deliveries of one event, and the second must
        # still find the first's receipt (it was recorded twice in one account otherwise).
        for account_id, lead_id, spelling in matches:
            receipt = f"{event.receipt}@{account_id}"
            matched = dataclasses.replace(event, account_id=account_id, lead_id=lead_id, receipt=receipt)
            result.append(dataclasses.replace(matched, email=spelling))
    return result
