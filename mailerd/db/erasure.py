"""Erasure queries: every stored copy of an address in one account, found and removed.

Addresses are compared as Postgres lower-cases them (the unique index on leads does the same),
and hashed in SQL with the built-in ``sha256`` as HMAC-SHA256 (RFC 2104): the caller passes the
key's inner and outer pads, never the key. So the hash of an address is the same here, in the
lead windows (an erased, suppressed address imported again is still suppressed) and wherever
else Postgres computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

# HMAC-SHA256 of lower(address) in SQL: $ipad / $opad are the key XOR 0x36 / 0x5c, 64 bytes each.
HMAC_SQL = "sha256({opad} || sha256({ipad} || convert_to(lower({address}), 'UTF8')))"
ERASED_MARK = "<erased>"


# What may stand right before an address's local part and belong to it (RFC 5322 atext, a dot,
# or any non-ASCII character), and right after its domain (a letter, digit or hyphen, or a dot
# that goes on): an address found inside a longer one is not that address.
_BEFORE = r"(?<![[:alnum:]!#$%&'*+/=?^_`{|}~.-]|[^\x01-\x7f])"
_AFTER = r"(?![[:alnum:]-]|\.[[:alnum:]]|[^\x01-\x7f])"


def address_pattern(address: str) -> str:
    """A Postgres regular expression that matches ``address`` as a whole address, literally
    (every character that is not a letter or a digit escaped). With ``~*`` and
    ``regexp_replace(..., 'gi')`` it finds it however a provider's diagnostic wrote it
    (``<Ada@Example.COM>``), and not inside another (``joann@example.com`` for ``ann@...``)."""
    return _BEFORE + "".join(char if char.isalnum() else "\\" + char for char in address) + _AFTER


def hmac_sql(address: str, ipad: str, opad: str) -> str:
    """The SQL expression of the keyed hash of ``address`` (an SQL expression itself)."""
    return HMAC_SQL.format(address=address, ipad=ipad, opad=opad)


async def targets(
    conn: asyncpg.Connection, account_id: int, lead_id: int | None, addresses: Sequence[str]
) -> tuple[list[int], list[str], list[str]]:
    """The account's leads to erase (by id, or by address), every lower-cased address concerned
    (the leads' and the ones given, found as leads or not), and every spelling seen (texts
    quote an address the way it was sent)."""
    rows = await conn.fetch(
        """SELECT id, email FROM leads
           WHERE account_id = $1
             AND (id = $2 OR lower(email) = ANY(SELECT lower(a) FROM unnest($3::text[]) a))
           FOR UPDATE""",
        account_id,
        lead_id,
        list(addresses),
    )
    spellings = {r["email"] for r in rows} | set(addresses)
    lowered = await conn.fetchval(
        "SELECT coalesce(array_agg(DISTINCT lower(a)), '{}') FROM unnest($1::text[]) a", sorted(spellings)
    )
    return [r["id"] for r in rows], sorted(lowered), sorted(spellings | set(lowered))


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
        f"{ERASED_MARK} (erasure {erasure_id})",
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
    for pattern in _patterns(spellings):
        await conn.execute(
            """UPDATE email_events SET reason = regexp_replace(reason, $2, $3, 'gi'),
                                       provider_type = regexp_replace(provider_type, $2, $3, 'gi')
               WHERE (account_id = $1 OR account_id IS NULL) AND (reason ~* $2 OR provider_type ~* $2)""",
            account_id,
            pattern,
            ERASED_MARK,
        )
    return int(status.rsplit(" ", 1)[-1])


def _patterns(spellings: Sequence[str]) -> list[str]:
    """One case-blind pattern per address, whatever spellings of it were seen."""
    return sorted({address_pattern(spelling.lower()) for spelling in spellings})


async def scrub_dead_letters(conn: asyncpg.Connection, spellings: Sequence[str]) -> int:
    """Refused writer entries may quote the address in their payload or error."""
    total = 0
    for pattern in _patterns(spellings):
        status = await conn.execute(
            """UPDATE dead_letters SET payload = regexp_replace(payload, $1, $2, 'gi'),
                                       error = regexp_replace(error, $1, $2, 'gi')
               WHERE payload ~* $1 OR error ~* $1""",
            pattern,
            ERASED_MARK,
        )
        total += int(status.rsplit(" ", 1)[-1])
    return total


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


async def has_erased_suppressions(conn: asyncpg.Connection, account_id: int) -> bool:
    """Whether the account keeps any erased address suppressed (lead windows then check hashes)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM erased_suppressions WHERE account_id = $1)", account_id
        )
    )
