"""Benchmark the seed's problem: reports on the sending table, against mailerd's reports database.

    python bench/reports.py [--leads 200000] [--rate 50] [--bounce-rate 0.02] [--dsn DSN]
                            [--no-api-node] [--json]

One run, two set-ups on the same Postgres server, each sending one campaign over every lead three
times: alone, while a load generator runs the same report mix at a fixed rate (``--rate``
requests/s, open loop; 40 % campaign report, 30 % lead history, 20 % account usage, 10 % bounced
list), and alone again. Every campaign adds a million rows to the tables the next one writes (and,
for mailerd, loads), so a later campaign is slower for that alone: the loaded rate is compared
with the mean of the two alone rates around it (``loaded_over_alone``), and the second alone
run's rate over the first's (``after_over_alone``) shows how much the growth alone costs:

1. **the seed's way**: one ``email`` table with the seed's indexes (campaign, lead, account,
   recipient, message id, status+campaign, created_at); the senders are the naive write path of
   bench/campaign.py (one INSERT per email, 50 per transaction, 4 connections), bounces are
   UPDATEs of the row (``--bounce-rate`` of the emails, by message id, from a fifth connection,
   as they come in), and the reports are SQL on that table (asyncpg, no HTTP in between).
2. **mailerd**: ``mailerd run`` with ``[reports]`` (a second database on the same server, the
   worst case for us) and ``mailerd sink`` posting signed SES bounce webhooks at ``--bounce-rate``;
   the reports are the report API over HTTP (``/report``, ``/leads/{id}/history``,
   ``/accounts/{id}/usage``, ``/emails?event=hard_bounce``), read from the reports database.

Figures: send rate alone (before and after) and under the report load (and their ratio), report
latency p50/p99 under load (open loop: a late answer counts from when the request was due), the reports
database's lag p50/p99 under load (for every sample of the campaign's committed count on the main
database, the time until the reports database counts as many), WAL per email on the sending
database (and on the reports database). Every figure is printed side by side, mailerd against the
seed's way, as a ratio. The databases are dropped at the end; child processes are always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import datetime as dt
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import campaign as campaign_bench
from common import (
    ACCOUNT_ID,
    NAIVE_SCHEMA,
    BenchError,
    Daemon,
    arguments,
    autogroups,
    checkpoint,
    free_port,
    fresh_database,
    loadavg,
    print_json,
    proc_cpu_s,
    run_bench,
    server_dsn,
    start_daemon,
    start_relay_process,
    start_sink,
    stop_daemons,
    stop_process,
    wait_finished,
)

from mailerd import config as config_mod
from mailerd.db import connect as db_connect
from mailerd.db import migrate

TOKEN = "bench-reports-token"  # noqa: S105  (the bench daemon's admin token)
MIX = (("report", 0.4), ("history", 0.3), ("usage", 0.2), ("bounced", 0.1))
MAX_IN_FLIGHT = 64  # the load generator's cap: past it, requests wait (and count as late)
SEED_INDEXES = "CREATE INDEX email_created_at_idx ON email (created_at);"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def kinds(count: int, seed: int = 3) -> list[str]:
    """``count`` request kinds in the mix's proportions, shuffled."""
    rng = random.Random(seed)
    names = [name for name, _ in MIX]
    return rng.choices(names, weights=[share for _, share in MIX], k=count)


@dataclasses.dataclass(slots=True)
class Load:
    """An open-loop load: request i is due at ``i / rate`` s; its latency counts from then.
    ``call`` returns the server's own time when it said (``Server-Timing``)."""

    rate: float
    call: Callable[[str], Awaitable[float | None]]
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    starts: list[float] = dataclasses.field(default_factory=list)  # due -> sent: the generator's own delay
    services: list[float] = dataclasses.field(default_factory=list)  # sent -> answered
    servers: list[float] = dataclasses.field(default_factory=list)  # in the node's handler
    errors: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        order = kinds(1_000_000)  # before the clock starts: it takes a tenth of a second or more
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for index, kind in enumerate(order):
                due = started + index / self.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
                await slots.acquire()
                group.create_task(self._one(kind, due, slots))

    async def _one(self, kind: str, due: float, slots: asyncio.Semaphore) -> None:
        try:
            sent = time.perf_counter()
            server = await self.call(kind)
            answered = time.perf_counter()
            if server is not None:
                self.servers.append(server)
            self.latencies.setdefault(kind, []).append(answered - due)
            self.starts.append(sent - due)
            self.services.append(answered - sent)
        except Exception as exc:
            self.errors += 1
            if self.errors <= 3:
                print(f"report request failed: {kind}: {exc!r}", file=sys.stderr)
        finally:
            slots.release()

    def figures(self) -> dict[str, Any]:
        every = [x for values in self.latencies.values() for x in values]
        out: dict[str, Any] = {
            "requests": len(every),
            "errors": self.errors,
            "p50_ms": round(percentile(every, 0.5) * 1000, 1),
            "p99_ms": round(percentile(every, 0.99) * 1000, 1),
            "start_delay_p99_ms": round(percentile(self.starts, 0.99) * 1000, 1),
            "request_p50_ms": round(percentile(self.services, 0.5) * 1000, 1),
            "request_p99_ms": round(percentile(self.services, 0.99) * 1000, 1),
        }
        if self.servers:
            out["server_p50_ms"] = round(percentile(self.servers, 0.5) * 1000, 1)
            out["server_p99_ms"] = round(percentile(self.servers, 0.99) * 1000, 1)
        for kind, values in sorted(self.latencies.items()):
            out[f"{kind}_p99_ms"] = round(percentile(values, 0.99) * 1000, 1)
        return out


# --- the seed's way -------------------------------------------------------------------------

SEED_REPORT = (
    "SELECT status, count(*) FROM email WHERE campaign_id = $1 GROUP BY status",
    """SELECT date_trunc('minute', created_at), count(*), count(*) FILTER (WHERE status = 'bounced')
       FROM email WHERE campaign_id = $1 GROUP BY 1 ORDER BY 1""",
    """SELECT split_part(email, '@', 2) AS domain, count(*), count(*) FILTER (WHERE status = 'bounced')
       FROM email WHERE campaign_id = $1 GROUP BY 1 ORDER BY 2 DESC LIMIT 10""",
    """SELECT bounce_reason, count(*) FROM email WHERE campaign_id = $1 AND status = 'bounced'
       GROUP BY 1 ORDER BY 2 DESC LIMIT 10""",
)
SEED_HISTORY = """SELECT campaign_id, status, sent_at, bounced_at, bounce_reason FROM email
                  WHERE account_id = $1 AND lead_id = $2 ORDER BY created_at DESC LIMIT 100"""
SEED_USAGE = """SELECT created_at::date, status, count(*) FROM email
                WHERE account_id = $1 AND created_at >= $2 GROUP BY 1, 2"""
SEED_BOUNCED = """SELECT lead_id, email, bounce_reason FROM email
                  WHERE campaign_id = $1 AND status = 'bounced' ORDER BY lead_id LIMIT 100"""
BOUNCE = """UPDATE email SET status = 'bounced', bounced_at = now(), bounce_reason = $2, updated_at = now()
            WHERE provider_message_id = $1"""


async def seed_way(
    dsn: str, rows: list[campaign_bench.SentRow], rate: float, bounce_rate: float
) -> dict[str, Any]:
    """The seed's table, written and bounced three times (alone, under the report load, alone)."""
    admin = await db_connect.connect(dsn)
    try:
        await admin.execute(NAIVE_SCHEMA + SEED_INDEXES)
    finally:
        await admin.close()
    alone = await _seed_send(dsn, rows, 1, bounce_rate, None)
    loaded = await _seed_send(dsn, rows, 2, bounce_rate, rate)
    after = await _seed_send(dsn, rows, 3, bounce_rate, None)
    return {"alone": alone, "loaded": loaded, "after": after, **send_ratios(alone, loaded, after)}


def send_ratios(alone: dict[str, Any], loaded: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """The loaded campaign's send rate over the mean of the alone ones before and after it (the
    tables grow by a campaign each run), and the second alone run's over the first's."""
    before_rate, loaded_rate, after_rate = (run["emails_per_s"] for run in (alone, loaded, after))
    return {
        "loaded_over_alone": round(2 * loaded_rate / (before_rate + after_rate), 2),
        "after_over_alone": round(after_rate / before_rate, 2),
    }


def _seed_reporter(
    pool: Any, campaign_id: int, lead_ids: list[int], now: dt.datetime, rng: random.Random
) -> Callable[[str], Awaitable[float | None]]:
    """One report request of the seed's way: SQL on the email table."""

    async def report(kind: str) -> float | None:
        async with pool.acquire() as conn:
            if kind == "report":
                for sql in SEED_REPORT:
                    await conn.fetch(sql, campaign_id)
            elif kind == "history":
                await conn.fetch(SEED_HISTORY, ACCOUNT_ID, rng.choice(lead_ids))
            elif kind == "usage":
                await conn.fetch(SEED_USAGE, ACCOUNT_ID, now - dt.timedelta(days=30))
            else:
                await conn.fetch(SEED_BOUNCED, campaign_id)
        return None

    return report


async def _seed_bouncer(pool: Any, bounces: asyncio.Queue[str | None]) -> None:
    """Bounces as the seed applies them: an UPDATE of the email's row, by message id."""
    async with pool.acquire() as conn:
        while (message_id := await bounces.get()) is not None:
            await conn.execute(BOUNCE, message_id, "smtp; 550 5.1.1 user unknown")


async def _seed_send(
    dsn: str, rows: list[campaign_bench.SentRow], campaign_id: int, bounce_rate: float, rate: float | None
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(campaign_id)
    values = [
        (campaign_id, r.lead_id, ACCOUNT_ID, r.email, "sent", f"{campaign_id}-{r.lead_id}", now) for r in rows
    ]
    batches = [
        values[i : i + campaign_bench.NAIVE_BATCH] for i in range(0, len(values), campaign_bench.NAIVE_BATCH)
    ]
    bounces: asyncio.Queue[str | None] = asyncio.Queue()
    pool = await db_connect.create_pool(
        dsn, min_size=campaign_bench.NAIVE_TASKS + 2, max_size=campaign_bench.NAIVE_TASKS + 24
    )
    stop = asyncio.Event()
    load = Load(rate or 1.0, _seed_reporter(pool, campaign_id, [r.lead_id for r in rows], now, rng))
    try:
        async with pool.acquire() as admin:
            await checkpoint(admin)
            mark = await campaign_bench.WalMark.take(admin)
            cursor = iter(batches)

            async def sender() -> None:
                async with pool.acquire() as conn:
                    for batch in cursor:
                        async with conn.transaction():
                            await conn.executemany(campaign_bench.NAIVE_INSERT, batch)
                        for row in batch:
                            if rng.random() < bounce_rate:
                                bounces.put_nowait(row[5])

            started = time.perf_counter()
            async with asyncio.TaskGroup() as group:
                bouncing = group.create_task(_seed_bouncer(pool, bounces))
                loading = group.create_task(load.run(stop)) if rate else None
                async with asyncio.TaskGroup() as senders:
                    for _ in range(campaign_bench.NAIVE_TASKS):
                        senders.create_task(sender())
                elapsed = time.perf_counter() - started
                bounces.put_nowait(None)
                await bouncing
                stop.set()
                if loading is not None:
                    await loading
            wal = await mark.since(admin)
            bounced = await admin.fetchval(
                "SELECT count(*) FROM email WHERE campaign_id = $1 AND status = 'bounced'", campaign_id
            )
    finally:
        await pool.close()
    out: dict[str, Any] = {
        "emails": len(rows),
        "bounced": bounced,
        "elapsed_s": round(elapsed, 2),
        "emails_per_s": round(len(rows) / elapsed),
        **campaign_bench.wal_fields("", wal, len(rows)),
    }
    if rate:
        out["reports"] = load.figures()
    return out


# --- mailerd --------------------------------------------------------------------------------


async def start_sink_with_webhooks(
    workdir: Path, daemon_port: int, bounce_rate: float, nice: int = 0
) -> tuple[asyncio.subprocess.Process, int, str]:
    """``mailerd sink`` (at ``nice``) posting signed SES bounces to the daemon; its port and the
    daemon's ``[webhooks.ses]`` section."""
    settings_dir = workdir / "webhook-settings"
    process, port = await start_sink(
        workdir,
        extra=[
            "--webhook-url", f"http://127.0.0.1:{daemon_port}/webhooks/ses",
            "--bounce-rate", str(bounce_rate), "--webhook-settings", str(settings_dir),
        ],
        nice=nice,
    )  # fmt: skip
    return process, port, (settings_dir / "webhooks.toml").read_text()


async def mailerd_way(
    dsn: str,
    reports_dsn: str,
    workdir: Path,
    leads: int,
    rate: float,
    bounce_rate: float,
    *,
    api_node: bool = True,
    send_nice: int = 0,
    relay_process: bool = False,
    relay_nice: int = 10,
    load_connections: int | None = None,
    read_connections: int | None = None,
) -> dict[str, Any]:
    """The daemon with [reports], three campaigns over every lead: alone, under the load, alone.

    ``api_node``: a second daemon with ``max_shards_per_node = 0`` (it sends nothing) serves the
    report API and takes the webhooks, and the relay runs in it; the sending daemon runs no relay
    (``run_in = "process"``). Without it, one daemon does everything on one event loop.
    ``send_nice``: the sending daemon and the sink (the remote provider's stand-in) run at this
    nice value, as a sending node's unit with ``Nice=`` / ``CPUWeight=`` would. ``relay_process``:
    the relay runs in a ``mailerd relay run`` process at ``relay_nice`` (10: the shipped unit)
    instead of the API node. ``load_connections``: ``[reports] load_connections``;
    ``read_connections``: ``[relay] read_connections`` (None: the defaults)."""
    http_port = free_port()
    api_port = free_port() if api_node else http_port
    sink, sink_port, webhooks = await start_sink_with_webhooks(workdir, api_port, bounce_rate, send_nice)
    (workdir / "token").write_text(TOKEN)
    settings = campaign_bench.DaemonSettings()

    relay_port = free_port()

    def config_text(port: int, *, sends: bool, relay: bool) -> str:
        text = campaign_bench.daemon_config(dsn, port, sink_port, settings)
        text = text.replace("[http]\n", f'[http]\nadmin_tokens_file = "{workdir / "token"}"\n')
        if not sends:
            text = re.sub(r"(?m)^max_shards_per_node = .*$", "max_shards_per_node = 0", text)
        run_in = "daemon" if relay else "process"
        loaders = "" if load_connections is None else f"load_connections = {load_connections}\n"
        readers = "" if read_connections is None else f"read_connections = {read_connections}\n"
        return text + (
            f'\n[reports]\ndsn = "{reports_dsn}"\n{loaders}'
            f'[relay]\npoll_interval_ms = 100\nrun_in = "{run_in}"\nlisten = "127.0.0.1:{relay_port}"\n'
            f"{readers}\n{webhooks}"
        )

    config_path = workdir / "mailerd.toml"
    config_path.write_text(config_text(http_port, sends=True, relay=not api_node))
    config = config_mod.load(config_path, env={"MAILERD_PROVIDERS__SINK__API_KEY": "bench"})
    daemons: list[Daemon] = []
    relay: asyncio.subprocess.Process | None = None
    try:
        nice = send_nice if api_node else 0
        daemons.append(
            await start_daemon(config_path, workdir / "daemon.log", http_port, provider_key=True, nice=nice)
        )
        if api_node:
            api_path = workdir / "mailerd-api.toml"
            api_path.write_text(config_text(api_port, sends=False, relay=not relay_process))
            daemons.append(await start_daemon(api_path, workdir / "api.log", api_port, provider_key=True))
            if relay_process:
                relay = await start_relay_process(
                    api_path, workdir / "relay.log", dsn, "reports", nice=relay_nice
                )
        api = f"http://127.0.0.1:{api_port}/api"
        processes = {"sender": daemons[0].pid, "api": daemons[-1].pid, "sink": sink.pid, "bench": os.getpid()}
        if relay is not None:
            processes["relay"] = relay.pid
        # The relay's /metrics: its own process's listener, else the daemon it runs in.
        relay_url = f"http://127.0.0.1:{relay_port}" if relay is not None else api.removesuffix("/api")
        stages = relay_url + "/metrics"
        alone = await _mailerd_send(dsn, reports_dsn, config, daemons, api, leads, None, processes, stages)
        loaded = await _mailerd_send(dsn, reports_dsn, config, daemons, api, leads, rate, processes, stages)
        after = await _mailerd_send(dsn, reports_dsn, config, daemons, api, leads, None, processes, stages)
    finally:
        if relay is not None:
            await stop_process(relay, grace_s=10)
        await stop_daemons(daemons)
        await stop_process(sink, grace_s=10)
    return {
        "alone": alone, "loaded": loaded, "after": after, **send_ratios(alone, loaded, after),
        "api_node": api_node, "send_nice": send_nice,
        "relay_process": relay is not None,
        "relay_nice": relay_nice if relay is not None else None,
        "load_connections": load_connections,
        "read_connections": read_connections,
    }  # fmt: skip


async def _mailerd_send(
    dsn: str,
    reports_dsn: str,
    config: config_mod.Config,
    daemons: list[Daemon],
    api: str,
    leads: int,
    rate: float | None,
    processes: dict[str, int],
    relay_metrics: str,
) -> dict[str, Any]:
    conn = await db_connect.connect(dsn)
    reports = await db_connect.connect(reports_dsn)
    session = aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {TOKEN}"}, connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    )
    stop = asyncio.Event()
    rng = random.Random(7)
    lead_ids = [r[0] for r in await conn.fetch("SELECT id FROM leads WHERE account_id = $1", ACCOUNT_ID)]
    campaign_id = 0
    today = dt.datetime.now(dt.UTC).date()

    async def report(kind: str) -> float | None:
        if kind == "report":
            path = f"/campaigns/{campaign_id}/report"
        elif kind == "history":
            path = f"/leads/{rng.choice(lead_ids)}/history?account_id={ACCOUNT_ID}"
        elif kind == "usage":
            path = f"/accounts/{ACCOUNT_ID}/usage?from={today - dt.timedelta(days=29)}&to={today}"
        else:
            path = f"/campaigns/{campaign_id}/emails?event=hard_bounce&limit=100"
        async with session.get(api + path) as response:
            await response.read()
            if response.status != 200:
                raise BenchError(f"{path}: {response.status}")
            timing = re.search(r"app;dur=([0-9.]+)", response.headers.get("Server-Timing", ""))
            return float(timing[1]) / 1000 if timing else None

    load = Load(rate or 1.0, report)
    samples: list[tuple[float, int]] = []  # (time, committed on the main database)
    arrivals: list[tuple[float, int]] = []  # (time, counted in the reports database)

    target: list[int] = []  # set once the campaign finished: the sampler stops when loaded
    caught_up = asyncio.Event()
    counted = "SELECT coalesce(sum(sent + failed + unknown + suppressed), 0) FROM {} WHERE campaign_id = $1"

    async def sample_lag() -> None:
        sampler = await db_connect.connect(dsn)
        try:
            while not caught_up.is_set():
                now = time.perf_counter()
                main = await sampler.fetchval(counted.format("campaign_stats"), campaign_id)
                loaded = await reports.fetchval(counted.format("report_campaign_minutes"), campaign_id)
                samples.append((now, int(main)))
                arrivals.append((time.perf_counter(), int(loaded)))
                if target and loaded >= target[0]:
                    caught_up.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(caught_up.wait(), 0.2)
        finally:
            await sampler.close()

    try:
        await checkpoint(conn)
        mark = await campaign_bench.WalMark.take(conn)
        reports_mark = await campaign_bench.WalMark.take(reports)
        lag_before = await loop_lag_buckets(session, api)
        stages_before = await relay_stages(session, relay_metrics)
        cpu_before = {name: proc_cpu_s(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        campaign_id = await campaign_bench.start_campaign(
            conn, config, name="bench-reports", segment=campaign_bench.SEGMENT,
            subject="{{ lead.attributes.first_name }}, our spring release is here",
            html_body="<p>Hello {{ lead.attributes.first_name }},</p>",
            text_body="Hello {{ lead.attributes.first_name }}",
        )  # fmt: skip
        async with asyncio.TaskGroup() as group:
            sampler = group.create_task(sample_lag())
            loading = group.create_task(load.run(stop)) if rate else None
            info = await wait_finished(conn, campaign_id, daemons, 1800, poll_s=0.1)
            elapsed = time.perf_counter() - started
            # The lag tail: until the reports database has every email of the campaign.
            target.append(info["processed"])
            async with asyncio.timeout(300):
                await sampler
            stop.set()
            if loading is not None:
                await loading
        spent = time.perf_counter() - started
        cpu = {
            name: round((proc_cpu_s(processes[name]) - was) / spent, 2) for name, was in cpu_before.items()
        }
        api_loop_lag = loop_lag_figures(lag_before, await loop_lag_buckets(session, api))
        stages = relay_stage_figures(stages_before, await relay_stages(session, relay_metrics))
        wal = await mark.since(conn)
        reports_wal = (await reports_mark.since(reports))["db_bytes"]
    finally:
        stop.set()
        await session.close()
        await conn.close()
        await reports.close()
    processed = info["processed"]
    out: dict[str, Any] = {
        "campaign_id": campaign_id,
        "emails": processed,
        "elapsed_s": round(elapsed, 2),
        "emails_per_s": round(processed / elapsed),
        **campaign_bench.wal_fields("", wal, processed),
        "reports_db_wal_bytes_per_email": None if reports_wal is None else round(reports_wal / processed, 1),
        "lag": lag_figures(samples, arrivals),
        "cpu_cores": cpu,  # CPU seconds per second, from the start until the reports caught up
        "api_loop_lag": api_loop_lag,
        "relay_stages": stages,
    }
    if rate:
        out["reports"] = load.figures()
    return out


_LAG_BUCKET = re.compile(r'^mailerd_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


_STAGE = re.compile(
    r'^mailerd_relay_stage_seconds_total\{destination="reports",stage="([^"]+)"\} (\S+)$', re.M
)


async def relay_stages(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The reports destination's ``mailerd_relay_stage_seconds_total`` by stage, from the relay's
    /metrics."""
    async with session.get(url) as response:
        text = await response.text()
    return {stage: float(seconds) for stage, seconds in _STAGE.findall(text)}


def relay_stage_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds the relay's loop spent per stage over the run (read: waiting for a read the
    delivery before it did not hide), and each stage's share of their sum."""
    spent = {stage: round(seconds - before.get(stage, 0.0), 2) for stage, seconds in after.items()}
    total = sum(spent.values())
    shares = {f"{s}_share": round(seconds / total, 3) if total else 0.0 for s, seconds in spent.items()}
    return spent | shares


async def loop_lag_buckets(session: aiohttp.ClientSession, api: str) -> list[tuple[float, float]]:
    """The API node's ``mailerd_event_loop_lag_seconds`` histogram: (upper bound, cumulative count)."""
    async with session.get(api.removesuffix("/api") + "/metrics") as response:
        text = await response.text()
    return [(float(bound), float(count)) for bound, count in _LAG_BUCKET.findall(text)]


def loop_lag_figures(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> dict[str, Any]:
    """The API node's event-loop lag over the run (samples every 0.1 s): the bucket bounds its
    p50/p99 fall under (``inf``: over 10 s)."""
    counts = [(bound, count - dict(before).get(bound, 0.0)) for bound, count in after]
    total = counts[-1][1] if counts else 0.0

    def under(share: float) -> float | None:
        return next((bound for bound, count in counts if total and count >= share * total), None)

    return {"samples": int(total), "p50_le_s": under(0.5), "p99_le_s": under(0.99)}


def lag_figures(samples: list[tuple[float, int]], arrivals: list[tuple[float, int]]) -> dict[str, Any]:
    """For each sample of the main database's count, the time until the reports database counted
    as many (samples while nothing was committed yet are left out)."""
    times = [t for t, _ in arrivals]
    counts = [n for _, n in arrivals]
    lags = []
    for at, committed in samples:
        if committed == 0:
            continue
        index = bisect.bisect_left(counts, committed)
        if index < len(counts):
            lags.append(max(0.0, times[index] - at))
    return {
        "samples": len(lags),
        "p50_s": round(percentile(lags, 0.5), 2),
        "p99_s": round(percentile(lags, 0.99), 2),
    }


# --- the run --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_dsn = server_dsn(args.dsn)
    result: dict[str, Any] = {
        "leads": args.leads, "rate": args.rate, "bounce_rate": args.bounce_rate, "nproc": os.cpu_count(),
        "loadavg_before": loadavg(),
        "autogroup": autogroups(),  # children in sessions of their own, their nice on their group
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mailerd-bench-reports-") as work:
        async with fresh_database(admin_dsn) as dsn, fresh_database(admin_dsn) as reports_dsn:
            result.update(await campaign_bench.seed(dsn, args.leads))
            conn = await db_connect.connect(reports_dsn)
            try:
                await migrate.migrate(conn, migrate.REPORTS)
            finally:
                await conn.close()
            result["mailerd"] = await mailerd_way(
                dsn, reports_dsn, Path(work), args.leads, args.rate, args.bounce_rate,
                api_node=args.api_node, send_nice=args.send_nice, relay_process=args.relay_process,
                relay_nice=args.relay_nice, load_connections=args.load_connections,
                read_connections=args.read_connections,
            )  # fmt: skip
            rows = await campaign_bench.logged_rows(dsn, result["mailerd"]["alone"].get("campaign_id", 1))
        if args.seed:
            async with fresh_database(admin_dsn) as seed_dsn:
                result["seed"] = await seed_way(seed_dsn, rows, args.rate, args.bounce_rate)
    result["loadavg_after"] = loadavg()
    if args.seed:
        result["side_by_side"] = side_by_side(result)
    return result


def side_by_side(result: dict[str, Any]) -> dict[str, Any]:
    ours, theirs = result["mailerd"], result["seed"]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    return {
        "send_rate_alone": (ours["alone"]["emails_per_s"], theirs["alone"]["emails_per_s"]),
        "send_rate_loaded": (ours["loaded"]["emails_per_s"], theirs["loaded"]["emails_per_s"]),
        "send_rate_alone_after": (ours["after"]["emails_per_s"], theirs["after"]["emails_per_s"]),
        "loaded_over_alone": (ours["loaded_over_alone"], theirs["loaded_over_alone"]),
        "after_over_alone": (ours["after_over_alone"], theirs["after_over_alone"]),
        "report_p50_ms": (ours["loaded"]["reports"]["p50_ms"], theirs["loaded"]["reports"]["p50_ms"]),
        "report_p99_ms": (ours["loaded"]["reports"]["p99_ms"], theirs["loaded"]["reports"]["p99_ms"]),
        "lag_p50_s": (ours["loaded"]["lag"]["p50_s"], 0.0),
        "lag_p99_s": (ours["loaded"]["lag"]["p99_s"], 0.0),
        "wal_bytes_per_email": (
            ours["loaded"]["wal_bytes_per_email"],
            theirs["loaded"]["wal_bytes_per_email"],
        ),
        "send_rate_loaded_ratio": ratio(ours["loaded"]["emails_per_s"], theirs["loaded"]["emails_per_s"]),
        "report_p99_ratio": ratio(ours["loaded"]["reports"]["p99_ms"], theirs["loaded"]["reports"]["p99_ms"]),
        "wal_per_email_ratio": ratio(
            ours["loaded"]["wal_bytes_per_email"], theirs["loaded"]["wal_bytes_per_email"]
        ),
    }


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--leads", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=50.0, help="report requests per second")
    parser.add_argument("--bounce-rate", type=float, default=0.02)
    parser.add_argument(
        "--api-node",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the reports (and take the webhooks, run the relay) on a second daemon that sends nothing",
    )
    parser.add_argument(
        "--send-nice",
        type=int,
        default=0,
        help="with --api-node: run the sending daemon and the sink at this nice value (as Nice= would)",
    )
    parser.add_argument(
        "--relay-process",
        action="store_true",
        help="with --api-node: run the relay as `mailerd relay run` at nice 10, not in the API node",
    )
    parser.add_argument(
        "--relay-nice",
        type=int,
        default=10,
        help="with --relay-process: its nice value (10, as mailerd-relay.service's Nice=)",
    )
    parser.add_argument(
        "--load-connections",
        type=int,
        default=None,
        help="[reports] load_connections of the daemons (default: the daemon's default)",
    )
    parser.add_argument(
        "--read-connections",
        type=int,
        default=None,
        help="[relay] read_connections of the daemons and the relay (default: the daemon's default)",
    )
    parser.add_argument(
        "--seed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the seed's way (--no-seed: mailerd only, to compare two versions of it)",
    )
    args = parser.parse_args()
    result = run_bench(bench(args))
    if result is None:
        return 1
    print_json(result, indent=not args.json)
    if args.json or not args.seed:
        return 0
    print("\nside by side (mailerd, seed's way):")
    for key, value in result["side_by_side"].items():
        print(f"  {key:<24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
