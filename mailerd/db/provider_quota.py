"""``provider_quota_hours`` and ``provider_quotas``: the reservations of the daily quotas and
warm-up schedules (:mod:`mailerd.quota`), counted across nodes.

A reservation is one short transaction under the provider's advisory lock (never held across a
send): it reads the hour buckets of the last two days, lets :func:`mailerd.quota.decide` grant
what the limits leave, adds the grant to the current hour and records the outcome for the status
readers. Every time comes from the database's clock, so the nodes agree on hours and days.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import asyncpg

from mailerd import quota

KEEP_DAYS = 2  # the window needs 25 hours, a warm-up day 24


@dataclasses.dataclass(frozen=True, slots=True)
class Reservation:
    """A grant and the hour bucket it was added to (what is given back goes there)."""

    decision: quota.Decision
    hour: dt.datetime
    now: dt.datetime  # the database's clock at the reservation


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """A provider's quota as the last reservation saw it (``GET /api/providers``)."""

    provider: str
    daily_limit: int | None
    warmup_day: int | None
    warmup_limit: int | None
    reserved_24h: int
    reserved_today: int
    exhausted_until: dt.datetime | None
    exhausted_reason: str | None
    updated_at: dt.datetime


async def reserve(
    conn: asyncpg.Connection, provider: str, schedule: quota.Schedule, want: int, need: int = 1
) -> Reservation:
    """Reserve up to ``want`` of the provider's volume for this node (one transaction); short
    of ``need``, record until when the provider waits."""
    async with conn.transaction():
        await _lock(conn, provider)
        now = await conn.fetchval("SELECT clock_timestamp()")  # after the lock: the hour it lands in
        rows = await conn.fetch(
            """SELECT hour, reserved, elsewhere FROM provider_quota_hours
               WHERE provider = $1 AND hour >= date_trunc('hour', $2::timestamptz) - interval '48 hours'""",
            provider,
            now,
        )
        decision = quota.decide(
            schedule,
            [(r["hour"], r["reserved"]) for r in rows],
            now,
            want,
            need,
            elsewhere=[(r["hour"], r["elsewhere"]) for r in rows],
        )
        hour = quota.hour_of(now)
        if decision.granted:
            await conn.execute(
                """INSERT INTO provider_quota_hours AS q (provider, hour, reserved) VALUES ($1, $2, $3)
                   ON CONFLICT (provider, hour) DO UPDATE SET reserved = q.reserved + EXCLUDED.reserved""",
                provider,
                hour,
                decision.granted,
            )
        await conn.execute(
            """INSERT INTO provider_quotas AS p (provider, daily_limit, warmup_day, warmup_limit,
                   reserved_24h, reserved_today, exhausted_until, exhausted_reason, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (provider) DO UPDATE SET daily_limit = EXCLUDED.daily_limit,
                   warmup_day = EXCLUDED.warmup_day, warmup_limit = EXCLUDED.warmup_limit,
                   reserved_24h = EXCLUDED.reserved_24h, reserved_today = EXCLUDED.reserved_today,
                   exhausted_until = EXCLUDED.exhausted_until, exhausted_reason = EXCLUDED.exhausted_reason,
                   updated_at = EXCLUDED.updated_at""",
            provider,
            decision.daily_limit,
            decision.warmup_day,
            decision.warmup_limit,
            decision.reserved_24h,
            decision.reserved_today,
            decision.exhausted_until,
            decision.reason or None,
            now,
        )
    return Reservation(decision, hour, now)


async def give_back(conn: asyncpg.Connection, provider: str, hour: dt.datetime, unused: int) -> None:
    """Return what a node reserved and did not send to the hour it was reserved in (the
    status it wrote is refreshed by the next reservation)."""
    if unused <= 0:
        return
    async with conn.transaction():
        await _lock(conn, provider)
        await conn.execute(
            """UPDATE provider_quota_hours SET reserved = greatest(reserved - $3, 0)
               WHERE provider = $1 AND hour = $2""",
            provider,
            hour,
            unused,
        )


async def count_sent_elsewhere(conn: asyncpg.Connection, provider: str, sent_24h: int) -> int:
    """What the account sent in the last 24 hours beyond what the nodes reserved and earlier
    reads added (SES ``SentLast24Hours``: another sender on the account, or sends from before
    mailerd counted) is added to the current hour's ``elsewhere``, so the account's quota counts
    it too (never ``daily_quota``, mailerd's share, nor the warm-up: :func:`mailerd.quota.decide`).
    Returns how much was added."""
    async with conn.transaction():
        await _lock(conn, provider)
        reserved = await conn.fetchval(
            """SELECT coalesce(sum(reserved + elsewhere), 0) FROM provider_quota_hours
               WHERE provider = $1 AND hour >= date_trunc('hour', clock_timestamp()) - interval '24 hours'""",
            provider,
        )
        missing = max(0, sent_24h - reserved)
        if missing:
            await conn.execute(
                """INSERT INTO provider_quota_hours AS q (provider, hour, elsewhere)
                   VALUES ($1, date_trunc('hour', clock_timestamp()), $2)
                   ON CONFLICT (provider, hour) DO UPDATE SET elsewhere = q.elsewhere + EXCLUDED.elsewhere""",
                provider,
                missing,
            )
    return int(missing)


async def _lock(conn: asyncpg.Connection, provider: str) -> None:
    """The provider's reservations one at a time, across nodes (in a transaction)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('mailerd.provider_quota:' || $1, 0))", provider
    )


async def states(conn: asyncpg.Connection, providers: Sequence[str]) -> dict[str, State]:
    """The recorded quota of each provider of ``providers`` that has one."""
    rows = await conn.fetch(
        """SELECT provider, daily_limit, warmup_day, warmup_limit, reserved_24h, reserved_today,
                  CASE WHEN exhausted_until > now() THEN exhausted_until END AS exhausted_until,
                  CASE WHEN exhausted_until > now() THEN exhausted_reason END AS exhausted_reason,
                  updated_at
           FROM provider_quotas WHERE provider = ANY($1::text[])""",
        list(providers),
    )
    return {r["provider"]: State(**dict(r)) for r in rows}


async def prune(conn: asyncpg.Connection, keep_days: int = KEEP_DAYS) -> int:
    """Delete hour rows older than ``keep_days``. Returns how many."""
    status = await conn.execute(
        "DELETE FROM provider_quota_hours WHERE hour < now() - make_interval(days => $1)", keep_days
    )
    return int(status.split()[-1])
