"""The soak: a cluster under random faults for a long time, then an audit of every guarantee.

    python bench/soak.py [--duration-s 900] [--emails 3000000] [--leads 300000] [--nodes 3]
                         [--kill-every-s 2.5] [--pg-restart-every-s 120] [--freeze-every-s 90]
                         [--freeze-s 15] [--pause-every-s 45] [--baseline-s 60] [--seed 1]
                         [--workdir DIR] [--json]

What runs, all on this machine (tests/e2e/soak_cluster.py, shared with the short soak of
tests/e2e/test_soak.py):

- a private Postgres cluster (initdb + pg_ctl from the machine's binaries into a temp dir,
  tests/e2e/procs.PrivatePostgres, never the shared server), so it can be restarted under the
  daemons; the main database and the reports database (issue 13's ``[reports] dsn``) on it;
- a tansu broker: every node has ``[relay]``, ``[kafka]`` and ``[reports]``, one of them runs
  the relay; a consumer in this process reads the email and event topics throughout;
- the SES emulator in this process, recording every accepted recipient and posting signed SNS
  bounce and complaint webhooks back through a balancer that retries on errors, as SNS would;
- ``--nodes`` ``mailerd run`` processes on the same database.

Campaigns of ``--leads`` leads each (every lead matches) are started two at a time until the
soak has lasted ``--duration-s`` and ``--emails`` emails were started. The first
``--baseline-s`` seconds run without faults: their send rate is the baseline. After that, at
random: a SIGKILL of a random node, restarted at once (about every ``--kill-every-s``); a pause
of a running campaign, resumed a moment later; a Postgres restart (``pg_ctl restart -m fast``);
and, in the background, the broker frozen with SIGSTOP for ``--freeze-s``.

At the end, checked and printed (exit 1 when one fails), by tests/e2e/soak_audit.py: no lead
emailed twice, every matched lead exactly one row, nothing emailed and not logged; every
``unknown`` row attributed to the one fault that left it, within 2 x reservation_step per claim
(leads suppressed by then aside) and per SIGKILL within that per shard its node held; every row
and event on the stream; every webhook answered 2xx stored; the reports database equal to the
log once the relay caught up. Here also: RSS flat (the median RSS of node processes older than
10 s in the last quarter of the fault phase against the first quarter).

Throughput under faults is printed against the fault-free baseline of the same run, as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
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

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_json, proc_status_kb

from tests.e2e import procs, soak_audit
from tests.e2e.soak_cluster import (
    Cluster,
    SoakSetup,
    frozen,
    kill_round,
    logged_total,
    pause_round,
    pg_restart,
)

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


def rss_quarters(samples: list[RssSample], baseline_s: float) -> tuple[float, float]:
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


# --- the soak -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Soak:
    settings: Settings
    cluster: Cluster
    server: procs.PrivatePostgres
    rng: random.Random
    began: float = dataclasses.field(default_factory=time.monotonic)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    rss: list[RssSample] = dataclasses.field(default_factory=list)

    def more_to_do(self) -> bool:
        settings = self.settings
        return (
            time.monotonic() - self.began < settings.duration_s
            or len(self.cluster.created) * settings.leads < settings.emails
        )

    async def baseline(self) -> float:
        """Emails per second with no fault, over ``baseline_s``."""
        cluster = self.cluster
        await cluster.top_up(self.more_to_do())
        before, began = await logged_total(cluster.conn), time.monotonic()
        while time.monotonic() - began < self.settings.baseline_s:
            await cluster.top_up(self.more_to_do())
            await asyncio.sleep(0.5)
        return (await logged_total(cluster.conn) - before) / (time.monotonic() - began)

    async def freeze_loop(self) -> None:
        """Freeze the broker for ``freeze_s`` every ``freeze_every_s`` or so."""
        settings, broker = self.settings, self.cluster.broker
        assert broker is not None
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.rng.uniform(0.5, 1.5) * settings.freeze_every_s):
                    await self.stop.wait()
            if self.stop.is_set():
                return
            async with frozen(broker, self.cluster.faults):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.freeze_s):
                        await self.stop.wait()

    async def fault_phase(self) -> tuple[float, float]:
        """Faults until the duration and the email count are reached and every campaign has
        finished: (emails/s, seconds)."""
        settings, rng, cluster = self.settings, self.rng, self.cluster
        before, began = await logged_total(cluster.conn), time.monotonic()
        freezing = asyncio.create_task(self.freeze_loop())
        next_pg = began + rng.uniform(0.5, 1.5) * settings.pg_restart_every_s
        next_pause = began + rng.uniform(0.5, 1.5) * settings.pause_every_s
        last_report = began
        try:
            while self.more_to_do() or await cluster.live_campaigns():
                await cluster.top_up(self.more_to_do())
                await asyncio.sleep(rng.uniform(0.5, 1.5) * settings.kill_every_s)
                now = time.monotonic()
                if now >= next_pg:
                    await cluster.restarted()
                    await pg_restart(self.server, cluster.faults)
                    await cluster.reconnect()
                    next_pg = now + rng.uniform(0.5, 1.5) * settings.pg_restart_every_s
                elif now >= next_pause:
                    await pause_round(cluster.conn, rng, cluster.faults)
                    next_pause = now + rng.uniform(0.5, 1.5) * settings.pause_every_s
                else:
                    await kill_round(cluster.conn, cluster.daemons, cluster.restarting, rng, cluster.faults)
                if now - last_report > 60:
                    last_report = now
                    await self.report()
        finally:
            self.stop.set()
            await freezing
            await cluster.restarted()
        elapsed = time.monotonic() - began
        return (await logged_total(cluster.conn) - before) / elapsed, elapsed

    async def report(self) -> None:
        f = self.cluster.faults
        print(
            f"soak: {time.monotonic() - self.began:.0f} s, {await logged_total(self.cluster.conn):,} logged,"
            f" {len(f.kills)} kills, {f.pauses} pauses, {len(f.pg_restarts)} Postgres restarts,"
            f" {f.freezes} freezes",
            file=sys.stderr,
            flush=True,
        )


async def soak(settings: Settings, workdir: Path) -> dict[str, Any]:
    server = procs.PrivatePostgres()  # restarted below: never the shared server
    server.init()
    server.start()
    admin = await asyncpg.connect(server.dsn())
    await admin.execute("CREATE DATABASE soak")
    await admin.execute("CREATE DATABASE soak_reports")
    await admin.close()
    setup = SoakSetup(nodes=settings.nodes, leads=settings.leads, seed=settings.seed)
    rng = random.Random(settings.seed)
    cluster = Cluster(setup, workdir, server.dsn("soak"), server.dsn("soak_reports"), rng)
    run = Soak(settings, cluster, server, rng)
    sampling: asyncio.Task[None] | None = None
    try:
        await cluster.start()
        run.began = time.monotonic()
        sampling = asyncio.create_task(sample_rss(cluster.daemons, run.rss, run.stop))
        baseline_rate = await run.baseline()
        print(f"soak: baseline {baseline_rate:,.0f} emails/s without faults", file=sys.stderr, flush=True)
        faults_rate, faults_elapsed = await run.fault_phase()
        await sampling
        logged, events = await cluster.settle()
        soak_elapsed = time.monotonic() - run.began
        figures, checks = await soak_audit.audit_cluster(cluster, logged, events, within=900)
        faults = cluster.faults
        rss_early, rss_late = rss_quarters(run.rss, settings.baseline_s)
        figures = {
            "duration_s": round(soak_elapsed, 1),
            "faults_phase_s": round(faults_elapsed, 1),
            "nodes": settings.nodes,
            "baseline_emails_per_s": round(baseline_rate),
            "faults_emails_per_s": round(faults_rate),
            "throughput_ratio_under_faults": round(faults_rate / baseline_rate, 3) if baseline_rate else None,
            "sigkills": len(faults.kills),
            "pauses": faults.pauses,
            "postgres_restarts": len(faults.pg_restarts),
            "postgres_restart_s_max": round(max(faults.pg_down_s, default=0.0), 2),
            "broker_freezes": faults.freezes,
            "broker_frozen_s": round(faults.frozen_s, 1),
            **figures,
            "rss_mb_first_quarter": round(rss_early / 1024, 1) if rss_early else None,
            "rss_mb_last_quarter": round(rss_late / 1024, 1) if rss_late else None,
            "rss_mb_max": round(max((s.rss_kb for s in run.rss), default=0) / 1024, 1),
            "rss_samples": len(run.rss),
        }
        checks["RSS flat (last quarter within 1.25x of the first)"] = bool(
            rss_early and rss_late and rss_late <= 1.25 * rss_early
        )
        checks["duration reached"] = soak_elapsed >= settings.duration_s
        checks["emails reached"] = figures["emails_logged"] >= settings.emails
        figures["checks"] = checks
        return figures
    finally:
        run.stop.set()
        if sampling is not None:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        await cluster.close()
        server.cleanup()


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
    parser.add_argument("--workdir", type=Path, help="keep the node logs, configs and record here")
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
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(soak(settings, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="mailerd-soak-") as workdir:
            figures = asyncio.run(soak(settings, Path(workdir)))
    if args.json:
        print_json(figures, indent=True)
    else:
        for key, value in figures.items():
            if key != "checks":
                print(f"{key:56} {value}")
        for name, ok in figures["checks"].items():
            print(f"{'ok  ' if ok else 'MISS'} {name}")
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
