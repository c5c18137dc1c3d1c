"""What the benchmark scripts share: a fresh database, the sink and daemon processes (or the
daemon in this process), /proc readers, the command line and the JSON output.

The scripts run as ``python bench/X.py``, which puts this folder first on ``sys.path``: they
import this module as ``common``. bench/faults.py uses tests/e2e/procs.py instead.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson

from mailerd import app, campaigns
from mailerd import config as config_mod
from mailerd.db import connect as db_connect
from mailerd.db import migrate
from mailerd.emulator import sink

T = TypeVar("T")

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ACCOUNT_ID = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The naive system's email table (bench/campaign.py inserts into it, bench/webhooks.py updates it).
NAIVE_SCHEMA = """
CREATE TABLE email (
    id                  bigserial PRIMARY KEY,
    campaign_id         bigint NOT NULL,
    lead_id             bigint NOT NULL,
    account_id          bigint NOT NULL,
    email               text NOT NULL,
    status              text NOT NULL,
    provider_message_id text,
    error               text,
    sent_at             timestamptz,
    opened_at           timestamptz,
    clicked_at          timestamptz,
    bounced_at          timestamptz,
    bounce_reason       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX email_campaign_id_idx ON email (campaign_id);
CREATE INDEX email_lead_id_idx ON email (lead_id);
CREATE INDEX email_account_id_idx ON email (account_id);
CREATE INDEX email_email_idx ON email (email);
CREATE INDEX email_provider_message_id_idx ON email (provider_message_id);
CREATE INDEX email_status_campaign_idx ON email (status, campaign_id);
"""


class BenchError(Exception):
    """The benchmark could not complete (a child died, a check failed, a timeout passed)."""


# --- database -------------------------------------------------------------------------------


def server_dsn(dsn: str | None) -> str:
    """The admin DSN: ``--dsn``, else ``$MAILERD_TEST_DSN``, else the local server."""
    return dsn or os.environ.get("MAILERD_TEST_DSN") or DEFAULT_DSN


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new empty database ``mailerd_bench_<random>`` for the block; dropped afterwards
    whatever happens."""
    name = f"mailerd_bench_{uuid.uuid4().hex[:10]}"
    await _on_server(admin_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_dsn, name)
    finally:
        await _on_server(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _on_server(admin_dsn: str, statement: str) -> None:
    """One statement on a short-lived admin connection."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def migrated(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to ``dsn`` once the migrations have run; closed at the end."""
    conn = await db_connect.connect(dsn)
    try:
        await migrate.migrate(conn)
        yield conn
    finally:
        await conn.close()


async def copy_leads(conn: asyncpg.Connection, leads: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """COPY ``(email, attributes)`` pairs into ``leads`` for :data:`ACCOUNT_ID`."""
    await conn.copy_records_to_table(
        "leads",
        records=((ACCOUNT_ID, email, attributes) for email, attributes in leads),
        columns=("account_id", "email", "attributes"),
    )


async def vacuum_analyze(conn: asyncpg.Connection, *tables: str) -> None:
    """Seeded rows get their hint bits set and statistics, like old production data: reading
    them in the measured window then writes no WAL and plans as in production."""
    for table in tables:
        await conn.execute(f"VACUUM ANALYZE {table}")


async def checkpoint(conn: asyncpg.Connection) -> None:
    """Start each measured window right after a checkpoint: every window then pays its own
    full-page images, none inherits or escapes them by luck of timing."""
    await conn.execute("CHECKPOINT")


async def wal_lsn(conn: asyncpg.Connection) -> str:
    """The server's current WAL position."""
    return str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))


async def wal_bytes_since(conn: asyncpg.Connection, lsn: str) -> float:
    """WAL the whole server wrote since ``lsn`` (from :func:`wal_lsn`)."""
    return float(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)", lsn))


# --- /proc ----------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmHWM: peak resident set size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def machine_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of all CPUs busy between two :func:`machine_cpu` readings."""
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def loadavg() -> str:
    """The one-minute load average: others' work on the machine skews every figure."""
    return Path("/proc/loadavg").read_text().split()[0]


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(*, provider_key: bool = False) -> dict[str, str]:
    """The children read only their config file: no MAILERD_* override leaks in. With
    ``provider_key``, the API key of ``[providers.sink]`` (a secret: never in the file)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MAILERD_")}
    if provider_key:
        env["MAILERD_PROVIDERS__SINK__API_KEY"] = BENCH_API_KEY
    return env


def niced(nice: int, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``nice -n NICE`` (a lower CPU priority for it and every thread it starts,
    as a unit's ``Nice=`` would), or as is for 0."""
    return ["nice", "-n", str(nice), *argv] if nice else list(argv)


# Each child runs in a session of its own (``start_new_session``), as systemd starts each unit.
# Where the kernel groups CPU time by session (``sched_autogroup``, as here: each Postgres
# backend is its own session too), the children sharing the bench's session would share one
# group's time, and a nice value would only count inside that group; so a niced child's group gets
# the nice value as well, as a unit's ``CPUWeight=`` would weigh its cgroup.


_CHILDREN: set[int] = set()  # sessions started and not yet stopped


def _own(pid: int) -> None:
    """Remember a child in a session of its own: it no longer gets the terminal's Ctrl-C, so the
    bench kills what is left of it when it exits (a failure, Ctrl-C), see :func:`_kill_children`."""
    if not _CHILDREN:
        atexit.register(_kill_children)
    _CHILDREN.add(pid)


def _kill_children() -> None:
    for pid in _CHILDREN:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def adopt(pid: int, nice: int) -> bool:
    """Remember a child started in a session of its own (:func:`_own`) and give its CPU group
    (its autogroup) the nice value (False where there is none)."""
    _own(pid)
    if not nice:
        return True
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def busy_cores(count: int) -> AsyncIterator[None]:
    """``count`` CPU-bound processes for the block, each in a session (a CPU group) of its own, as
    the sending daemon, the sink and their Postgres backends are beside the relay in a real run."""
    spin = (sys.executable, "-c", "while True: pass")
    busy = [await asyncio.create_subprocess_exec(*spin, start_new_session=True) for _ in range(count)]
    for process in busy:
        adopt(process.pid, 0)
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            await process.wait()


def of_first(runs: list[dict[str, Any]], key: str) -> None:
    """Each run's ``key`` as a ratio of the first run's (``of_first_value``): the same run's baseline."""
    for run in runs:
        run["of_first_value"] = round(run[key] / runs[0][key], 2)


def autogroups() -> bool:
    """Whether the kernel groups CPU time by session (``kernel.sched_autogroup_enabled``)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


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
    _CHILDREN.discard(process.pid)
    return process.returncode


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


PROVIDER_KINDS = ("ses", "sendgrid", "mailgun", "postmark", "smtp")
BENCH_API_KEY = "bench-provider-key"


async def start_sink(
    workdir: Path,
    *,
    latency_ms: float | None = None,
    record: Path | None = None,
    kind: str = "ses",
    extra: Sequence[str] = (),
    nice: int = 0,
) -> tuple[asyncio.subprocess.Process, int]:
    """``mailerd sink --listen 127.0.0.1:0 --seed 1`` (``--api KIND``, or ``--smtp`` for smtp)
    plus ``extra`` options, logging to ``workdir/sink.log``, at ``nice``; the bound port is read
    from its first line."""
    log_path = workdir / "sink.log"
    where = ["--smtp", "127.0.0.1:0"] if kind == "smtp" else ["--api", kind, "--listen", "127.0.0.1:0"]
    options = [*where, "--seed", "1", *extra]
    if latency_ms is not None:
        options += ["--latency-ms", str(latency_ms)]
    if record is not None:
        options += ["--record", str(record)]
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *niced(nice, [sys.executable, "-m", "mailerd", "sink", *options]),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=child_env(),
            start_new_session=True,
        )  # fmt: skip
    adopt(process.pid, nice)
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


def provider_section(kind: str, port: int, **keys: Any) -> dict[str, Any]:
    """``[providers.sink]`` for the ``kind`` emulator on ``port`` (named ``sink`` whatever its kind;
    the API key goes in the environment, see :func:`child_env`)."""
    if kind == "ses":
        section: dict[str, Any] = {"kind": "sink", "endpoint": f"http://127.0.0.1:{port}"}
    elif kind == "smtp":
        section = {"kind": "smtp", "endpoint": f"127.0.0.1:{port}", "tls": "none"}
    else:
        section = {"kind": kind, "endpoint": f"http://127.0.0.1:{port}"}
        if kind == "mailgun":
            section["domain"] = "mg.example.com"
    section.update(keys)
    return section


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(str(value)).decode()


def daemon_toml(
    dsn: str,
    http_port: int,
    node: str,
    sections: Mapping[str, Mapping[str, Any]],
    *,
    level: str = "warning",
) -> str:
    """A ``mailerd run`` config: the database, HTTP on ``127.0.0.1:http_port``, ``sections``
    (``{"providers.sink": {...}, "http": {more keys}}``), JSON logs at ``level``, the node name."""
    layout: dict[str, dict[str, Any]] = {
        "database": {"dsn": dsn},
        "http": {"listen": f"127.0.0.1:{http_port}"},
    }
    for name, values in sections.items():
        layout.setdefault(name, {}).update(values)
    layout.setdefault("logging", {}).update({"level": level, "format": "json"})
    layout.setdefault("node", {}).update({"name": node})
    return "\n".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())
        for name, values in layout.items()
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Daemon:
    """A healthy ``mailerd run`` child process and the file its output goes to."""

    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


async def start_daemon(
    config_path: Path,
    log_path: Path,
    http_port: int,
    *,
    interpreter_args: Sequence[str] = (),
    provider_key: bool = False,
    nice: int = 0,
) -> Daemon:
    """``python [interpreter_args] -m mailerd run --config FILE`` (at ``nice``) with its output
    in ``log_path``, once ``/healthz`` answers on ``http_port``; stopped again if it never does."""
    argv = [sys.executable, *interpreter_args, "-m", "mailerd", "run", "--config", str(config_path)]
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *niced(nice, argv),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(provider_key=provider_key),
            start_new_session=True,
        )  # fmt: skip
    adopt(process.pid, nice)
    try:
        await wait_healthy(http_port, process, log_path)
    except BaseException:
        await stop_process(process)
        raise
    return Daemon(process, log_path)


async def start_relay_process(
    config_path: Path, log_path: Path, dsn: str, destination: str, *, nice: int = 10
) -> asyncio.subprocess.Process:
    """``mailerd relay run --config FILE`` at ``nice`` (10: as systemd/mailerd-relay.service runs
    it), once it holds ``destination``'s position (the relay lock); stopped again if it never does."""
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *niced(nice, [sys.executable, "-m", "mailerd", "relay", "run", "--config", str(config_path)]),
            stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=child_env(), start_new_session=True,
        )  # fmt: skip
    adopt(process.pid, nice)
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(60):
            while not await conn.fetchval(
                "SELECT count(*) FROM relay_positions WHERE destination = $1 AND owner LIKE '%:relay'",
                destination,
            ):
                if process.returncode is not None:
                    raise BenchError(f"mailerd relay run exited with {process.returncode}:\n{tail(log_path)}")
                await asyncio.sleep(0.1)
    except BaseException:
        await stop_process(process, grace_s=10)
        raise
    finally:
        await conn.close()
    return process


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


async def stop_daemons(daemons: Sequence[Daemon]) -> list[int | None]:
    """SIGTERM every daemon at once (SIGKILL after a grace period); their exit codes."""
    return list(await asyncio.gather(*(stop_process(d.process) for d in daemons)))


def check_stopped(daemons: Sequence[Daemon], codes: Sequence[int | None]) -> None:
    """A daemon that did not exit 0 after SIGTERM failed the run."""
    for code, daemon in zip(codes, daemons, strict=True):
        if code != 0:
            which = "the" if len(daemons) == 1 else "a"
            raise BenchError(f"{which} daemon exited with {code} after SIGTERM:\n{tail(daemon.log_path)}")


async def wait_finished(
    conn: asyncpg.Connection,
    campaign_id: int,
    daemons: Sequence[Daemon],
    limit_s: float,
    *,
    poll_s: float,
) -> dict[str, Any]:
    """Poll ``campaigns.show`` every ``poll_s`` until the campaign is finished; fail as soon as
    it stops otherwise or a daemon exits."""
    which = "the" if len(daemons) == 1 else "a"
    try:
        async with asyncio.timeout(limit_s):
            while True:
                info = await campaigns.show(conn, campaign_id)
                assert info is not None
                if info["status"] == "finished":
                    return info
                if info["status"] in ("cancelled", "failed", "paused"):
                    logs = "".join(f"\n{tail(d.log_path)}" for d in daemons)
                    raise BenchError(f"campaign {info['status']}: {info['reason']}{logs}")
                for daemon in daemons:
                    if daemon.process.returncode is not None:
                        raise BenchError(
                            f"{which} daemon exited with {daemon.process.returncode}:\n"
                            f"{tail(daemon.log_path)}"
                        )
                await asyncio.sleep(poll_s)
    except TimeoutError:
        info = await campaigns.show(conn, campaign_id) or {}
        raise BenchError(
            f"campaign not finished after {limit_s:.0f} s ({info.get('processed')} processed)"
        ) from None


async def start_campaign(
    conn: asyncpg.Connection,
    config: config_mod.Config,
    *,
    name: str,
    segment: dict[str, Any] | None = None,
    subject: str = "Hi",
    html_body: str = "<p>Hello</p>",
    text_body: str = "Hello",
    send_window: campaigns.SendWindowBody | None = None,
) -> int:
    """Create a campaign of :data:`ACCOUNT_ID` through the ``sink`` provider, started now; by
    default to every lead with an ``n`` attribute (``{"n": 0..}``), with a plain short body."""
    return await campaigns.create(
        conn,
        campaigns.NewCampaign(
            account_id=ACCOUNT_ID,
            name=name,
            segment=segment or {"field": "attributes.n", "op": "gte", "value": 0},
            subject=subject,
            html_body=html_body,
            text_body=text_body,
            from_address="news@example.com",
            provider="sink",
            start=True,
            send_window=send_window,
        ),
        config,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class InProcessDaemon:
    """The daemon running in this process: its configuration and its bound HTTP port."""

    config: config_mod.Config
    port: int


@contextlib.asynccontextmanager
async def in_process_daemon(
    dsn: str,
    emulator: sink.Sink,
    sections: Mapping[str, Mapping[str, Any]],
    *,
    provider: Mapping[str, Any],
) -> AsyncIterator[InProcessDaemon]:
    """The daemon's stages in this process (``app.run_with_dsn``, as the tests run them) against
    ``emulator`` as ``[providers.sink]`` (plus the ``provider`` keys), HTTP on a free port, and
    ``sections`` (``{"guards": {...}}``) of the config; the emulator is started here and closed at
    the end, after the daemon's drain. No profiler or second process in the way: for figures of
    the pipeline alone (a lag, a rate ratio), not of a deployed node."""
    sink_port = await emulator.start()
    try:
        raw: dict[str, dict[str, Any]] = {
            "http": {"listen": "127.0.0.1:0"},
            "providers": {"sink": {"kind": "sink", "endpoint": f"http://127.0.0.1:{sink_port}", **provider}},
        }
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        config = config_mod.from_mapping(raw, env={})
        stop = asyncio.Event()
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(app.run_with_dsn(config, dsn, stop, on_ready=bound.set_result))
        try:
            done, _ = await asyncio.wait({task, bound}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                raise BenchError(f"the daemon stopped at start with {task.result()}")
            if not done:
                raise BenchError("the daemon did not bind its HTTP port within 30 s")
            yield InProcessDaemon(config, bound.result())
        finally:
            stop.set()
            code = await asyncio.wait_for(task, 60)
        if code != 0:
            raise BenchError(f"the daemon exited with {code} after its stop")
    finally:
        await emulator.close()


# --- command line ---------------------------------------------------------------------------


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line, and the options every script takes,
    ``--dsn`` (see :func:`server_dsn`) and ``--json``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument(
        "--dsn", default=None, help="admin DSN of the Postgres server to create the database on"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser


def print_json(result: Mapping[str, Any], *, indent: bool = False) -> None:
    """The figures as one JSON object on stdout (``indent``: for a person to read)."""
    option = orjson.OPT_INDENT_2 if indent else 0
    sys.stdout.write(orjson.dumps(result, option=option).decode() + "\n")


def run_bench(bench: Coroutine[Any, Any, T]) -> T | None:
    """``asyncio.run(bench)``; a failed run (:class:`BenchError`, a config the daemon refuses)
    prints its reason after the script's path and gives None: ``main`` then exits 1."""
    try:
        return asyncio.run(bench)
    except (BenchError, config_mod.ConfigError) as exc:
        print(f"bench/{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        return None
