"""The soak's cluster, shared by ``bench/soak.py`` (long, every fault) and tests/e2e/test_soak.py
(short, in ``make test``): nodes, a broker, a reports database, webhooks flowing back, and the
faults (SIGKILL, pause/resume, Postgres restart, broker freeze). What is checked afterwards is in
:mod:`tests.e2e.soak_audit`.

- Postgres: the databases are given (``dsn``, ``reports_dsn``); a Postgres restart needs
  ``server``, a :class:`tests.e2e.procs.PrivatePostgres` of the caller's own, never a shared one.
- a tansu broker (tests/kafka_broker.py) when ``SoakSetup.kafka``: every node has ``[relay]``,
  ``[kafka]`` and ``[reports]``, one of them runs the relay; a consumer in this process reads the
  email and event topics throughout;
- the SES emulator in this process, recording every accepted recipient and posting signed SNS
  bounce and complaint webhooks back through a small balancer (also here) that forwards each
  to a live node and retries on errors, as SNS would;
- ``nodes`` ``mailerd run`` processes on the same database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from mailerd import campaigns
from mailerd.db import connect as db_connect
from mailerd.db import migrate, reports_load
from mailerd.emulator import sink as sink_mod
from mailerd.emulator.webhooks import WebhookPoster
from tests.e2e import procs, scenarios
from tests.kafka_broker import Tansu, topic_names

SOAK_OPTIONS = procs.DaemonOptions(
    concurrency=8,
    batch_size=50,
    shard_size=20_000,
    window_size=2_000,
    max_shards_per_node=4,
    poll_interval_s=0.25,
    flush_interval_ms=100,
    shutdown_grace_s=10.0,
)


@dataclasses.dataclass(frozen=True, slots=True)
class SoakSetup:
    """What the cluster is made of (the faults are the caller's)."""

    nodes: int = 3
    leads: int = 300_000  # per campaign; every lead matches
    concurrent_campaigns: int = 2
    options: procs.DaemonOptions = SOAK_OPTIONS
    kafka: bool = True
    seed: int = 1
    bounce_rate: float = 0.01
    complaint_rate: float = 0.002
    latency_ms: float = 5.0


# --- webhooks: a balancer in front of the nodes ------------------------------------------------


class Balancer:
    """Forwards each webhook to a live node; on a refused connection or a 5xx it tries again
    (another node, after a pause) for up to ``retry_for_s``, as a provider's retry would."""

    def __init__(self, daemons: list[procs.Daemon], rng: random.Random, retry_for_s: float = 120.0) -> None:
        self.daemons = daemons
        self.rng = rng
        self.retry_for_s = retry_for_s
        self.forwarded = 0
        self.retries = 0
        self.given_up = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/webhooks/{provider}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.1
        while True:
            live = [d for d in self.daemons if d.running] or self.daemons
            target = self.rng.choice(live)
            try:
                async with self._session.post(
                    target.url + request.path, data=body, headers=headers
                ) as answer:
                    payload = await answer.read()
                    if answer.status < 500:
                        self.forwarded += 1
                        return web.Response(status=answer.status, body=payload)
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.given_up += 1
                return web.Response(status=503)
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


# --- the stream: what reached Kafka -------------------------------------------------------------


class StreamWatcher:
    """Reads the email and event topics from the start; keeps only each record's identity."""

    def __init__(self, broker: Tansu, topics: dict[str, str]) -> None:
        self.topics = topics
        self.emails: set[int] = set()  # campaign_id << 32 | lead_id
        self.events: set[str] = set()
        self.deliveries = 0
        self._consumer = AIOKafkaConsumer(
            topics["email"],
            topics["event"],
            bootstrap_servers=broker.bootstrap,
            group_id=f"soak-{time.time_ns()}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.start()
        try:
            while not stop.is_set():
                batch = await self._consumer.getmany(timeout_ms=200, max_records=20_000)
                for tp, messages in batch.items():
                    for message in messages:
                        assert message.value is not None
                        self._take(tp.topic, orjson.loads(message.value))
        finally:
            await self._consumer.stop()

    def _take(self, topic: str, record: dict[str, Any]) -> None:
        self.deliveries += 1
        if topic == self.topics["email"]:
            self.emails.add(record["campaign_id"] << 32 | record["lead_id"])
        else:
            self.events.add(record["id"])


# --- faults -------------------------------------------------------------------------------------

Claim = tuple[int, int, int]  # campaign_id, shard_no, epoch


@dataclasses.dataclass(slots=True)
class Kill:
    """One SIGKILL: when (wall clock, as the daemons' log timestamps), whom, and what the soak
    used to measure right after it (``naive``: every unreleased reservation in the victim's
    name, :func:`tests.e2e.scenarios.uncertain_now`), with the claims that measure covered."""

    at: float
    node: str
    naive: int
    naive_claims: list[Claim]


@dataclasses.dataclass(slots=True)
class Faults:
    kills: list[Kill] = dataclasses.field(default_factory=list)
    pauses: int = 0
    pg_restarts: list[float] = dataclasses.field(default_factory=list)  # wall clock at the stop
    pg_down_s: list[float] = dataclasses.field(default_factory=list)
    freezes: int = 0
    frozen_s: float = 0.0


async def held_claims(conn: asyncpg.Connection, node: str) -> list[Claim]:
    """Pending shards in ``node``'s name that no clean release ended: the claims of its live
    process, and any an earlier process of it left behind that nobody has recovered yet."""
    rows = await conn.fetch(
        """SELECT campaign_id, shard_no, epoch FROM campaign_shards
           WHERE state = 'pending' AND owner = $1 AND NOT released_clean""",
        node,
    )
    return [(r["campaign_id"], r["shard_no"], r["epoch"]) for r in rows]


async def restart(daemon: procs.Daemon) -> None:
    """Start a killed node again at once; a start that fails (Postgres restarting under it) is
    tried again, as systemd's Restart=on-failure would."""
    for attempt in range(5):
        try:
            await daemon.start(within=60)
            return
        except RuntimeError:
            if attempt == 4:
                raise
            await asyncio.sleep(1.0)


async def kill_round(
    conn: asyncpg.Connection,
    daemons: list[procs.Daemon],
    restarting: dict[str, asyncio.Task[None]],
    rng: random.Random,
    faults: Faults,
) -> None:
    """SIGKILL a random node that is up, take the naive measure, and restart it at once (in the
    background: the next kill may come while it starts)."""
    for name, task in list(restarting.items()):
        if task.done():
            del restarting[name]
            task.result()  # a node that cannot start again ends the soak
    candidates = [d for d in daemons if d.running and d.name not in restarting]
    if not candidates:
        return
    victim = rng.choice(candidates)
    held = set(await held_claims(conn, victim.name))
    since = await conn.fetchval("SELECT clock_timestamp()")
    await victim.kill_and_reap()
    # Taken once the process is gone: a claim it logged between a time taken before the signal
    # and the signal's delivery was charged to its next kill (5 claims for one kill, 2026-12-06).
    at = time.time()
    await scenarios.backends_gone(conn, victim.name)
    # Claims made in the milliseconds between that query and the kill are in its name too.
    held |= set(await held_claims(conn, victim.name))
    by_campaign: dict[int, list[int]] = collections.defaultdict(list)
    for campaign_id, shard_no, _ in held:
        by_campaign[campaign_id].append(shard_no)
    naive = 0
    for campaign_id, shards in by_campaign.items():
        naive += await scenarios.uncertain_now(conn, campaign_id, victim.name, sorted(shards), since)
    faults.kills.append(Kill(at, victim.name, naive, sorted(held)))
    restarting[victim.name] = asyncio.create_task(restart(victim))


async def pause_round(
    conn: asyncpg.Connection, rng: random.Random, faults: Faults, within: float = 30
) -> None:
    """Pause a running campaign until its claims are released, then resume it."""
    running = [r["id"] for r in await conn.fetch("SELECT id FROM campaigns WHERE status = 'running'")]
    if not running:
        return
    campaign_id = rng.choice(running)
    try:
        await campaigns.transition(conn, campaign_id, "pause")
    except campaigns.TransitionError:
        return
    faults.pauses += 1

    async def released() -> bool:
        return await procs.claims_held(conn, campaign_id) == 0

    await procs.wait_until(released, within)
    await asyncio.sleep(rng.uniform(0.2, 2.0))  # paused for a while: the fault itself
    with contextlib.suppress(campaigns.TransitionError):
        await campaigns.transition(conn, campaign_id, "resume")


async def pg_restart(server: procs.PrivatePostgres, faults: Faults) -> None:
    """Restart the caller's private Postgres under the nodes (fast shutdown)."""
    faults.pg_restarts.append(time.time())
    began = time.monotonic()
    await asyncio.to_thread(server.stop, "fast")
    await asyncio.to_thread(server.start)
    faults.pg_down_s.append(time.monotonic() - began)


@contextlib.asynccontextmanager
async def frozen(broker: Tansu, faults: Faults) -> Any:
    """The broker stopped (SIGSTOP) for the body's duration."""
    broker.freeze()
    began = time.monotonic()
    try:
        yield
    finally:
        broker.thaw()
        faults.freezes += 1
        faults.frozen_s += time.monotonic() - began


# --- the cluster ---------------------------------------------------------------------------------


async def add_leads(conn: asyncpg.Connection, count: int) -> set[int]:
    """``count`` leads of account 1, all matching the campaigns' segment (plan "pro")."""
    step = 100_000
    for start in range(0, count, step):
        await conn.copy_records_to_table(
            "leads",
            records=[
                (procs.ACCOUNT_ID, f"user{n}@example.com", {"n": n, "plan": "pro"})
                for n in range(start, min(count, start + step))
            ],
            columns=("account_id", "email", "attributes"),
        )
    await conn.execute("VACUUM ANALYZE leads")
    return {r["id"] for r in await conn.fetch("SELECT id FROM leads WHERE account_id = $1", procs.ACCOUNT_ID)}


async def logged_total(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(sent + failed + unknown + suppressed), 0) FROM campaign_stats"
        )
    )


def stream_toml(broker: Tansu | None, topics: dict[str, str], reports_dsn: str) -> str:
    """The nodes' relay, reports and Kafka sections; and no guards: the emulator's complaint
    rate (0.2 %) is above ``max_complaint_rate``, and the soak's pauses are its own faults."""
    text = (
        f'[relay]\npoll_interval_ms = 250\nlock_retry_s = 1.0\n[reports]\ndsn = "{reports_dsn}"\n'
        "[guards]\nenabled = false\n"
    )
    if broker is None:
        return text
    return (
        text
        + f"""[kafka]
bootstrap_servers = ["{broker.bootstrap}"]
email_topic = "{topics["email"]}"
event_topic = "{topics["event"]}"
campaign_topic = "{topics["campaign"]}"
erasure_topic = "{topics["erasure"]}"
request_timeout_ms = 5000
"""
    )


async def migrate_reports(reports_dsn: str) -> None:
    """The reports database's schema and this month's and next month's partitions."""
    conn = await db_connect.connect(reports_dsn)
    try:
        await migrate.migrate(conn, migrate.REPORTS)
        this_month = reports_load.month_of(dt.datetime.now(dt.UTC))
        await reports_load.ensure_partitions(conn, [this_month, reports_load.next_month(this_month)])
    finally:
        await conn.close()


@dataclasses.dataclass
class Cluster:
    """Everything the soak started, and what it measures while it runs."""

    setup: SoakSetup
    workdir: Path
    dsn: str
    reports_dsn: str
    rng: random.Random
    daemons: list[procs.Daemon] = dataclasses.field(default_factory=list)
    broker: Tansu | None = None
    faults: Faults = dataclasses.field(default_factory=Faults)
    created: list[int] = dataclasses.field(default_factory=list)
    restarting: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    stream_stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    conn_: asyncpg.Connection | None = None
    emulator: Any = None
    poster: WebhookPoster | None = None
    balancer: Balancer | None = None
    watcher: StreamWatcher | None = None
    config: Any = None
    matched: set[int] = dataclasses.field(default_factory=set)
    _watching: asyncio.Task[None] | None = None

    @property
    def conn(self) -> asyncpg.Connection:
        assert self.conn_ is not None
        return self.conn_

    @property
    def record(self) -> Path:
        return self.workdir / "record.jsonl"

    async def start(self) -> None:
        """Schema, leads, the broker, the webhook balancer, the emulator, the nodes."""
        self.conn_ = await db_connect.connect(self.dsn)
        await migrate.migrate(self.conn)
        await migrate_reports(self.reports_dsn)
        self.matched = await add_leads(self.conn, self.setup.leads)
        topics = topic_names("soak")
        if self.setup.kafka:
            self.broker = Tansu()
            self.broker.start()
            await self.broker.create_topics(topics.values(), 6)
            self.watcher = StreamWatcher(self.broker, topics)
            self._watching = asyncio.create_task(self.watcher.run(self.stream_stop))
        self.balancer = Balancer(self.daemons, self.rng)
        self.poster = WebhookPoster(
            await self.balancer.start(),
            "ses",
            bounce_rate=self.setup.bounce_rate,
            complaint_rate=self.setup.complaint_rate,
            seed=self.setup.seed,
        )
        webhooks_toml = sink_mod.write_daemon_settings(self.poster, self.workdir / "webhooks").read_text()
        self.emulator = procs.timed_emulator(
            "ses",
            record=self.record,
            latency_ms=self.setup.latency_ms,
            seed=self.setup.seed,
            api_key=procs.API_KEY,
            webhooks=self.poster,
        )
        self.emulator.arrivals = None  # millions of calls: keep no list
        sink_port = await self.emulator.start()
        self.config = scenarios.campaign_config(sink_port)
        extra = webhooks_toml + stream_toml(self.broker, topics, self.reports_dsn)
        for n in range(self.setup.nodes):
            daemon = procs.Daemon(
                dsn=self.dsn,
                sink_port=sink_port,
                name=f"node-{n}",
                workdir=self.workdir,
                options=self.setup.options,
            )
            with daemon.config_path.open("a", encoding="utf-8") as config:
                config.write(extra)
            self.daemons.append(daemon)
        await asyncio.gather(*(d.start(within=60) for d in self.daemons))

    async def reconnect(self) -> None:
        """A new connection (after a Postgres restart)."""
        if self.conn_ is not None and not self.conn_.is_closed():
            with contextlib.suppress(Exception):  # the old one may be broken: it goes either way
                await self.conn_.close(timeout=2)
        self.conn_ = await db_connect.connect(self.dsn)

    async def live_campaigns(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM campaigns WHERE status IN ('scheduled', 'running', 'paused')"
            )
        )

    async def top_up(self, more: bool = True) -> None:
        """Keep ``concurrent_campaigns`` campaigns live while ``more``."""
        if not more:
            return
        for _ in range(self.setup.concurrent_campaigns - await self.live_campaigns()):
            new = scenarios.new_campaign(rate_per_s=None)
            self.created.append(await campaigns.create(self.conn, new, self.config))

    async def restarted(self) -> None:
        """Wait for the nodes being restarted (raises if one could not start)."""
        tasks, self.restarting = list(self.restarting.values()), {}
        await asyncio.gather(*tasks)

    async def settle(self, within: float = 900) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """Wait for every campaign to finish, the webhooks to be stored and the stream to carry
        every row and event; returns (email_log rows, email_events rows)."""
        await self.restarted()
        conn = self.conn
        assert self.poster is not None

        async def all_finished() -> bool:
            return not await self.live_campaigns()

        await procs.wait_until(all_finished, within, interval=0.5)
        await self.emulator.flush()
        await self.poster.close(drain_s=120)
        posted = self.poster.counters.posted

        async def webhooks_stored() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM email_events") >= posted)

        with contextlib.suppress(TimeoutError):
            await procs.wait_until(webhooks_stored, 60, interval=0.5)
        logged = await conn.fetch("SELECT campaign_id, lead_id, status, error FROM email_log")
        events = await conn.fetch("SELECT provider, provider_event_id, kind, campaign_id FROM email_events")
        watcher = self.watcher
        if watcher is not None:

            async def streamed() -> bool:
                return len(watcher.emails) >= len(logged) and len(watcher.events) >= len(events)

            with contextlib.suppress(TimeoutError):
                await procs.wait_until(streamed, within, interval=0.5)
        return logged, events

    async def close(self) -> None:
        for task in self.restarting.values():
            task.cancel()
        await asyncio.gather(*self.restarting.values(), return_exceptions=True)
        self.stream_stop.set()
        if self._watching is not None:
            await asyncio.gather(self._watching, return_exceptions=True)
        await asyncio.gather(*(d.shutdown() for d in self.daemons), return_exceptions=True)
        if self.emulator is not None:
            await self.emulator.close()
        if self.balancer is not None:
            await self.balancer.close()
        if self.conn_ is not None and not self.conn_.is_closed():
            await self.conn_.close()
        if self.broker is not None:
            self.broker.stop()
