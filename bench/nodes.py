"""Scale-out: one campaign sent by one ``mailerd run`` process, then by several on one database.

    python bench/nodes.py [--leads 40000] [--nodes 2] [--dsn DSN] [--latency-ms 50]
                          [--concurrency 8] [--shard-size N] [--json]

Creates a fresh database ``mailerd_bench_<random>`` on the server (``--dsn``, else
``$MAILERD_TEST_DSN``, else the local default), migrates it and seeds the leads. Then, for 1 node
and for ``--nodes`` nodes: starts ``mailerd sink --latency-ms 50 --record FILE`` (the provider is
the bottleneck: every call takes 50 ms and each node has ``concurrency`` calls in flight), starts
the daemons (each its own process, node name and HTTP port, all on the same database), creates
a campaign that matches every lead, and times it from creation until ``campaigns.show`` says
finished. After each run it stops everything (SIGTERM, exit 0 expected) and checks that the
sink accepted every lead exactly once and that ``email_log`` holds one row per lead.

Prints ``one_node_s``, ``two_nodes_s`` (``<n>_nodes_s`` for other counts), ``speedup``,
``duplicates`` and the shards each node sent. The database is dropped at the end, also on
failure; child processes are always stopped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from common import (
    BenchError,
    Daemon,
    check_stopped,
    copy_leads,
    daemon_toml,
    free_port,
    fresh_database,
    machine_busy,
    machine_cpu,
    migrated,
    print_json,
    run_bench,
    server_dsn,
    start_campaign,
    start_daemon,
    start_sink,
    stop_daemons,
    stop_process,
    tail,
    vacuum_analyze,
    wait_finished,
)

from mailerd import config as config_mod
from mailerd.db import connect as db_connect

SEGMENT = {"field": "attributes.n", "op": "exists", "value": True}
BATCH_SIZE = 50


# --- database -------------------------------------------------------------------------------


async def seed(dsn: str, count: int) -> None:
    """Migrate and COPY ``count`` leads of one account."""
    async with migrated(dsn) as conn:
        await copy_leads(
            conn, ((f"lead{n}@example.com", {"n": n, "first_name": "Ada"}) for n in range(count))
        )
        await vacuum_analyze(conn, "leads")


# --- processes ------------------------------------------------------------------------------


def daemon_config(dsn: str, node: str, http_port: int, sink_port: int, args: argparse.Namespace) -> str:
    return daemon_toml(
        dsn,
        http_port,
        node,
        {
            "providers.sink": {
                "kind": "sink",
                "endpoint": f"http://127.0.0.1:{sink_port}",
                "concurrency": args.concurrency,
                "batch_size": BATCH_SIZE,
            },
            "scheduler": {
                "shard_size": args.shard_size,
                "max_shards_per_node": args.max_shards_per_node,
                "window_size": min(5000, args.shard_size),
                "poll_interval_s": 0.25,
            },
            "writer": {"flush_interval_ms": 100},
        },
        level="info",
    )


@contextlib.asynccontextmanager
async def daemons(
    dsn: str, count: int, sink_port: int, workdir: Path, args: argparse.Namespace
) -> AsyncIterator[tuple[config_mod.Config, list[Daemon]]]:
    """``count`` healthy ``mailerd run`` processes; on exit each gets SIGTERM and must exit 0."""
    started: list[Daemon] = []
    config: config_mod.Config | None = None
    ok = False
    try:
        for index in range(1, count + 1):
            node = f"node-{index}"
            port = free_port()
            config_path = workdir / f"{node}.toml"
            config_path.write_text(daemon_config(dsn, node, port, sink_port, args), encoding="utf-8")
            config = config_mod.load(config_path, env={})
            started.append(await start_daemon(config_path, workdir / f"{node}.log", port))
        assert config is not None
        yield config, started
        ok = True
    finally:
        codes = await stop_daemons(started)
        if ok:
            check_stopped(started, codes)


# --- one run --------------------------------------------------------------------------------


async def run_campaign(dsn: str, count: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Send one campaign over every lead with ``count`` nodes; time it and check the record."""
    record = workdir / f"record-{count}.jsonl"
    sink, sink_port = await start_sink(workdir, latency_ms=args.latency_ms, record=record)
    try:
        async with daemons(dsn, count, sink_port, workdir, args) as (config, nodes):
            conn = await db_connect.connect(dsn)
            try:
                cpu_before = machine_cpu()
                started = time.perf_counter()
                campaign_id = await start_campaign(
                    conn,
                    config,
                    name=f"bench {count} node(s)",
                    segment=SEGMENT,
                    subject="{{ lead.attributes.first_name }}, hello",
                    html_body="<p>Hello {{ lead.attributes.first_name }}</p>",
                    text_body="Hello {{ lead.attributes.first_name }}",
                )
                info = await wait_finished(conn, campaign_id, nodes, args.limit_s, poll_s=0.02)
                elapsed = time.perf_counter() - started
                cpu_after = machine_cpu()
                logged = await conn.fetchrow(
                    """SELECT count(*) AS rows, count(DISTINCT lead_id) AS leads
                       FROM email_log WHERE campaign_id = $1""",
                    campaign_id,
                )
            finally:
                await conn.close()
    finally:
        if await stop_process(sink) != 0:  # the sink flushes its record on SIGTERM
            raise BenchError(f"the sink did not stop cleanly:\n{tail(workdir / 'sink.log')}")
    accepted = collections.Counter(
        orjson.loads(line)["lead_id"] for line in record.read_bytes().splitlines() if line.strip()
    )
    duplicates = sum(n - 1 for n in accepted.values())
    shards_by_node = {d.log_path.stem: shards_done(d.log_path, campaign_id) for d in nodes}
    if info["sent"] != args.leads or len(accepted) != args.leads:
        raise BenchError(f"{args.leads} leads: {info['sent']} sent, {len(accepted)} accepted by the sink")
    if logged is None or logged["rows"] != args.leads or logged["leads"] != args.leads:
        raise BenchError(f"{args.leads} leads but email_log holds {dict(logged or {})}")
    return {
        "elapsed_s": round(elapsed, 3),
        "emails_per_s": round(args.leads / elapsed),
        # With every process on one machine, a busy machine (near 1.0) caps the speedup, not
        # the provider.
        "machine_cpu_busy": round(machine_busy(cpu_before, cpu_after), 2),
        "sent": info["sent"],
        "duplicates": duplicates,
        "shards": info["shards"],
        "shards_by_node": shards_by_node,
    }


def shards_done(log_path: Path, campaign_id: int) -> int:
    """How many shards of the campaign this node finished (its ``shard_released`` log events)."""
    done = 0
    for line in log_path.read_bytes().splitlines():
        if not line.startswith(b"{"):
            continue
        event = orjson.loads(line)
        if (
            event.get("event") == "shard_released"
            and event.get("done")
            and event.get("campaign_id") == campaign_id
        ):
            done += 1
    return done


# --- main -----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    key = "two_nodes_s" if args.nodes == 2 else f"{args.nodes}_nodes_s"
    with tempfile.TemporaryDirectory(prefix="mailerd-bench-nodes-") as tmp:
        workdir = Path(tmp)
        async with fresh_database(args.dsn) as dsn:
            await seed(dsn, args.leads)
            one = await run_campaign(dsn, 1, workdir, args)
            many = await run_campaign(dsn, args.nodes, workdir, args)
    # What the provider allows: every node keeps `concurrency` calls of BATCH_SIZE in flight.
    per_node_rate = args.concurrency * BATCH_SIZE / (args.latency_ms / 1000)
    return {
        "leads": args.leads,
        "nodes": args.nodes,
        "latency_ms": args.latency_ms,
        "concurrency_per_node": args.concurrency,
        "shard_size": args.shard_size,
        "max_shards_per_node": args.max_shards_per_node,
        "provider_bound_one_node_s": round(args.leads / per_node_rate, 3),
        "one_node_s": one["elapsed_s"],
        key: many["elapsed_s"],
        "speedup": round(one["elapsed_s"] / many["elapsed_s"], 2),
        "one_node_emails_per_s": one["emails_per_s"],
        "many_nodes_emails_per_s": many["emails_per_s"],
        "one_node_machine_cpu_busy": one["machine_cpu_busy"],
        "many_nodes_machine_cpu_busy": many["machine_cpu_busy"],
        "cpus": os.cpu_count(),
        "duplicates": one["duplicates"] + many["duplicates"],
        "shards_by_node": many["shards_by_node"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=40_000, help="leads in the campaign (default 40000)")
    parser.add_argument("--nodes", type=int, default=2, help="nodes of the second run (default 2)")
    parser.add_argument(
        "--dsn",
        default=server_dsn(None),
        help="admin DSN of the server (default $MAILERD_TEST_DSN or the local server)",
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sink latency per call (default 50)")
    parser.add_argument("--concurrency", type=int, default=8, help="provider calls in flight per node")
    parser.add_argument("--shard-size", type=int, default=None, help="leads per shard (default leads/20)")
    parser.add_argument("--max-shards-per-node", type=int, default=4)
    parser.add_argument("--limit-s", type=float, default=600.0, help="give up on a run after this")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.leads < 1 or args.nodes < 2:
        parser.error("--leads must be at least 1 and --nodes at least 2")
    if args.shard_size is None:
        args.shard_size = max(1, args.leads // 20)
    result = run_bench(bench(args))
    if result is None:
        return 1
    if args.json:
        print_json(result)
    else:
        for name, value in result.items():
            print(f"{name:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
