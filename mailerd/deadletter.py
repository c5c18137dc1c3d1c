"""Dead letters: what the writer keeps of an entry that Postgres refuses, so it can go on.

An entry is one sent batch's ``email_log`` rows or one webhook's events. When a flush fails
because of its data (see :func:`mailerd.db.is_transient`), the writer splits it until it finds
the entries that cause the failure; each is recorded in the ``dead_letters`` table with the
error, as JSON text that can hold anything (a NUL, a lone surrogate: escaped), and the rest of
the flush commits. A batch's rows that are dead-lettered count as logged for its shard, so
those leads are never sent again; a webhook's events are refused with a 4xx.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
import structlog

from mailerd import idn, metrics
from mailerd.db import dead_letters as dead_letters_db
from mailerd.db import erasure as erasure_db
from mailerd.models import Event

log = structlog.get_logger(__name__)

MAX_PAYLOAD_CHARS = 1_000_000  # a webhook body is bounded by max_body_bytes; a batch by its size
MAX_ERROR_CHARS = 2_000


@dataclasses.dataclass(frozen=True, slots=True)
class Letter:
    """One entry that cannot be stored, and why."""

    kind: str  # 'emails' or 'events'
    campaign_id: int | None
    shard_no: int | None
    seq: int | None
    items: list[Any]  # LogRow tuples or Event dataclasses
    error: BaseException
    id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)  # a retried insert adds nothing


def safe_text(text: str, limit: int) -> str:
    """Text Postgres can store whatever it held: no NUL, no lone surrogate, bounded."""
    cleaned = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


def payload(items: list[Any]) -> str:
    """The items as JSON text (dataclasses as objects, times as ISO strings)."""
    try:
        text = orjson.dumps(items, default=_plain).decode()
    except TypeError:  # a lone surrogate orjson will not encode: fall back to escaped repr
        text = repr(items)
    return safe_text(text, MAX_PAYLOAD_CHARS)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def sqlstate(error: BaseException) -> str | None:
    state = getattr(error, "sqlstate", None)
    return state if isinstance(state, str) else None


async def record(
    conn: asyncpg.Connection, letter: Letter, erased_pads: tuple[bytes, bytes] | None = None
) -> list[str]:
    """Insert the dead letter (inside the caller's transaction); with ``erased_pads`` (the
    erasure key's HMAC pads), without the addresses of erased people (:func:`scrub_erased`).
    Returns the addresses cut out (for :func:`recorded`)."""
    await dead_letters_db.record(
        conn,
        dead_letters_db.DeadLetter(
            flush_id=letter.id,
            kind=letter.kind,
            campaign_id=letter.campaign_id,
            shard_no=letter.shard_no,
            seq=letter.seq,
            entries=len(letter.items),
            sqlstate=sqlstate(letter.error),
            error=safe_text(f"{type(letter.error).__name__}: {letter.error}", MAX_ERROR_CHARS),
            payload=payload(letter.items),
        ),
    )
    return [] if erased_pads is None else await scrub_erased(conn, letter, erased_pads)


async def scrub_erased(conn: asyncpg.Connection, letter: Letter, pads: tuple[bytes, bytes]) -> list[str]:
    """Cut out of the recorded letter's payload and error the addresses of its events (each
    event's own and those it also suppresses) that belong to someone erased (as
    :func:`mailerd.events.record` tells them: the keyed hash in an erasure of the event's
    account, and no lead with the address there again), the way the
    erasure scrubs the dead letters already there. An erasure scrubs what was recorded before
    it; this, what comes after. One lookup per dead letter that holds an address, none otherwise.
    Returns the addresses cut out."""
    seen: dict[tuple[int | None, str], None] = {}
    for item in letter.items:
        if isinstance(item, Event):
            # the addresses it suppresses besides its own (a one-click's lead address now) too
            for address in (item.email, *item.also_suppresses):
                if address and _storable(address):
                    seen.setdefault((item.account_id, address), None)
    if not seen:
        return []
    keys = list(seen)
    # Held to the commit, as an event's (mailerd.events._scrubbed): no erasure of them in between.
    await erasure_db.lock_addresses(conn, [email for _, email in keys], shared=True)
    found = await erasure_db.erased_among(conn, [(a, e, None, None, None) for a, e in keys], *pads)
    if not found:
        return []
    # in either IDNA spelling: the payload and the error quote the address as it was reported
    addresses = sorted({spelling for n in found for spelling in idn.spellings(keys[n][1])})
    await erasure_db.scrub_texts(
        conn, "dead_letters", ("payload", "error"), addresses, "flush_id = $1", letter.id
    )
    log.info("erased_dead_letter_scrubbed", addresses=len(addresses))
    return addresses


def _storable(address: str) -> bool:
    """Whether Postgres can take the address as text (else no lead had it: nothing erased it)."""
    if "\x00" in address:
        return False
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def recorded(letter: Letter, erased: Sequence[str] = ()) -> None:
    """Count and log a dead letter once its transaction committed; the ``erased`` addresses
    (:func:`record` cut them out of the stored letter) are not logged either."""
    metrics.DEAD_LETTERS.labels(letter.kind).inc(len(letter.items))
    log.error(
        "entry_dead_lettered",
        kind=letter.kind,
        campaign_id=letter.campaign_id,
        shard_no=letter.shard_no,
        seq=letter.seq,
        items=len(letter.items),
        sqlstate=sqlstate(letter.error),
        error=safe_text(_without(str(letter.error), erased), MAX_ERROR_CHARS),
    )


def _without(text: str, addresses: Sequence[str]) -> str:
    for address in addresses:
        text = re.sub(re.escape(address), erasure_db.ERASED_MARK, text, flags=re.IGNORECASE)
    return text


def lost(letter: Letter, failure: BaseException) -> None:
    """Even the dead letter could not be stored: the last place left is the log."""
    metrics.DEAD_LETTERS.labels(f"{letter.kind}_unrecorded").inc(len(letter.items))
    log.critical(
        "dead_letter_unrecorded",
        kind=letter.kind,
        campaign_id=letter.campaign_id,
        shard_no=letter.shard_no,
        seq=letter.seq,
        error=safe_text(str(letter.error), MAX_ERROR_CHARS),
        failure=safe_text(str(failure), MAX_ERROR_CHARS),
        payload=payload(letter.items),
    )
