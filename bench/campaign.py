"""Benchmark a whole campaign through ``mailerd run`` and ``mailerd sink`` against the naive baseline.

    python bench/campaign.py --leads N [--dsn DSN] [--json] [--check-growth]
                             [--profile cprofile|py-spy --profile-out PATH]
                             [--provider KIND ...]

Creates a fresh database ``mailerd_bench_<random>`` on the server (``--dsn``, else
``$MAILERD_TEST_DSN``, else the local default), migrates it, seeds N leads with COPY, then:

1. end to end: starts the sink and the daemon as separate processes, creates a campaign that
   matches every lead, and times it from creation until ``campaigns.show`` says finished; reads
   the daemon's CPU time and peak RSS from ``/proc`` and the WAL written from ``pg_current_wal_lsn``;
2. naive baseline: the same rows inserted one INSERT per email, in transactions of 50, by 4
   concurrent connections, into an ``email`` table with a bigserial key and six secondary indexes;
3. mailerd's log write path: the same rows through the real :class:`mailerd.writer.Writer`.

With ``--provider`` (one or more of ses, sendgrid, mailgun, postmark, smtp), step 1 runs once per
provider kind on the same seeded leads, each through ``mailerd sink --api KIND`` (``--smtp`` for
smtp) with that provider's bulk size per call (``PROVIDER_BATCH``), and the figures are printed
side by side; steps 2 and 3 are skipped.

The database is dropped at the end, also on failure; child processes are always stopped.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import random
import re
import sys
import tempfile
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from common import (
    ACCOUNT_ID,
    NAIVE_SCHEMA,
    PROVIDER_KINDS,
    BenchError,
    Daemon,
    arguments,
    check_stopped,
    checkpoint,
    daemon_toml,
    free_port,
    fresh_database,
    loadavg,
    machine_busy,
    machine_cpu,
    migrated,
    print_json,
    proc_cpu_s,
    proc_status_kb,
    provider_section,
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
from mailerd.config import WriterConfig
from mailerd.db import connect as db_connect
from mailerd.models import LogRow, LogStatus
from mailerd.writer import Writer

SEGMENT = {"field": "attributes.first_name", "op": "exists", "value": True}
# Recipients per call for each kind: the provider's bulk size (SES SendBulkEmail 50; SendGrid and
# Mailgun 1,000; Postmark's batch 500); SMTP sends one message per recipient, 50 per batch.
PROVIDER_BATCH = {"ses": 50, "sendgrid": 1000, "mailgun": 1000, "postmark": 500, "smtp": 50}
SUPPRESS_EVERY = 1000  # one lead in this many is on the suppression list (logged, not sent)

NAIVE_TASKS = 4
NAIVE_BATCH = 50
NAIVE_INSERT = """INSERT INTO email (campaign_id, lead_id, account_id, email, status,
                                     provider_message_id, sent_at)
                  VALUES ($1, $2, $3, $4, $5, $6, $7)"""

_FIRST = [
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger",
    "Zoë", "José", "Søren", "Chloé", "Łukasz", "Anne-Marie", "Yuki", "Amir", "Priya", "Olusegun",
]  # fmt: skip
_LAST = [
    "Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie",
    "Allen", "Dijkstra", "O'Neil", "García", "Kierkegaard", "Nakamura", "Kowalski", "Okafor",
]  # fmt: skip
_COUNTRIES = ["US", "DE", "FR", "GB", "IN", "BR", "JP", "NL", "ES", "CA", "PL", "SE", "AU", "IT"]
_PLANS = ["free", "free", "free", "starter", "pro", "pro", "business", "enterprise"]
_DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk", "test.example"]
_TAGS = ["beta", "webinar", "newsletter", "churn-risk", "partner", "trial", "vip", "event-2024"]


# --- database -------------------------------------------------------------------------------


def _local(name: str) -> str:
    """A name as an address's local part holds it: lower case, accents dropped ("zoe", "jose"),
    as lists mostly write them. Not ASCII it could not go through SES (no SMTPUTF8: such a lead
    is failed on its own, 27 % of these names' addresses)."""
    folded = unicodedata.normalize("NFKD", name.lower()).encode("ascii", "ignore").decode()
    return folded.replace("'", "")


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


async def _lead_chunks(count: int, seed: int, chunk: int = 50_000) -> AsyncIterator[bytes]:
    """CSV lines ``account_id,email,attributes`` with realistic attributes, in chunks."""
    rng = random.Random(seed)
    start = dt.date(2019, 1, 1)
    for low in range(0, count, chunk):
        size = min(chunk, count - low)
        firsts = rng.choices(_FIRST, k=size)
        lasts = rng.choices(_LAST, k=size)
        countries = rng.choices(_COUNTRIES, k=size)
        plans = rng.choices(_PLANS, k=size)
        domains = rng.choices(_DOMAINS, k=size)
        tags = rng.choices(_TAGS, k=size)
        lines = []
        for i in range(size):
            number = low + i
            r = rng.random()
            attributes: dict[str, Any] = {
                "first_name": firsts[i],
                "last_name": lasts[i],
                "country": countries[i],
                "plan": plans[i],
                "score": round(r * 100, 1),
                "newsletter": r < 0.8,
                "signup_date": (start + dt.timedelta(days=number % 2000)).isoformat(),
                "tags": [tags[i]] if r < 0.3 else [],
            }
            if number % 10:
                attributes["age"] = 18 + number % 63
            email = f"{_local(firsts[i])}.{_local(lasts[i])}.{number}@{domains[i]}"
            lines.append(
                f"{ACCOUNT_ID},{_csv_field(email)},{_csv_field(orjson.dumps(attributes).decode())}\n"
            )
        yield "".join(lines).encode()
        await asyncio.sleep(0)


async def seed(dsn: str, count: int) -> dict[str, Any]:
    """Migrate, COPY ``count`` leads, suppress a few, VACUUM ANALYZE (leads are old data in
    production: their hint bits are set, so reading them writes nothing)."""
    started = time.perf_counter()
    async with migrated(dsn) as conn:
        await conn.copy_to_table(
            "leads",
            source=_lead_chunks(count, seed=7),
            columns=["account_id", "email", "attributes"],
            format="csv",
        )
        await conn.execute(
            """INSERT INTO suppressions (account_id, email, reason, source)
               SELECT account_id, lower(email), 'hard_bounce', 'bench' FROM leads
               WHERE account_id = $1 AND id % $2 = 0""",
            ACCOUNT_ID,
            SUPPRESS_EVERY,
        )
        await vacuum_analyze(conn, "leads", "suppressions")
    return {"seed_s": round(time.perf_counter() - started, 2)}


@dataclasses.dataclass(slots=True)
class WalMark:
    """A point in the WAL and the redo point of the last checkpoint, to measure a window.

    A temporary physical replication slot keeps the window's WAL on disk until
    :meth:`since` has read it with ``pg_waldump`` (a checkpoint would recycle it otherwise).
    """

    lsn: str
    redo: str
    slot: str | None

    @classmethod
    async def take(cls, conn: asyncpg.Connection, *, keep: bool = True) -> WalMark:
        slot = None
        if keep:
            slot = f"mailerd_bench_{uuid.uuid4().hex[:10]}"
            # Temporary: dropped with the session even if the bench dies.
            await conn.execute("SELECT pg_create_physical_replication_slot($1, true, true)", slot)
        row = await conn.fetchrow(
            """SELECT pg_current_wal_lsn()::text AS lsn,
                      (SELECT redo_lsn::text FROM pg_control_checkpoint()) AS redo"""
        )
        assert row is not None
        return cls(row["lsn"], row["redo"], slot)

    async def since(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """WAL written from this mark until now: ``bytes`` (server-wide, pg_current_wal_lsn),
        ``db_bytes`` (the records of this database and its transactions, from pg_waldump; None
        when pg_waldump cannot read the WAL), ``checkpointed`` (a checkpoint began meanwhile)."""
        after = await WalMark.take(conn, keep=False)
        wal = await conn.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", after.lsn, self.lsn
        )
        try:
            db_bytes = await wal_of_database(conn, self.lsn, after.lsn)
        finally:
            if self.slot is not None:
                await conn.execute("SELECT pg_drop_replication_slot($1)", self.slot)
        return {"bytes": int(wal), "db_bytes": db_bytes, "checkpointed": after.redo != self.redo}


_WALDUMP_RECORD = re.compile(rb"len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*(\d+),")
_WALDUMP_REL = re.compile(rb" rel \d+/(\d+)/")


async def wal_of_database(conn: asyncpg.Connection, start: str, end: str) -> int | None:
    """Sum the WAL records in [start, end) that belong to this database: those on its relations
    and the commit records of transactions that wrote them. Other databases of the same server
    (and server-wide records: checkpoints, running-xacts snapshots) are left out."""
    if start == end:
        return 0
    waldump = Path(await conn.fetchval("SELECT setting FROM pg_config() WHERE name = 'BINDIR'") or "")
    waldump = waldump / "pg_waldump"
    data_dir = await conn.fetchval("SHOW data_directory")
    oid = str(await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()"))
    if not waldump.exists() or not os.access(Path(data_dir) / "pg_wal", os.R_OK):
        return None
    process = await asyncio.create_subprocess_exec(
        str(waldump), "-p", str(Path(data_dir) / "pg_wal"), "-s", start, "-e", end,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    ours = oid.encode()
    xids: set[bytes] = set()
    total = 0
    async for line in process.stdout:
        record = _WALDUMP_RECORD.search(line)
        if record is None:
            continue
        length, xid = record.groups()
        rel = _WALDUMP_REL.search(line)
        if rel is not None:
            if rel.group(1) != ours:
                continue
            if xid != b"0":
                xids.add(xid)
        elif xid == b"0" or xid not in xids:
            continue
        total += int(length)
    errors = await process.stderr.read()
    if await process.wait() != 0:
        raise BenchError(f"pg_waldump failed: {errors.decode(errors='replace')}")
    return total


def wal_fields(prefix: str, wal: dict[str, Any], rows: int) -> dict[str, Any]:
    """WAL per email: this database's records when pg_waldump could read them (the server may
    be shared), else everything the server wrote in the window."""
    own = wal["db_bytes"]
    return {
        f"{prefix}wal_bytes_per_email": round((own if own is not None else wal["bytes"]) / rows, 1),
        f"{prefix}wal_bytes_per_email_server": round(wal["bytes"] / rows, 1),
        f"{prefix}wal_source": "pg_waldump" if own is not None else "lsn",
        f"{prefix}wal_checkpointed": wal["checkpointed"],
    }


# --- the daemon -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonSettings:
    concurrency: int = 24
    batch_size: int = 50
    shard_size: int = 100_000
    max_shards_per_node: int = 6
    window_size: int = 5_000
    queue_batches: int = 64
    flush_rows: int = 10_000
    flush_interval_ms: int = 200
    poll_interval_s: float = 0.25


def daemon_config(dsn: str, http_port: int, sink_port: int, s: DaemonSettings, kind: str = "ses") -> str:
    extra = {"connections": s.concurrency} if kind == "smtp" else {}
    return daemon_toml(
        dsn,
        http_port,
        "bench",
        {
            "providers.sink": provider_section(
                kind, sink_port, concurrency=s.concurrency, batch_size=s.batch_size, **extra
            ),
            "scheduler": {
                "shard_size": s.shard_size,
                "max_shards_per_node": s.max_shards_per_node,
                "window_size": s.window_size,
                "queue_batches": s.queue_batches,
                "poll_interval_s": s.poll_interval_s,
            },
            "writer": {"flush_rows": s.flush_rows, "flush_interval_ms": s.flush_interval_ms},
        },
    )


# --- 1. end to end --------------------------------------------------------------------------


async def end_to_end(
    dsn: str,
    leads: int,
    workdir: Path,
    settings: DaemonSettings,
    *,
    limit_s: float,
    profile: str | None = None,
    profile_out: str | None = None,
    kind: str = "ses",
) -> dict[str, Any]:
    """Run one campaign over every lead with the daemon and the ``kind`` emulator as separate
    processes."""
    sink, sink_port = await start_sink(workdir, kind=kind)
    daemon: Daemon | None = None
    spy: asyncio.subprocess.Process | None = None
    try:
        http_port = free_port()
        config_path = workdir / "mailerd.toml"
        config_path.write_text(daemon_config(dsn, http_port, sink_port, settings, kind))
        config = config_mod.load(config_path, env={"MAILERD_PROVIDERS__SINK__API_KEY": "bench"})
        interpreter_args: list[str] = []
        if profile == "cprofile":
            interpreter_args = ["-m", "cProfile", "-o", profile_out or str(workdir / "daemon.prof")]
        daemon = await start_daemon(
            config_path,
            workdir / "daemon.log",
            http_port,
            interpreter_args=interpreter_args,
            provider_key=True,
        )
        if profile == "py-spy":
            out = profile_out or str(workdir / "daemon.svg")
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--rate", "200",
                "--format", "raw" if out.endswith(".txt") else "flamegraph",
                "-o", out, "--pid", str(daemon.pid),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=(workdir / "py-spy.log").open("wb"),
            )  # fmt: skip

        conn = await db_connect.connect(dsn)
        try:
            await checkpoint(conn)
            wal_mark = await WalMark.take(conn)
            cpu_before = proc_cpu_s(daemon.pid)
            sink_cpu_before = proc_cpu_s(sink.pid)
            machine_before = machine_cpu()
            started = time.perf_counter()
            campaign_id = await start_campaign(
                conn,
                config,
                name="bench",
                segment=SEGMENT,
                subject="{{ lead.attributes.first_name }}, our spring release is here",
                html_body="<p>Hello {{ lead.attributes.first_name }},</p><p>It is here.</p>",
                text_body="Hello {{ lead.attributes.first_name }}, it is here.",
            )
            info = await wait_finished(conn, campaign_id, [daemon], limit_s, poll_s=0.1)
            elapsed = time.perf_counter() - started
            cpu_after = proc_cpu_s(daemon.pid)
            sink_cpu_after = proc_cpu_s(sink.pid)
            machine_after = machine_cpu()
            peak_rss_kb = proc_status_kb(daemon.pid, "VmHWM")
            wal = await wal_mark.since(conn)
            server_s = await conn.fetchval(
                "SELECT extract(epoch FROM finished_at - created_at)::float8 FROM campaigns WHERE id = $1",
                campaign_id,
            )
            logged = await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id)
        finally:
            await conn.close()
    finally:
        codes = await stop_daemons([daemon] if daemon is not None else [])
        if spy is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await spy.wait()
            await stop_process(spy, grace_s=5)
        await stop_process(sink, grace_s=10)
    assert daemon is not None
    check_stopped([daemon], codes)
    processed = info["processed"]
    if logged != processed or processed != leads or info["unknown"] or info["failed"]:
        raise BenchError(
            f"{leads} leads, {processed} processed, {logged} email_log rows, {info['failed']} failed, "
            f"{info['unknown']} unknown: mismatch\n{tail(workdir / 'daemon.log')}"
        )
    return {
        "provider": kind,
        "batch_size": settings.batch_size,
        "leads": leads,
        "campaign_id": campaign_id,
        "sent": info["sent"],
        "suppressed": info["suppressed"],
        "failed": info["failed"],
        "unknown": info["unknown"],
        "elapsed_s": round(elapsed, 3),
        "elapsed_db_s": round(server_s, 3),
        "emails_per_s": round(processed / elapsed),
        "daemon_cpu_s": round(cpu_after - cpu_before, 2),
        "daemon_cpu_us_per_email": round((cpu_after - cpu_before) * 1e6 / processed, 2),
        "daemon_cpu_share": round((cpu_after - cpu_before) / elapsed, 2),
        "daemon_peak_rss_mb": round(peak_rss_kb / 1024, 1),
        "sink_cpu_us_per_email": round((sink_cpu_after - sink_cpu_before) * 1e6 / processed, 2),
        "machine_cpu_busy": round(machine_busy(machine_before, machine_after), 2),
        **wal_fields("", wal, processed),
    }


# --- 2. naive baseline and 3. mailerd's writer, same rows ----------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SentRow:
    lead_id: int
    email: str
    status: int
    message_id: str | None


async def logged_rows(dsn: str, campaign_id: int) -> list[SentRow]:
    """The rows the campaign logged, with the lead's address: the input of both write paths."""
    conn = await db_connect.connect(dsn)
    try:
        records = await conn.fetch(
            """SELECT e.lead_id, l.email, e.status, e.provider_message_id
               FROM email_log e JOIN leads l ON l.id = e.lead_id
               WHERE e.campaign_id = $1 ORDER BY e.lead_id""",
            campaign_id,
        )
    finally:
        await conn.close()
    return [SentRow(r[0], r[1], r[2], r[3]) for r in records]


async def naive_baseline(dsn: str, rows: Sequence[SentRow], campaign_id: int) -> dict[str, Any]:
    """The seed system's write path: one INSERT per email, 50 per transaction, 4 connections."""
    status_text = {int(s): s.name.lower() for s in LogStatus}
    now = dt.datetime.now(dt.UTC)
    values = [
        (campaign_id, r.lead_id, ACCOUNT_ID, r.email, status_text[r.status], r.message_id, now) for r in rows
    ]
    batches = [values[i : i + NAIVE_BATCH] for i in range(0, len(values), NAIVE_BATCH)]
    admin = await db_connect.connect(dsn)
    connections: list[asyncpg.Connection] = []
    try:
        await admin.execute(NAIVE_SCHEMA)
        connections = [await db_connect.connect(dsn) for _ in range(NAIVE_TASKS)]
        for conn in connections:
            await conn.execute("SELECT 1")
        await checkpoint(admin)
        mark = await WalMark.take(admin)
        cursor = iter(batches)

        async def task(conn: asyncpg.Connection) -> None:
            for batch in cursor:
                async with conn.transaction():
                    await conn.executemany(NAIVE_INSERT, batch)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for conn in connections:
                group.create_task(task(conn))
        elapsed = time.perf_counter() - started
        wal = await mark.since(admin)
        stored = await admin.fetchval("SELECT count(*) FROM email")
        size = await admin.fetchval("SELECT pg_total_relation_size('email')")
    finally:
        for conn in connections:
            await conn.close()
        await admin.close()
    assert stored == len(rows)
    return {
        "naive_rows": len(rows),
        "naive_s": round(elapsed, 3),
        "naive_rows_per_s": round(len(rows) / elapsed),
        **wal_fields("naive_", wal, len(rows)),
        "naive_table_mb": round(size / 1e6, 1),
    }


async def writer_path(dsn: str, rows: Sequence[SentRow]) -> dict[str, Any]:
    """The same rows through mailerd's real Writer (COPY into email_log + campaign_stats)."""
    admin = await db_connect.connect(dsn)
    pool = await db_connect.create_pool(dsn, min_size=2, max_size=4)
    try:
        campaign_id = await admin.fetchval(
            """INSERT INTO campaigns (account_id, name, status, segment, from_address, subject, provider)
               VALUES ($1, 'writer bench', 'finished', '{}'::jsonb, 'news@example.com', 's', 'sink')
               RETURNING id""",
            ACCOUNT_ID,
        )
        await admin.execute("INSERT INTO campaign_stats (campaign_id) VALUES ($1)", campaign_id)
        now = dt.datetime.now(dt.UTC)
        log_rows: list[LogRow] = [
            (now, campaign_id, r.lead_id, r.status, r.message_id, None if r.message_id else "suppressed")
            for r in rows
        ]
        batches = [log_rows[i : i + NAIVE_BATCH] for i in range(0, len(log_rows), NAIVE_BATCH)]
        writer = Writer(pool, WriterConfig(flush_rows=10_000, flush_interval_ms=200, max_buffer_rows=50_000))
        await checkpoint(admin)
        mark = await WalMark.take(admin)
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            run = group.create_task(writer.run())
            futures = [await writer.submit(None, seq, batch) for seq, batch in enumerate(batches)]
            await asyncio.gather(*futures)
            elapsed = time.perf_counter() - started
            writer.close()
            await run
        wal = await mark.since(admin)
        stored = await admin.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id)
        counted = await admin.fetchval(
            "SELECT sent + suppressed FROM campaign_stats WHERE campaign_id = $1", campaign_id
        )
    finally:
        await pool.close()
        await admin.close()
    assert stored == counted == len(rows), (stored, counted, len(rows))
    return {
        "writer_rows": len(rows),
        "writer_s": round(elapsed, 3),
        "writer_rows_per_s": round(len(rows) / elapsed),
        **wal_fields("writer_", wal, len(rows)),
    }


# --- the whole run ---------------------------------------------------------------------------


async def server_settings(admin_dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        names = ["fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers",
                 "max_wal_size", "autovacuum", "server_version"]  # fmt: skip
        return {n: await conn.fetchval(f"SHOW {n}") for n in names}
    finally:
        await conn.close()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_dsn = server_dsn(args.dsn)
    settings = DaemonSettings(
        concurrency=args.concurrency,
        shard_size=args.shard_size,
        max_shards_per_node=args.max_shards,
    )
    result: dict[str, Any] = {
        "leads": args.leads,
        "nproc": os.cpu_count(),
        "loadavg_before": loadavg(),
        "settings": dataclasses.asdict(settings),
        "postgres": await server_settings(admin_dsn),
    }
    if args.provider:
        return await compare_providers(args, admin_dsn, settings, result)
    with tempfile.TemporaryDirectory(prefix="mailerd-bench-") as tmp:
        workdir = Path(tmp)
        if args.check_growth:
            # Every shard slot busy in both runs: the RSS difference then shows growth with N,
            # not the number of shards in flight (max_shards x window_size leads are in memory).
            small = max(settings.shard_size * settings.max_shards_per_node, args.leads // 4)
            if small >= args.leads:
                small = max(1_000, args.leads // 4)
            async with fresh_database(admin_dsn) as dsn:
                await seed(dsn, small)
                growth = await end_to_end(dsn, small, workdir, settings, limit_s=args.timeout)
            result["growth"] = {
                "leads": [small, args.leads],
                "daemon_peak_rss_mb": [growth["daemon_peak_rss_mb"]],
                "emails_per_s": [growth["emails_per_s"]],
            }
        async with fresh_database(admin_dsn) as dsn:
            result.update(await seed(dsn, args.leads))
            e2e = await end_to_end(
                dsn,
                args.leads,
                workdir,
                settings,
                limit_s=args.timeout,
                profile=args.profile,
                profile_out=args.profile_out,
            )
            result.update(e2e)
            if not args.skip_baseline:
                rows = await logged_rows(dsn, e2e["campaign_id"])
                result.update(await naive_baseline(dsn, rows, e2e["campaign_id"]))
                result.update(await writer_path(dsn, rows))
                del rows
                result["write_speedup"] = round(result["writer_rows_per_s"] / result["naive_rows_per_s"], 2)
                result["wal_ratio"] = round(
                    result["wal_bytes_per_email"] / result["naive_wal_bytes_per_email"], 3
                )
    if "growth" in result:
        result["growth"]["daemon_peak_rss_mb"].append(result["daemon_peak_rss_mb"])
        result["growth"]["emails_per_s"].append(result["emails_per_s"])
    result["loadavg_after"] = loadavg()
    result["targets"] = targets(result)
    return result


async def compare_providers(
    args: argparse.Namespace, admin_dsn: str, settings: DaemonSettings, result: dict[str, Any]
) -> dict[str, Any]:
    """Step 1 once per provider kind, on the same leads, one after another (module docstring)."""
    result["providers"] = {}
    async with fresh_database(admin_dsn) as dsn:
        result.update(await seed(dsn, args.leads))
        for kind in args.provider:
            kind_settings = dataclasses.replace(settings, batch_size=args.batch_size or PROVIDER_BATCH[kind])
            with tempfile.TemporaryDirectory(prefix=f"mailerd-bench-{kind}-") as tmp:
                figures = await end_to_end(
                    dsn, args.leads, Path(tmp), kind_settings, limit_s=args.timeout, kind=kind
                )
            result["providers"][kind] = figures
            if not args.json:
                cpu = figures["daemon_cpu_us_per_email"]
                print(f"{kind}: {figures['emails_per_s']:,} emails/s, {cpu} µs CPU/email", flush=True)
    result["loadavg_after"] = loadavg()
    return result


def print_providers(r: dict[str, Any]) -> None:
    kinds = list(r["providers"])
    rows = [
        ("batch size (recipients per call)", "batch_size", "{:,}"),
        ("elapsed", "elapsed_s", "{:.1f} s"),
        ("emails/s", "emails_per_s", "{:,}"),
        ("daemon CPU per email", "daemon_cpu_us_per_email", "{:.1f} µs"),
        ("daemon CPU share", "daemon_cpu_share", "{:.2f} cores"),
        ("daemon peak RSS", "daemon_peak_rss_mb", "{:.0f} MB"),
        ("emulator CPU per email", "sink_cpu_us_per_email", "{:.1f} µs"),
        ("machine CPU busy", "machine_cpu_busy", "{:.0%}"),
        ("WAL per email", "wal_bytes_per_email", "{:.0f} B"),
    ]
    print(f"campaign of {r['leads']:,} leads per provider on {r['nproc']} CPUs "
          f"(load {r['loadavg_before']} before, {r['loadavg_after']} after)")  # fmt: skip
    print(f"  {'':<34}" + "".join(f"{kind:>12}" for kind in kinds))
    for label, key, fmt in rows:
        print(f"  {label:<34}" + "".join(f"{fmt.format(r['providers'][k][key]):>12}" for k in kinds))


def targets(r: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets (stated for N = 1,000,000 on a 2-core machine)."""
    met = {
        "emails_per_s >= 50000": r["emails_per_s"] >= 50_000,
        "daemon_cpu_us_per_email <= 20": r["daemon_cpu_us_per_email"] <= 20,
        "daemon_peak_rss_mb <= 300": r["daemon_peak_rss_mb"] <= 300,
        "wal_bytes_per_email <= 300": r["wal_bytes_per_email"] <= 300,
    }
    if "wal_ratio" in r:
        met["wal_ratio <= 1/3"] = r["wal_ratio"] <= 1 / 3
        met["write_speedup >= 4"] = r["write_speedup"] >= 4
    if "growth" in r:
        small, large = r["growth"]["daemon_peak_rss_mb"]
        met["peak RSS not growing with N (<= +20%)"] = large <= small * 1.2
    return met


def _wal_note(r: dict[str, Any], prefix: str) -> str:
    note = f"{r[prefix + 'wal_source']}; whole server {r[prefix + 'wal_bytes_per_email_server']:.0f} B"
    if r[prefix + "wal_checkpointed"]:
        note += "; a checkpoint began in the window"
    return f"({note})"


def print_table(r: dict[str, Any]) -> None:
    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<34}{value:>14}  {note}")

    print(f"campaign of {r['leads']:,} leads on {r['nproc']} CPUs (load {r['loadavg_before']} before, "
          f"{r['loadavg_after']} after), Postgres {r['postgres']['server_version']}")  # fmt: skip
    print("end to end (mailerd run + mailerd sink, separate processes)")
    line("elapsed", f"{r['elapsed_s']:.2f} s", f"(server-side {r['elapsed_db_s']:.2f} s)")
    line("emails/s", f"{r['emails_per_s']:,}", f"sent {r['sent']:,}, suppressed {r['suppressed']:,}")
    line("daemon CPU per email", f"{r['daemon_cpu_us_per_email']:.1f} µs",
         f"({r['daemon_cpu_s']:.1f} s, {r['daemon_cpu_share']:.2f} cores)")  # fmt: skip
    line("daemon peak RSS", f"{r['daemon_peak_rss_mb']:.0f} MB")
    line("sink CPU per email", f"{r['sink_cpu_us_per_email']:.1f} µs")
    line("machine CPU busy", f"{r['machine_cpu_busy']:.0%}")
    line("WAL per email", f"{r['wal_bytes_per_email']:.0f} B", _wal_note(r, ""))
    if "growth" in r:
        g = r["growth"]
        line("peak RSS at " + " / ".join(f"{n:,}" for n in g["leads"]),
             " / ".join(f"{m:.0f}" for m in g["daemon_peak_rss_mb"]) + " MB")  # fmt: skip
    if "naive_rows_per_s" in r:
        print("log write path, same rows")
        line("naive rows/s", f"{r['naive_rows_per_s']:,}", f"({r['naive_s']:.1f} s)")
        line("mailerd writer rows/s", f"{r['writer_rows_per_s']:,}", f"({r['writer_s']:.1f} s)")
        line("write speedup", f"{r['write_speedup']:.1f}x")
        line("naive WAL per email", f"{r['naive_wal_bytes_per_email']:.0f} B", _wal_note(r, "naive_"))
        line("writer WAL per email", f"{r['writer_wal_bytes_per_email']:.0f} B", _wal_note(r, "writer_"))
        line("WAL ratio (end to end / naive)", f"{r['wal_ratio']:.3f}")
    print("targets")
    for name, ok in r["targets"].items():
        print(f"  {'ok  ' if ok else 'MISS'} {name}")


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument(
        "--check-growth", action="store_true", help="also run a smaller campaign to compare RSS"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="end to end only")
    defaults = DaemonSettings()
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size)
    parser.add_argument("--max-shards", type=int, default=defaults.max_shards_per_node)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a campaign may take")
    parser.add_argument(
        "--provider",
        nargs="+",
        choices=PROVIDER_KINDS,
        default=None,
        help="run the campaign once per provider kind, side by side (end to end only)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="with --provider: recipients per call for all"
    )
    parser.add_argument(
        "--profile",
        choices=["cprofile", "py-spy"],
        default=None,
        help="profile the daemon (it runs slower: the figures are not representative)",
    )
    parser.add_argument("--profile-out", default=None, metavar="PATH", help="where the profile goes")
    args = parser.parse_args()
    if args.profile and not args.profile_out:
        parser.error("--profile needs --profile-out (the work directory is deleted at the end)")
    result = run_bench(bench(args))
    if result is None:
        return 1
    if args.json:
        print_json(result)
    elif args.provider:
        print_providers(result)
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
