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
import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson

from mailerd import campaigns
from mailerd import config as config_mod
from mailerd.db import connect as db_connect
from mailerd.db import migrate

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ACCOUNT_ID = 1
SEGMENT = {"field": "attributes.n", "op": "exists", "value": True}
BATCH_SIZE = 50


class BenchError(Exception):
    """The benchmark could not complete (a child died, a check failed, a timeout passed)."""


# --- database -------------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new empty database for the block; dropped afterwards whatever happens."""
    name = f"mailerd_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(admin_dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def seed(dsn: str, count: int) -> None:
    """Migrate and COPY ``count`` leads of one account."""
    conn = await db_connect.connect(dsn)
    try:
        await migrate.migrate(conn)
        await conn.copy_records_to_table(
            "leads",
            records=[
                (ACCOUNT_ID, f"lead{n}@example.com", {"n": n, "first_name": "Ada"}) for n in range(count)
            ],
            columns=("account_id", "email", "attributes"),
        )
        await conn.execute("VACUUM ANALYZE leads")
    finally:
        await conn.close()


# --- processes ------------------------------------------------------------------------------


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """The children read only their config file: no MAILERD_* override leaks in."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("MAILERD_")}


async def stop_process(process: asyncio.subprocess.Process, grace_s: float = 60.0) -> int | None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns the exit code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return process.returncode


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def start_sink(
    workdir: Path, latency_ms: float, record: Path
) -> tuple[asyncio.subprocess.Process, int]:
    """``mailerd sink --listen 127.0.0.1:0``; the bound port is read from its first line."""
    log_path = workdir / "sink.log"
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailerd", "sink", "--listen", "127.0.0.1:0",
            "--latency-ms", str(latency_ms), "--record", str(record), "--seed", "1",
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=child_env(),
        )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
    except TimeoutError:
        await stop_process(process)
        raise BenchError(f"the sink did not report its port:\n{tail(log_path)}") from None
    if not line.startswith("sink listening on "):
        await stop_process(process)
        raise BenchError(f"unexpected sink output {line!r}:\n{tail(log_path)}")
    return process, int(line.rsplit(":", 1)[1])


def daemon_toml(dsn: str, node: str, http_port: int, sink_port: int, args: argparse.Namespace) -> str:
    return f"""\
[database]
dsn = "{dsn}"

[http]
listen = "127.0.0.1:{http_port}"

[providers.sink]
kind = "sink"
endpoint = "http://127.0.0.1:{sink_port}"
concurrency = {args.concurrency}
batch_size = {BATCH_SIZE}

[scheduler]
shard_size = {args.shard_size}
max_shards_per_node = {args.max_shards_per_node}
window_size = {min(5000, args.shard_size)}
poll_interval_s = 0.25

[writer]
flush_interval_ms = 100

[logging]
level = "info"
format = "json"

[node]
name = "{node}"
"""


async def wait_healthy(port: int, process: asyncio.subprocess.Process, log_path: Path) -> None:
    """Poll /healthz until it answers 200 (the daemon checked migrations and bound HTTP)."""
    url = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            if process.returncode is not None:
                raise BenchError(f"the daemon exited with {process.returncode}:\n{tail(log_path)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def daemons(
    dsn: str, count: int, sink_port: int, workdir: Path, args: argparse.Namespace
) -> AsyncIterator[tuple[config_mod.Config, list[tuple[asyncio.subprocess.Process, Path]]]]:
    """``count`` healthy ``mailerd run`` processes; on exit each gets SIGTERM and must exit 0."""
    started: list[tuple[asyncio.subprocess.Process, Path]] = []
    config: config_mod.Config | None = None
    ok = False
    try:
        for index in range(1, count + 1):
            node = f"node-{index}"
            port = free_port()
            config_path = workdir / f"{node}.toml"
            config_path.write_text(daemon_toml(dsn, node, port, sink_port, args), encoding="utf-8")
            config = config_mod.load(config_path, env={})
            log_path = workdir / f"{node}.log"
            with log_path.open("wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mailerd", "run", "--config", str(config_path),
                    stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=child_env(),
                )  # fmt: skip
            started.append((process, log_path))
            await wait_healthy(port, process, log_path)
        assert config is not None
        yield config, started
        ok = True
    finally:
        codes = await asyncio.gather(*(stop_process(p) for p, _ in started))
        if ok:
            for code, (_, log_path) in zip(codes, started, strict=True):
                if code != 0:
                    raise BenchError(f"a daemon exited with {code} after SIGTERM:\n{tail(log_path)}")


# --- one run --------------------------------------------------------------------------------


async def wait_finished(
    conn: asyncpg.Connection,
    campaign_id: int,
    nodes: list[tuple[asyncio.subprocess.Process, Path]],
    limit_s: float,
) -> dict[str, Any]:
    """Poll ``campaigns.show`` every 20 ms until the campaign is finished."""
    try:
        async with asyncio.timeout(limit_s):
            while True:
                info = await campaigns.show(conn, campaign_id)
                assert info is not None
                if info["status"] == "finished":
                    return info
                if info["status"] in ("cancelled", "failed", "paused"):
                    raise BenchError(f"campaign {info['status']}: {info['reason']}")
                for process, log_path in nodes:
                    if process.returncode is not None:
                        raise BenchError(f"a daemon exited with {process.returncode}:\n{tail(log_path)}")
                await asyncio.sleep(0.02)
    except TimeoutError:
        info = await campaigns.show(conn, campaign_id) or {}
        raise BenchError(
            f"campaign not finished after {limit_s:.0f} s ({info.get('processed')} processed)"
        ) from None


async def run_campaign(dsn: str, count: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Send one campaign over every lead with ``count`` nodes; time it and check the record."""
    record = workdir / f"record-{count}.jsonl"
    sink, sink_port = await start_sink(workdir, args.latency_ms, record)
    try:
        async with daemons(dsn, count, sink_port, workdir, args) as (config, nodes):
            conn = await db_connect.connect(dsn)
            try:
                cpu_before = machine_cpu()
                started = time.perf_counter()
                campaign_id = await campaigns.create(
                    conn,
                    campaigns.NewCampaign(
                        account_id=ACCOUNT_ID,
                        name=f"bench {count} node(s)",
                        segment=SEGMENT,
                        subject="{{ lead.attributes.first_name }}, hello",
                        html_body="<p>Hello {{ lead.attributes.first_name }}</p>",
                        text_body="Hello {{ lead.attributes.first_name }}",
                        from_address="news@example.com",
                        provider="sink",
                        start=True,
                    ),
                    config,
                )
                info = await wait_finished(conn, campaign_id, nodes, args.limit_s)
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
    shards_by_node = {log_path.stem: shards_done(log_path, campaign_id) for _, log_path in nodes}
    if info["sent"] != args.leads or len(accepted) != args.leads:
        raise BenchError(f"{args.leads} leads: {info['sent']} sent, {len(accepted)} accepted by the sink")
    if logged is None or logged["rows"] != args.leads or logged["leads"] != args.leads:
        raise BenchError(f"{args.leads} leads but email_log holds {dict(logged or {})}")
    return {
        "elapsed_s": round(elapsed, 3),
        "emails_per_s": round(args.leads / elapsed),
        # With every process on one machine, a busy machine (near 1.0) caps the speedup, not
        # the provider.
        "machine_cpu_busy": round((cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1]), 2),
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
        default=os.environ.get("MAILERD_TEST_DSN", DEFAULT_DSN),
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
    try:
        result = asyncio.run(bench(args))
    except BenchError as exc:
        print(f"bench/nodes.py: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for name, value in result.items():
            print(f"{name:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
