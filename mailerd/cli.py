"""The ``mailerd`` command: argparse, logging, the event loop and signals live here only."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from mailerd import config as config_mod
from mailerd import logs
from mailerd.commands import arguments


def _loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop where available: the daemon's throughput depends on it."""
    try:
        import uvloop  # optional on platforms without it
    except ImportError:  # pragma: no cover
        return asyncio.run
    return uvloop.run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = arguments.parser().parse_args(argv)
    try:
        if args.command == "sink":
            logs.configure()
            return _loop_runner()(_with_stop(lambda stop: _sink(args, stop)))
        if args.command == "files":
            return _files(args.name)
        config = config_mod.load(args.config)
        logs.configure(config.logging.level, config.logging.format)
        handler = _HANDLERS[_command_key(args)]
        return _loop_runner()(handler(args, config))
    except config_mod.ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except _FAILURES as exc:  # no server, no database, a port in use: one line, not a traceback
        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(f"mailerd {_command_key(args)}: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    except UnicodeError as exc:
        if any(_undecodable(a) for a in (sys.argv[1:] if argv is None else argv)):
            # an argument from a terminal whose encoding is not UTF-8: input refused
            print(f"mailerd {_command_key(args)}: an argument is not UTF-8 text: {exc}", file=sys.stderr)
            return 2
        # e.g. a host name IDNA cannot encode (a label over 63 characters): a failure, one line
        print(f"mailerd {_command_key(args)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# What reaching or using Postgres (asyncpg's own errors), a socket or a file can raise to a command.
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _undecodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _command_key(args: argparse.Namespace) -> str:
    for attr in (
        "segment_command",
        "leads_command",
        "campaign_command",
        "suppressions_command",
        "providers_command",
        "relay_command",
        "reports_command",
        "report_command",
    ):
        value = getattr(args, attr, None)
        if value:
            return f"{args.command} {value}"
    return str(args.command)


# SIGHUP too: mailerd has no reload, and its default action (a closed terminal, an operator's
# reload reflex) would kill the process with no drain, leaving its in-flight leads ``unknown``.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def _with_stop(body: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``body`` with a stop event that SIGTERM/SIGINT/SIGHUP set; a second signal exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            with contextlib.suppress(OSError):  # stderr may be a terminal that hung up
                print(f"mailerd: second {signal.Signals(signum).name}, exiting now", file=sys.stderr)
            if task is not None:
                task.cancel()
            return
        stop.set()
        if signum == signal.SIGHUP:
            with contextlib.suppress(OSError):
                print(
                    "mailerd: SIGHUP: there is no reload, draining (restart to apply a configuration)",
                    file=sys.stderr,
                )

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await body(stop)
    except asyncio.CancelledError:
        return 1
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


@contextlib.asynccontextmanager
async def _connection_and_dsn(config: config_mod.Config) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    from mailerd.db import connect  # keep `mailerd --help` light

    async with connect.resolved_dsn(config.database) as dsn:
        conn = await connect.connect(dsn)
        try:
            yield conn, dsn
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def _connection(config: config_mod.Config) -> AsyncIterator[asyncpg.Connection]:
    async with _connection_and_dsn(config) as (conn, _dsn):
        yield conn


async def _migrate(args: argparse.Namespace, config: config_mod.Config) -> int:
    """``mailerd migrate``: the main database, and the reports database when ``[reports]`` is set."""
    from mailerd.db import migrate

    async with _connection_and_dsn(config) as (conn, dsn):
        done = await migrate.migrate(conn)
        for migration in done:
            print(f"applied {migration.version:04d}_{migration.name}")
        if not done:
            print("nothing to do: the schema is up to date")
        if config.reports is not None:
            await _migrate_reports_on(config, dsn)
    return 0


async def _migrate_reports_on(config: config_mod.Config, main_dsn: str) -> None:
    from mailerd.db import reports_schema

    for line in await reports_schema.migrate_reports(config, main_dsn):
        print(line)


async def _reports_migrate(args: argparse.Namespace, config: config_mod.Config) -> int:
    """``mailerd reports migrate``: the reports database only."""
    if config.reports is None:
        print("mailerd reports migrate: no [reports] section in the configuration", file=sys.stderr)
        return 1
    from mailerd.db import connect

    async with connect.resolved_dsn(config.database) as dsn:
        await _migrate_reports_on(config, dsn)
    return 0


async def _partitions(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.relay import retention

    ahead = args.days if args.days is not None else config.retention.partitions_ahead_days
    async with _connection(config) as conn:
        actions = await retention.maintain(conn, config, ahead_days=ahead)
    for action in actions:
        print(action)
    if not actions:
        print(f"nothing to do: partitions exist for the next {ahead} days, none past retention")
    if deferred := len({action.table for action in actions if action.verb == "deferred"}):
        # Not done: a script running this in a quiet hour must know to run it again.
        print(
            f"mailerd partitions: {deferred} table(s) left partly undone: a transaction is using them; "
            "run again when it has ended",
            file=sys.stderr,
        )
        return 1
    return 0


def _files(name: str | None) -> int:
    """``mailerd files [NAME]``: the shipped operations files, without a source checkout."""
    from mailerd import shipped

    if name is None:
        for found in shipped.names():
            print(found)
        return 0
    try:
        content = shipped.read(name)
    except KeyError as exc:  # a name that is not one of the list: a usage error
        print(f"mailerd files: {exc.args[0]}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(content)
    sys.stdout.flush()
    return 0


async def _check_config(args: argparse.Namespace, config: config_mod.Config) -> int:
    problem = config_mod.ses_topic_problem(config)  # what `mailerd run` would refuse at start
    if problem:
        raise config_mod.ConfigError(f"config error: {config.source}: {problem}")
    await _build_clients(config)
    sys.stdout.write(orjson.dumps(config_mod.redacted(config), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def _build_clients(config: config_mod.Config) -> None:
    """Build (and close) every provider client and webhook handler, as ``mailerd run`` does: a key
    a kind needs and lacks (a sendgrid api_key, an smtp endpoint, a webhook's public key) was
    passed by check-config, then refused by ``mailerd run``. Nothing is reached over the network."""
    from mailerd import providers

    built: list[Any] = []
    try:
        for provider in config.providers.values():
            built.append(providers.create(provider, content_limits=config.content))
        built.extend(providers.create_webhook_handlers(config).values())
    except config_mod.ConfigError as exc:
        raise config_mod.ConfigError(f"config error: {config.source}: {exc}") from None
    finally:
        for client in built:
            await client.close()


async def _segment_count(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import erasure, segments
    from mailerd.db import leads

    try:
        segment = segments.parse(args.segment)
    except segments.SegmentError as exc:
        print(f"mailerd segment count: {exc}", file=sys.stderr)
        return 2
    async with _connection(config) as conn:
        try:
            pads = await erasure.suppression_pads(conn, config, args.account)
        except erasure.ErasureUnavailable as exc:
            print(f"mailerd segment count: {exc}", file=sys.stderr)
            return 1
        count = await leads.count_matching(conn, args.account, segment, pads)
    print(count)
    return 0


async def _leads_import(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import importer

    async with _connection(config) as conn:
        return await importer.run_cli(
            conn,
            account_id=args.account,
            path=Path(args.file),
            types=args.types,
            rejects=Path(args.rejects) if args.rejects else None,
        )


async def _leads_erase(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import erasure
    from mailerd.importer.parsing import canonical, has_bad_text

    try:
        key = erasure.configured_key(config)
    except erasure.ErasureUnavailable as exc:
        print(f"mailerd leads erase: {exc}", file=sys.stderr)
        return 1
    # All checked before any is erased (each is erased in a transaction of its own): an address
    # the database cannot take (invalid UTF-8 from the terminal) stopped the command half-way.
    # Trimmed and composed as the API takes them (" ada@example.com" pasted from a sheet erased
    # nothing, and said "erased").
    addresses = [canonical(a.strip()) for a in args.addresses]
    bad = [a for a in addresses if has_bad_text(a) or "@" not in a or len(a) > 254]
    if bad:
        print(f"mailerd leads erase: not an email address: {bad[0]!r}", file=sys.stderr)
        return 2
    async with _connection(config) as conn:
        for address in addresses:
            done = await erasure.erase(conn, account_id=args.account, key=key, by=args.by, emails=[address])
            counts = ", ".join(f"{name} {count}" for name, count in done.removed.items())
            print(f"erased {address} from account {args.account} (erasure {done.id}): {counts}")
    return 0


# --- suppressions ---


async def _suppressions_import(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import suppressions

    async with _connection(config) as conn:
        return await suppressions.run_import_cli(
            conn,
            account_id=args.account,
            path=Path(args.file),
            reason=args.reason,
            rejects=Path(args.rejects) if args.rejects else None,
        )


async def _suppressions_list(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import suppressions

    async with _connection(config) as conn:
        return await suppressions.run_list_cli(
            conn, account_id=args.account, after=args.after, limit=args.limit, as_json=args.json
        )


async def _suppressions_change(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import suppressions

    async with _connection(config) as conn:
        return await suppressions.run_change_cli(
            conn,
            action=args.suppressions_command,
            account_id=args.account,
            email=args.email,
            reason=args.reason,
            config=config,
        )


async def _campaign_create(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.commands import campaigns

    return await campaigns.create(args, config)


async def _campaign_show(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.commands import campaigns

    return await campaigns.show(args, config)


async def _campaign_action(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.commands import campaigns

    return await campaigns.act(args, config)


async def _campaign_list(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.commands import campaigns

    return await campaigns.list_all(args, config)


async def _providers(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.commands import providers

    if args.providers_command == "resume":
        return await providers.resume(args, config)
    return await providers.show(args, config)


async def _relay_status(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.relay import operations

    async with _connection_and_dsn(config) as (conn, dsn):
        entries = await operations.status(conn, config, dsn)
    operations.print_status(entries, as_json=args.json)
    return 0


async def _relay_replay(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.relay import operations

    if args.dead_letters and (args.end is not None or args.campaign is not None):
        print("mailerd relay replay: --to and --campaign go with --from", file=sys.stderr)
        return 2
    end = args.end or dt.datetime.now(dt.UTC)
    if args.start is not None and args.start >= end:
        when = f"--from ({args.start.isoformat()}) must be before --to ({end.isoformat()})"
        print(f"mailerd relay replay: {when}", file=sys.stderr)
        return 2
    async with _connection_and_dsn(config) as (conn, dsn):
        try:
            destination = operations.configured(config, args.destination, dsn)
        except operations.OperationError as exc:
            print(f"mailerd relay replay: {exc}", file=sys.stderr)
            return 1
        try:
            if args.dead_letters:
                result = await operations.replay_dead_letters(
                    conn, destination, batch=config.relay.batch_records
                )
            else:
                result = await operations.replay_range(
                    conn, destination, start=args.start, end=end, campaign_id=args.campaign,
                    batch=config.relay.batch_records,
                )  # fmt: skip
        except operations.OperationError as exc:
            print(f"mailerd relay replay: {exc}", file=sys.stderr)
            return 1
        finally:
            await destination.close()
    print(f"replayed {result.delivered} records to {destination.name}; refused {result.refused}")
    return 0 if result.refused == 0 else 2


async def _report(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd.commands import reports

    handlers = {"campaign": reports.campaign, "usage": reports.usage, "lead": reports.lead}
    return await handlers[args.report_command](args, config)


async def _run(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import app

    # The daemon allocates many short-lived objects (rows, leads, JSON) and few long-lived
    # ones: move what start-up made out of the collector's way and collect young objects
    # less often.
    await _build_clients(config)  # refused with the file named, before any database is reached
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    return await _with_stop(lambda stop: app.run(config, stop))


async def _relay_run(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import app

    gc.freeze()  # as for the daemon: many short-lived records, few long-lived objects
    gc.set_threshold(50_000, 20, 100)
    return await _with_stop(lambda stop: app.run_relay(config, stop))


async def _sink(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from mailerd.emulator import sink

    host, port = config_mod.parse_listen(args.smtp or args.listen)
    await sink.serve(
        host=host,
        port=port,
        api="smtp" if args.smtp else args.api,
        api_key=args.api_key,
        record=Path(args.record) if args.record else None,
        latency_ms=args.latency_ms,
        throttle_rate=args.throttle_rate,
        fail_rate=args.fail_rate,
        seed=args.seed,
        stop=stop,
        webhook_url=args.webhook_url,
        webhook_format=args.webhook_format,
        bounce_rate=args.bounce_rate,
        complaint_rate=args.complaint_rate,
        block_rate=args.block_rate,
        webhook_settings=Path(args.webhook_settings) if args.webhook_settings else None,
        max_24_hour_send=args.max_24_hour_send,
    )
    return 0


async def _demo(args: argparse.Namespace, config: config_mod.Config) -> int:
    from mailerd import demo

    return await _with_stop(lambda stop: demo.run(args, stop))


_HANDLERS: dict[str, Callable[[argparse.Namespace, config_mod.Config], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "migrate": _migrate,
    "reports migrate": _reports_migrate,
    "partitions": _partitions,
    "check-config": _check_config,
    "segment count": _segment_count,
    "leads import": _leads_import,
    "leads erase": _leads_erase,
    "campaign create": _campaign_create,
    "campaign show": _campaign_show,
    "campaign list": _campaign_list,
    "campaign start": _campaign_action,
    "campaign pause": _campaign_action,
    "campaign resume": _campaign_action,
    "campaign cancel": _campaign_action,
    "demo": _demo,
    "providers list": _providers,
    "providers show": _providers,
    "providers resume": _providers,
    "relay run": _relay_run,
    "relay status": _relay_status,
    "relay replay": _relay_replay,
    "report campaign": _report,
    "report usage": _report,
    "report lead": _report,
    # --- suppressions ---
    "suppressions import": _suppressions_import,
    "suppressions list": _suppressions_list,
    "suppressions add": _suppressions_change,
    "suppressions remove": _suppressions_change,
}
