"""One relay per cluster: the node holding the relay lock runs every destination's stream.

Every node with destinations configured runs :meth:`Relay.run`. It tries a session-level
``pg_try_advisory_lock`` on a dedicated connection (not a pooled one: the lock lives as long as
that session), every ``[relay] lock_retry_s``. The winner raises every destination's epoch (a
node that led before is fenced out of the positions), opens a small pool of its own and runs one
:class:`~mailerd.relay.stream.Stream` per destination. When that node dies its session ends, the
lock is free, and another node takes over within about ``lock_retry_s``. A leader whose lock
connection closes (or stops answering) stops its streams at once.

Nothing here can stop sending: the relay has its own connections, a failing destination only
holds back its own position, and an unexpected error in a stream is logged and the stream
restarted after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncpg
import structlog

from mailerd import aio, backoff, db, drain, erasure, metrics
from mailerd.config import Config
from mailerd.db import connect
from mailerd.db import relay as relay_db
from mailerd.relay import outbox
from mailerd.relay import position as position_mod
from mailerd.relay.destination import Destination, HoldsPools
from mailerd.relay.stream import LeaseLost, Stream
from mailerd.relay.summaries import Summaries, tables_of

log = structlog.get_logger(__name__)

RELAY_LOCK_KEY = 0x6D61696C72656C  # "mailrel": one relay per database
LOCK_COMMAND_TIMEOUT_S = 15.0
KEEPALIVE_S = 2.0
LAG_SAMPLE_S = 10.0
LAG_CAP = 1_000_000
CLOSE_S = 2.0  # each destination's close at the end of a lead (then dropped): the lock waits for it
# The lock connection's TCP settings on the server's side. A node that vanishes without closing
# its socket (power loss, a kernel panic, a partition) left the server's session, and the lock,
# to the kernel's keepalive: two hours and more, without a relay. The server now probes an idle
# lock connection after 5 s, every 2 s, and drops it after 3 unanswered probes (or once data it
# sent is unacknowledged for 10 s): another node takes over about 11 s after such a death.
LOCK_TCP_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


class Relay:
    """Runs the relay on this node whenever it holds the relay lock, until ``stop``."""

    def __init__(
        self,
        *,
        config: Config,
        dsn: str,
        stop: asyncio.Event,
        destinations: Callable[[], list[Destination]],
        node: str,
    ) -> None:
        self._config = config
        self._dsn = dsn
        self._stop = stop
        self._destinations = destinations
        self.node = node
        self.leading = False
        self._pool: asyncpg.Pool | None = None
        self._leading: list[Destination] = []  # the destinations of the lead under way

    def pools(self) -> list[asyncpg.Pool]:
        """The pools of the lead under way (none when not leading): the relay's and its
        destinations' (the reports loader's), for the drain deadline to cut off."""
        own = [self._pool] if self._pool is not None else []
        return own + [pool for d in self._leading if isinstance(d, HoldsPools) for pool in d.pools()]

    async def run(self) -> None:
        retry = self._config.relay.lock_retry_s
        while not self._stop.is_set():
            try:
                # In a task of its own: on Python 3.11 a child of the lead's TaskGroup failing
                # after the group's body leaves the running task's cancelling() raised for good,
                # and this loop then took its next failure for a cancellation and ended. Awaited,
                # the task is cancelled with this one.
                await asyncio.ensure_future(self._try_lead())
            except db.DB_ERRORS_OR_TIMEOUT as exc:
                aio.raise_if_cancelling()
                log.warning("relay_lock_failed", error=str(exc) or type(exc).__name__)
            except Exception as exc:  # the relay must never end the daemon: log, retry
                aio.raise_if_cancelling()
                log.error("relay_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            await aio.sleep_unless(retry, self._stop)

    async def _try_lead(self) -> None:
        conn = await connect.connect(
            self._dsn, command_timeout=LOCK_COMMAND_TIMEOUT_S, server_settings=LOCK_TCP_SETTINGS
        )
        try:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                await self._lead(conn)
        finally:
            with contextlib.suppress(Exception):  # a lost connection may fail to close: it is gone
                await conn.close(timeout=2)

    async def _lead(self, conn: asyncpg.Connection) -> None:
        destinations = self._destinations()
        self._leading = destinations
        names = [d.name for d in destinations]
        halt = asyncio.Event()
        # Per destination: one read ahead (on up to read_connections) while a batch is delivered,
        # one commit; plus the lag sampler and the BRIN summaries.
        per_destination = self._config.relay.read_connections + 1
        # The command timeout as the daemon's pools: a query on a server that stopped answering
        # (a partition) waited forever, and the stop with it.
        pool = await connect.create_pool(
            self._dsn,
            min_size=1,
            max_size=per_destination * len(destinations) + 2,
            command_timeout=self._config.database.command_timeout_s,
        )
        self._pool = pool
        self.leading = True
        metrics.RELAY_LEADER.set(1)
        try:
            start = position_mod.earliest()
            if self._config.relay.start == "latest":
                start, _ = await outbox.snapshot(conn)
            taken = await relay_db.take_positions(conn, names, start, self.node)
            log.info("relay_started", node=self.node, destinations=names)
            summaries = Summaries(pool, tables_of({kind for d in destinations for kind in d.kinds}))
            streams = [
                Stream(
                    d,
                    pool,
                    self._config.relay,
                    epoch=taken[d.name].epoch,
                    position=outbox.position_of(taken[d.name]),
                    as_of=taken[d.name].as_of,
                    stop=halt,
                    erased_pads=erasure.configured_pads(self._config.privacy),
                    summaries=summaries,
                )
                for d in destinations
            ]
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch(conn, halt), name="relay-watch")
                group.create_task(_sample_lag(pool, streams, halt), name="relay-lag")
                group.create_task(summaries.run(halt), name="relay-brin")
                for stream in streams:
                    group.create_task(_supervise(stream, halt), name=f"relay-{stream.name}")
        finally:
            self.leading = False
            metrics.RELAY_LEADER.set(0)
            _drop_gauges(names)
            # At once, not in turn: one CLOSE_S for all, within the drain deadline's
            # EXIT_AFTER_DEADLINE_S (three destinations closing in turn took 6 s of it).
            await asyncio.gather(*(_close(destination) for destination in destinations))
            await drain.close_pool(pool, "relay")
            self._pool = None
            self._leading = []
            log.info("relay_stopped", node=self.node)

    async def _watch(self, conn: asyncpg.Connection, halt: asyncio.Event) -> None:
        """Set ``halt`` on stop, or as soon as the lock connection is gone."""
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        while not halt.is_set():
            if self._stop.is_set():
                break
            if closed.is_set():
                log.error("relay_lock_lost", node=self.node)
                break
            try:
                async with asyncio.timeout(KEEPALIVE_S * 2):
                    await conn.fetchval("SELECT 1")
            except db.DB_ERRORS_OR_TIMEOUT as exc:
                aio.raise_if_cancelling()  # cancelled, not lost
                log.error("relay_lock_lost", node=self.node, error=str(exc) or type(exc).__name__)
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KEEPALIVE_S):
                    await aio.first_completed(self._stop.wait(), closed.wait(), halt.wait())
        halt.set()


def _drop_gauges(names: list[str]) -> None:
    """A node that no longer leads exports no lag for the destinations: its last values (a lag
    of hours if a destination was down when the lead moved) stayed, frozen, and ``max`` over the
    nodes (docs/metrics.md) alerted on them for as long as this node ran."""
    for gauge in (metrics.RELAY_LAG_SECONDS, metrics.RELAY_POSITION_AGE, metrics.RELAY_LAG_RECORDS):
        for name in names:
            with contextlib.suppress(KeyError):  # never set: a lead that ended at once
                gauge.remove(name)


async def _supervise(stream: Stream, halt: asyncio.Event) -> None:
    """Run one stream until ``halt``; a failure of it is logged and it starts again."""
    failures = 0
    while not halt.is_set():
        try:
            await stream.run()
        except LeaseLost as exc:
            log.error("relay_fenced_out", destination=stream.name, error=str(exc))
            halt.set()
            return
        except Exception as exc:  # a bug or a database outage must never reach the sending side
            aio.raise_if_cancelling()  # asyncpg turned a cancellation into another error
            wait = backoff.delay(min(failures, 6), base=0.5, cap=30.0)
            failures += 1
            log.warning(
                "relay_stream_failed",
                destination=stream.name,
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=round(wait, 2),
                exc_info=not isinstance(exc, db.DB_ERRORS_OR_TIMEOUT),
            )
            await aio.sleep_unless(wait, halt)
        else:
            return


async def _sample_lag(pool: asyncpg.Pool, streams: list[Stream], halt: asyncio.Event) -> None:
    """``mailerd_relay_lag_records``: the due rows of each destination, counted now and then
    (and each stream's lag in seconds and position age refreshed)."""
    while not halt.is_set():
        started = time.monotonic()
        for stream in streams:
            stream.gauges()  # a delivery under way for long (a frozen broker) sets them nowhere else
        try:
            async with pool.acquire() as conn:
                for stream in streams:
                    lag = await count_lag(conn, stream.destination.kinds, stream.position)
                    metrics.RELAY_LAG_RECORDS.labels(stream.name).set(lag)
        except Exception as exc:  # a lag sample is informational: never stop the relay for it
            aio.raise_if_cancelling()
            log.warning("relay_lag_unknown", error=f"{type(exc).__name__}: {exc}")
        await aio.sleep_unless(max(LAG_SAMPLE_S, 10 * (time.monotonic() - started)), halt)


async def count_lag(conn: asyncpg.Connection, kinds: frozenset[str], position: position_mod.Snapshot) -> int:
    """Committed rows of ``kinds`` that ``position`` has not passed (counted up to LAG_CAP each)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await relay_db.plan_reads_by_tx(conn)
        snapshot, _ = await outbox.snapshot(conn)
        total = 0
        for kind in kinds:
            table = relay_db.TABLES.get(kind)
            if table is not None:
                total += await relay_db.count_due(conn, table, position, snapshot, LAG_CAP)
    return total


async def _close(destination: Destination) -> None:
    """Close one destination within :data:`CLOSE_S` (a frozen broker held the close, a
    producer's flush, for its request timeout, and the lock with it, so no other relay took
    over); a failing close is logged, and the others still close."""
    try:
        async with asyncio.timeout(CLOSE_S):
            await destination.close()
    except Exception as exc:
        log.warning("relay_destination_close_failed", destination=destination.name, error=str(exc))
