"""``campaign_stats``: one row of counters per campaign, kept by the writer, one upsert per
campaign per flush. Reports and guards read these, never the hot log."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import asyncpg

ACTIVE_STATUSES = ("scheduled", "running", "paused")


async def set_matched(conn: asyncpg.Connection, campaign_id: int, matched: int) -> None:
    """How many leads the campaign's segment matched when it was split into shards."""
    await conn.execute(
        """INSERT INTO campaign_stats (campaign_id, matched) VALUES ($1, $2)
           ON CONFLICT (campaign_id) DO UPDATE SET matched = $2, updated_at = now()""",
        campaign_id,
        matched,
    )


async def ensure(conn: asyncpg.Connection, campaign_id: int) -> None:
    """A zero row for a new campaign."""
    await conn.execute(
        "INSERT INTO campaign_stats (campaign_id) VALUES ($1) ON CONFLICT DO NOTHING", campaign_id
    )


async def add_outcomes(conn: asyncpg.Connection, counts: Mapping[int, Sequence[int]]) -> None:
    """Add (sent, failed, unknown, suppressed, retried[, rejected]) per campaign id; ``rejected``
    (0 when left out) are the failed emails an SMTP server refused (the guards' sample)."""
    if not counts:
        return
    ids = list(counts)
    await conn.execute(
        """INSERT INTO campaign_stats AS cs
               (campaign_id, sent, failed, unknown, suppressed, retried, rejected)
           SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                                $5::bigint[], $6::bigint[], $7::bigint[])
           ON CONFLICT (campaign_id) DO UPDATE SET
               sent = cs.sent + EXCLUDED.sent,
               failed = cs.failed + EXCLUDED.failed,
               unknown = cs.unknown + EXCLUDED.unknown,
               suppressed = cs.suppressed + EXCLUDED.suppressed,
               retried = cs.retried + EXCLUDED.retried,
               rejected = cs.rejected + EXCLUDED.rejected,
               updated_at = now()""",
        ids,
        *([counts[c][i] for c in ids] for i in range(5)),
        [counts[c][5] if len(counts[c]) > 5 else 0 for c in ids],
    )


async def add_events(
    conn: asyncpg.Connection,
    counts: Mapping[int, Sequence[int]],
    late: Mapping[int, Sequence[int]] | None = None,
) -> None:
    """Add (delivered, bounced, complained, unsubscribed, hard_bounced, blocked) per campaign id.
    ``late`` (hard_bounced, complained, blocked) per campaign id: those of the events that are
    about emails sent before the guard's baseline; they are added to the baseline too, so the
    guard, which reads the counters less the baseline, never counts them."""
    if not counts:
        return
    ids = list(counts)
    late = late or {}
    await conn.execute(
        """UPDATE campaign_stats cs SET delivered = cs.delivered + v.delivered,
                  bounced = cs.bounced + v.bounced, complained = cs.complained + v.complained,
                  unsubscribed = cs.unsubscribed + v.unsubscribed,
                  hard_bounced = cs.hard_bounced + v.hard_bounced, blocked = cs.blocked + v.blocked,
                  guard_hard_bounced = cs.guard_hard_bounced + v.late_hard_bounced,
                  guard_complained = cs.guard_complained + v.late_complained,
                  guard_blocked = cs.guard_blocked + v.late_blocked,
                  updated_at = now()
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                       $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])
                AS v(campaign_id, delivered, bounced, complained, unsubscribed, hard_bounced, blocked,
                     late_hard_bounced, late_complained, late_blocked)
           WHERE cs.campaign_id = v.campaign_id""",
        ids,
        *([counts[c][i] for c in ids] for i in range(6)),
        *([late[c][i] if c in late else 0 for c in ids] for i in range(3)),
    )


async def lock_counters(conn: asyncpg.Connection, campaign_ids: Sequence[int]) -> None:
    """Lock the counters of ``campaign_ids`` in id order (a writer flush, before it adds to any):
    two flushes adding to the same campaigns in different orders deadlocked."""
    if campaign_ids:
        await conn.execute(
            """SELECT 1 FROM campaign_stats WHERE campaign_id = ANY($1::bigint[])
               ORDER BY campaign_id FOR UPDATE""",
            sorted(set(campaign_ids)),
        )


async def lock_for_guard(conn: asyncpg.Connection, campaign_ids: Sequence[int]) -> None:
    """Lock the counters of ``campaign_ids`` (in id order) before a flush reads their guard
    baselines (:func:`mailerd.db.events.before_baselines`): a resume that commits between that
    read and the flush's :func:`add_events` would have its new baseline charged with the
    flush's late bounces. Held, a resume waits for the flush (:func:`reset_guard_baseline`)."""
    await conn.execute(
        """SELECT 1 FROM campaign_stats WHERE campaign_id = ANY($1::bigint[])
           ORDER BY campaign_id FOR UPDATE""",
        sorted(set(campaign_ids)),
    )


async def guard_counts(
    conn: asyncpg.Connection, campaign_ids: Sequence[int], min_sample: int
) -> list[asyncpg.Record]:
    """For the running campaigns of ``campaign_ids`` whose sample since their guard baseline
    (emails sent, and emails an SMTP server rejected) is at least ``min_sample``: id, status
    generation, and sent, rejected, hard_bounced, complained and blocked since the baseline
    (primary-key look-ups, never the log)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT c.id, c.status_generation AS generation,
                  s.sent - s.guard_sent AS sent, s.rejected - s.guard_rejected AS rejected,
                  s.hard_bounced - s.guard_hard_bounced AS hard_bounced,
                  s.complained - s.guard_complained AS complained, s.blocked - s.guard_blocked AS blocked
           FROM campaign_stats s JOIN campaigns c ON c.id = s.campaign_id
           WHERE s.campaign_id = ANY($1::bigint[]) AND c.status = 'running'
             AND (s.sent - s.guard_sent) + (s.rejected - s.guard_rejected) >= $2
           ORDER BY c.id""",
        list(campaign_ids),
        min_sample,
    )
    return rows


async def reset_guard_baseline(conn: asyncpg.Connection, campaign_id: int) -> None:
    """The guard starts over from the campaign's counters now (an operator resumed it). The txid
    snapshot taken with them tells the emails logged before (their bounces, arriving late, are
    added to the baseline by :func:`add_events`: counted against no email sent after it). In a
    transaction (the status change's)."""
    # The row lock first, the snapshot in a statement of its own after it: a flush holding the
    # row (it counted emails or events) commits before the snapshot is taken, so its emails are
    # before the baseline by the counters and by the snapshot alike. One statement would take its
    # snapshot before the wait and read the flush's counters after it (EvalPlanQual): emails in
    # the baseline's counters but after its snapshot, their bounces counted against no email.
    await conn.execute("SELECT 1 FROM campaign_stats WHERE campaign_id = $1 FOR UPDATE", campaign_id)
    await conn.execute(
        """UPDATE campaign_stats SET guard_sent = sent, guard_rejected = rejected,
                  guard_hard_bounced = hard_bounced,
                  guard_complained = complained, guard_blocked = blocked,
                  guard_since = now(), guard_snapshot = txid_current_snapshot()  -- since: a record only
           WHERE campaign_id = $1""",
        campaign_id,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class StatusTotals:
    """The campaigns of one status, summed: how many, leads matched, leads logged, and leads
    left (each campaign's matched less logged, never below 0: a campaign that logged leads that
    began to match after its split takes nothing off another's)."""

    status: str
    campaigns: int
    matched: int
    logged: int
    remaining: int


# A campaign's leads logged, any outcome (campaign_stats as cs).
_LOGGED = "(cs.sent + cs.failed + cs.unknown + cs.suppressed)"


async def totals_by_status(conn: asyncpg.Connection) -> list[StatusTotals]:
    """Scheduled, running and paused campaigns, summed per status (the metrics sampler reads
    this every few seconds: one index scan over the live campaigns, never the log)."""
    rows = await conn.fetch(
        f"""SELECT c.status, count(*) AS campaigns,
                  coalesce(sum(cs.matched), 0)::bigint AS matched,
                  coalesce(sum({_LOGGED}), 0)::bigint AS logged,
                  coalesce(sum(greatest(cs.matched - {_LOGGED}, 0)), 0)::bigint AS remaining
           FROM campaigns c LEFT JOIN campaign_stats cs ON cs.campaign_id = c.id
           WHERE c.status = ANY($1::text[])
           GROUP BY c.status""",
        list(ACTIVE_STATUSES),
    )
    return [
        StatusTotals(r["status"], r["campaigns"], r["matched"], r["logged"], r["remaining"]) for r in rows
    ]


async def leads_waiting_for_window(conn: asyncpg.Connection) -> int:
    """Leads left of the running campaigns whose every pending shard waits for its send window
    (``not_before`` ahead): nothing of them can be sent until a window opens, which is no lack of
    progress (the MailerdCampaignNoProgress alert subtracts them). A claimed shard's
    ``not_before`` is NULL, so a campaign being sent is never counted."""
    return int(
        await conn.fetchval(
            f"""SELECT coalesce(sum(greatest(cs.matched - {_LOGGED}, 0)), 0)
               FROM campaigns c
               JOIN campaign_stats cs ON cs.campaign_id = c.id
               JOIN LATERAL (SELECT bool_and(coalesce(s.not_before > now(), false)) AS waiting
                             FROM campaign_shards s
                             WHERE s.campaign_id = c.id AND s.state = 'pending') w ON true
               WHERE c.status = 'running' AND w.waiting"""
        )
    )
