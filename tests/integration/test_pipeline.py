"""The delivery pipeline end to end in one process: real Postgres, the loopback SES emulator."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from mailerd import campaigns, metrics, scheduler
from mailerd.db import connect
from mailerd.db import shards as shards_db
from mailerd.emulator import sink
from mailerd.models import LogStatus
from tests.integration.helpers import (
    add_leads,
    daemon_config,
    new_campaign,
    read_record,
    run_campaign,
    running_daemon,
    wait_for_status,
)


async def _log_rows(conn: asyncpg.Connection, campaign_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT lead_id, status, provider_message_id, error FROM email_log WHERE campaign_id = $1",
        campaign_id,
    )


async def _matched_ids(conn: asyncpg.Connection, plan: str = "pro") -> set[int]:
    rows = await conn.fetch("SELECT id FROM leads WHERE attributes->>'plan' = $1", plan)
    return {r["id"] for r in rows}


async def test_every_matched_lead_gets_exactly_one_row_and_one_email(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 6000)
    await add_leads(conn, 2, 300, start=10_000)  # another account: never part of this campaign
    suppressed = await conn.fetch(
        "SELECT lower(email) AS email FROM leads"
        " WHERE account_id = 1 AND attributes->>'plan' = 'pro' LIMIT 25"
    )
    await conn.executemany(
        "INSERT INTO suppressions (account_id, email, reason) VALUES (1, $1, 'hard_bounce')",
        [(r["email"],) for r in suppressed],
    )
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record, seed=3)
    campaign_id, info = await run_campaign(conn, dsn, emulator)

    matched = {
        r["id"]
        for r in await conn.fetch("SELECT id FROM leads WHERE account_id = 1 AND attributes->>'plan' = 'pro'")
    }
    rows = await _log_rows(conn, campaign_id)
    per_lead = collections.Counter(r["lead_id"] for r in rows)
    assert set(per_lead) == matched
    assert max(per_lead.values()) == 1
    suppressed_ids = {r["lead_id"] for r in rows if r["status"] == LogStatus.SUPPRESSED}
    assert len(suppressed_ids) == 25

    sent = read_record(record)
    sent_ids = collections.Counter(int(line["lead_id"]) for line in sent)
    assert max(sent_ids.values()) == 1
    assert set(sent_ids) == matched - suppressed_ids
    assert all(int(line["campaign_id"]) == campaign_id for line in sent)
    message_ids = {r["lead_id"]: r["provider_message_id"] for r in rows if r["status"] == LogStatus.SENT}
    assert all(message_ids[int(line["lead_id"])] == line["message_id"] for line in sent)

    assert info["matched"] == len(matched)
    assert info["sent"] == len(matched) - 25
    assert info["suppressed"] == 25
    assert info["failed"] == info["unknown"] == 0
    shards = await conn.fetch("SELECT * FROM campaign_shards WHERE campaign_id = $1", campaign_id)
    assert len(shards) == 6
    assert all(s["state"] == "done" and s["checkpoint"] == s["lead_id_to"] for s in shards)


async def test_throttling_is_retried_and_loses_nothing(conn: asyncpg.Connection, dsn: str) -> None:
    await add_leads(conn, 1, 3000)
    emulator = sink.Sink(throttle_rate=400, seed=5)
    _, info = await run_campaign(
        conn, dsn, emulator, provider={"max_attempts": 50, "backoff_base_s": 0.02, "backoff_max_s": 0.2}
    )
    assert emulator.counters.throttled_calls > 0
    assert info["sent"] == 1000
    assert info["failed"] == 0
    assert info["retried"] > 0
    assert emulator.counters.accepted == 1000


def _retries_counted() -> float:
    reasons = ("throttled", "error", "entry")
    return sum(
        REGISTRY.get_sample_value("mailerd_provider_retries_total", {"provider": "sink", "reason": r}) or 0.0
        for r in reasons
    )


async def test_the_retries_counter_counts_only_recipients_retried(conn: asyncpg.Connection, dsn: str) -> None:
    """A throttled call at the last attempt gives up: ``mailerd_provider_retries_total`` counted
    its recipients as retried anyway (``campaign_stats.retried`` does not), so with
    ``max_attempts = 1`` every throttle was a retry that never happened."""
    await add_leads(conn, 1, 3000)
    emulator = sink.Sink(throttle_rate=400, seed=5)
    before = _retries_counted()
    _, info = await run_campaign(
        conn,
        dsn,
        emulator,
        until=("finished", "paused"),
        provider={"max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_error_rate": 1.0},
    )
    assert info["failed"] > 0  # some gave up after their last attempt was throttled
    assert _retries_counted() - before == info["retried"]


async def test_per_entry_failures_are_logged_with_their_reason(conn: asyncpg.Connection, dsn: str) -> None:
    await add_leads(conn, 1, 1500)
    emulator = sink.Sink(fail_rate=0.3, seed=11)
    campaign_id, info = await run_campaign(
        conn, dsn, emulator, provider={"max_attempts": 8, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    )
    rows = await _log_rows(conn, campaign_id)
    failed = [r for r in rows if r["status"] == LogStatus.FAILED]
    assert failed, "a 30% failure rate must reject some recipients permanently"
    assert all(r["error"] and "MESSAGE_REJECTED" in r["error"] for r in failed)
    assert info["failed"] == len(failed)
    assert info["sent"] + info["failed"] == 500
    assert info["sent"] == emulator.counters.accepted


async def test_provider_rate_limit_holds_in_real_time(conn: asyncpg.Connection, dsn: str) -> None:
    await add_leads(conn, 1, 4500)  # 1500 matched
    emulator = sink.Sink()
    port = await emulator.start()
    rate = 1000.0
    try:
        config = daemon_config(port, provider={"rate_per_s": rate, "burst": 50})
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            await wait_for_status(conn, campaign_id, ("running",))
            started = time.monotonic()
            info = await wait_for_status(conn, campaign_id)
            elapsed = time.monotonic() - started
    finally:
        await emulator.close()
    assert info["sent"] == 1500
    achieved = (1500 - 50) / elapsed
    assert achieved <= rate * 1.05, f"{achieved:.0f}/s exceeds the limit of {rate:.0f}/s"
    assert achieved >= rate * 0.6, f"{achieved:.0f}/s is far below the limit"


async def test_template_error_is_refused_at_creation(conn: asyncpg.Connection) -> None:
    config = daemon_config(1)
    with pytest.raises(campaigns.CampaignError) as raised:
        await campaigns.create(conn, new_campaign(html_body="<p>\n{{ lead.email }\n</p>"), config)
    assert raised.value.field == "html"
    assert "line" in str(raised.value)
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_two_nodes_share_a_campaign_without_duplicates(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 9000)
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record, latency_ms=5)
    port = await emulator.start()
    try:
        first = daemon_config(
            port, scheduler={"max_shards_per_node": 2, "shard_size": 600}, node={"name": "a"}
        )
        second = daemon_config(
            port, scheduler={"max_shards_per_node": 2, "shard_size": 600}, node={"name": "b"}
        )
        campaign_id = await campaigns.create(conn, new_campaign(), first)
        async with running_daemon(first, dsn), running_daemon(second, dsn):
            info = await wait_for_status(conn, campaign_id)
        await emulator.flush()
    finally:
        await emulator.close()
    sent = collections.Counter(int(line["lead_id"]) for line in read_record(record))
    assert len(sent) == 3000 and max(sent.values()) == 1
    rows = await _log_rows(conn, campaign_id)
    assert len(rows) == len({r["lead_id"] for r in rows}) == 3000
    states = await conn.fetch("SELECT state, owner FROM campaign_shards WHERE campaign_id = $1", campaign_id)
    assert len(states) == 15 and {(r["state"], r["owner"]) for r in states} == {("done", None)}
    assert info["sent"] == 3000


async def test_a_node_with_no_shard_capacity_sends_nothing(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    """``max_shards_per_node = 0``: the node starts and splits campaigns, serves the API and the
    webhooks, and claims nothing; a sending node sends the campaign."""
    await add_leads(conn, 1, 1800)
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record)
    port = await emulator.start()
    try:
        api_only = daemon_config(port, scheduler={"max_shards_per_node": 0}, node={"name": "api"})
        sender = daemon_config(port, node={"name": "sender"})
        first = await campaigns.create(conn, new_campaign(), api_only)
        async with running_daemon(api_only, dsn):
            await _wait_split(conn, first)
            # A later tick of the same scheduler (it splits the second campaign) has had its
            # chance to claim the first campaign's shards, and did not.
            second = await campaigns.create(conn, new_campaign(), api_only)
            await _wait_split(conn, second)
            claimed = await conn.fetchval("SELECT count(*) FROM campaign_shards WHERE epoch > 0")
            assert claimed == 0
            async with running_daemon(sender, dsn):
                for campaign_id in (first, second):
                    info = await wait_for_status(conn, campaign_id)
                    assert info["sent"] == 600
        await emulator.flush()
    finally:
        await emulator.close()
    assert len(read_record(record)) == 1200


async def test_shards_other_nodes_hold_do_not_hide_a_newer_campaign(
    conn: asyncpg.Connection, dsn: str
) -> None:
    """Other nodes hold 1,001 shards of an older campaign: this node still finds and sends a
    newer campaign. It listed the first 1,000 pending shards by campaign, the held ones among
    them, tried each with a new connection at every poll, and never saw the newer one."""
    await add_leads(conn, 1, 300)
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = daemon_config(port)
        older = await campaigns.create(conn, new_campaign(), config)
        await conn.execute("UPDATE campaigns SET status = 'running', started_at = now() WHERE id = $1", older)
        await conn.execute(
            """INSERT INTO campaign_shards
                   (campaign_id, shard_no, lead_id_from, lead_id_to, checkpoint, reserved_upto)
               SELECT $1, n, 0, 0, 0, 0 FROM generate_series(0, 1000) n""",
            older,
        )
        other_nodes = await connect.connect(dsn)
        try:
            await other_nodes.execute(
                "SELECT pg_advisory_lock($1::int, n) FROM generate_series(0, 1000) n",
                shards_db.lock_key(older),
            )
            newer = await campaigns.create(conn, new_campaign(), config)
            async with running_daemon(config, dsn):
                info = await wait_for_status(conn, newer, timeout=15)
        finally:
            await other_nodes.close()
    finally:
        await emulator.close()
    assert info["sent"] == 100
    assert await conn.fetchval("SELECT max(epoch) FROM campaign_shards WHERE campaign_id = $1", older) == 0


async def test_a_campaign_with_many_shards_leaves_room_for_the_next(conn: asyncpg.Connection) -> None:
    """A node claims at most its capacity: candidates are listed up to that many per campaign,
    so 1,001 shards of a campaign it cannot send (no erasure key, its provider failing to
    prepare it) no longer hide the campaigns after it."""
    config = daemon_config(1)
    ids = [await campaigns.create(conn, new_campaign(), config) for _ in range(2)]
    await conn.execute("UPDATE campaigns SET status = 'running', started_at = now()")
    for campaign_id, shards in zip(ids, (1001, 3), strict=True):
        await conn.execute(
            """INSERT INTO campaign_shards
                   (campaign_id, shard_no, lead_id_from, lead_id_to, checkpoint, reserved_upto)
               SELECT $1, n, 0, 0, 0, 0 FROM generate_series(0, $2 - 1) n""",
            campaign_id,
            shards,
        )
    older, newer = ids
    listed = await shards_db.pending(conn, ["sink"], per_campaign=2)
    assert listed == [(older, 0), (older, 1), (newer, 0), (newer, 1)]


async def _wait_split(conn: asyncpg.Connection, campaign_id: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await conn.fetchval(
            "SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id
        ):
            await asyncio.sleep(0.02)


async def test_an_unforeseen_error_activating_one_campaign_leaves_the_node_sending_the_others(
    conn: asyncpg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Splitting one campaign raises what nothing foresaw (a bug, a row the code cannot read):
    it is logged with its traceback and counted, the campaign waits, and the node goes on (it
    took the scheduler's TaskGroup down, and every shard of the node with it)."""
    await add_leads(conn, 1, 300)
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = daemon_config(port)
        broken = await campaigns.create(conn, new_campaign(), config)
        split = scheduler.split_campaign

        async def split_or_fail(conn: asyncpg.Connection, campaign_id: int, *args: Any, **kwargs: Any) -> int:
            if campaign_id == broken:
                raise RuntimeError("a row nothing foresaw")
            return await split(conn, campaign_id, *args, **kwargs)

        monkeypatch.setattr(scheduler, "split_campaign", split_or_fail)
        failures = metrics.CAMPAIGN_ACTIVATION_FAILURES._value.get()
        with capture_logs() as logs:
            async with running_daemon(config, dsn):
                other = await campaigns.create(conn, new_campaign(), config)
                info = await wait_for_status(conn, other, timeout=15)
    finally:
        await emulator.close()
    assert info["sent"] == 100
    assert await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", broken) == "running"
    failed = [entry for entry in logs if entry["event"] == "campaign_activation_failed"]
    assert failed and {entry["campaign_id"] for entry in failed} == {broken}
    assert failed[0]["error"] == "RuntimeError: a row nothing foresaw" and failed[0]["exc_info"]
    assert metrics.CAMPAIGN_ACTIVATION_FAILURES._value.get() >= failures + 1


_SENDING_PAUSED = (400, "SendingPausedException", "Sending is paused for this account")


async def _halt_then_resume(
    conn: asyncpg.Connection, dsn: str, emulator: sink.Sink, after_resume: Callable[[], None] = lambda: None
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """200 leads sent while the provider says sending is paused; once the campaign pauses, the
    provider is fixed and the campaign resumed (then ``after_resume``). Returns the campaign as
    paused, as finished, and its id."""
    await add_leads(conn, 1, 600)
    emulator.force_error = _SENDING_PAUSED
    port = await emulator.start()
    try:
        config = daemon_config(port)
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            paused = await wait_for_status(conn, campaign_id, ("paused",))
            emulator.force_error = None
            await campaigns.transition(conn, campaign_id, "resume")
            after_resume()
            finished = await wait_for_status(conn, campaign_id, timeout=15)
    finally:
        await emulator.close()
    return paused, finished, campaign_id


async def test_a_halting_provider_pauses_the_campaign_with_the_reason(
    conn: asyncpg.Connection, dsn: str
) -> None:
    emulator = sink.Sink()
    # Fixed on the provider side, resumed by the operator: everything goes out once.
    paused, info, campaign_id = await _halt_then_resume(conn, dsn, emulator)
    assert "SendingPaused" in paused["reason"]
    assert paused["sent"] == paused["failed"] == 0
    assert info["sent"] == 200 and info["unknown"] == 0
    assert emulator.counters.accepted == 200
    rows = await _log_rows(conn, campaign_id)
    assert len(rows) == len({r["lead_id"] for r in rows}) == 200


class _HeldHalts(sink.Sink):
    """The emulator, answering its first call only once a second one has come in, and holding
    every later answer (decided when the call came) until the test releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.held = 0
        self.second_call = asyncio.Event()
        self.release = asyncio.Event()

    def release_held(self) -> None:
        self.held = self.seen - 1
        self.release.set()

    async def _send_bulk_email(self, request: web.Request) -> web.Response:
        self.seen += 1
        first = self.seen == 1
        if not first:
            self.second_call.set()
        answer = await super()._send_bulk_email(request)
        async with asyncio.timeout(10):
            await (self.second_call if first else self.release).wait()
        return answer


async def test_a_stale_halt_does_not_undo_a_resume(conn: asyncpg.Connection, dsn: str) -> None:
    # Batches sent together all come back halted. The first pauses the campaign; the operator
    # fixes the account and resumes; the other answers, decided before the fix, arrive only
    # then. They must not pause the campaign again.
    emulator = _HeldHalts()
    _, info, campaign_id = await _halt_then_resume(conn, dsn, emulator, emulator.release_held)
    assert emulator.held >= 1
    assert info["status"] == "finished" and info["sent"] == 200 and info["unknown"] == 0
    rows = await _log_rows(conn, campaign_id)
    assert len(rows) == len({r["lead_id"] for r in rows}) == 200


async def test_a_high_error_rate_pauses_the_campaign(conn: asyncpg.Connection, dsn: str) -> None:
    await add_leads(conn, 1, 3000)
    emulator = sink.Sink(fail_rate=1.0, seed=2)
    _, info = await run_campaign(
        conn,
        dsn,
        emulator,
        until=("paused",),
        provider={"max_attempts": 2, "backoff_base_s": 0.01, "error_window": 100, "max_error_rate": 0.3},
    )
    assert "error rate" in info["reason"] and "max_error_rate 30%" in info["reason"]
    assert info["processed"] < 1000


async def test_pause_stops_new_batches_and_resume_finishes_exactly_once(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 6000)
    record = tmp_path / "record.jsonl"
    emulator = sink.Sink(record=record, latency_ms=20)
    port = await emulator.start()
    try:
        config = daemon_config(port, provider={"rate_per_s": 1500, "burst": 50})
        campaign_id = await campaigns.create(conn, new_campaign(), config)
        async with running_daemon(config, dsn):
            async with asyncio.timeout(20):
                while (await campaigns.show(conn, campaign_id) or {}).get("sent", 0) < 300:
                    await asyncio.sleep(0.02)
            paused_at = time.monotonic()
            await campaigns.transition(conn, campaign_id, "pause")
            # Within a second no new call starts; in-flight ones finish and are logged.
            await asyncio.sleep(1.0)
            calls = emulator.counters.calls
            await asyncio.sleep(0.5)
            assert emulator.counters.calls == calls, "a batch started after the pause settled"
            info = await campaigns.show(conn, campaign_id)
            assert info is not None and info["status"] == "paused" and info["processed"] < 2000
            del paused_at
            await campaigns.transition(conn, campaign_id, "resume")
            info = await wait_for_status(conn, campaign_id)
        await emulator.flush()
    finally:
        await emulator.close()
    sent = collections.Counter(int(line["lead_id"]) for line in read_record(record))
    assert len(sent) == 2000 and max(sent.values()) == 1
    rows = await _log_rows(conn, campaign_id)
    assert len(rows) == len({r["lead_id"] for r in rows}) == 2000
    assert info["sent"] == 2000 and info["unknown"] == 0
