"""``provider_usage`` and ``provider_holds``: what each provider account sent and heard back per
hour (kept by the writer, one statement per flush), and the holds the provider guard puts on an
account until an operator releases it.

The rolling 24 hours are the last :data:`WINDOW_BUCKETS` hour buckets (the current hour and the
24 before it: 24 to 25 hours, never less than a day).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

import asyncpg

WINDOW_BUCKETS = 25
WINDOW_START = "date_trunc('hour', now()) - interval '24 hours'"  # SQL: the window's first hour
KEEP_DAYS = 2  # hour rows older than this are deleted by the partition maintenance


class ProviderHeld(Exception):
    """A campaign of a held provider may not start or resume until an operator releases it."""

    def __init__(self, campaign_id: int | None, action: str, hold: Hold) -> None:
        what = f"campaign {campaign_id}" if campaign_id is not None else "the campaign"
        super().__init__(
            f"cannot {action} {what}: provider {hold.provider} is held since "
            f"{hold.since.isoformat(timespec='seconds')} ({hold.reason}); release it with "
            f"POST /api/providers/{hold.provider}/resume"
        )
        self.hold = hold


@dataclasses.dataclass(frozen=True, slots=True)
class Hold:
    """An active hold on a provider account."""

    provider: str
    signal: str
    reason: str
    since: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    """The last release of a hold: the operator's override."""

    reason: str
    by: str
    at: dt.datetime
    held_for: str  # the reason of the hold it released


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """A provider's counters over the rolling window, since the last release (if in it):
    ``rejected`` are the emails an SMTP server refused (logged failed, their rejection counted in
    ``hard_bounced`` or ``blocked``); the guard's sample is ``sent`` and ``rejected``."""

    provider: str
    sent: int
    hard_bounced: int
    complained: int
    blocked: int
    rejected: int = 0

    @property
    def sample(self) -> int:
        """The emails the guard judges the rates over: sent, and rejected by an SMTP server."""
        return self.sent + self.rejected


def per_campaign(
    outcomes: Mapping[int, Sequence[int]], events: Mapping[int, Sequence[int]]
) -> dict[int, tuple[int, int, int, int, int]]:
    """(sent, hard_bounced, complained, blocked, rejected) per campaign of one flush, from the
    writer's outcome counters (sent first, rejected sixth) and the events' counters (delivered,
    bounced, complained, unsubscribed, hard_bounced, blocked). Campaigns with nothing to add are
    left out."""
    result: dict[int, tuple[int, int, int, int, int]] = {}
    for campaign_id in outcomes.keys() | events.keys():
        outcome = outcomes.get(campaign_id, ())
        sent = outcome[0] if outcome else 0
        rejected = outcome[5] if len(outcome) > 5 else 0
        event = events.get(campaign_id)
        row = (
            (sent, event[4], event[2], event[5], rejected) if event is not None else (sent, 0, 0, 0, rejected)
        )
        if any(row):
            result[campaign_id] = row
    return result


async def add(conn: asyncpg.Connection, counts: Mapping[int, tuple[int, int, int, int, int]]) -> None:
    """Add one flush's counters to the current hour of each campaign's provider: one statement,
    the providers in name order (every node locks the rows in the same order)."""
    if not counts:
        return
    ids = list(counts)
    await conn.execute(
        """INSERT INTO provider_usage AS u
               (provider, hour, sent, hard_bounced, complained, blocked, rejected)
           SELECT c.provider, date_trunc('hour', now()), sum(v.sent), sum(v.hard_bounced),
                  sum(v.complained), sum(v.blocked), sum(v.rejected)
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                       $6::bigint[])
                AS v(campaign_id, sent, hard_bounced, complained, blocked, rejected)
           JOIN campaigns c ON c.id = v.campaign_id
           GROUP BY c.provider ORDER BY c.provider
           ON CONFLICT (provider, hour) DO UPDATE SET
               sent = u.sent + EXCLUDED.sent, hard_bounced = u.hard_bounced + EXCLUDED.hard_bounced,
               complained = u.complained + EXCLUDED.complained, blocked = u.blocked + EXCLUDED.blocked,
               rejected = u.rejected + EXCLUDED.rejected""",
        ids,
        *([counts[c][i] for c in ids] for i in range(5)),
    )


# The counters of the window, less what the last release's bucket held at the release.
_USAGE = f"""
    SELECT p.provider,
           coalesce(sum(u.sent), 0)::bigint - coalesce(max(b.base_sent), 0) AS sent,
           coalesce(sum(u.hard_bounced), 0)::bigint - coalesce(max(b.base_hard_bounced), 0) AS hard_bounced,
           coalesce(sum(u.complained), 0)::bigint - coalesce(max(b.base_complained), 0) AS complained,
           coalesce(sum(u.blocked), 0)::bigint - coalesce(max(b.base_blocked), 0) AS blocked,
           coalesce(sum(u.rejected), 0)::bigint - coalesce(max(b.base_rejected), 0) AS rejected
    FROM unnest($1::text[]) AS p(provider)
    LEFT JOIN LATERAL (
        SELECT h.base_hour, h.base_sent, h.base_hard_bounced, h.base_complained, h.base_blocked,
               h.base_rejected
        FROM provider_holds h
        WHERE h.provider = p.provider AND h.released_at IS NOT NULL AND h.base_hour >= {WINDOW_START}
        ORDER BY h.released_at DESC LIMIT 1) b ON true
    LEFT JOIN provider_usage u
        ON u.provider = p.provider AND u.hour >= {WINDOW_START}
           AND (b.base_hour IS NULL OR u.hour >= b.base_hour)
    GROUP BY p.provider ORDER BY p.provider"""


async def usage(conn: asyncpg.Connection, providers: Sequence[str]) -> list[Usage]:
    """Each provider's counters over the rolling window since its last release (primary-key
    range scans of at most :data:`WINDOW_BUCKETS` rows each)."""
    rows = await conn.fetch(_USAGE, sorted(set(providers)))
    return [
        Usage(r["provider"], r["sent"], r["hard_bounced"], r["complained"], r["blocked"], r["rejected"])
        for r in rows
    ]


async def unheld_providers_of(conn: asyncpg.Connection, campaign_ids: Sequence[int]) -> list[str]:
    """The providers of these campaigns that are not held now."""
    rows = await conn.fetch(
        """SELECT DISTINCT c.provider FROM campaigns c
           WHERE c.id = ANY($1::bigint[])
             AND NOT EXISTS (SELECT 1 FROM provider_holds h
                             WHERE h.provider = c.provider AND h.released_at IS NULL)""",
        list(campaign_ids),
    )
    return [r["provider"] for r in rows]


async def known_providers(conn: asyncpg.Connection) -> list[str]:
    """Every provider named by a campaign, a usage row or a hold."""
    rows = await conn.fetch(
        """SELECT provider FROM campaigns UNION SELECT provider FROM provider_usage
           UNION SELECT provider FROM provider_holds ORDER BY 1"""
    )
    return [r["provider"] for r in rows]


async def lock(conn: asyncpg.Connection, provider: str, *, shared: bool) -> None:
    """Order holds against starts (in a transaction): a hold takes the provider's lock alone,
    a campaign's start or resume shares it, so no start slips past a hold being put."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {function}(hashtextextended('mailerd.provider_hold:' || $1, 0))", provider)


async def share_locks_of(conn: asyncpg.Connection, campaign_ids: Sequence[int]) -> None:
    """Share the :func:`lock` of the providers of ``campaign_ids`` (in name order, in a
    transaction): a flush that records bounces or complaints takes it first, so a release (which
    takes the lock alone, then its baseline and snapshot) comes before or after the whole flush,
    never between its reading of the last release and its adding to the hour's counters."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock_shared(hashtextextended('mailerd.provider_hold:' || p.provider, 0))
           FROM (SELECT DISTINCT provider FROM campaigns WHERE id = ANY($1::bigint[]) ORDER BY provider) p""",
        sorted(set(campaign_ids)),
    )


async def active_hold(conn: asyncpg.Connection, provider: str) -> Hold | None:
    """The provider's hold, if it is held."""
    row = await conn.fetchrow(
        """SELECT provider, signal, reason, since FROM provider_holds
           WHERE provider = $1 AND released_at IS NULL""",
        provider,
    )
    return None if row is None else Hold(row["provider"], row["signal"], row["reason"], row["since"])


async def holds(conn: asyncpg.Connection) -> dict[str, Hold]:
    """Every active hold, by provider."""
    rows = await conn.fetch(
        "SELECT provider, signal, reason, since FROM provider_holds WHERE released_at IS NULL"
    )
    return {r["provider"]: Hold(r["provider"], r["signal"], r["reason"], r["since"]) for r in rows}


async def last_release(conn: asyncpg.Connection, provider: str) -> Release | None:
    """The provider's last release, if any."""
    row = await conn.fetchrow(
        """SELECT release_reason, released_by, released_at, reason FROM provider_holds
           WHERE provider = $1 AND released_at IS NOT NULL ORDER BY released_at DESC LIMIT 1""",
        provider,
    )
    if row is None:
        return None
    return Release(row["release_reason"], row["released_by"], row["released_at"], row["reason"])


async def put_hold(conn: asyncpg.Connection, provider: str, signal: str, reason: str) -> bool:
    """Hold the provider (in a transaction, under :func:`lock`); False: it was held already."""
    inserted = await conn.fetchval(
        """INSERT INTO provider_holds (provider, signal, reason) VALUES ($1, $2, $3)
           ON CONFLICT (provider) WHERE released_at IS NULL DO NOTHING RETURNING id""",
        provider,
        signal,
        reason,
    )
    return inserted is not None


async def release(conn: asyncpg.Connection, provider: str, reason: str, by: str) -> Hold | None:
    """Release the provider's hold, recording who, why and when, and the counters of the current
    hour as the guard's new baseline, with the txid snapshot that tells the emails sent before
    it (whose late bounces the guard leaves out: :func:`mailerd.db.events.before_baselines`).
    Returns the hold released (None: it was not held)."""
    row = await conn.fetchrow(
        """WITH base AS (
               SELECT date_trunc('hour', now()) AS hour,
                      coalesce(max(sent), 0) AS sent, coalesce(max(hard_bounced), 0) AS hard_bounced,
                      coalesce(max(complained), 0) AS complained, coalesce(max(blocked), 0) AS blocked,
                      coalesce(max(rejected), 0) AS rejected
               FROM provider_usage WHERE provider = $1 AND hour = date_trunc('hour', now()))
           UPDATE provider_holds h SET released_at = now(), released_by = $3, release_reason = $2,
                  base_hour = base.hour, base_sent = base.sent, base_hard_bounced = base.hard_bounced,
                  base_complained = base.complained, base_blocked = base.blocked,
                  base_rejected = base.rejected,
                  base_snapshot = txid_current_snapshot()
           FROM base WHERE h.provider = $1 AND h.released_at IS NULL
           RETURNING h.provider, h.signal, h.reason, h.since""",
        provider,
        reason,
        by,
    )
    return None if row is None else Hold(row["provider"], row["signal"], row["reason"], row["since"])


async def prune(conn: asyncpg.Connection, keep_days: int = KEEP_DAYS) -> int:
    """Delete hour rows older than ``keep_days`` (the window needs 25 hours). Returns how many."""
    status = await conn.execute(
        "DELETE FROM provider_usage WHERE hour < now() - make_interval(days => $1)", keep_days
    )
    return int(status.split()[-1])
