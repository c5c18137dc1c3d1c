"""Every campaign status change goes through one function: allowed transitions, a status
generation bumped each time, a recorded change, and pauses that must match the generation they
were decided on (issue 10: a late halt from any node can never undo an operator's resume)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from mailerd import campaigns, splitting
from mailerd.db import campaigns as campaigns_db
from tests.integration.helpers import daemon_config, new_campaign


async def _generation(conn: asyncpg.Connection, campaign_id: int) -> int:
    return int(await conn.fetchval("SELECT status_generation FROM campaigns WHERE id = $1", campaign_id))


async def _changes(
    conn: asyncpg.Connection, campaign_id: int
) -> list[tuple[int, str | None, str, str, str | None]]:
    rows = await conn.fetch(
        """SELECT generation, previous_status, status, cause, reason FROM campaign_changes
           WHERE campaign_id = $1 ORDER BY generation""",
        campaign_id,
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_each_change_bumps_the_generation_and_is_recorded(conn: asyncpg.Connection) -> None:
    campaign_id = await campaigns.create(conn, new_campaign(start=False), daemon_config(1))
    assert await _generation(conn, campaign_id) == 0
    await campaigns_db.change_status(conn, campaign_id, "start")
    await conn.execute(
        "UPDATE campaigns SET send_at = now() - interval '1 second' WHERE id = $1", campaign_id
    )
    assert await campaigns_db.sweep(conn, "due", cause="scheduler") == [campaign_id]
    await campaigns_db.change_status(conn, campaign_id, "pause", "checking the list")
    await campaigns_db.change_status(conn, campaign_id, "cancel", cause="cli")
    assert await _generation(conn, campaign_id) == 4
    assert await _changes(conn, campaign_id) == [
        (0, None, "draft", "created", None),
        (1, "draft", "scheduled", "api", None),
        (2, "scheduled", "running", "scheduler", None),
        (3, "running", "paused", "api", "checking the list"),
        (4, "paused", "cancelled", "cli", None),
    ]
    with pytest.raises(campaigns_db.TransitionError, match="campaign is cancelled"):
        await campaigns_db.change_status(conn, campaign_id, "resume")
    assert await _generation(conn, campaign_id) == 4


async def test_a_stale_pause_cannot_undo_an_operators_resume(conn: asyncpg.Connection) -> None:
    """A node claimed the campaign at generation g; meanwhile an operator paused and resumed it.
    The node's late halt names g: it matches nothing, and the campaign keeps running."""
    campaign_id = await campaigns.create(conn, new_campaign(start=True), daemon_config(1))
    await conn.execute(
        "UPDATE campaigns SET send_at = now() - interval '1 second' WHERE id = $1", campaign_id
    )
    await campaigns_db.sweep(conn, "due", cause="scheduler")
    seen_at_claim = await _generation(conn, campaign_id)
    await campaigns_db.change_status(conn, campaign_id, "pause", "operator")
    await campaigns_db.change_status(conn, campaign_id, "resume", "operator")
    with pytest.raises(campaigns_db.TransitionError) as refused:
        await campaigns_db.change_status(
            conn, campaign_id, "pause", "provider halted", cause="sender", generation=seen_at_claim
        )
    assert refused.value.stale and refused.value.current == "running"
    assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id) == "running"
    # The same pause, decided on the current generation, is applied.
    current = await _generation(conn, campaign_id)
    await campaigns_db.change_status(
        conn, campaign_id, "pause", "provider halted", cause="sender", generation=current
    )
    assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id) == "paused"


@pytest.mark.parametrize("due", [False, True])
async def test_a_campaign_paused_before_it_ran_is_resumed_to_its_schedule(
    conn: asyncpg.Connection, due: bool
) -> None:
    """Paused while it waited for next week, then resumed: it waits for next week again (it
    started at once). Once its send_at has come, the due sweep starts it as any other."""
    next_week = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    campaign_id = await campaigns.create(conn, new_campaign(start=False, send_at=next_week), daemon_config(1))
    await campaigns_db.change_status(conn, campaign_id, "pause", "copy check")
    if due:
        await conn.execute(
            "UPDATE campaigns SET send_at = now() - interval '1 second' WHERE id = $1", campaign_id
        )
    send_at = await conn.fetchval("SELECT send_at FROM campaigns WHERE id = $1", campaign_id)
    assert await campaigns_db.change_status(conn, campaign_id, "resume", "copy fixed") == "scheduled"
    row = await conn.fetchrow("SELECT status, send_at, started_at FROM campaigns WHERE id = $1", campaign_id)
    assert tuple(row) == ("scheduled", send_at, None)
    assert (await _changes(conn, campaign_id))[-1] == (2, "paused", "scheduled", "api", "copy fixed")
    assert await campaigns_db.sweep(conn, "due", cause="scheduler") == ([campaign_id] if due else [])
    status = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
    assert status == ("running" if due else "scheduled")


async def test_every_final_status_records_when_it_was_reached(conn: asyncpg.Connection) -> None:
    """finished_at was set for finished and cancelled campaigns, never for a failed one."""
    config = daemon_config(1)
    failed, cancelled = [await campaigns.create(conn, new_campaign(start=True), config) for _ in range(2)]
    await campaigns_db.change_status(conn, failed, "fail", "segment no longer valid", cause="scheduler")
    await campaigns_db.change_status(conn, cancelled, "cancel")
    rows = await conn.fetch("SELECT status, finished_at FROM campaigns ORDER BY id")
    assert [r["status"] for r in rows] == ["failed", "cancelled"]
    assert all(r["finished_at"] is not None for r in rows)


async def test_the_pipelines_own_actions_are_not_operator_actions() -> None:
    assert set(campaigns_db.API_ACTIONS) == {"start", "pause", "resume", "cancel"}
    assert {"run", "finish", "fail"} <= set(campaigns_db.TRANSITIONS)


async def test_the_done_sweep_finishes_only_campaigns_whose_shards_are_all_done(
    conn: asyncpg.Connection,
) -> None:
    config = daemon_config(1)
    done_id = await campaigns.create(conn, new_campaign(start=True), config)
    busy_id = await campaigns.create(conn, new_campaign(start=True), config)
    for campaign_id, state in ((done_id, "done"), (busy_id, "pending")):
        await conn.execute("UPDATE campaigns SET status = 'running' WHERE id = $1", campaign_id)
        await conn.execute(
            """INSERT INTO campaign_shards
                   (campaign_id, shard_no, lead_id_from, lead_id_to, checkpoint, reserved_upto, state)
               VALUES ($1, 0, 0, 10, 0, 0, $2)""",
            campaign_id,
            state,
        )
    assert await campaigns_db.sweep(conn, "done", cause="writer", ids=[done_id, busy_id]) == [done_id]
    row = await conn.fetchrow("SELECT status, finished_at FROM campaigns WHERE id = $1", done_id)
    assert row["status"] == "finished" and row["finished_at"] is not None
    assert (await _changes(conn, done_id))[-1][1:4] == ("running", "finished", "writer")


async def _running_without_leads(conn: asyncpg.Connection) -> int:
    """A running campaign not split yet, of an account without leads (account 7 has none)."""
    campaign_id = await campaigns.create(conn, new_campaign(account_id=7, start=True), daemon_config(1))
    await conn.execute(
        "UPDATE campaigns SET send_at = now() - interval '1 second' WHERE id = $1", campaign_id
    )
    assert await campaigns_db.sweep(conn, "due", cause="scheduler") == [campaign_id]
    return campaign_id


@pytest.mark.parametrize(("action", "status"), [("cancel", "cancelled"), ("pause", "paused")])
async def test_a_campaign_stopped_after_the_schedulers_read_is_not_split(
    conn: asyncpg.Connection, action: str, status: str
) -> None:
    """The scheduler read the campaign running and unsplit; an operator stopped it before the
    split locked the row: nothing is split or finished (it was a TransitionError that took the
    node's scheduler down)."""
    campaign_id = await _running_without_leads(conn)
    assert await campaigns_db.unsplit(conn) == [campaign_id]
    await campaigns_db.change_status(conn, campaign_id, action, "operator")
    assert await splitting.split_campaign(conn, campaign_id, 1000) == 0
    assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id) == status
    assert (await _changes(conn, campaign_id))[-1][2:] == (status, "api", "operator")


async def test_two_nodes_splitting_one_campaign_without_leads_finish_it_once(pool: asyncpg.Pool) -> None:
    """The due sweep's NOTIFY wakes every node: two read the campaign unsplit and split it at
    once. The second, once the first committed the finish, finds it finished: no error."""
    async with pool.acquire() as conn:
        campaign_id = await _running_without_leads(conn)

    async def node_splits() -> int:
        async with pool.acquire() as conn:
            return await splitting.split_campaign(conn, campaign_id, 1000)

    assert await asyncio.gather(node_splits(), node_splits()) == [0, 0]
    async with pool.acquire() as conn:
        changes = await _changes(conn, campaign_id)
    assert changes[-1][1:] == ("running", "finished", "scheduler", "no leads")
    assert [change[2] for change in changes].count("finished") == 1
