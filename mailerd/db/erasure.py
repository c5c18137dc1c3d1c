"""Erasure queries: every stored copy of an address in one account, found and removed.

Addresses are compared as Postgres lower-cases them (the unique index on leads does the same),
and hashed in SQL with the built-in ``sha256`` as HMAC-SHA256 (RFC 2104): the caller passes the
key's inner and outer pads, never the key. So the hash of an address is the same here, in the
lead windows (an erased, suppressed address imported again is still suppressed) and wherever
else Postgres computes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

import asyncpg

from mailerd import idn

# HMAC-SHA256 of lower(address) in SQL: $ipad / $opad are the key XOR 0x36 / 0x5c, 64 bytes each.
HMAC_SQL = "sha256({opad} || sha256({ipad} || convert_to(lower({address}), 'UTF8')))"
ERASED_MARK = "<erased>"


# What, right before an address's local part, belongs to it in practice: a letter, a digit,
# ``._%+-``, any non-ASCII character, or an apostrophe (and the like) right after a letter
# (``o'ann@x`` is someone else); after its domain, a letter, digit or hyphen, or a dot that goes
# on. An address found inside a longer one is not that address. A quote opening a word, ``=``,
# ``/`` and brackets are delimiters (``rcpt='ann@x'``, ``to=ann@x``, ``/ann@x/``), as diagnostics
# use them.
_BEFORE = r"(?<![[:alnum:]._%+-]|[^\x01-\x7f]|[[:alnum:]]['!&*#$^`{|}~])"
_AFTER = r"(?![[:alnum:]-]|\.[[:alnum:]]|[^\x01-\x7f])"


def address_pattern(address: str) -> str:
    """A Postgres regular expression that matches ``address`` as a whole address, literally
    (every character that is not a letter or a digit escaped). With ``~*`` and
    ``regexp_replace(..., 'gi')`` it finds it however a provider's diagnostic wrote it
    (``<Ada@Example.COM>``), and not inside another (``joann@example.com`` for ``ann@...``)."""
    return _BEFORE + "".join(char if char.isalnum() else "\\" + char for char in address) + _AFTER


def any_address_pattern(addresses: Sequence[str]) -> str:
    """:func:`address_pattern` for any of ``addresses`` (the spellings of one address)."""
    escaped = ("".join(char if char.isalnum() else "\\" + char for char in a) for a in addresses)
    return _BEFORE + "(?:" + "|".join(escaped) + ")" + _AFTER


def hmac_sql(address: str, ipad: str, opad: str) -> str:
    """The SQL expression of the keyed hash of ``address`` (an SQL expression itself)."""
    return HMAC_SQL.format(address=address, ipad=ipad, opad=opad)


_FORMS: tuple[Literal["NFC", "NFD"], ...] = ("NFC", "NFD")


async def targets(
    conn: asyncpg.Connection, account_id: int, lead_id: int | None, addresses: Sequence[str]
) -> tuple[list[int], list[str], list[str]]:
    """The account's leads to erase (by id, or by address), every lower-cased address concerned
    (the leads' and the ones given, found as leads or not), and every spelling seen (texts
    quote an address the way it was sent). An address is looked for in both Unicode forms: an
    account may keep a decomposed lead beside the composed one (stored before addresses were
    put in NFC), and erasing one form must take the other; and in both IDNA spellings of its
    domain (``bücher.de`` is sent, and reported back, as ``xn--bcher-kva.de``)."""
    addresses = sorted(
        {
            form
            for a in addresses
            for spelling in idn.spellings(a)
            for form in (spelling, *(unicodedata.normalize(n, spelling) for n in _FORMS))
        }
    )
    rows = await conn.fetch(
        """SELECT id, email FROM leads
           WHERE account_id = $1
             AND (id = $2 OR lower(email) = ANY(SELECT lower(a) FROM unnest($3::text[]) a))
           FOR UPDATE""",
        account_id,
        lead_id,
        list(addresses),
    )
    spellings = {spelling for r in rows for spelling in idn.spellings(r["email"])} | set(addresses)
    lowered = await conn.fetchval(
        "SELECT coalesce(array_agg(DISTINCT lower(a)), '{}') FROM unnest($1::text[]) a", sorted(spellings)
    )
    return [r["id"] for r in rows], sorted(lowered), sorted(spellings | set(lowered))


# The transaction-level advisory locks that serialise an erasure with the events about its
# addresses (64-bit, the single-key space the other mailerd locks hash their names into; shards
# use the two-key space): one per lower-cased address, and one per bucket of addresses. A flush
# of up to ADDRESS_LOCK_BUCKETS addresses takes theirs, a bigger one their buckets, so none holds
# more than ADDRESS_LOCK_BUCKETS locks (one per address, a flush of 10,000 events filled the
# server's shared lock table, max_locks_per_transaction x connections, and "out of shared
# memory" is transient to the writer, which retried the flush forever); an erasure takes both
# of each of its addresses, so it excludes either kind of flush about them, and only a big flush
# with someone else in an erased address's bucket waits for the erasure.
ADDRESS_LOCK_BUCKETS = 256
_ADDRESS_KEY = "hashtextextended('mailerd.erasure:' || lower(a), 0)"
_BUCKET_KEY = (
    f"hashtextextended('mailerd.erasure-bucket:' || (hashtext(lower(a)) & {ADDRESS_LOCK_BUCKETS - 1}), 0)"
)


async def lock_addresses(conn: asyncpg.Connection, addresses: Sequence[str], *, shared: bool) -> None:
    """Take the addresses' locks until the transaction ends: an erasure exclusively, before it
    scrubs anything; whatever stores an address that an erasure must remove (a provider event,
    a dead letter), shared, before it looks for erasures of it. Under READ COMMITTED an erasure's
    UPDATE does not see a row inserted by a transaction still open, and that transaction's
    look-up does not see an erasure not committed yet: either would leave the address stored.
    With the lock one commits first and the other's next statement sees it. One statement for
    all, in key order (no deadlock between two holders); lower-cased by the database, as the
    erasure's keyed hashes are. Shared, at most :data:`ADDRESS_LOCK_BUCKETS` locks."""
    distinct = sorted(set(addresses))
    if shared:
        key = _BUCKET_KEY if len(distinct) > ADDRESS_LOCK_BUCKETS else _ADDRESS_KEY
        keys = f"SELECT DISTINCT {key} AS k FROM unnest($1::text[]) a"
    else:
        keys = f"""SELECT {_ADDRESS_KEY} AS k FROM unnest($1::text[]) a
                   UNION SELECT {_BUCKET_KEY} FROM unnest($1::text[]) a"""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT count({function}(k)) FROM ({keys} ORDER BY 1) s", distinct)


async def hashes(conn: asyncpg.Connection, emails: Sequence[str], ipad: bytes, opad: bytes) -> list[bytes]:
    """The keyed hash of each address, in order."""
    rows = await conn.fetch(
        f"""SELECT {hmac_sql("a", "$2", "$3")} AS h
            FROM unnest($1::text[]) WITH ORDINALITY AS t(a, n) ORDER BY n""",
        list(emails),
        ipad,
        opad,
    )
    return [bytes(r["h"]) for r in rows]


async def record(
    conn: asyncpg.Connection, account_id: int, email_hashes: Sequence[bytes], lead_ids: Sequence[int], by: str
) -> tuple[int, Any]:
    """The erasure's own record (no address in it); its id and time."""
    row = await conn.fetchrow(
        """INSERT INTO erasures (account_id, email_hashes, lead_ids, requested_by, removed)
           VALUES ($1, $2, $3, $4, '{}') RETURNING id, at""",
        account_id,
        list(email_hashes),
        list(lead_ids),
        by,
    )
    assert row is not None
    return row["id"], row["at"]


async def set_removed(conn: asyncpg.Connection, erasure_id: int, removed: dict[str, int]) -> None:
    await conn.execute("UPDATE erasures SET removed = $2 WHERE id = $1", erasure_id, removed)


async def keep_suppressions_hashed(
    conn: asyncpg.Connection,
    account_id: int,
    emails: Sequence[str],
    ipad: bytes,
    opad: bytes,
    erasure_id: int,
) -> int:
    """Suppressed addresses leave ``suppressions`` and stay suppressed as keyed hashes."""
    status = await conn.execute(
        f"""WITH gone AS (
                DELETE FROM suppressions WHERE account_id = $1 AND email = ANY($2::text[])
                RETURNING email, reason)
            INSERT INTO erased_suppressions (account_id, email_hash, reason, erasure_id)
            SELECT $1, {hmac_sql("email", "$3", "$4")}, reason, $5 FROM gone
            ON CONFLICT (account_id, email_hash) DO UPDATE SET erasure_id = EXCLUDED.erasure_id""",
        account_id,
        list(emails),
        ipad,
        opad,
        erasure_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def scrub_audit(
    conn: asyncpg.Connection, account_id: int, emails: Sequence[str], erasure_id: int
) -> int:
    """The audit trail keeps what happened, not to whom."""
    status = await conn.execute(
        "UPDATE suppression_audit SET email = $3 WHERE account_id = $1 AND email = ANY($2::text[])",
        account_id,
        list(emails),
        audit_mark(erasure_id),
    )
    return int(status.rsplit(" ", 1)[-1])


async def scrub_events(
    conn: asyncpg.Connection, account_id: int, emails: Sequence[str], spellings: Sequence[str]
) -> int:
    """Provider events keep their kind and counts; their address goes from every text column:
    the address, the provider's event id (it carries the recipient) and diagnostic texts
    ("550 5.1.1 <user@host>: ..."). Events of the account, and events that matched no account
    at all (the address was in none)."""
    status = await conn.execute(
        """UPDATE email_events SET
               email = NULL,
               provider_event_id = encode(sha256(convert_to(provider_event_id, 'UTF8')), 'hex')
           WHERE (account_id = $1 OR account_id IS NULL) AND email = ANY($2::text[])""",
        account_id,
        list(emails),
    )
    await scrub_texts(
        conn,
        "email_events",
        ("reason", "provider_type"),
        spellings,
        "(account_id = $1 OR account_id IS NULL)",
        account_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def scrub_texts(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    addresses: Sequence[str],
    where: str = "true",
    *args: Any,
) -> int:
    """Replace each of ``addresses`` (any case, whole addresses: :func:`address_pattern`) in the
    text ``columns`` of ``table``'s rows that match ``where`` (its parameters ``args``): texts
    such as a provider's diagnostic quote the address. Returns the rows changed."""
    n = len(args) + 1  # the pattern's parameter; the mark's is the next
    changes = ", ".join(f"{c} = regexp_replace({c}, ${n}, ${n + 1}, 'gi')" for c in columns)
    holding = " OR ".join(f"{c} ~* ${n}" for c in columns)
    total = 0
    for pattern in _patterns(addresses):
        status = await conn.execute(
            f"UPDATE {table} SET {changes} WHERE {where} AND ({holding})", *args, pattern, ERASED_MARK
        )
        total += int(status.rsplit(" ", 1)[-1])
    return total


def _patterns(addresses: Sequence[str]) -> list[str]:
    """One case-blind pattern per address, whatever spellings of it were seen."""
    return sorted({address_pattern(address.lower()) for address in addresses})


async def scrub_dead_letters(conn: asyncpg.Connection, spellings: Sequence[str]) -> int:
    """Refused writer entries may quote the address in their payload or error."""
    return await scrub_texts(conn, "dead_letters", ("payload", "error"), spellings)


async def delete_relay_dead_letters(
    conn: asyncpg.Connection, account_id: int, lead_ids: Sequence[int], addresses: Sequence[str]
) -> int:
    """Records a destination refused keep the address: they go, those of the leads and those of
    the account (or of no account: an event no lead matched) that name one of ``addresses``
    (an event matched by address has no lead id; after a plain delete there is no lead)."""
    status = await conn.execute(
        """DELETE FROM relay_dead_letters
           WHERE (account_id = $1 AND lead_id = ANY($2::bigint[]))
              OR ((account_id = $1 OR account_id IS NULL) AND record::text ~* ANY($3::text[]))""",
        account_id,
        list(lead_ids),
        _patterns(addresses),
    )
    return int(status.rsplit(" ", 1)[-1])


async def delete_leads(conn: asyncpg.Connection, account_id: int, lead_ids: Sequence[int]) -> int:
    status = await conn.execute(
        "DELETE FROM leads WHERE account_id = $1 AND id = ANY($2::bigint[])", account_id, list(lead_ids)
    )
    return int(status.rsplit(" ", 1)[-1])


def audit_mark(erasure_id: int) -> str:
    """What ``suppression_audit.email`` says instead of an address the erasure ``erasure_id`` erased."""
    return f"{ERASED_MARK} (erasure {erasure_id})"


@dataclasses.dataclass(frozen=True, slots=True)
class ErasedEvent:
    """What a provider event is stored with when its address was erased: the erasure that erased
    it (the latest of the account) and the event's texts with the address cut out."""

    erasure_id: int
    reason: str | None
    provider_type: str | None


async def erased_among(
    conn: asyncpg.Connection,
    events: Sequence[tuple[int | None, str, str | None, str | None, str | None]],
    ipad: bytes,
    opad: bytes,
) -> dict[int, ErasedEvent]:
    """Which of ``events`` (``(account_id, lower-cased address, reason, provider_type, pattern)``)
    are about an erased person, by position: the keyed hash of the address is in an erasure of
    the event's account (of any account for an event that matched none, as :func:`scrub_events`
    scrubs those), and that account has no lead with the address again (the host application
    imported the person anew: its events are theirs). ``reason`` and ``provider_type`` come back
    with ``pattern`` (:func:`address_pattern`, None when the texts cannot quote an address)
    replaced as :func:`scrub_events` does. One statement, through the GIN index on the hashes."""
    rows = await conn.fetch(
        f"""SELECT v.n, hit.erasure_id,
                   regexp_replace(v.reason, v.pattern, $8, 'gi') AS reason,
                   regexp_replace(v.provider_type, v.pattern, $8, 'gi') AS provider_type
            FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
                 WITH ORDINALITY AS v(account_id, email, reason, provider_type, pattern, n)
            JOIN LATERAL (
                SELECT max(e.id) AS erasure_id FROM erasures e
                WHERE e.email_hashes @> ARRAY[{hmac_sql("v.email", "$6::bytea", "$7::bytea")}]
                  AND (v.account_id IS NULL OR e.account_id = v.account_id)
                  AND NOT EXISTS (SELECT 1 FROM leads l
                                  WHERE lower(l.email) = lower(v.email) AND l.account_id = e.account_id)
            ) hit ON hit.erasure_id IS NOT NULL""",
        [e[0] for e in events],
        [e[1] for e in events],
        [e[2] if e[4] is not None else None for e in events],
        [e[3] if e[4] is not None else None for e in events],
        [e[4] for e in events],
        ipad,
        opad,
        ERASED_MARK,
    )
    found = {}
    for row in rows:
        n = row["n"] - 1
        _, _, reason, provider_type, pattern = events[n]
        if pattern is not None:
            reason, provider_type = row["reason"], row["provider_type"]
        found[n] = ErasedEvent(row["erasure_id"], reason, provider_type)
    return found


async def suppress_hashed(
    conn: asyncpg.Connection,
    entries: Sequence[tuple[int, str, str, str, int]],
    ipad: bytes,
    opad: bytes,
) -> int:
    """Suppress erased addresses as :func:`keep_suppressions_hashed` keeps them:
    ``(account_id, address, reason, source, erasure_id)`` (one per account and address) go into
    ``erased_suppressions`` as keyed hashes where not there yet, each addition audited as
    :func:`scrub_audit` leaves an audit entry (no address). Returns how many were added."""
    status = await conn.execute(
        f"""WITH v AS (
                SELECT a, {hmac_sql("e", "$6::bytea", "$7::bytea")} AS h, r, s, x, m
                FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $8::text[])
                     AS t(a, e, r, s, x, m)),
            added AS (
                INSERT INTO erased_suppressions (account_id, email_hash, reason, erasure_id)
                SELECT a, h, r, x FROM v
                ON CONFLICT (account_id, email_hash) DO NOTHING
                RETURNING account_id, email_hash)
            INSERT INTO suppression_audit (account_id, email, action, reason, source)
            SELECT v.a, v.m, 'added', v.r, v.s
            FROM added JOIN v ON v.a = added.account_id AND v.h = added.email_hash""",
        [e[0] for e in entries],
        [e[1] for e in entries],
        [e[2] for e in entries],
        [e[3] for e in entries],
        [e[4] for e in entries],
        ipad,
        opad,
        [audit_mark(e[4]) for e in entries],
    )
    return int(status.rsplit(" ", 1)[-1])


async def has_erased_suppressions(conn: asyncpg.Connection, account_id: int) -> bool:
    """Whether the account keeps any erased address suppressed (lead windows then check hashes)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM erased_suppressions WHERE account_id = $1)", account_id
        )
    )


async def erased_since(
    conn: asyncpg.Connection, horizon: int, window: dt.timedelta
) -> tuple[list[tuple[int, int, list[int]]], int]:
    """``(erasure id, account, lead ids)`` of the erasures written by a transaction at or after
    ``horizon`` (0: all of those made within ``window``), and the horizon of the next call: the
    oldest transaction still running now, so that one committed late is read next time (ids
    are taken when an erasure starts, and one may commit after a later one)."""
    rows = await conn.fetch(
        """WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS next)
           SELECT h.next, e.id, e.account_id, e.lead_ids FROM horizon h
           LEFT JOIN erasures e ON e.tx >= $1 AND ($1 > 0 OR e.at > now() - $2::interval)""",
        horizon,
        window,
    )
    found = [(r["id"], r["account_id"], list(r["lead_ids"])) for r in rows if r["id"] is not None]
    return found, rows[0]["next"]
