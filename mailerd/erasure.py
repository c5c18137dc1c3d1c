"""Erasure (GDPR Article 17): remove a person from one account, everywhere mailerd keeps them.

:func:`erase` runs in one transaction and removes the lead rows and every stored copy of their
address in the account: the address in provider events (the events and their counts stay),
the provider event ids that carry it, diagnostic texts that quote it, suppression audit entries,
dead letters. ``webhook_receipts`` never holds an address (only hashes), and ``email_log`` never
did (its rows keep their lead id and outcome).

Erasing must not make a suppressed person mailable again: a suppressed address leaves
``suppressions`` and stays suppressed as a keyed hash (HMAC-SHA256 with ``[privacy]
erasure_key``) in ``erased_suppressions``; every lead window of that account checks the hashes,
so the same address imported again is logged ``suppressed``, never sent to, while the address
itself is gone from the database.

An event that arrives after the erasure (a complaint for an email sent before it) is stored as
the erasure left the others, and what it suppresses kept as a keyed hash
(:func:`mailerd.events.record`, looked up by the hashes recorded here). One that arrives while
the erasure runs is serialised with it per address (:func:`mailerd.db.erasure.lock_addresses`):
stored before, it is scrubbed here; stored after, it finds the erasure.

Every erasure is recorded in ``erasures`` (who asked, when, the account, the keyed hashes of
the addresses, the lead ids, what was removed) without the address. The event stream publishes
that record (``erasure``) so every copy downstream (Kafka consumers, callbacks, the reports
database) can delete the person too: see docs/architecture.md, "Erasure".
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Sequence

import asyncpg
import structlog

from mailerd import aio
from mailerd.config import Config, PrivacyConfig
from mailerd.db import DB_ERRORS_OR_TIMEOUT
from mailerd.db import erasure as erasure_db

log = structlog.get_logger(__name__)

_BLOCK = 64  # SHA-256's block size: HMAC pads the key to it


class ErasureUnavailable(RuntimeError):
    """No ``[privacy] erasure_key`` is configured: an erasure could not keep a suppressed
    address suppressed, so none is made."""


class NothingToErase(LookupError):
    """The lead or address is not in the account (nothing stored was changed)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Erasure:
    """What one erasure removed (counts per place), as recorded in ``erasures``."""

    id: int
    account_id: int
    at: dt.datetime
    email_hashes: list[str]  # hex HMAC-SHA256 of each lower-cased address
    lead_ids: list[int]
    removed: dict[str, int]


def key_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer pads of ``key`` (RFC 2104), for the hash computed in SQL."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def configured_key(config: Config) -> bytes:
    """The erasure key, or :class:`ErasureUnavailable` naming the setting."""
    secret = config.privacy.erasure_key
    if secret is None:
        raise ErasureUnavailable(
            "erasure needs [privacy] erasure_key (MAILERD_PRIVACY__ERASURE_KEY or erasure_key_file): "
            "without it an erased, suppressed address could be mailed again"
        )
    return secret.reveal().encode("utf-8")


def configured_pads(privacy: PrivacyConfig) -> tuple[bytes, bytes] | None:
    """The erasure key's HMAC pads, or None when no key is configured (then no erasure exists)."""
    secret = privacy.erasure_key
    return None if secret is None else key_pads(secret.reveal().encode("utf-8"))


async def suppression_pads(
    conn: asyncpg.Connection, config: Config, account_id: int
) -> tuple[bytes, bytes] | None:
    """The erasure key's HMAC pads when the account keeps erased addresses suppressed as hashes
    (whatever decides who is suppressed must check them, as the lead windows do), else None;
    :class:`ErasureUnavailable` when it does and this node has no key."""
    if not await erasure_db.has_erased_suppressions(conn, account_id):
        return None
    return key_pads(configured_key(config))


async def erase(
    conn: asyncpg.Connection,
    *,
    account_id: int,
    key: bytes,
    by: str,
    lead_id: int | None = None,
    emails: Sequence[str] = (),
) -> Erasure:
    """Erase a lead (by id) or addresses (with their leads, if any) from one account, in one
    transaction. Raises :class:`NothingToErase` when neither the lead nor any given address is
    known to the account (a given address is still scrubbed wherever it is stored)."""
    ipad, opad = key_pads(key)
    async with conn.transaction():
        lead_ids, lowered, spellings = await erasure_db.targets(conn, account_id, lead_id, emails)
        if lead_id is not None and lead_id not in lead_ids and not emails:
            raise NothingToErase(f"no lead {lead_id} in account {account_id}")
        if not lowered:
            raise NothingToErase(f"nothing to erase in account {account_id}")
        # Before any scrub: an event or dead letter being stored about them commits first (and
        # is scrubbed below), or waits and stores itself scrubbed (lock_addresses).
        await erasure_db.lock_addresses(conn, lowered, shared=False)
        hashes = await erasure_db.hashes(conn, lowered, ipad, opad)
        erasure_id, at = await erasure_db.record(conn, account_id, hashes, lead_ids, by)
        removed = {
            "suppressions_kept_as_hashes": await erasure_db.keep_suppressions_hashed(
                conn, account_id, lowered, ipad, opad, erasure_id
            ),
            "suppression_audit_scrubbed": await erasure_db.scrub_audit(conn, account_id, lowered, erasure_id),
            "events_scrubbed": await erasure_db.scrub_events(conn, account_id, lowered, spellings),
            "dead_letters_scrubbed": await erasure_db.scrub_dead_letters(conn, spellings),
            "relay_dead_letters_deleted": await erasure_db.delete_relay_dead_letters(
                conn, account_id, lead_ids, lowered
            ),
            "leads_deleted": await erasure_db.delete_leads(conn, account_id, lead_ids),
        }
        await erasure_db.set_removed(conn, erasure_id, removed)
    log.info(
        "lead_erased", erasure_id=erasure_id, account_id=account_id, leads=len(lead_ids), by=by, **removed
    )
    return Erasure(erasure_id, account_id, at, [h.hex() for h in hashes], lead_ids, removed)


class RecentErasures:
    """The leads erased lately, for the senders: a batch read before an erasure may wait in its
    lane for a while (rate limits, a busy provider), and its erased leads must not be sent once
    the erasure has returned. Refreshed every :data:`ERASURES_POLL_S` by :meth:`follow` (one
    indexed query); a sender checks it just before each provider call."""

    def __init__(
        self, window: dt.timedelta = dt.timedelta(days=1), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._clock = clock
        self._horizon = 0  # the oldest transaction running at the last read (0: none yet)
        self._leads: dict[tuple[int, int], float] = {}  # -> when it was first seen here

    def __bool__(self) -> bool:
        return bool(self._leads)

    def erased(self, account_id: int, lead_id: int) -> bool:
        return (account_id, lead_id) in self._leads

    async def refresh(self, conn: asyncpg.Connection) -> None:
        now = self._clock()
        found, self._horizon = await erasure_db.erased_since(conn, self._horizon, self._window)
        for _, account_id, lead_ids in found:
            for lead in lead_ids:
                self._leads.setdefault((account_id, lead), now)
        # A batch waits in a lane for minutes at most (a shard re-checks a window read more than
        # a minute before it dispatches it): a day is far past that.
        horizon = now - self._window.total_seconds()
        # Entries go in as they are first seen, so the first is the oldest (no scan each second).
        if self._leads and next(iter(self._leads.values())) < horizon:
            self._leads = {key: seen for key, seen in self._leads.items() if seen >= horizon}

    async def follow(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """Refresh until ``stop``; a database that does not answer is tried again next time."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(5), pool.acquire() as conn:
                    await self.refresh(conn)
            except DB_ERRORS_OR_TIMEOUT as exc:
                log.warning("erasures_not_read", error=str(exc))
            await aio.sleep_unless(ERASURES_POLL_S, stop)


ERASURES_POLL_S = 1.0
