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
import dataclasses
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from mailerd import (
    aio,
    backoff,
    campaign_caps,
    campaigns,
    db,
    drain,
    erasure,
    http,
    looplag,
    metrics,
    pace,
    provider_guard,
    providers,
    quota_gate,
    ratelimit,
    scheduler,
    systemd,
    unsubscribe,
)
from mailerd.config import Config, ConfigError, ses_topic_problem, systemd_settings
from mailerd.db import connect, migrate, reports_schema
from mailerd.db import stats as stats_db
from mailerd.models import Campaign
from mailerd.relay import destinations as relay_destinations
from mailerd.relay import retention as relay_retention
from mailerd.relay.leader import Relay
from mailerd.scheduler import Scheduler
from mailerd.sender import ProviderSender, RateSleep
from mailerd.stages import LaneQueue, ProviderLane
from mailerd.writer import Writer

log = structlog.get_logger(__name__)

PARTITION_MAINTENANCE_S = 3600.0
# After a round that left DDL for later (a lock not granted in time behind a long transaction),
# the next comes sooner: each try makes the writer wait at most the DDL's lock timeout.
PARTITION_RETRY_S = 300.0
# After a round that failed (the database restarting, a network blip) the next comes after 5 s,
# doubling up to PARTITION_RETRY_S: an hour later, tomorrow's partition could still be missing.
PARTITION_FAILED_RETRY_S = 5.0
CAMPAIGN_SAMPLE_S = 10.0
# A database that does not answer at start is tried again after 0.5 s, doubling up to 16 s.
START_RETRY_BASE_S = 0.5
START_RETRY_MAX_S = 16.0


async def run(config: Config, stop: asyncio.Event) -> int:
    """``mailerd run``: resolve the database (embedded or not) and run until ``stop``."""
    _check_serving(config)  # before an embedded database is started
    notifier = systemd.Notifier(systemd_settings())
    try:
        async with connect.resolved_dsn(config.database) as dsn:
            return await run_with_dsn(config, dsn, stop, notifier=notifier)
    finally:
        notifier.close()


async def run_with_dsn(
    config: Config,
    dsn: str,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[int], None] | None = None,
    notifier: systemd.Notifier | None = None,
    clock: scheduler.Clock = scheduler.utc_now,
    sender_timing: SenderTiming | None = None,
) -> int:
    """Run the daemon against ``dsn`` until ``stop`` is set and the drain is over.

    ``on_ready(port)`` is called once migrations are checked and the HTTP port is bound; then
    ``notifier`` (systemd) hears READY=1, STOPPING=1 when the drain begins, and WATCHDOG=1 from
    this event loop. Resources close in the reverse order they were opened (HTTP first, the
    pool last), whatever ends the run.
    """
    _check_serving(config)
    notifier = notifier or systemd.Notifier()
    async with contextlib.AsyncExitStack() as resources:
        pool = await _open_pool(config, dsn, stop)
        if pool is None:
            log.info("daemon_stopped", before_start=True)
            return 0
        resources.push_async_callback(drain.close_pool, pool, "main")
        if not await _prepare_database(pool, config):
            return 1
        lanes = _open_lanes(config, resources)
        for lane in lanes.values():
            lane.quota = _quota_gate(config, pool, lane)
        writer = Writer(pool, config.writer, config.webhooks, config.guards, config.providers, config.privacy)
        webhook_handlers = providers.create_webhook_handlers(config)
        for name, handler in webhook_handlers.items():
            resources.push_async_callback(_close_quietly, handler.close, f"webhook {name}")
        _warn_unverified(config)
        metrics.start_at_zero(lanes, webhook_handlers)
        stages = _Stages(config, dsn, pool, lanes, writer, stop, clock, sender_timing or SenderTiming())
        for sender in stages.senders.values():
            await _seed_from_account(sender)
        reports_pool = None
        if config.reports is not None:
            if not await _prepare_reports(config, dsn):
                return 1
            # min_size 0: a reports database that is down delays no start (its endpoints say 503).
            # Its connections only read and drop partitions (no session state, locks or LISTEN):
            # returned to the pool without asyncpg's reset statement, a round trip per request.
            reports_pool = await connect.create_pool(
                connect.reports_dsn(config.reports, dsn),
                min_size=0,
                max_size=config.reports.pool_max_size,
                command_timeout=config.database.command_timeout_s,
                reset=connect.keep_session,
            )
            resources.push_async_callback(drain.close_pool, reports_pool, "reports")
        stages.reports_pool = reports_pool
        health = http.Health()
        services = http.Services(
            pool, config, health, writer=writer, webhooks=webhook_handlers, reports_pool=reports_pool
        )
        resources.push_async_callback(services.freshness.close)  # after the server stopped, before the pools
        host, port = config.http.host_port
        runner = await http.start(http.build_app(services), host, port)
        resources.push_async_callback(runner.cleanup)
        health.started = True
        bound = http.bound_port(runner)
        log.info(
            "daemon_started", listen=f"{host}:{bound}", providers=sorted(lanes), node=stages.scheduler.node
        )
        if on_ready is not None:
            on_ready(bound)
        notifier.ready(f"listening on {host}:{bound}, node {stages.scheduler.node}")
        await stages.run(health, notifier)
        log.info("daemon_stopped")
    return 0


async def run_relay(config: Config, stop: asyncio.Event) -> int:
    """``mailerd relay run``: the relay alone, in a process of its own (``[relay] run_in =
    "process"``), so its CPU is not the sending daemon's. It takes part in the same relay lock as
    the daemons would: one relay per cluster, and another process takes over when it dies.
    Serves /healthz and /metrics on ``[relay] listen`` when set. Its stop has the daemon's
    deadline (``[node] shutdown_grace_s``, then exit 1)."""
    if not relay_destinations.enabled(config):
        log.error("relay_not_configured", hint="configure [kafka], [callbacks.NAME] or [reports]")
        return 1
    _check_serving(config)  # before an embedded database is started
    notifier = systemd.Notifier(systemd_settings())
    try:
        async with contextlib.AsyncExitStack() as resources, connect.resolved_dsn(config.database) as dsn:
            node = f"{config.node.name or 'node'}:relay"
            relay = Relay(
                config=config,
                dsn=dsn,
                stop=stop,
                destinations=lambda: relay_destinations.from_config(config, dsn),
                node=node,
            )
            listen = ""
            if config.relay.listen:
                host, port = config.relay.listen_host_port
                runner = await http.start(http.build_relay_app(), host, port)
                resources.push_async_callback(runner.cleanup)
                listen = f"{host}:{http.bound_port(runner)}"
            log.info("relay_process_started", node=node, listen=listen or None)
            notifier.ready(f"relay process, node {node}")
            main = asyncio.current_task()
            async with asyncio.TaskGroup() as group:
                group.create_task(systemd.watchdog_loop(notifier, stop), name="systemd-watchdog")
                group.create_task(looplag.monitor(stop), name="loop-lag")
                # As the daemon's: STOPPING=1 at once, and a stop that the database or a
                # destination holds up is cancelled past [node] shutdown_grace_s.
                deadline = group.create_task(
                    drain.deadline(
                        stop, config.node.shutdown_grace_s, main, notifier, relay.pools, status="stopping"
                    ),
                    name="drain-deadline",
                )
                await relay.run()
                deadline.cancel()
            log.info("relay_process_stopped", node=node)
    finally:
        notifier.close()
    return 0


@dataclasses.dataclass(frozen=True, slots=True)
class SenderTiming:
    """The clock of the provider's and the ``[pace.NAME]`` groups' token buckets and their
    rate-limit sleep (the senders wait for the provider's, the shards for the groups'): tests
    inject a virtual pair to measure a rate without waiting for it. A campaign's own ``rate``
    is waited for by its shards, on the real clock."""

    clock: ratelimit.Clock = time.monotonic
    sleep: RateSleep = aio.sleep_unless


class _Stages:
    """The pipeline of one node: scheduler -> provider lanes -> senders -> writer."""

    def __init__(
        self,
        config: Config,
        dsn: str,
        pool: asyncpg.Pool,
        lanes: dict[str, ProviderLane],
        writer: Writer,
        stop: asyncio.Event,
        clock: scheduler.Clock = scheduler.utc_now,
        sender_timing: SenderTiming | None = None,
    ) -> None:
        self.config = config
        self.dsn = dsn
        self.pool = pool
        self.lanes = lanes
        self.writer = writer
        self.stop = stop
        self.reports_pool: asyncpg.Pool | None = None
        self.scheduler = Scheduler(
            config=config,
            dsn=dsn,
            pool=pool,
            lanes=lanes,
            sink=writer,
            stop=stop,
            on_idle=self._on_idle,
            clock=clock,  # send windows: tests move time
        )
        self.erasures = erasure.RecentErasures()
        self.relay = self._relay() if relay_destinations.runs_in_daemon(config) else None
        timing = sender_timing or SenderTiming()
        domain_pace = pace.DomainPace(config.pace, clock=timing.clock)
        for name, lane in lanes.items():
            # The groups that apply to the lane: its shards wait for them (None: nothing paced)
            buckets = domain_pace.for_provider(name)
            lane.pace = pace.LanePace(buckets, name, sleep=timing.sleep) if buckets else None
        self.senders = {
            name: ProviderSender(
                lane,
                config.provider(name),
                writer,
                self._on_halt,
                self._on_fail,
                rate_sleep=timing.sleep,
                clock=timing.clock,
                erased=self.erasures,
            )
            for name, lane in lanes.items()
        }

    def _relay(self) -> Relay:
        """The event stream: runs on whichever node holds the relay lock, with its own connections."""
        config = self.config
        return Relay(
            config=config,
            dsn=self.dsn,
            stop=self.stop,
            destinations=lambda: relay_destinations.from_config(config, self.dsn),
            node=self.scheduler.node,
        )

    def _on_idle(self, lane_name: str, campaign_id: int) -> None:
        """This node holds nothing of the campaign now: forget what was cached for it."""
        lane = self.lanes[lane_name]
        lane.provider.forget(campaign_id)
        lane.caps.forget(campaign_id)
        self.senders[lane_name].forget(campaign_id)

    async def _on_halt(self, campaign: Campaign, reason: str) -> None:
        """Pause on every node: the provider halted, or the error rate passed its limit."""
        await self._change(campaign, "pause", f"provider halted: {reason}", reason)

    async def _on_fail(self, campaign: Campaign, reason: str) -> None:
        """Fail on every node: the campaign can never be sent as it is."""
        await self._change(campaign, "fail", f"campaign failed: {reason}", reason)

    async def _change(self, campaign: Campaign, action: str, why: str, reason: str) -> None:
        # Stop here first: changing the status everywhere needs the database, which may be down.
        self.scheduler.stop_campaign(campaign.id, why)
        reason = _bounded_reason(reason)
        try:
            async with self.pool.acquire() as conn:
                await campaigns.transition(
                    conn, campaign.id, action, reason, cause="sender", generation=campaign.generation
                )
        except campaigns.TransitionError as exc:
            log.info(f"campaign_{action}_skipped", campaign_id=campaign.id, reason=str(exc))
            return
        except db.DB_ERRORS as exc:
            aio.raise_if_cancelling()  # a sender worker's: the drain deadline ends it here
            log.error(f"campaign_{action}_failed", campaign_id=campaign.id, reason=reason, error=str(exc))
            return
        log.warning(
            "campaign_paused" if action == "pause" else "campaign_failed",
            campaign_id=campaign.id,
            reason=reason,
        )

    def _pools(self) -> list[asyncpg.Pool]:
        """The pools the drain deadline cuts off: the node's, and the relay's while it leads."""
        pools = [self.pool] if self.reports_pool is None else [self.pool, self.reports_pool]
        return pools + (self.relay.pools() if self.relay is not None else [])

    async def run(self, health: http.Health, notifier: systemd.Notifier) -> None:
        """Run every stage until ``stop`` and the drain: shutdown flows downstream, the writer
        flushes last; the drain deadline is the only cancellation."""
        main = asyncio.current_task()
        async with asyncio.TaskGroup() as group:
            writer_task = group.create_task(self.writer.run(), name="writer")
            sender_tasks = [
                group.create_task(s.run(), name=f"sender-{name}") for name, s in self.senders.items()
            ]
            group.create_task(
                _partition_loop(self.pool, self.config, self.stop, self.reports_pool), name="partitions"
            )
            deadline = group.create_task(
                _drain_deadline(self.stop, health, self.config, main, notifier, self._pools),
                name="drain-deadline",
            )
            group.create_task(_health_loop(health, self.writer, self.stop), name="health")
            group.create_task(_campaign_sampler(self.pool, self.stop, self.config), name="campaign-sampler")
            group.create_task(self.erasures.follow(self.pool, self.stop), name="erasures")
            group.create_task(systemd.watchdog_loop(notifier, self.stop), name="systemd-watchdog")
            group.create_task(looplag.monitor(self.stop), name="loop-lag")
            refreshers = [
                group.create_task(_account_refresh_loop(sender, self.stop), name=f"account-{name}")
                for name, sender in self.senders.items()
                if sender.config.seed_rate_from_account
            ]
            if self.relay is not None:
                group.create_task(self.relay.run(), name="relay")
            await self.scheduler.run()
            for task in refreshers:  # a provider call in flight must not hold up the drain
                task.cancel()
            for task in sender_tasks:
                await task
            for lane in self.lanes.values():
                if isinstance(lane.quota, quota_gate.QuotaGate):
                    await lane.quota.close()  # what this node reserved and did not send
            self.writer.close()
            await writer_task
            deadline.cancel()


def _quota_gate(config: Config, pool: asyncpg.Pool, lane: ProviderLane) -> quota_gate.QuotaGate | None:
    """The provider's daily quota and warm-up on this node: configured, or possibly the
    account's own (``seed_rate_from_account``, known only once the account is read)."""
    provider = config.provider(lane.name)
    schedule = quota_gate.schedule_of(provider)
    if not schedule.limited and not provider.seed_rate_from_account:
        return None
    return quota_gate.QuotaGate(
        lane.name, pool, schedule, step=lane.reservation_step, recheck_s=config.guards.quota_recheck_s
    )


def _open_lanes(config: Config, resources: contextlib.AsyncExitStack) -> dict[str, ProviderLane]:
    """One provider client and bounded batch queue per configured provider."""
    unsubscribe_url = None
    if config.unsubscribe.secret is not None:
        unsubscribe_url = unsubscribe.url_builder(
            config.unsubscribe.secret.reveal().encode(), config.http.public_url
        )
    lanes: dict[str, ProviderLane] = {}
    for name, provider_config in config.providers.items():
        provider = providers.create(
            provider_config, unsubscribe=unsubscribe_url, content_limits=config.content
        )
        resources.push_async_callback(_close_quietly, provider.close, f"provider {name}")
        batch_size = min(provider_config.batch_size, provider.max_batch_size)
        lanes[name] = ProviderLane(
            name=name,
            provider=provider,
            queue=LaneQueue(maxsize=config.scheduler.queue_batches),
            batch_size=batch_size,
            workers=provider_config.concurrency,
            reservation_step=config.scheduler.reservation_step or provider_config.concurrency * batch_size,
            caps=campaign_caps.CampaignCaps(name),
        )
    return lanes


async def _close_quietly(close: Callable[[], Awaitable[None]], what: str) -> None:
    """Closing a client at exit must not stop the others from closing: log and go on."""
    try:
        await close()
    except Exception as exc:  # a failing close of one client must not skip the rest
        log.warning("close_failed", what=what, error=str(exc))


async def _open_pool(config: Config, dsn: str, stop: asyncio.Event) -> asyncpg.Pool | None:
    """The main pool, once the database answers (None: stopped while waiting for it).

    A database not reachable yet (a server restarting with the host, a network not up) is
    waited for: exiting 1 made systemd restart the unit every ``RestartSec=2``, and its start
    limit (10 starts in 5 minutes) gave up on it for good within a minute, so the node stayed
    down after the database came back. What a retry cannot mend (a password refused, no such
    database) still ends the start at once."""
    failures = 0
    while True:
        try:
            return await connect.create_pool(
                dsn,
                min_size=config.database.pool_min_size,
                max_size=config.database.pool_max_size,
                command_timeout=config.database.command_timeout_s,
            )
        except db.DB_ERRORS as exc:
            if not db.is_transient(exc):
                raise
            delay = backoff.doubling(failures, base=START_RETRY_BASE_S, cap=START_RETRY_MAX_S)
            failures += 1
            log.warning(
                "database_unavailable_at_start", error=str(exc) or type(exc).__name__, retry_in_s=delay
            )
        await aio.sleep_unless(delay, stop)
        if stop.is_set():
            return None


async def _prepare_database(pool: asyncpg.Pool, config: Config) -> bool:
    """Migrations applied (or refuse to start), partitions for the days ahead created."""
    async with pool.acquire() as conn:
        if not await _schema_ready(conn, auto_migrate=config.database.is_embedded):
            return False
        for action in await relay_retention.maintain(conn, config):
            log.info("partition_maintained", action=str(action))
    return True


async def _seed_from_account(sender: ProviderSender) -> None:
    """``seed_rate_from_account``: take the provider's own ceilings (SES ``MaxSendRate`` and
    ``Max24HourSend``) where lower than the configured ones."""
    if not sender.config.seed_rate_from_account:
        return
    try:
        account = await sender.lane.provider.send_quota()
    except Exception as exc:  # the daemon still runs on the configured limits
        log.warning("provider_rate_unknown", provider=sender.lane.name, error=str(exc))
        return
    if account is None:
        return
    # Each read replaces the last: a ceiling the account no longer has gives the configured one back.
    _seed_rate(sender, account.max_send_rate)
    gate = sender.lane.quota
    if not isinstance(gate, quota_gate.QuotaGate):
        return
    _seed_quota(sender, gate, account.max_24_hour_send)
    if account.sent_last_24_hours:
        try:
            added = await gate.count_sent_elsewhere(account.sent_last_24_hours)
        except db.DB_ERRORS as exc:
            log.warning("provider_quota_seed_failed", provider=sender.lane.name, error=str(exc))
        else:
            if added:
                log.info("provider_quota_sent_elsewhere", provider=sender.lane.name, added=added)


def _seed_rate(sender: ProviderSender, max_send_rate: float | None) -> None:
    """The lower of ``rate_per_s`` and the account's ``MaxSendRate`` (logged when it changes)."""
    configured = sender.config.rate_per_s
    rate = configured
    if max_send_rate:
        rate = min(max_send_rate, configured) if configured else max_send_rate
    if rate != sender.bucket.rate:
        sender.bucket.set_rate(rate)
        log.info(
            "provider_rate_seeded", provider=sender.lane.name, max_send_rate=max_send_rate, rate_per_s=rate
        )


def _seed_quota(sender: ProviderSender, gate: quota_gate.QuotaGate, max_24_hour_send: int | None) -> None:
    """The lower of ``daily_quota`` and the account's ``Max24HourSend`` (logged when it changes)."""
    before = gate.schedule.daily_limit
    gate.set_account_quota(max_24_hour_send)
    quota = gate.schedule.daily_limit
    if quota == before:
        return
    log.info(
        "provider_quota_seeded",
        provider=sender.lane.name,
        max_24_hour_send=max_24_hour_send,
        daily_quota=quota,
    )
    if 0 < quota < sender.lane.batch_size:
        log.error(
            "provider_quota_below_batch_size",
            provider=sender.lane.name,
            daily_quota=quota,
            batch_size=sender.lane.batch_size,
            hint="no batch fits the account's daily quota: lower batch_size",
        )


async def _account_refresh_loop(sender: ProviderSender, stop: asyncio.Event) -> None:
    """``seed_rate_from_account``: read the account again every ``account_refresh_s`` (an hour),
    so a quota the provider raised (or lowered) applies without a restart, and what other
    senders on the account sent since counts against its own quota."""
    while not stop.is_set():
        await aio.sleep_unless(sender.config.account_refresh_s, stop)
        if stop.is_set():
            return
        try:
            await _seed_from_account(sender)
        except Exception:  # not essential: sending goes on with the limits read last
            log.exception("provider_account_refresh_failed", provider=sender.lane.name)


def _check_serving(config: Config) -> None:
    """What the configuration cannot say alone: the ones a running node needs (ConfigError)."""
    problem = ses_topic_problem(config)
    if problem:
        raise ConfigError(f"config error: {config.source}: {problem}")


def _warn_unverified(config: Config) -> None:
    hooks = config.webhooks
    for name, section in (
        ("ses", hooks.ses),
        ("sendgrid", hooks.sendgrid),
        ("mailgun", hooks.mailgun),
        ("postmark", hooks.postmark),
    ):
        if not section.verify_signatures:
            log.warning("webhook_verification_disabled", provider=name, hint="for local testing only")
    if hooks.ses.verify_signatures and hooks.ses.accept_any_topic and not hooks.ses.topic_arns:
        log.warning(
            "sns_any_topic_accepted",
            hint="any AWS account can subscribe /webhooks/ses to its topic: set [webhooks.ses] topic_arns",
        )
    if config.unsubscribe.secret is None:
        log.warning("unsubscribe_secret_missing", hint="emails carry no List-Unsubscribe header")
    elif not config.http.public_url.startswith("https://"):
        log.warning("unsubscribe_url_not_https", public_url=config.http.public_url, hint="RFC 8058: https")


async def _prepare_reports(config: Config, dsn: str) -> bool:
    """The reports database migrated (embedded: migrate it now); unreachable: start anyway (the
    relay retries it, its endpoints answer 503), pending migrations: refuse to start."""
    assert config.reports is not None
    try:
        if config.reports.is_embedded:
            for line in await reports_schema.migrate_reports(config, dsn):
                log.info("reports_migrated", action=line)
            return True
        pending = await reports_schema.pending(config, dsn)
    except db.DB_ERRORS_OR_TIMEOUT as exc:
        log.warning("reports_database_unavailable", error=str(exc))
        return True
    if pending:
        log.error("reports_migrations_pending", pending=pending, hint="run `mailerd reports migrate` first")
        return False
    return True


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


def _bounded_reason(reason: str) -> str:
    """A provider's text as a status reason: one line, no NUL, at most the API's reason length."""
    text = " ".join(reason.replace("\x00", " ").split())
    limit = campaigns.MAX_REASON_LENGTH
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _partition_loop(
    pool: asyncpg.Pool, config: Config, stop: asyncio.Event, reports_pool: asyncpg.Pool | None = None
) -> None:
    """Keep days ahead created and expired days dropped while the daemon runs: every
    :data:`PARTITION_MAINTENANCE_S`, sooner after a round that deferred DDL or failed."""
    wait = PARTITION_MAINTENANCE_S
    failures = 0
    while not stop.is_set():
        await aio.sleep_unless(wait, stop)
        if stop.is_set():
            return
        wait = PARTITION_MAINTENANCE_S
        try:
            async with pool.acquire() as conn:
                for action in await relay_retention.maintain(conn, config):
                    log.info("partition_maintained", action=str(action))
                    if action.verb == "deferred":
                        wait = PARTITION_RETRY_S
            failures = 0
        except db.DB_ERRORS as exc:
            aio.raise_if_cancelling()
            # What a retry cannot mend (a privilege missing) comes back at the usual pace.
            wait = partition_retry_s(failures) if db.is_transient(exc) else PARTITION_MAINTENANCE_S
            failures += 1
            log.warning("partition_maintenance_failed", error=str(exc) or type(exc).__name__, retry_in_s=wait)
        if reports_pool is not None and config.reports is not None:
            try:
                async with reports_pool.acquire() as conn:
                    for name in await reports_schema.maintain(conn, config.reports.retention_days):
                        log.info("reports_partition_dropped", partition=name)
            except db.DB_ERRORS_OR_TIMEOUT as exc:
                aio.raise_if_cancelling()
                log.warning("reports_maintenance_failed", error=str(exc))


def partition_retry_s(failures: int) -> float:
    """The wait after ``failures + 1`` maintenance rounds failed in a row: 5 s doubling up to
    :data:`PARTITION_RETRY_S` (the exponent capped: 2 ** 1024 overflowed a float after about
    85 hours of failures, and the exception ended the daemon)."""
    return backoff.doubling(failures, base=PARTITION_FAILED_RETRY_S, cap=PARTITION_RETRY_S)


async def _health_loop(health: http.Health, writer: Writer, stop: asyncio.Event) -> None:
    """Mirror the writer's state into readiness until the drain begins."""
    while not stop.is_set():
        health.database_ok = writer.healthy
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                await stop.wait()


async def _campaign_sampler(pool: asyncpg.Pool, stop: asyncio.Event, config: Config) -> None:
    """Export the cluster's live campaigns (``mailerd_campaigns``, leads remaining and logged),
    the configured providers' rolling rates and holds, and whether Postgres answers
    (``mailerd_database_up``), every :data:`CAMPAIGN_SAMPLE_S`."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(5), pool.acquire() as conn:
                totals = {t.status: t for t in await stats_db.totals_by_status(conn)}
                waiting_for_window = await stats_db.leads_waiting_for_window(conn)
                await provider_guard.sample(conn, config.guards, config.providers)
        except db.DB_ERRORS_OR_TIMEOUT:
            metrics.DATABASE_UP.set(0)
            # Unknown now: a stale figure would keep MailerdCampaignNoProgress quiet after the window opened.
            metrics.CAMPAIGN_LEADS_WAITING_FOR_WINDOW.set(0)
        else:
            metrics.DATABASE_UP.set(1)
            metrics.CAMPAIGN_LEADS_WAITING_FOR_WINDOW.set(waiting_for_window)
            for status in stats_db.ACTIVE_STATUSES:
                found = totals.get(status)
                metrics.CAMPAIGNS.labels(status).set(found.campaigns if found else 0)
                if status != "scheduled":
                    logged = found.logged if found else 0
                    metrics.CAMPAIGN_LEADS_LOGGED.labels(status).set(logged)
                    metrics.CAMPAIGN_LEADS_REMAINING.labels(status).set(found.remaining if found else 0)
        await aio.sleep_unless(CAMPAIGN_SAMPLE_S, stop)


async def _drain_deadline(
    stop: asyncio.Event,
    health: http.Health,
    config: Config,
    main: asyncio.Task[object] | None,
    notifier: systemd.Notifier,
    pools: drain.Pools,
) -> None:
    """On stop: ``/readyz`` answers 503, then the deadline every stop has (:func:`drain.deadline`)."""
    await stop.wait()
    health.draining = True
    await drain.deadline(stop, config.node.shutdown_grace_s, main, notifier, pools)
