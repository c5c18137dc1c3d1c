"""Campaign rows: insert, the status and counters of one, a page of many, and status changes.

``change_status`` is the one place that knows which status an action may leave and where it
leads; every change is announced on ``NOTIFY_CHANNEL`` so every node reacts within a second.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from mailerd.db import provider_usage as usage_db
from mailerd.db import stats as stats_db

NOTIFY_CHANNEL = "mailerd_campaigns"
GUARD_CAUSE = "guard"  # the cause recorded for a deliverability guard's pause (mailerd.guards)

# action -> (statuses it may start from, status it leads to). The first four are the operator's
# (API_ACTIONS); the others are the pipeline's own. One exception, in ``_apply``: a campaign
# paused before it ever ran (``started_at`` null) that ``resume`` would run goes back to
# ``scheduled`` with its ``send_at``, so the due sweep starts it at that time, not at once.
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"draft", "scheduled"}), "scheduled"),
    "pause": (frozenset({"scheduled", "running"}), "paused"),
    "resume": (frozenset({"paused"}), "running"),  # or scheduled, when it never ran (see above)
    "cancel": (frozenset({"draft", "scheduled", "running", "paused"}), "cancelled"),
    "run": (frozenset({"scheduled"}), "running"),  # its send_at has come
    "finish": (frozenset({"running", "paused"}), "finished"),  # every shard done (or nothing to send)
    "fail": (frozenset({"scheduled", "running", "paused"}), "failed"),  # can never be sent as stored
}
API_ACTIONS = ("start", "pause", "resume", "cancel")
HELD_ACTIONS = frozenset({"start", "resume"})  # refused while the campaign's provider is held
ProviderHeld = usage_db.ProviderHeld


class TransitionError(Exception):
    """The action is not allowed from the campaign's current status (or it does not exist)."""

    def __init__(self, campaign_id: int, action: str, current: str | None, *, stale: bool = False) -> None:
        if current is None:
            what = "no such campaign"
        elif stale:
            what = f"its status changed since (it is {current} now)"
        else:
            what = f"campaign is {current}"
        super().__init__(f"cannot {action} campaign {campaign_id}: {what}")
        self.current = current
        self.stale = stale


@dataclasses.dataclass(frozen=True, slots=True)
class CampaignRow:
    """The stored columns of a new campaign (validated before it gets here)."""

    account_id: int
    name: str
    status: str
    segment: Any
    from_address: str
    subject: str
    html_body: str
    text_body: str
    provider: str
    rate_per_s: float | None
    resend_uncertain: bool
    send_at: dt.datetime | None
    reply_to: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    provider_template: str | None = None
    send_window: dict[str, Any] | None = None  # mailerd.windows.SendWindow.to_json()


async def insert(conn: asyncpg.Connection, row: CampaignRow) -> int:
    """Insert the campaign, its (zero) counters and its first change, in one transaction; NOTIFY
    when it is scheduled. Returns the id. One transaction, because a scheduled campaign is due at
    once: a node's sweep that saw the committed row before its counters would lock it and upsert
    the same counters row this insert is adding, a deadlock (found by bench/soak.py)."""
    async with conn.transaction():
        if row.status == "scheduled":
            await _refuse_if_held(conn, None, "start", row.provider)
        campaign_id: int = await conn.fetchval(
            """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject,
                                      html_body, text_body, provider, rate_per_s, resend_uncertain, send_at,
                                      reply_to, headers, provider_template, send_window)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
               RETURNING id""",
            row.account_id,
            row.name,
            row.status,
            row.segment,
            row.from_address,
            row.subject,
            row.html_body,
            row.text_body,
            row.provider,
            row.rate_per_s,
            row.resend_uncertain,
            row.send_at,
            row.reply_to,
            row.headers,
            row.provider_template,
            row.send_window,
        )
        await conn.execute(
            "INSERT INTO campaign_stats (campaign_id) VALUES ($1) ON CONFLICT DO NOTHING", campaign_id
        )
        await conn.execute(
            """INSERT INTO campaign_changes (campaign_id, generation, account_id, status, cause)
               VALUES ($1, 0, $2, $3, 'created')""",
            campaign_id,
            row.account_id,
            row.status,
        )
        if row.status == "scheduled":
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{campaign_id} {row.status}")
        return campaign_id


async def change_status(
    conn: asyncpg.Connection,
    campaign_id: int,
    action: str,
    reason: str | None = None,
    *,
    cause: str = "api",
    generation: int | None = None,
) -> str:
    """Apply ``action`` to one campaign and tell every node at once (NOTIFY). Returns the new
    status (``resume`` of a campaign that never ran: ``scheduled``); raises
    :class:`TransitionError` when the action is not allowed from the current status, or when
    ``generation`` is given and the status changed since it was read, and
    :class:`ProviderHeld` when it would start or resume a campaign of a held provider."""
    async with conn.transaction():
        if action in HELD_ACTIONS:
            provider = await conn.fetchval("SELECT provider FROM campaigns WHERE id = $1", campaign_id)
            if provider is not None:
                await _refuse_if_held(conn, campaign_id, action, provider)
        changed = await _apply(
            conn,
            action,
            "id = $5 AND ($6::bigint IS NULL OR status_generation = $6)",
            [campaign_id, generation],
            cause=cause,
            reason=reason,
        )
        if not changed:
            row = await conn.fetchrow(
                "SELECT status, status_generation FROM campaigns WHERE id = $1", campaign_id
            )
            current = None if row is None else row["status"]
            stale = row is not None and generation is not None and row["status_generation"] != generation
            raise TransitionError(campaign_id, action, current, stale=stale)
        if action == "resume" and await _paused_by(conn, campaign_id) == GUARD_CAUSE:
            # The operator overrides the guard (the resume and its reason are recorded): it
            # judges again only on what the campaign sends from now on.
            await stats_db.reset_guard_baseline(conn, campaign_id)
    return changed[campaign_id]


async def pause_provider(conn: asyncpg.Connection, provider: str, reason: str, *, cause: str) -> list[int]:
    """Pause every scheduled or running campaign of ``provider`` (in the caller's transaction,
    under :func:`mailerd.db.provider_usage.lock`). Returns the ids paused."""
    return list(await _apply(conn, "pause", "provider = $5", [provider], cause=cause, reason=reason))


async def resume_provider(
    conn: asyncpg.Connection, provider: str, hold_reason: str, reason: str
) -> list[int]:
    """Resume the campaigns of ``provider`` that are paused by its hold (their last change is
    the guard's, with the hold's reason): an operator released it with ``reason``. Those it
    paused before they ran go back to ``scheduled``, each at its own ``send_at``."""
    changed = await _apply(
        conn,
        "resume",
        """provider = $5 AND EXISTS (
               SELECT 1 FROM campaign_changes h WHERE h.campaign_id = campaigns.id
               AND h.generation = campaigns.status_generation AND h.cause = 'guard' AND h.reason = $6)""",
        [provider, hold_reason],
        cause="api",
        reason=reason,
    )
    return list(changed)


async def _refuse_if_held(
    conn: asyncpg.Connection, campaign_id: int | None, action: str, provider: str
) -> None:
    """A campaign of a held provider may not start or resume (in a transaction): raise
    :class:`ProviderHeld` naming the hold."""
    await usage_db.lock(conn, provider, shared=True)
    hold = await usage_db.active_hold(conn, provider)
    if hold is not None:
        raise ProviderHeld(campaign_id, action, hold)


async def _paused_by(conn: asyncpg.Connection, campaign_id: int) -> str | None:
    """The cause of the change before the campaign's current status."""
    cause: str | None = await conn.fetchval(
        """SELECT h.cause FROM campaign_changes h JOIN campaigns c ON c.id = h.campaign_id
           WHERE h.campaign_id = $1 AND h.generation = c.status_generation - 1""",
        campaign_id,
    )
    return cause


_ALL_SHARDS_DONE = """EXISTS (SELECT 1 FROM campaign_shards s WHERE s.campaign_id = campaigns.id)
           AND NOT EXISTS (SELECT 1 FROM campaign_shards s
                           WHERE s.campaign_id = campaigns.id AND s.state <> 'done')"""

# Set-based changes of the pipeline: (action, condition over ``campaigns``, its parameters
# start at $5). Named here so no condition is ever assembled from input. A campaign with a send
# window is not finished by ``done``: its zone shards read a lead's zone when they reach it, so a
# lead whose zone changed can be left unsent; ``splitting.finish_windowed`` checks that first.
_SWEEPS = {
    "due": ("run", "send_at <= now()"),
    "done": (
        "finish",
        f"""($5::bigint[] IS NULL OR id = ANY($5::bigint[])) AND send_window IS NULL
           AND {_ALL_SHARDS_DONE}""",
    ),
}


async def windowed_done(conn: asyncpg.Connection) -> list[int]:
    """Campaigns with a send window, running or paused, whose shards are all done: each is
    finished, or given shards for the leads left unsent, by ``splitting.finish_windowed``."""
    rows = await conn.fetch(
        f"""SELECT id FROM campaigns
            WHERE status = ANY($1::text[]) AND send_window IS NOT NULL AND {_ALL_SHARDS_DONE}
            ORDER BY id""",
        sorted(TRANSITIONS["finish"][0]),
    )
    return [r["id"] for r in rows]


async def sweep(
    conn: asyncpg.Connection, name: str, *, cause: str, ids: Sequence[int] | None = None
) -> list[int]:
    """Change every campaign the named sweep finds (``due``: scheduled campaigns whose send_at
    has come start running; ``done``: campaigns without a send window whose shards are all done
    finish, only those of ``ids`` when given). Returns the ids changed."""
    action, condition = _SWEEPS[name]
    params: list[Any] = [None if ids is None else list(ids)] if "$5" in condition else []
    async with conn.transaction():
        # A sweep never waits for a campaign another transaction holds (an operator's action,
        # another node's flush): it takes the others, and the next sweep takes that one. So a
        # writer's flush never waits on a campaign row while holding its shards' rows.
        changed = await _apply(conn, action, condition, params, cause=cause, reason=None, skip_locked=True)
        return list(changed)


async def _apply(
    conn: asyncpg.Connection,
    action: str,
    condition: str,
    params: list[Any],
    *,
    cause: str,
    reason: str | None,
    skip_locked: bool = False,
) -> dict[int, str]:
    """The one statement that changes statuses: lock the campaigns that ``condition`` selects
    and whose status allows ``action``, set the target status (and its timestamps), bump the
    generation, record the change, NOTIFY. Returns the ids changed, by id, with the status each
    went to: the target, except that a paused campaign that never ran (``started_at`` null)
    goes back to ``scheduled`` rather than running, keeping its ``send_at`` (a campaign paused
    while it waited for next week, by an operator or a provider hold, must not start now)."""
    allowed, target = TRANSITIONS[action]
    rows = await conn.fetch(
        f"""WITH target AS (
                SELECT id, status AS previous,
                       CASE WHEN $1::text = 'running' AND status = 'paused' AND started_at IS NULL
                            THEN 'scheduled' ELSE $1 END AS next
                FROM campaigns
                WHERE status = ANY($2::text[]) AND ({condition})
                ORDER BY id FOR UPDATE {"SKIP LOCKED" if skip_locked else ""}),
            changed AS (
                UPDATE campaigns c SET
                    status = t.next, status_reason = $3, status_generation = c.status_generation + 1,
                    updated_at = now(),
                    send_at = CASE WHEN $1 = 'scheduled' THEN now() ELSE c.send_at END,
                    started_at = CASE WHEN t.next = 'running' THEN coalesce(c.started_at, now())
                                      ELSE c.started_at END,
                    finished_at = CASE WHEN $1 IN ('cancelled', 'finished', 'failed') THEN now()
                                       ELSE c.finished_at END
                FROM target t WHERE c.id = t.id
                RETURNING c.id, c.account_id, c.status, c.status_generation, t.previous),
            recorded AS (
                INSERT INTO campaign_changes
                    (campaign_id, generation, account_id, status, previous_status, cause, reason)
                SELECT id, status_generation, account_id, status, previous, $4, $3 FROM changed)
            SELECT id, status FROM changed ORDER BY id""",
        target,
        sorted(allowed),
        reason,
        cause,
        *params,
    )
    changed = {r["id"]: r["status"] for r in rows}
    for campaign_id, status in changed.items():
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{campaign_id} {status}")
    return changed


async def show(conn: asyncpg.Connection, campaign_id: int) -> dict[str, Any] | None:
    """Status and counters of one campaign (reads ``campaign_stats``, never the hot log)."""
    row = await conn.fetchrow(
        """SELECT c.id, c.account_id, c.name, c.status, c.status_reason, c.provider, c.created_at,
                  c.send_at, c.started_at, c.finished_at,
                  coalesce(s.matched, 0) AS matched, coalesce(s.sent, 0) AS sent,
                  coalesce(s.failed, 0) AS failed, coalesce(s.unknown, 0) AS unknown,
                  coalesce(s.suppressed, 0) AS suppressed, coalesce(s.retried, 0) AS retried,
                  coalesce(s.delivered, 0) AS delivered, coalesce(s.bounced, 0) AS bounced,
                  coalesce(s.complained, 0) AS complained,
                  coalesce(s.hard_bounced, 0) AS hard_bounced, coalesce(s.blocked, 0) AS blocked,
                  coalesce(s.unsubscribed, 0) AS unsubscribed,
                  (SELECT count(*) FROM campaign_shards h WHERE h.campaign_id = c.id) AS shards,
                  (SELECT count(*) FROM campaign_shards h
                   WHERE h.campaign_id = c.id AND h.state = 'done') AS shards_done,
                  c.send_window, w.shards_waiting, w.waiting_until,
                  CASE WHEN c.status = 'running' THEN q.exhausted_until END AS quota_until,
                  CASE WHEN c.status = 'running' THEN q.exhausted_reason END AS quota_reason
           FROM campaigns c LEFT JOIN campaign_stats s ON s.campaign_id = c.id
           CROSS JOIN LATERAL (SELECT count(*) AS shards_waiting, min(h.not_before) AS waiting_until
                               FROM campaign_shards h
                               WHERE h.campaign_id = c.id AND h.state = 'pending'
                                 AND h.not_before IS NOT NULL) w
           LEFT JOIN provider_quotas q ON q.provider = c.provider AND q.exhausted_until > now()
           WHERE c.id = $1""",
        campaign_id,
    )
    if row is None:
        return None
    result = dict(row)
    result["processed"] = result["sent"] + result["failed"] + result["unknown"] + result["suppressed"]
    result["reason"] = result.pop("status_reason")
    return result


async def page(
    conn: asyncpg.Connection,
    *,
    after: int,
    limit: int,
    status: str | None = None,
    account_id: int | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` campaigns with ``id > after`` by id, with their main counters."""
    rows = await conn.fetch(
        """SELECT c.id, c.account_id, c.name, c.status, c.status_reason AS reason, c.provider,
                  c.created_at, c.started_at, c.finished_at,
                  coalesce(s.matched, 0) AS matched, coalesce(s.sent, 0) AS sent,
                  coalesce(s.failed, 0) AS failed
           FROM campaigns c LEFT JOIN campaign_stats s ON s.campaign_id = c.id
           WHERE c.id > $1 AND ($2::text IS NULL OR c.status = $2)
             AND ($3::bigint IS NULL OR c.account_id = $3)
           ORDER BY c.id LIMIT $4""",
        after,
        status,
        account_id,
        limit,
    )
    return [dict(r) for r in rows]


# --- the pipeline's reads and status changes ---------------------------------------------------


async def get(
    conn: asyncpg.Connection, campaign_id: int, *, for_update: bool = False
) -> asyncpg.Record | None:
    """The campaign row (locked for the rest of the transaction with ``for_update``), with its
    segment also as JSON text (``segment_text``: its numbers exact, see ``campaign_from_row``)."""
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT *, segment::text AS segment_text FROM campaigns WHERE id = $1{lock}", campaign_id
    )
    return row


async def owner_and_status(conn: asyncpg.Connection, campaign_id: int) -> asyncpg.Record | None:
    """The campaign's ``account_id`` and ``status`` (what a report needs of the main database)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT account_id, status FROM campaigns WHERE id = $1", campaign_id
    )
    return row


async def statuses(conn: asyncpg.Connection, campaign_ids: Sequence[int]) -> dict[int, str]:
    """The current status of each campaign that still exists."""
    rows = await conn.fetch(
        "SELECT id, status FROM campaigns WHERE id = ANY($1::bigint[])", list(campaign_ids)
    )
    return {r["id"]: r["status"] for r in rows}


async def unsplit(conn: asyncpg.Connection) -> list[int]:
    """Running campaigns that have no shards yet."""
    rows = await conn.fetch(
        """SELECT id FROM campaigns c WHERE status = 'running'
           AND NOT EXISTS (SELECT 1 FROM campaign_shards s WHERE s.campaign_id = c.id)"""
    )
    return [r["id"] for r in rows]


async def without_provider(conn: asyncpg.Connection, providers: Sequence[str]) -> list[tuple[int, str]]:
    """Running campaigns whose provider is none of ``providers`` (for other nodes, or nobody)."""
    rows = await conn.fetch(
        "SELECT id, provider FROM campaigns WHERE status = 'running' AND NOT (provider = ANY($1::text[]))",
        list(providers),
    )
    return [(r["id"], r["provider"]) for r in rows]
