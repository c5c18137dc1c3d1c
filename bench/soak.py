"""The soak: a cluster under random faults for a long time, then an audit of every guarantee.

    python bench/soak.py [--duration-s 900] [--emails 3000000] [--leads 300000] [--nodes 3]
                         [--kill-every-s 2.5] [--pg-restart-every-s 120] [--freeze-every-s 90]
                         [--freeze-s 15] [--pause-every-s 45] [--baseline-s 60] [--seed 1] [--json]

What runs, all on this machine:

- a private Postgres cluster (initdb + pg_ctl from the machine's binaries into a temp dir,
  tests/e2e/procs.PrivatePostgres), so it can be restarted under the daemons;
- a tansu broker (tests/kafka_broker.py): every node has ``[relay]`` and ``[kafka]``, one of
  them runs the relay; a consumer in this process reads the email and event topics throughout;
- the SES emulator in this process, recording every accepted recipient and posting signed SNS
  bounce and complaint webhooks back through a small balancer (also here) that forwards each
  to a live node and retries on errors, as SNS would;
- ``--nodes`` ``mailerd run`` processes on the same database.

Campaigns of ``--leads`` leads each (every lead matches) are started two at a time until the
soak has lasted ``--duration-s`` and ``--emails`` emails were started. The first
``--baseline-s`` seconds run without faults: their send rate is the baseline. After that, at
random: a SIGKILL of a random node, restarted at once (about every ``--kill-every-s``); a pause
of a running campaign, resumed a moment later; a Postgres restart (``pg_ctl restart -m fast``);
and, in the background, the broker frozen with SIGSTOP for ``--freeze-s``.

At the end, checked and printed (exit 1 when one fails):

- no lead emailed twice (the emulator's record), every matched lead exactly one ``email_log``
  row, every emailed lead logged ``sent`` or ``unknown`` and every ``sent`` row emailed;
- ``unknown`` per crash (measured right after each SIGKILL, as tests/e2e does) within the
  in-flight bound, and all ``unknown`` rows within the sum of the bounds of every crash and
  Postgres restart;
- every ``email_log`` row and every ``email_events`` row on the stream at least once;
- every webhook the daemons answered 2xx stored (``email_events``); ``webhooks_failed`` counts
  those that got no 2xx within the emulator's 30 s (the balancer kept retrying: a provider
  would post them again);
- RSS flat: the median RSS of node processes older than 10 s in the last quarter of the soak
  against the first quarter (after the baseline).

Throughput under faults is printed against the fault-free baseline of the same run, as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import proc_status_kb

from mailerd import campaigns
from mailerd.db import connect as db_connect
from mailerd.db import migrate
from mailerd.emulator import sink as sink_mod
from mailerd.emulator.webhooks import WebhookPoster
from mailerd.models import LogStatus
from tests.e2e import procs, scenarios
from tests.kafka_broker import Tansu, topic_names

OPTIONS = procs.DaemonOptions(
    concurrency=8,
    batch_size=50,
    shard_size=20_000,
    window_size=2_000,
    max_shards_per_node=4,
    poll_interval_s=0.25,
    flush_interval_ms=100,
    shutdown_grace_s=10.0,
)
CONCURRENT_CAMPAIGNS = 2
RSS_MIN_AGE_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    duration_s: float
    emails: int
    leads: int
    nodes: int
    kill_every_s: float
    pg_restart_every_s: float
    freeze_every_s: float
    freeze_s: float
    pause_every_s: float
    baseline_s: float
    seed: int
    bounce_rate: float = 0.01
    complaint_rate: float = 0.002


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


# --- RSS ------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class RssSample:
    at: float
    node: str
    age_s: float
    rss_kb: int


async def sample_rss(daemons: list[procs.Daemon], samples: list[RssSample], stop: asyncio.Event) -> None:
    """Every node's VmRSS every 2 s, with the age of its process."""
    started: dict[tuple[str, int], float] = {}
    while not stop.is_set():
        now = time.monotonic()
        for daemon in daemons:
            if not daemon.running or daemon.process is None:
                continue
            key = (daemon.name, daemon.process.pid)
            born = started.setdefault(key, now)
            with contextlib.suppress(OSError, ValueError, KeyError):
                rss_kb = proc_status_kb(daemon.process.pid, "VmRSS")
                samples.append(RssSample(now, daemon.name, now - born, rss_kb))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await stop.wait()


# --- faults -------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Faults:
    kills: int = 0
    pauses: int = 0
    pg_restarts: int = 0
    freezes: int = 0
    frozen_s: float = 0.0
    uncertain_per_crash: list[int] = dataclasses.field(default_factory=list)
    bound_per_crash: list[int] = dataclasses.field(default_factory=list)
    restart_bounds: list[int] = dataclasses.field(default_factory=list)
    pg_down_s: list[float] = dataclasses.field(default_factory=list)

    def over_bound(self) -> int:
        return sum(1 for u, b in zip(self.uncertain_per_crash, self.bound_per_crash, strict=True) if u > b)


async def held_shards(conn: asyncpg.Connection, node: str | None = None) -> dict[int, list[int]]:
    """campaign_id -> pending shards held by ``node`` (any node when None)."""
    rows = await conn.fetch(
        """SELECT campaign_id, shard_no FROM campaign_shards
           WHERE state = 'pending' AND owner IS NOT NULL AND ($1::text IS NULL OR owner = $1)""",
        node,
    )
    held: dict[int, list[int]] = collections.defaultdict(list)
    for row in rows:
        held[row["campaign_id"]].append(row["shard_no"])
    return dict(held)


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
    """SIGKILL a random node that is up, measure what it left uncertain, and restart it at once
    (in the background: the next kill may come while it starts)."""
    for name, task in list(restarting.items()):
        if task.done():
            del restarting[name]
            task.result()  # a node that cannot start again ends the soak
    candidates = [d for d in daemons if d.running and d.name not in restarting]
    if not candidates:
        return
    victim = rng.choice(candidates)
    held = await held_shards(conn, victim.name)
    since = await conn.fetchval("SELECT clock_timestamp()")
    await victim.kill_and_reap()
    await scenarios.backends_gone(conn, victim.name)
    # The shards it held when it died: those held just before the kill, and any it claimed in
    # the milliseconds between that query and the kill (still in its name: nobody took them yet).
    after = await held_shards(conn, victim.name)
    for campaign_id, shards in after.items():
        held[campaign_id] = sorted(set(held.get(campaign_id, [])) | set(shards))
    uncertain = 0
    for campaign_id, shards in held.items():
        uncertain += await scenarios.uncertain_now(conn, campaign_id, victim.name, shards, since)
    faults.kills += 1
    faults.uncertain_per_crash.append(uncertain)
    faults.bound_per_crash.append(OPTIONS.in_flight_bound(sum(len(s) for s in held.values())))
    restarting[victim.name] = asyncio.create_task(restart(victim))


async def pause_round(conn: asyncpg.Connection, rng: random.Random, faults: Faults) -> None:
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

    await procs.wait_until(released, 30)
    await asyncio.sleep(rng.uniform(0.2, 2.0))  # paused for a while: the fault itself
    with contextlib.suppress(campaigns.TransitionError):
        await campaigns.transition(conn, campaign_id, "resume")


async def pg_restart(
    server: procs.PrivatePostgres, conn: asyncpg.Connection, faults: Faults
) -> asyncpg.Connection:
    """Restart Postgres under the nodes (fast shutdown); returns a new connection."""
    held = await held_shards(conn)
    per_node = await conn.fetch(
        "SELECT owner, count(*) AS shards FROM campaign_shards WHERE state = 'pending' AND owner IS NOT NULL"
        " GROUP BY owner"
    )
    faults.restart_bounds.append(sum(OPTIONS.in_flight_bound(r["shards"]) for r in per_node) if held else 0)
    await conn.close()
    began = time.monotonic()
    await asyncio.to_thread(server.stop, "fast")
    await asyncio.to_thread(server.start)
    faults.pg_down_s.append(time.monotonic() - began)
    faults.pg_restarts += 1
    return await db_connect.connect(server.dsn("soak"))


async def freeze_loop(
    broker: Tansu, settings: Settings, rng: random.Random, faults: Faults, stop: asyncio.Event
) -> None:
    """Freeze the broker (SIGSTOP) for ``freeze_s`` every ``freeze_every_s`` or so."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rng.uniform(0.5, 1.5) * settings.freeze_every_s):
                await stop.wait()
        if stop.is_set():
            return
        broker.freeze()
        began = time.monotonic()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.freeze_s):
                    await stop.wait()
        finally:
            broker.thaw()
        faults.freezes += 1
        faults.frozen_s += time.monotonic() - began


# --- the soak -----------------------------------------------------------------------------------


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


@dataclasses.dataclass
class Cluster:
    """Everything the soak started, and what it measures while it runs."""

    settings: Settings
    workdir: Path
    rng: random.Random
    server: procs.PrivatePostgres = dataclasses.field(default_factory=procs.PrivatePostgres)
    broker: Tansu = dataclasses.field(default_factory=Tansu)
    daemons: list[procs.Daemon] = dataclasses.field(default_factory=list)
    faults: Faults = dataclasses.field(default_factory=Faults)
    rss: list[RssSample] = dataclasses.field(default_factory=list)
    created: list[int] = dataclasses.field(default_factory=list)
    restarting: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # faults, RSS sampler
    stream_stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    began: float = 0.0
    conn_: asyncpg.Connection | None = None
    emulator: Any = None
    poster: WebhookPoster | None = None
    balancer: Balancer | None = None
    watcher: StreamWatcher | None = None
    config: Any = None
    matched: set[int] = dataclasses.field(default_factory=set)

    @property
    def conn(self) -> asyncpg.Connection:
        assert self.conn_ is not None
        return self.conn_

    async def start(self) -> None:
        """Postgres, the leads, the broker, the webhook balancer, the emulator, the nodes."""
        self.server.init()
        self.server.start()
        admin = await asyncpg.connect(self.server.dsn())
        await admin.execute("CREATE DATABASE soak")
        await admin.close()
        dsn = self.server.dsn("soak")
        self.conn_ = await db_connect.connect(dsn)
        await migrate.migrate(self.conn)
        self.matched = await add_leads(self.conn, self.settings.leads)
        self.broker.start()
        topics = topic_names("soak")
        await self.broker.create_topics(topics.values(), 6)
        self.watcher = StreamWatcher(self.broker, topics)
        self.balancer = Balancer(self.daemons, self.rng)
        self.poster = WebhookPoster(
            await self.balancer.start(),
            "ses",
            bounce_rate=self.settings.bounce_rate,
            complaint_rate=self.settings.complaint_rate,
            seed=self.settings.seed,
        )
        webhooks_toml = sink_mod.write_daemon_settings(self.poster, self.workdir / "webhooks").read_text()
        self.emulator = procs.timed_emulator(
            "ses",
            record=self.workdir / "record.jsonl",
            latency_ms=5.0,
            seed=self.settings.seed,
            api_key=procs.API_KEY,
            webhooks=self.poster,
        )
        self.emulator.arrivals = None  # millions of calls: keep no list
        sink_port = await self.emulator.start()
        self.config = scenarios.campaign_config(sink_port)
        extra = webhooks_toml + relay_toml(self.broker, topics)
        for n in range(self.settings.nodes):
            daemon = procs.Daemon(
                dsn=dsn, sink_port=sink_port, name=f"node-{n}", workdir=self.workdir, options=OPTIONS
            )
            with daemon.config_path.open("a", encoding="utf-8") as config:
                config.write(extra)
            self.daemons.append(daemon)
        await asyncio.gather(*(d.start(within=60) for d in self.daemons))
        self.began = time.monotonic()

    def more_to_do(self) -> bool:
        return (
            time.monotonic() - self.began < self.settings.duration_s
            or len(self.created) * self.settings.leads < self.settings.emails
        )

    async def live_campaigns(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM campaigns WHERE status IN ('scheduled', 'running', 'paused')"
            )
        )

    async def top_up(self) -> None:
        """Keep CONCURRENT_CAMPAIGNS campaigns live while there is more to do."""
        if not self.more_to_do():
            return
        for _ in range(CONCURRENT_CAMPAIGNS - await self.live_campaigns()):
            new = scenarios.new_campaign(rate_per_s=None)
            self.created.append(await campaigns.create(self.conn, new, self.config))

    async def baseline(self) -> float:
        """Emails per second with no fault, over ``baseline_s``."""
        await self.top_up()
        before, began = await logged_total(self.conn), time.monotonic()
        while time.monotonic() - began < self.settings.baseline_s:
            await self.top_up()
            await asyncio.sleep(0.5)
        return (await logged_total(self.conn) - before) / (time.monotonic() - began)

    async def fault_phase(self) -> tuple[float, float]:
        """Faults until the duration and the email count are reached and every campaign has
        finished: (emails/s, seconds)."""
        settings, rng = self.settings, self.rng
        before, began = await logged_total(self.conn), time.monotonic()
        freezing = asyncio.create_task(freeze_loop(self.broker, settings, rng, self.faults, self.stop))
        next_pg = began + rng.uniform(0.5, 1.5) * settings.pg_restart_every_s
        next_pause = began + rng.uniform(0.5, 1.5) * settings.pause_every_s
        last_report = began
        try:
            while self.more_to_do() or await self.live_campaigns():
                await self.top_up()
                await asyncio.sleep(rng.uniform(0.5, 1.5) * settings.kill_every_s)
                now = time.monotonic()
                if now >= next_pg:
                    await self.restarted()
                    self.conn_ = await pg_restart(self.server, self.conn, self.faults)
                    next_pg = now + rng.uniform(0.5, 1.5) * settings.pg_restart_every_s
                elif now >= next_pause:
                    await pause_round(self.conn, rng, self.faults)
                    next_pause = now + rng.uniform(0.5, 1.5) * settings.pause_every_s
                else:
                    await kill_round(self.conn, self.daemons, self.restarting, rng, self.faults)
                if now - last_report > 60:
                    last_report = now
                    await self.report()
        finally:
            self.stop.set()
            await freezing
            await self.restarted()
        elapsed = time.monotonic() - began
        return (await logged_total(self.conn) - before) / elapsed, elapsed

    async def restarted(self) -> None:
        """Wait for the nodes being restarted (raises if one could not start)."""
        tasks, self.restarting = list(self.restarting.values()), {}
        await asyncio.gather(*tasks)

    async def report(self) -> None:
        f = self.faults
        print(
            f"soak: {time.monotonic() - self.began:.0f} s, {await logged_total(self.conn):,} logged,"
            f" {f.kills} kills, {f.pauses} pauses, {f.pg_restarts} Postgres restarts, {f.freezes} freezes",
            file=sys.stderr,
            flush=True,
        )

    async def settle(self) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """Wait for every campaign to finish, the webhooks to be stored and the stream to carry
        every row and event; returns (email_log rows, email_events rows)."""
        conn = self.conn
        assert self.poster is not None and self.watcher is not None

        async def all_finished() -> bool:
            return not await conn.fetchval(
                "SELECT count(*) FROM campaigns WHERE status IN ('scheduled', 'running', 'paused')"
            )

        await procs.wait_until(all_finished, 900, interval=0.5)
        await self.emulator.flush()
        await self.poster.close(drain_s=120)
        posted = self.poster.counters.posted

        async def webhooks_stored() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM email_events") >= posted)

        with contextlib.suppress(TimeoutError):
            await procs.wait_until(webhooks_stored, 60, interval=0.5)
        logged = await conn.fetch("SELECT campaign_id, lead_id, status FROM email_log")
        events = await conn.fetch("SELECT provider, provider_event_id FROM email_events")
        watcher = self.watcher

        async def streamed() -> bool:
            return len(watcher.emails) >= len(logged) and len(watcher.events) >= len(events)

        with contextlib.suppress(TimeoutError):
            await procs.wait_until(streamed, 900, interval=0.5)
        return logged, events

    async def close(self) -> None:
        for task in self.restarting.values():
            task.cancel()
        await asyncio.gather(*self.restarting.values(), return_exceptions=True)
        self.stop.set()
        self.stream_stop.set()
        await asyncio.gather(*(d.shutdown() for d in self.daemons), return_exceptions=True)
        if self.emulator is not None:
            await self.emulator.close()
        if self.balancer is not None:
            await self.balancer.close()
        if self.conn_ is not None and not self.conn_.is_closed():
            await self.conn_.close()
        self.broker.stop()
        self.server.cleanup()


def relay_toml(broker: Tansu, topics: dict[str, str]) -> str:
    return f"""[relay]
poll_interval_ms = 250
lock_retry_s = 1.0
[kafka]
bootstrap_servers = ["{broker.bootstrap}"]
email_topic = "{topics["email"]}"
event_topic = "{topics["event"]}"
campaign_topic = "{topics["campaign"]}"
erasure_topic = "{topics["erasure"]}"
request_timeout_ms = 5000
"""


async def soak(settings: Settings, workdir: Path) -> dict[str, Any]:
    cluster = Cluster(settings, workdir, random.Random(settings.seed))
    tasks: list[asyncio.Task[None]] = []
    try:
        await cluster.start()
        assert cluster.watcher is not None and cluster.poster is not None and cluster.balancer is not None
        tasks.append(asyncio.create_task(cluster.watcher.run(cluster.stream_stop)))
        tasks.append(asyncio.create_task(sample_rss(cluster.daemons, cluster.rss, cluster.stop)))
        baseline_rate = await cluster.baseline()
        print(f"soak: baseline {baseline_rate:,.0f} emails/s without faults", file=sys.stderr, flush=True)
        faults_rate, faults_elapsed = await cluster.fault_phase()
        logged, events = await cluster.settle()
        soak_elapsed = time.monotonic() - cluster.began
        cluster.stream_stop.set()
        await asyncio.gather(*tasks)
        return audit(
            settings=settings,
            matched=cluster.matched,
            created=cluster.created,
            record=workdir / "record.jsonl",
            logged=logged,
            events=events,
            watcher=cluster.watcher,
            faults=cluster.faults,
            rss=cluster.rss,
            rates=(baseline_rate, faults_rate),
            elapsed=(soak_elapsed, faults_elapsed),
            poster=cluster.poster,
            balancer=cluster.balancer,
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cluster.close()


def audit(
    *,
    settings: Settings,
    matched: set[int],
    created: list[int],
    record: Path,
    logged: list[asyncpg.Record],
    events: list[asyncpg.Record],
    watcher: StreamWatcher,
    faults: Faults,
    rss: list[RssSample],
    rates: tuple[float, float],
    elapsed: tuple[float, float],
    poster: WebhookPoster,
    balancer: Balancer,
) -> dict[str, Any]:
    emailed: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    with record.open("rb") as lines:
        for line in lines:
            if line.strip():
                entry = orjson.loads(line)
                emailed[int(entry["campaign_id"])][int(entry["lead_id"])] += 1
    rows: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    statuses: dict[int, dict[int, int]] = collections.defaultdict(dict)
    for row in logged:
        rows[row["campaign_id"]][row["lead_id"]] += 1
        statuses[row["campaign_id"]][row["lead_id"]] = row["status"]
    totals: collections.Counter[str] = collections.Counter()
    lost: collections.Counter[str] = collections.Counter()  # what each loss was
    for campaign_id in created:
        result = procs.Audit(matched, emailed[campaign_id], rows[campaign_id], statuses[campaign_id])
        totals.update(result.summary())
        for lead, status in statuses[campaign_id].items():
            if lead in emailed[campaign_id] and status not in (LogStatus.SENT, LogStatus.UNKNOWN):
                lost[f"emailed, logged {LogStatus(status).name.lower()}"] += 1
            if status == LogStatus.SENT and lead not in emailed[campaign_id]:
                lost["logged sent, not emailed"] += 1
    unknown = sum(1 for row in logged if row["status"] == LogStatus.UNKNOWN)
    missing_on_stream = sum(
        1 for r in logged if (r["campaign_id"] << 32 | r["lead_id"]) not in watcher.emails
    )
    events_missing = sum(
        1 for e in events if f"event:{e['provider']}:{e['provider_event_id']}" not in watcher.events
    )
    rss_early, rss_late = rss_quarters(rss, elapsed[0], settings.baseline_s)
    baseline_rate, faults_rate = rates
    figures = {
        "duration_s": round(elapsed[0], 1),
        "faults_phase_s": round(elapsed[1], 1),
        "nodes": settings.nodes,
        "campaigns": len(created),
        "emails_logged": len(logged),
        "emails_sent_by_emulator": sum(sum(c.values()) for c in emailed.values()),
        "baseline_emails_per_s": round(baseline_rate),
        "faults_emails_per_s": round(faults_rate),
        "throughput_ratio_under_faults": round(faults_rate / baseline_rate, 3) if baseline_rate else None,
        "sigkills": faults.kills,
        "pauses": faults.pauses,
        "postgres_restarts": faults.pg_restarts,
        "postgres_restart_s_max": round(max(faults.pg_down_s, default=0.0), 2),
        "broker_freezes": faults.freezes,
        "broker_frozen_s": round(faults.frozen_s, 1),
        "duplicates": totals["duplicates"],
        "multi_rows": totals["multi_rows"],
        "missing_rows": totals["missing_rows"],
        "losses": totals["losses"],
        "losses_by_kind": dict(lost),
        "unknown": unknown,
        "unknown_bound_total": sum(faults.bound_per_crash) + sum(faults.restart_bounds),
        "max_unknown_per_crash": max(faults.uncertain_per_crash, default=0),
        "crashes_over_bound": faults.over_bound(),
        "in_flight_bound_max": max(faults.bound_per_crash, default=0),
        "stream_email_records": len(watcher.emails),
        "stream_deliveries": watcher.deliveries,
        "rows_missing_on_stream": missing_on_stream,
        "events_stored": len(events),
        "events_missing_on_stream": events_missing,
        "webhooks_posted": poster.counters.posted,
        "webhooks_failed": poster.counters.failed,
        "webhooks_dropped": poster.counters.dropped,
        "balancer_retries": balancer.retries,
        "rss_mb_first_quarter": round(rss_early / 1024, 1) if rss_early else None,
        "rss_mb_last_quarter": round(rss_late / 1024, 1) if rss_late else None,
        "rss_mb_max": round(max((s.rss_kb for s in rss), default=0) / 1024, 1),
        "rss_samples": len(rss),
    }
    figures["checks"] = checks(figures, settings)
    return figures


def rss_quarters(samples: list[RssSample], duration_s: float, baseline_s: float) -> tuple[float, float]:
    """Median RSS of processes older than RSS_MIN_AGE_S in the first and last quarter of the
    fault phase (0 when a quarter has no such sample)."""
    if not samples:
        return 0.0, 0.0
    start = samples[0].at + baseline_s
    end = samples[-1].at
    quarter = (end - start) / 4
    grown = [s for s in samples if s.age_s >= RSS_MIN_AGE_S]
    early = [s.rss_kb for s in grown if start <= s.at < start + quarter]
    late = [s.rss_kb for s in grown if s.at >= end - quarter]
    return (statistics.median(early) if early else 0.0, statistics.median(late) if late else 0.0)


def checks(figures: dict[str, Any], settings: Settings) -> dict[str, bool]:
    early, late = figures["rss_mb_first_quarter"], figures["rss_mb_last_quarter"]
    return {
        "no lead emailed twice": figures["duplicates"] == 0,
        "every lead exactly one row": figures["multi_rows"] == 0 and figures["missing_rows"] == 0,
        "no loss": figures["losses"] == 0,
        "unknown within the bound of each crash": figures["crashes_over_bound"] == 0,
        "unknown within the sum of the bounds": figures["unknown"] <= figures["unknown_bound_total"],
        "every row on the stream": figures["rows_missing_on_stream"] == 0,
        "every event on the stream": figures["events_missing_on_stream"] == 0,
        "every webhook answered 2xx stored": figures["events_stored"] >= figures["webhooks_posted"] > 0,
        "RSS flat (last quarter within 1.25x of the first)": bool(early and late and late <= 1.25 * early),
        "duration reached": figures["duration_s"] >= settings.duration_s,
        "emails reached": figures["emails_logged"] >= settings.emails,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=900.0)
    parser.add_argument("--emails", type=int, default=3_000_000)
    parser.add_argument("--leads", type=int, default=300_000, help="leads per campaign (all match)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--kill-every-s", type=float, default=2.5)
    parser.add_argument("--pg-restart-every-s", type=float, default=120.0)
    parser.add_argument("--freeze-every-s", type=float, default=90.0)
    parser.add_argument("--freeze-s", type=float, default=15.0)
    parser.add_argument("--pause-every-s", type=float, default=45.0)
    parser.add_argument("--baseline-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = Settings(
        duration_s=args.duration_s,
        emails=args.emails,
        leads=args.leads,
        nodes=args.nodes,
        kill_every_s=args.kill_every_s,
        pg_restart_every_s=args.pg_restart_every_s,
        freeze_every_s=args.freeze_every_s,
        freeze_s=args.freeze_s,
        pause_every_s=args.pause_every_s,
        baseline_s=args.baseline_s,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="mailerd-soak-") as workdir:
        figures = asyncio.run(soak(settings, Path(workdir)))
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        for key, value in figures.items():
            if key != "checks":
                print(f"{key:32} {value}")
        for name, ok in figures["checks"].items():
            print(f"{'ok  ' if ok else 'MISS'} {name}")
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
