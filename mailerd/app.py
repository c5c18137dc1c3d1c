"""The composition root: open the resources, run the stages in one TaskGroup, drain on stop.

Shutdown flows downstream: the scheduler stops claiming and stops its shards (queued batches are
discarded, in-flight ones finish), waits for their rows to commit, releases its claims and closes
the provider queues; the senders then return; the writer flushes last. HTTP stays up meanwhile
(``/readyz`` answers 503). ``[node] shutdown_grace_s`` is the only deadline: past it the drain
is cancelled, which is still safe (unlogged in-flight leads are logged ``unknown`` on the next
claim).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import structlog

from mailerd import campaigns, http, providers
from mailerd.config import Config
from mailerd.db import connect, migrate, partitions
from mailerd.scheduler import ProviderLane, Scheduler
from mailerd.sender import ProviderSender
from mailerd.writer import Writer

log = structlog.get_logger(__name__)

PARTITION_MAINTENANCE_S = 3600.0


async def run(config: Config, stop: asyncio.Event) -> int:
    """``mailerd run``: resolve the database (embedded or not) and run until ``stop``."""
    async with connect.resolved_dsn(config.database) as dsn:
        return await run_with_dsn(config, dsn, stop)


async def run_with_dsn(
    config: Config,
    dsn: str,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Run the daemon against ``dsn`` until ``stop`` is set and the drain is over.

    ``on_ready(port)`` is called once migrations are checked and the HTTP port is bound.
    """
    pool = await connect.create_pool(
        dsn,
        min_size=config.database.pool_min_size,
        max_size=config.database.pool_max_size,
        command_timeout=config.database.command_timeout_s,
    )
    lanes: dict[str, ProviderLane] = {}
    runner = None
    try:
        async with pool.acquire() as conn:
            if not await _schema_ready(conn, auto_migrate=config.database.is_embedded):
                return 1
            for action in await partitions.maintain(
                conn,
                ahead_days=config.retention.partitions_ahead_days,
                retention_days=config.retention.days,
            ):
                log.info("partition_maintained", action=str(action))
        for name, provider_config in config.providers.items():
            provider = providers.create(provider_config)
            batch_size = min(provider_config.batch_size, provider.max_batch_size)
            lanes[name] = ProviderLane(
                name=name,
                provider=provider,
                queue=asyncio.Queue(maxsize=config.scheduler.queue_batches),
                batch_size=batch_size,
                workers=provider_config.concurrency,
                reservation_step=config.scheduler.reservation_step
                or provider_config.concurrency * batch_size,
            )
        writer = Writer(pool, config.writer)
        scheduler = Scheduler(config=config, dsn=dsn, pool=pool, lanes=lanes, writer=writer, stop=stop)

        async def on_halt(campaign_id: int, reason: str) -> None:
            await _pause_campaign(pool, campaign_id, reason)
            scheduler.stop_campaign(campaign_id, f"provider halted: {reason}")

        senders = [ProviderSender(lanes[name], config.provider(name), writer, on_halt) for name in lanes]
        health = http.Health()
        host, port = config.http.host_port
        runner = await http.start(http.build_app(http.Services(pool, config, health)), host, port)
        health.started = True
        bound = http.bound_port(runner)
        log.info("daemon_started", listen=f"{host}:{bound}", providers=sorted(lanes), node=scheduler.node)
        if on_ready is not None:
            on_ready(bound)

        main = asyncio.current_task()
        async with asyncio.TaskGroup() as group:
            writer_task = group.create_task(writer.run(), name="writer")
            sender_tasks = [group.create_task(s.run(), name=f"sender-{s.lane.name}") for s in senders]
            group.create_task(_partition_loop(pool, config, stop), name="partitions")
            watchdog = group.create_task(_drain_deadline(stop, health, config, main), name="drain-deadline")
            group.create_task(_health_loop(health, writer, stop), name="health")
            await scheduler.run()
            await asyncio.gather(*sender_tasks)
            writer.close()
            await writer_task
            watchdog.cancel()
        log.info("daemon_stopped")
        return 0
    finally:
        for lane in lanes.values():
            with contextlib.suppress(Exception):
                await lane.provider.close()
        if runner is not None:
            await runner.cleanup()
        await pool.close()


async def _schema_ready(conn: asyncpg.Connection, *, auto_migrate: bool) -> bool:
    pending = await migrate.pending(conn)
    if not pending:
        return True
    if auto_migrate:
        await migrate.migrate(conn)
        return True
    log.error(
        "migrations_pending",
        pending=[f"{m.version:04d}_{m.name}" for m in pending],
        hint="run `mailerd migrate` first",
    )
    return False


async def _pause_campaign(pool: asyncpg.Pool, campaign_id: int, reason: str) -> None:
    """Pause on every node (the provider halted, or too many errors), with the reason."""
    async with pool.acquire() as conn:
        try:
            await campaigns.transition(conn, campaign_id, "pause", reason)
        except campaigns.TransitionError as exc:
            log.info("campaign_pause_skipped", campaign_id=campaign_id, reason=str(exc))
            return
    log.warning("campaign_paused", campaign_id=campaign_id, reason=reason)


async def _partition_loop(pool: asyncpg.Pool, config: Config, stop: asyncio.Event) -> None:
    """Keep days ahead created and expired days dropped while the daemon runs."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PARTITION_MAINTENANCE_S):
                await stop.wait()
        if stop.is_set():
            return
        try:
            async with pool.acquire() as conn:
                for action in await partitions.maintain(
                    conn,
                    ahead_days=config.retention.partitions_ahead_days,
                    retention_days=config.retention.days,
                ):
                    log.info("partition_maintained", action=str(action))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("partition_maintenance_failed", error=str(exc))


async def _health_loop(health: http.Health, writer: Writer, stop: asyncio.Event) -> None:
    """Mirror the writer's state into readiness until the drain begins."""
    while not stop.is_set():
        health.database_ok = writer.healthy
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await stop.wait()


async def _drain_deadline(
    stop: asyncio.Event, health: http.Health, config: Config, main: asyncio.Task[object] | None
) -> None:
    """On stop: report draining; past the grace period, cancel the drain."""
    await stop.wait()
    health.draining = True
    log.info("drain_started", grace_s=config.node.shutdown_grace_s)
    await asyncio.sleep(config.node.shutdown_grace_s)
    log.error("drain_deadline_passed", grace_s=config.node.shutdown_grace_s)
    if main is not None:
        main.cancel()
