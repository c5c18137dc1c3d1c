"""Benchmark the webhook endpoint (SendGrid batches of 100, signed) against naive per-event UPDATEs.

    python bench/webhooks.py [--events 100000] [--leads 200000] [--clients 64] [--dsn DSN] [--json]

Creates a fresh database ``mailerd_bench_<random>`` (``--dsn``, else ``$MAILERD_TEST_DSN``, else
the local default), migrates it, and seeds ``--leads`` leads of account 1, a campaign, one
``email_log`` row per lead (with a provider message id), and the naive ``email`` table of
bench/campaign.py (same DDL, six secondary indexes) holding the same emails. Then:

1. mailerd: starts ``python -m mailerd run`` as its own process with ``[webhooks.sendgrid]``
   verifying with the public key of a generated P-256 key (signature verification on); builds
   ``--events`` hard-bounce events (one per lead, with the ``mailerd_campaign``/``mailerd_lead``
   custom args our provider sends) as signed SendGrid Event Webhook POSTs of ``--batch`` events
   each (signed before the clock starts: signing is SendGrid's work), and posts them from
   ``--clients`` concurrent connections. A 200 means the events are committed (email_events,
   webhook_receipts, suppressions + audit, campaign_stats). Reports events/s (all events / time
   from the first POST to the last answer) and the answer time percentiles per POST.
2. naive baseline, same run, same bounces: each event is one
   ``UPDATE email SET status = 'bounced', ... WHERE provider_message_id = $1`` (through its
   index), a webhook's events in one transaction, from ``--naive-connections`` connections.

Both windows start after a ``CHECKPOINT``. Afterwards the script checks that every event was
recorded exactly once and every naive row updated. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from common import (
    ACCOUNT_ID,
    NAIVE_SCHEMA,
    BenchError,
    arguments,
    check_stopped,
    checkpoint,
    copy_leads,
    daemon_toml,
    free_port,
    fresh_database,
    loadavg,
    migrated,
    print_json,
    proc_cpu_s,
    run_bench,
    server_dsn,
    start_daemon,
    stop_daemons,
    vacuum_analyze,
    wal_bytes_since,
    wal_lsn,
)

from mailerd.db import connect as db_connect
from mailerd.emulator.sendgrid_webhooks import SendgridEmulatorSigner
from mailerd.emulator.signer import SentEmail
from mailerd.models import EventKind

NAIVE_UPDATE = """UPDATE email SET status = 'bounced', bounced_at = $2, bounce_reason = $3,
                                   updated_at = now()
                  WHERE provider_message_id = $1"""


def message_id(lead_id: int) -> str:
    return f"0100018f{lead_id:012d}-bench-message-000000"


async def seed(dsn: str, leads: int) -> tuple[int, list[tuple[int, str]], dict[str, Any]]:
    """Leads, a campaign, its email_log rows, and the naive table with the same emails."""
    started = time.perf_counter()
    async with migrated(dsn) as conn:
        await copy_leads(conn, ((f"user{n}@example.com", {"n": n}) for n in range(leads)))
        campaign_id = await conn.fetchval(
            """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject,
                                      provider, started_at, finished_at)
               VALUES ($1, 'bench', 'finished', '{"all": []}', 'news@example.com', 'Hi', 'sendgrid',
                       now(), now()) RETURNING id""",
            ACCOUNT_ID,
        )
        await conn.execute(
            "INSERT INTO campaign_stats (campaign_id, matched, sent) VALUES ($1, $2, $2)", campaign_id, leads
        )
        rows = await conn.fetch("SELECT id, email FROM leads WHERE account_id = $1 ORDER BY id", ACCOUNT_ID)
        lead_list = [(r["id"], r["email"]) for r in rows]
        now = dt.datetime.now(dt.UTC)
        await conn.copy_records_to_table(
            "email_log",
            records=((now, campaign_id, r["id"], 1, message_id(r["id"]), None) for r in rows),
            columns=("sent_at", "campaign_id", "lead_id", "status", "provider_message_id", "error"),
        )
        await conn.execute(NAIVE_SCHEMA)
        await conn.copy_records_to_table(
            "email",
            records=(
                (campaign_id, r["id"], ACCOUNT_ID, r["email"], "sent", message_id(r["id"]), now) for r in rows
            ),
            columns=(
                "campaign_id",
                "lead_id",
                "account_id",
                "email",
                "status",
                "provider_message_id",
                "sent_at",
            ),
        )
        await vacuum_analyze(conn, "leads", "email_log", "email", "campaigns", "campaign_stats")
    return campaign_id, lead_list, {"seed_s": round(time.perf_counter() - started, 2)}


def daemon_config(dsn: str, http_port: int, public_key: str, flush_interval_ms: int) -> str:
    return daemon_toml(
        dsn,
        http_port,
        "bench-webhooks",
        {
            "http": {"max_body_bytes": 4194304},
            "writer": {"flush_interval_ms": flush_interval_ms},
            "webhooks.sendgrid": {"public_key": public_key, "verify_signatures": True},
        },
    )


def build_requests(
    signer: SendgridEmulatorSigner, campaign_id: int, leads: list[tuple[int, str]], batch: int
) -> list[tuple[dict[str, str], bytes]]:
    """Signed SendGrid POSTs of ``batch`` hard bounces each, one event per lead."""
    occurred = dt.datetime.now(dt.UTC)
    requests = []
    for low in range(0, len(leads), batch):
        items = [
            signer.event(
                EventKind.HARD_BOUNCE,
                SentEmail(
                    email=email,
                    campaign_id=campaign_id,
                    lead_id=lead_id,
                    message_id=message_id(lead_id),
                    occurred_at=occurred,
                ),
            )
            for lead_id, email in leads[low : low + batch]
        ]
        requests.append(signer.signed(items))
    return requests


def percentile(sorted_values: list[float], share: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


async def post_all(
    url: str, requests: list[tuple[dict[str, str], bytes]], clients: int
) -> tuple[float, list[float]]:
    """POST every request from ``clients`` keep-alive connections; (seconds, answer times)."""
    queue: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while not queue.empty():
                headers, body = queue.get_nowait()
                sent = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    if response.status != 200:
                        raise BenchError(f"webhook answered {response.status}: {answer[:300]!r}")
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(clients):
                group.create_task(client())
        elapsed = time.perf_counter() - started
    return elapsed, latencies


async def webhook_run(
    dsn: str, campaign_id: int, leads: list[tuple[int, str]], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    signer = SendgridEmulatorSigner()
    http_port = free_port()
    config_path = workdir / "mailerd.toml"
    config_path.write_text(daemon_config(dsn, http_port, signer.public_key, args.flush_interval_ms))
    daemon = await start_daemon(config_path, workdir / "daemon.log", http_port)
    try:
        url = f"http://127.0.0.1:{http_port}/webhooks/sendgrid"
        requests = build_requests(signer, campaign_id, leads[: args.events], args.batch)
        conn = await db_connect.connect(dsn)
        try:
            await checkpoint(conn)
            wal_before = await wal_lsn(conn)
            cpu_before = proc_cpu_s(daemon.pid)
            elapsed, latencies = await post_all(url, requests, args.clients)
            cpu = proc_cpu_s(daemon.pid) - cpu_before
            wal = await wal_bytes_since(conn, wal_before)
            events = await conn.fetchval("SELECT count(*) FROM email_events")
            suppressed = await conn.fetchval("SELECT count(*) FROM suppressions")
            bounced = await conn.fetchval(
                "SELECT bounced FROM campaign_stats WHERE campaign_id = $1", campaign_id
            )
        finally:
            await conn.close()
    finally:
        codes = await stop_daemons([daemon])
    check_stopped([daemon], codes)
    total = min(args.events, len(leads))
    if not events == suppressed == bounced == total:
        raise BenchError(
            f"{total} events posted; {events} recorded, {suppressed} suppressed, {bounced} counted"
        )
    latencies.sort()
    return {
        "events": total,
        "posts": len(requests),
        "batch": args.batch,
        "clients": args.clients,
        "flush_interval_ms": args.flush_interval_ms,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(total / elapsed),
        "answer_ms_p50": round(percentile(latencies, 0.50) * 1000, 1),
        "answer_ms_p99": round(percentile(latencies, 0.99) * 1000, 1),
        "answer_ms_max": round(latencies[-1] * 1000, 1),
        "daemon_cpu_us_per_event": round(cpu / total * 1e6, 1),
        "wal_bytes_per_event_server": round(wal / total, 1),
    }


async def naive_run(dsn: str, leads: list[tuple[int, str]], args: argparse.Namespace) -> dict[str, Any]:
    """The same bounces as one UPDATE each on the naive table, a webhook's worth per transaction."""
    lead_ids = [lead_id for lead_id, _ in leads]
    total = min(args.events, len(lead_ids))
    occurred = dt.datetime.now(dt.UTC)
    reason = "550 5.1.1 The email account that you tried to reach does not exist."
    batches = [
        [(message_id(lead_id), occurred, reason) for lead_id in lead_ids[low : low + args.batch]]
        for low in range(0, total, args.batch)
    ]
    queue: asyncio.Queue[list[tuple[str, dt.datetime, str]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    latencies: list[float] = []
    connections = [await db_connect.connect(dsn) for _ in range(args.naive_connections)]
    try:
        await checkpoint(connections[0])
        wal_before = await wal_lsn(connections[0])

        async def worker(conn: asyncpg.Connection) -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                sent = time.perf_counter()
                async with conn.transaction():
                    await conn.executemany(NAIVE_UPDATE, batch)
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for conn in connections:
                group.create_task(worker(conn))
        elapsed = time.perf_counter() - started
        wal = await wal_bytes_since(connections[0], wal_before)
        updated = await connections[0].fetchval("SELECT count(*) FROM email WHERE status = 'bounced'")
    finally:
        for conn in connections:
            await conn.close()
    if updated != total:
        raise BenchError(f"{total} bounces applied, {updated} rows updated")
    latencies.sort()
    return {
        "naive_events_per_s": round(total / elapsed),
        "naive_elapsed_s": round(elapsed, 3),
        "naive_connections": args.naive_connections,
        "naive_ms_per_update": round(elapsed * args.naive_connections / total * 1000, 3),
        "naive_batch_ms_p99": round(percentile(latencies, 0.99) * 1000, 1),
        "naive_wal_bytes_per_event_server": round(wal / total, 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_dsn = server_dsn(args.dsn)
    result: dict[str, Any] = {"loadavg_before": loadavg(), "cpus": os.cpu_count()}
    async with fresh_database(admin_dsn) as dsn:
        campaign_id, leads, seeded = await seed(dsn, max(args.leads, args.events))
        result.update(seeded)
        with tempfile.TemporaryDirectory(prefix="mailerd-bench-webhooks-") as tmp:
            result.update(await webhook_run(dsn, campaign_id, leads, args, Path(tmp)))
        result["table_rows"] = len(leads)
        result.update(await naive_run(dsn, leads, args))
    result["speedup"] = round(result["events_per_s"] / result["naive_events_per_s"], 1)
    result["loadavg_after"] = loadavg()
    return result


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="bounces to post (default 100000)")
    parser.add_argument("--leads", type=int, default=200_000, help="leads / email rows (default 200000)")
    parser.add_argument("--batch", type=int, default=100, help="events per POST (default 100)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent webhook POSTs (default 64)")
    parser.add_argument(
        "--naive-connections", type=int, default=16, help="baseline database connections (default 16)"
    )
    parser.add_argument(
        "--flush-interval-ms", type=int, default=200, help="[writer] flush_interval_ms (default 200)"
    )
    args = parser.parse_args()
    result = run_bench(bench(args))
    if result is None:
        return 1
    if args.json:
        print_json(result, indent=True)
    else:
        for key, value in result.items():
            print(f"{key:36} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
