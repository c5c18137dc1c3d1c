"""Fault scenarios on real daemons, shared by the e2e tests and ``bench/faults.py``: SIGKILL and
pause rounds on one or two nodes, and a Postgres outage, for any provider kind (each through its
emulator). Each ends with an audit of the emulator's record against ``email_log``."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import asyncpg

from mailerd import campaigns
from mailerd import config as config_mod
from mailerd.db import connect as db_connect
from mailerd.db import migrate
from mailerd.db.email_log import UNCERTAIN_ERROR
from mailerd.emulator.base import Emulator
from mailerd.models import LogStatus
from tests.e2e.procs import (
    ACCOUNT_ID,
    API_KEY,
    Audit,
    Daemon,
    DaemonOptions,
    PrivatePostgres,
    add_leads,
    audit,
    campaign_status,
    claims_held,
    provider_toml,
    shard_owners,
    timed_emulator,
    wait_for_status,
    wait_until,
)


def campaign_config(sink_port: int, kind: str = "ses") -> config_mod.Config:
    """Enough configuration to validate a campaign in this process (its provider must exist)."""
    import tomllib

    section = tomllib.loads(provider_toml(kind, sink_port))
    env = {"MAILERD_PROVIDERS__SINK__API_KEY": API_KEY}
    return config_mod.from_mapping({"providers": {"sink": section}}, env=env)


def emulator_latency_ms(kind: str, latency_ms: float) -> float:
    """SMTP pays the latency per message, the APIs per call of 50: the same time per lead."""
    return latency_ms / 50 if kind == "smtp" else latency_ms


def new_campaign(*, rate_per_s: float | None, resend_uncertain: bool = False) -> campaigns.NewCampaign:
    return campaigns.NewCampaign(
        account_id=ACCOUNT_ID,
        name="faults",
        segment={"field": "attributes.plan", "op": "eq", "value": "pro"},
        subject="Hi {{ lead.attributes.n }}",
        html_body="<p>Hello {{ lead.email }}</p>",
        text_body="Hello {{ lead.email }}",
        from_address="news@example.com",
        provider="sink",
        start=True,
        rate_per_s=rate_per_s,
        resend_uncertain=resend_uncertain,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """Kill / pause rounds on a campaign of ``leads`` leads (a third of them match)."""

    name: str
    leads: int = 9000
    nodes: int = 1
    kills: int = 3
    pauses: int = 0
    resend_uncertain: bool = False
    rate_per_s: float = 1200.0
    latency_ms: float = 10.0
    seed: int = 1
    shard_size: int = 2000
    finish_timeout_s: float = 60.0
    kind: str = "ses"


@dataclasses.dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    audit: Audit
    bound: int
    uncertain_per_crash: list[int] = dataclasses.field(default_factory=list)
    takeover_s: list[float] = dataclasses.field(default_factory=list)
    pause_latency_s: list[float] = dataclasses.field(default_factory=list)
    crashes: int = 0
    pauses: int = 0
    elapsed_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "provider": self.scenario.kind,
            "rounds": self.crashes + self.pauses,
            "crashes": self.crashes,
            "pauses": self.pauses,
            **self.audit.summary(),
            "max_unknown_per_crash": max(self.uncertain_per_crash, default=0),
            "in_flight_bound": self.bound,
            "takeover_s": _spread(self.takeover_s),
            "pause_latency_s": _spread(self.pause_latency_s),
            "elapsed_s": round(self.elapsed_s, 2),
        }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 3),
        "avg": round(sum(values) / len(values), 3),
        "max": round(max(values), 3),
    }


async def backends_gone(conn: asyncpg.Connection, name: str) -> None:
    """Wait until Postgres has ended every backend of a dead node: only then is its last word
    (a COMMIT already on the wire) known, and its claims free."""

    async def gone() -> bool:
        return not await conn.fetchval(
            # This database only: another test run on the same server may name its nodes alike.
            """SELECT count(*) FROM pg_stat_activity
               WHERE application_name = $1 AND datname = current_database()""",
            name,
        )

    await wait_until(gone, 30, interval=0.005)


async def uncertain_now(
    conn: asyncpg.Connection, campaign_id: int, owner: str, shards: list[int], since: Any
) -> int:
    """What a crash of ``owner`` left uncertain, read right after it died: the matched leads its
    unreleased shards reserved and did not log (what the next claim logs ``unknown``), plus the
    ``unknown`` rows that claim already logged if another node was quicker than this query
    (``shards``: the ones ``owner`` held at the kill; ``since``: the database time before it).
    One statement, so a claim cannot fall between the two counts."""
    return int(
        await conn.fetchval(
            """SELECT
                 (SELECT count(*) FROM campaign_shards s
                  JOIN leads l ON l.account_id = $3 AND l.id > s.checkpoint AND l.id <= s.reserved_upto
                  WHERE s.campaign_id = $1 AND s.owner = $2 AND s.state = 'pending'
                    AND NOT s.released_clean AND l.attributes->>'plan' = 'pro'
                    AND NOT EXISTS (SELECT 1 FROM email_log e
                                    WHERE e.campaign_id = $1 AND e.lead_id = l.id))
               + (SELECT count(*) FROM email_log e
                  JOIN campaign_shards s ON s.campaign_id = $1 AND s.shard_no = ANY($4::int[])
                   AND e.lead_id > s.lead_id_from AND e.lead_id <= s.lead_id_to
                  WHERE e.campaign_id = $1 AND e.status = $5 AND e.error = $6 AND e.sent_at >= $7
                    AND s.owner IS DISTINCT FROM $2)""",
            campaign_id,
            owner,
            ACCOUNT_ID,
            shards,
            int(LogStatus.UNKNOWN),
            UNCERTAIN_ERROR,
            since,
        )
    )


class _Finished(Exception):
    """The campaign finished before the next fault could be injected."""


async def _progress(
    conn: asyncpg.Connection, sink_: Emulator, campaign_id: int, leads: int, within: float
) -> None:
    """Wait until the sink accepted ``leads`` more recipients; _Finished if the campaign ends."""
    target = sink_.counters.accepted + leads
    async with asyncio.timeout(within):
        while sink_.counters.accepted < target:
            if await campaign_status(conn, campaign_id) == "finished":
                raise _Finished
            await asyncio.sleep(0.02)


async def _takeover(
    conn: asyncpg.Connection, campaign_id: int, victim: str, started: float, within: float
) -> float | None:
    """Seconds from ``started`` (the kill) until another node claimed one of the victim's shards."""
    before = {
        shard: epoch
        for shard, (owner, epoch, state) in (await shard_owners(conn, campaign_id)).items()
        if owner == victim and state == "pending"
    }
    if not before:
        return None
    async with asyncio.timeout(within):
        while True:
            owners = await shard_owners(conn, campaign_id)
            for shard, epoch in before.items():
                owner, now_epoch, _ = owners[shard]
                if now_epoch > epoch and owner != victim:
                    return time.monotonic() - started
            await asyncio.sleep(0.01)


async def run_scenario(
    dsn: str, workdir: Path, scenario: Scenario, options: DaemonOptions | None = None
) -> ScenarioResult:
    """Run one campaign to the end through ``scenario``'s faults; return what was measured."""
    options = options or DaemonOptions(
        shard_size=scenario.shard_size, max_shards_per_node=8 if scenario.nodes > 1 else 4
    )
    rng = random.Random(scenario.seed)
    record = workdir / f"{scenario.name}-record.jsonl"
    began = time.monotonic()
    conn = await db_connect.connect(dsn)
    sink_ = timed_emulator(
        scenario.kind,
        record=record,
        latency_ms=emulator_latency_ms(scenario.kind, scenario.latency_ms),
        seed=scenario.seed,
        api_key=API_KEY,
    )
    port = await sink_.start()
    daemons = [
        Daemon(
            dsn=dsn, sink_port=port, name=f"node-{i}", workdir=workdir, options=options, kind=scenario.kind
        )
        for i in range(scenario.nodes)
    ]
    try:
        matched = await add_leads(conn, scenario.leads)
        campaign_id = await campaigns.create(
            conn,
            new_campaign(rate_per_s=scenario.rate_per_s, resend_uncertain=scenario.resend_uncertain),
            campaign_config(port, scenario.kind),
        )
        await asyncio.gather(*(d.start() for d in daemons))
        shards = await _shard_count(conn, campaign_id)
        result = ScenarioResult(
            scenario,
            audit=Audit(set(), collections.Counter(), collections.Counter(), {}),
            bound=options.in_flight_bound(shards),
        )
        actions = ["kill"] * scenario.kills + ["pause"] * scenario.pauses
        rng.shuffle(actions)
        per_round = max(50, len(matched) // (len(actions) + 2))
        try:
            for action in actions:
                await _progress(conn, sink_, campaign_id, rng.randint(per_round // 3, per_round), 30)
                await asyncio.sleep(rng.uniform(0, 0.1))  # a random phase within the flow
                if action == "kill":
                    await _kill_round(conn, daemons, campaign_id, rng, result)
                else:
                    await _pause_round(conn, daemons, sink_, campaign_id, rng, result)
        except _Finished:
            pass
        await wait_for_status(conn, campaign_id, ("finished",), scenario.finish_timeout_s)
        await sink_.flush()
        result.audit = await audit(conn, campaign_id, matched, record)
        result.elapsed_s = time.monotonic() - began
        return result
    finally:
        await asyncio.gather(*(d.shutdown() for d in daemons))
        await sink_.close()
        await conn.close()


async def _shard_count(conn: asyncpg.Connection, campaign_id: int) -> int:
    """Shards of the campaign, once a node has split it."""
    count = 0

    async def split() -> bool:
        nonlocal count
        count = int(
            await conn.fetchval("SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id)
        )
        return count > 0

    await wait_until(split, 20, interval=0.05)
    return count


async def _kill_round(
    conn: asyncpg.Connection,
    daemons: list[Daemon],
    campaign_id: int,
    rng: random.Random,
    result: ScenarioResult,
) -> None:
    # A node that holds pending shards, when one does: killing an idle node (its peer claimed
    # every shard first, as a busy machine makes likely) would test no takeover at all.
    owners = await shard_owners(conn, campaign_id)
    holding = [d for d in daemons if any(o == d.name and s == "pending" for o, _, s in owners.values())]
    victim = rng.choice(holding or daemons)
    held = [shard for shard, (o, _, s) in owners.items() if o == victim.name and s == "pending"]
    since = await conn.fetchval("SELECT clock_timestamp()")
    killed_at = time.monotonic()
    await victim.kill_and_reap()
    await backends_gone(conn, victim.name)
    result.crashes += 1
    result.uncertain_per_crash.append(await uncertain_now(conn, campaign_id, victim.name, held, since))
    if len(daemons) > 1 and await campaign_status(conn, campaign_id) == "running":
        took = await _takeover(conn, campaign_id, victim.name, killed_at, 15)
        if took is not None:
            result.takeover_s.append(took)
    await victim.start()


async def _pause_round(
    conn: asyncpg.Connection,
    daemons: list[Daemon],
    sink_: Emulator,
    campaign_id: int,
    rng: random.Random,
    result: ScenarioResult,
) -> None:
    paused_at = time.monotonic()
    try:
        await campaigns.transition(conn, campaign_id, "pause")
    except campaigns.TransitionError:
        raise _Finished from None
    result.pauses += 1

    async def released() -> bool:
        return await claims_held(conn, campaign_id) == 0

    await wait_until(released, 15)
    # Every claim is gone, so nothing more can be sent: the last arrival is the pause's end.
    result.pause_latency_s.append(max(0.0, sink_.last_arrival() - paused_at))
    quiet_from = time.monotonic()
    if rng.random() < 0.5:  # a crash while paused must not change anything
        await _kill_round(conn, daemons, campaign_id, rng, result)
    assert sink_.arrivals_since(quiet_from) == 0, "sent while paused"
    try:
        await campaigns.transition(conn, campaign_id, "resume")
    except campaigns.TransitionError:
        # The last batches in flight at the pause completed the campaign: that is allowed.
        raise _Finished from None


@dataclasses.dataclass(slots=True)
class OutageResult:
    audit: Audit
    outage_s: float
    calls_before_outage: int
    calls_during_outage: int
    stop_lag_s: float
    late_calls: int
    resume_s: float | None
    elapsed_s: float
    kind: str = "ses"

    def figures(self) -> dict[str, Any]:
        return {
            "scenario": f"postgres-outage-{self.outage_s:g}s",
            "provider": self.kind,
            "rounds": 1,
            **self.audit.summary(),
            "calls_during_outage": self.calls_during_outage,
            "sending_stopped_after_s": round(self.stop_lag_s, 3),
            "calls_later_than_3s": self.late_calls,
            "resumed_after_s": None if self.resume_s is None else round(self.resume_s, 3),
            "elapsed_s": round(self.elapsed_s, 2),
        }


async def run_outage(
    server: PrivatePostgres,
    workdir: Path,
    *,
    outage_s: float,
    leads: int = 9000,
    rate_per_s: float = 600.0,
    mode: str = "fast",
    seed: int = 21,
    options: DaemonOptions | None = None,
    kind: str = "ses",
) -> OutageResult:
    """Stop Postgres under a sending daemon for ``outage_s`` seconds, start it on the same
    port, and let the campaign finish."""
    began = time.monotonic()
    dsn = server.dsn()
    conn = await db_connect.connect(dsn)
    await migrate.migrate(conn)
    record = workdir / "outage-record.jsonl"
    sink_ = timed_emulator(
        kind, record=record, latency_ms=emulator_latency_ms(kind, 10.0), seed=seed, api_key=API_KEY
    )
    port = await sink_.start()
    daemon = Daemon(
        dsn=dsn, sink_port=port, name="node-0", workdir=workdir, options=options or DaemonOptions(), kind=kind
    )
    try:
        matched = await add_leads(conn, leads)
        campaign_id = await campaigns.create(
            conn, new_campaign(rate_per_s=rate_per_s), campaign_config(port, kind)
        )
        await daemon.start()
        await _progress(conn, sink_, campaign_id, len(matched) // 4, 30)
        await conn.close()
        before = len(sink_.arrivals or [])
        await asyncio.to_thread(server.stop, mode)
        stopped_at = time.monotonic()
        await asyncio.sleep(outage_s)  # the outage itself is the scenario, not a wait for a condition
        during = [at for at in (sink_.arrivals or []) if at > stopped_at]
        assert daemon.running, daemon.log_tail()
        await asyncio.to_thread(server.start)
        restarted_at = time.monotonic()
        conn = await db_connect.connect(dsn)
        await wait_for_status(conn, campaign_id, ("finished",), 60)
        after = [at for at in (sink_.arrivals or []) if at > restarted_at]
        await sink_.flush()
        return OutageResult(
            audit=await audit(conn, campaign_id, matched, record),
            outage_s=outage_s,
            calls_before_outage=before,
            calls_during_outage=len(during),
            stop_lag_s=(max(during) - stopped_at) if during else 0.0,
            late_calls=sum(1 for at in during if at > stopped_at + 3.0),
            resume_s=(after[0] - restarted_at) if after else None,
            elapsed_s=time.monotonic() - began,
            kind=kind,
        )
    finally:
        await daemon.shutdown()
        await sink_.close()
        if not conn.is_closed():
            await conn.close()
