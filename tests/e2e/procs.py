"""Real processes for the fault-injection suite and ``bench/faults.py``.

- :class:`Daemon`: ``python -m mailerd run`` as a subprocess that can be SIGKILLed, SIGTERMed
  and restarted (its config file is written once, its output appended to one log file).
  :class:`RelayProcess`: ``python -m mailerd relay run`` the same way, publishing to a callback.
- :func:`timed_emulator`: a provider's emulator in this process (SES, SendGrid, Mailgun, Postmark
  or SMTP), remembering when each sending call *arrived* (for pause latency and outage checks).
- :class:`PrivatePostgres`: a throwaway cluster (initdb + pg_ctl in a temp dir) that a test can
  stop and start again on the same port. As root, it runs as an unprivileged system user, the
  way pgserver does, because initdb refuses to run as root.
- :func:`audit`: the emulator's record (ground truth of what was emailed) against ``email_log``.

The scenarios built from these (kill, pause, outage rounds) are in :mod:`tests.e2e.scenarios`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from mailerd.emulator import sink
from mailerd.emulator.base import Emulator
from mailerd.models import LogStatus

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
ACCOUNT_ID = 1


def free_port() -> int:
    """A TCP port that was free a moment ago (the daemon binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without any MAILERD_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MAILERD_")}
    env.update(extra)
    return env


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float, interval: float = 0.02) -> None:
    """Poll ``condition`` until it holds; TimeoutError past ``within`` seconds."""
    async with asyncio.timeout(within):
        # Another process's state: there is no event to wait on, only polling.
        while not await condition():
            await asyncio.sleep(interval)


# --- the provider emulator ---------------------------------------------------------------------------------


def timed_emulator(kind: str = "ses", **kwargs: Any) -> Emulator:
    """The ``kind`` emulator in this process, keeping the monotonic arrival time of every
    sending call (for pause latency and outage checks)."""
    emulator = sink.EMULATORS[kind](**kwargs)
    emulator.arrivals = []
    return emulator


def read_record(path: Path) -> list[dict[str, Any]]:
    """The sink's record: one JSON object per accepted recipient."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# --- the daemon -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonOptions:
    """The knobs the scenarios turn; everything else is the daemon's default."""

    concurrency: int = 4
    batch_size: int = 50
    shard_size: int = 2000
    window_size: int = 500
    max_shards_per_node: int = 4
    poll_interval_s: float = 0.2
    flush_interval_ms: int = 50
    shutdown_grace_s: float = 10.0
    reservation_step: int = 0

    @property
    def step(self) -> int:
        return self.reservation_step or self.concurrency * self.batch_size

    def in_flight_bound(self, shards: int) -> int:
        """Leads that one crash may leave uncertain (docs/architecture.md, "What bounds
        ``unknown`` per crash"): per shard the node held, at most ``2 x reservation_step``
        (fewer than step / batch_size batches uncommitted before the one that reserves, and a
        reservation at most step / batch_size batches past it), leads already suppressed when
        their window was read aside. Not ``concurrency x batch_size`` plus a step per shard:
        batches sent but not yet committed are not limited to the ones the workers hold."""
        return 2 * self.step * min(shards, self.max_shards_per_node)


API_KEY = "e2e-provider-key"
KINDS = ("ses", "sendgrid", "mailgun", "postmark", "smtp")


def provider_toml(kind: str, port: int) -> str:
    """The ``[providers.sink]`` keys that point a daemon at the ``kind`` emulator on ``port``
    (the provider is named ``sink`` whatever its kind, so campaigns name it the same way)."""
    if kind == "ses":
        return f'kind = "sink"\nendpoint = "http://127.0.0.1:{port}"\n'
    if kind == "smtp":
        return f'kind = "smtp"\nendpoint = "127.0.0.1:{port}"\ntls = "none"\nconnections = 8\n'
    lines = f'kind = "{kind}"\nendpoint = "http://127.0.0.1:{port}"\n'
    return lines + ('domain = "mg.example.com"\n' if kind == "mailgun" else "")


def config_text(
    dsn: str, sink_port: int, http_port: int, name: str, options: DaemonOptions, kind: str = "ses"
) -> str:
    return f"""\
[database]
dsn = "{dsn}"
pool_min_size = 1
pool_max_size = 6
command_timeout_s = 10
[http]
listen = "127.0.0.1:{http_port}"
[providers.sink]
{provider_toml(kind, sink_port)}concurrency = {options.concurrency}
batch_size = {options.batch_size}
timeout_s = 10
[scheduler]
shard_size = {options.shard_size}
window_size = {options.window_size}
poll_interval_s = {options.poll_interval_s}
max_shards_per_node = {options.max_shards_per_node}
reservation_step = {options.reservation_step}
[writer]
flush_interval_ms = {options.flush_interval_ms}
[node]
name = "{name}"
shutdown_grace_s = {options.shutdown_grace_s}
[logging]
level = "info"
format = "json"
"""


def tagged_dsn(dsn: str, name: str) -> str:
    """``dsn`` whose sessions are named ``name``, so that a test can see when a dead process's
    backends are gone."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


class Process:
    """One ``mailerd`` process serving ``/healthz`` on :attr:`http_port`, its configuration
    written once to :attr:`config_path`; :meth:`start` may be called again after it died."""

    command: tuple[str, ...] = ("run",)

    def __init__(self, *, name: str, workdir: Path) -> None:
        self.name = name
        self.http_port = free_port()
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        """The process's environment."""
        return base_env()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, within: float = 30.0) -> None:
        """Spawn and wait until ``/healthz`` answers."""
        assert not self.running, "already running"
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mailerd",
                *self.command,
                "--config",
                str(self.config_path),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.starts += 1
        process = self.process

        async def up() -> bool:
            if process.returncode is not None:
                raise RuntimeError(f"{self.name} exited {process.returncode}:\n{self.log_tail()}")
            return await self.status("/healthz") == 200

        await wait_until(up, within, interval=0.05)

    async def status(self, path: str) -> int | None:
        """The HTTP status of ``GET path``, or None when nothing answers."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(self.url + path) as response,
            ):
                await response.read()
                return response.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def wait(self, within: float) -> int:
        assert self.process is not None
        async with asyncio.timeout(within):
            return await self.process.wait()

    async def kill_and_reap(self) -> None:
        self.kill()
        await self.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def assert_stop_ends_at_the_deadline(self, grace_s: float, exit_after_s: float) -> None:
        """SIGTERM, then: the process exits 1 past its drain deadline (``grace_s``, as
        configured), at most ``exit_after_s`` later, having logged ``drain_deadline_passed``."""
        term_at = time.monotonic()
        self.signal(signal.SIGTERM)
        bound = grace_s + exit_after_s
        try:
            code = await self.wait(bound)
        except TimeoutError:
            raise AssertionError(f"still running {bound} s after SIGTERM:\n{self.log_tail()}") from None
        assert code == 1, self.log_tail()
        assert self.log_events("drain_deadline_passed"), self.log_tail()
        assert time.monotonic() - term_at >= grace_s

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``event`` (across every start)."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    entry = orjson.loads(line)
                    if entry.get("event") == event:
                        found.append(entry)
        return found


class Daemon(Process):
    """One ``mailerd run`` node."""

    def __init__(
        self, *, dsn: str, sink_port: int, name: str, workdir: Path, options: DaemonOptions, kind: str = "ses"
    ) -> None:
        super().__init__(name=name, workdir=workdir)
        self.kind = kind
        self.options = options
        self.config_path.write_text(
            config_text(tagged_dsn(dsn, name), sink_port, self.http_port, name, options, kind),
            encoding="utf-8",
        )

    def env(self) -> dict[str, str]:
        return base_env(MAILERD_ADMIN_TOKEN=ADMIN_TOKEN, MAILERD_PROVIDERS__SINK__API_KEY=API_KEY)

    async def post(self, path: str) -> int:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.post(self.url + path, headers=headers) as response,
        ):
            await response.read()
            return response.status

    async def shutdown(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if the drain takes too long."""
        if self.process is None or self.process.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            await self.wait(self.options.shutdown_grace_s + 5)
        except TimeoutError:
            await self.kill_and_reap()


class RelayProcess(Process):
    """One ``mailerd relay run`` (``[relay] run_in = "process"``) publishing to one callback
    endpoint (``[callbacks.app]``); it serves ``/healthz`` on ``[relay] listen``."""

    command = ("relay", "run")

    def __init__(
        self,
        *,
        dsn: str,
        callback_url: str,
        secret_file: str,
        name: str,
        workdir: Path,
        shutdown_grace_s: float,
    ) -> None:
        super().__init__(name=name, workdir=workdir)
        self.config_path.write_text(
            f"""\
[database]
dsn = "{tagged_dsn(dsn, name)}"
command_timeout_s = 10
[node]
name = "{name}"
shutdown_grace_s = {shutdown_grace_s}
[relay]
run_in = "process"
listen = "127.0.0.1:{self.http_port}"
poll_interval_ms = 50
lock_retry_s = 0.2
[callbacks.app]
url = "{callback_url}"
secret_file = "{secret_file}"
timeout_s = 5
[logging]
level = "info"
format = "json"
""",
            encoding="utf-8",
        )


# --- the database side ------------------------------------------------------------------------


async def add_leads(conn: asyncpg.Connection, count: int, start: int = 0) -> set[int]:
    """``count`` leads of account 1, every third one on plan "pro"; returns the pro ids."""
    await conn.copy_records_to_table(
        "leads",
        records=[
            (ACCOUNT_ID, f"user{n}@example.com", {"n": n, "plan": "pro" if n % 3 == 0 else "free"})
            for n in range(start, start + count)
        ],
        columns=("account_id", "email", "attributes"),
    )
    rows = await conn.fetch(
        "SELECT id FROM leads WHERE account_id = $1 AND attributes->>'plan' = 'pro'", ACCOUNT_ID
    )
    return {r["id"] for r in rows}


async def campaign_status(conn: asyncpg.Connection, campaign_id: int) -> str:
    return str(await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id))


async def wait_for_status(
    conn: asyncpg.Connection, campaign_id: int, statuses: tuple[str, ...], within: float
) -> None:
    async def reached() -> bool:
        return await campaign_status(conn, campaign_id) in statuses

    await wait_until(reached, within, interval=0.05)


async def shard_owners(conn: asyncpg.Connection, campaign_id: int) -> dict[int, tuple[str | None, int, str]]:
    """shard_no -> (owner, epoch, state)."""
    rows = await conn.fetch(
        "SELECT shard_no, owner, epoch, state FROM campaign_shards WHERE campaign_id = $1", campaign_id
    )
    return {r["shard_no"]: (r["owner"], r["epoch"], r["state"]) for r in rows}


async def claims_held(conn: asyncpg.Connection, campaign_id: int) -> int:
    """Advisory locks (shard claims) held on this campaign's shards, by anyone."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM pg_locks
               WHERE locktype = 'advisory' AND classid = $1::int AND objsubid = 2
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
            campaign_id,
        )
    )


@dataclasses.dataclass(slots=True)
class Audit:
    """The record against the log, for one campaign."""

    matched: set[int]
    emailed: collections.Counter[int]
    rows: collections.Counter[int]
    statuses: dict[int, int]

    @property
    def duplicates(self) -> int:
        """Extra emails: a lead emailed n times counts n - 1."""
        return sum(n - 1 for n in self.emailed.values() if n > 1)

    @property
    def duplicated_leads(self) -> int:
        return sum(1 for n in self.emailed.values() if n > 1)

    @property
    def multi_rows(self) -> int:
        return sum(1 for n in self.rows.values() if n > 1)

    @property
    def missing_rows(self) -> int:
        return len(self.matched - set(self.rows))

    @property
    def foreign_rows(self) -> int:
        return len(set(self.rows) - self.matched)

    @property
    def unknown(self) -> int:
        return sum(1 for s in self.statuses.values() if s == LogStatus.UNKNOWN)

    @property
    def emailed_not_accounted(self) -> int:
        """Emailed leads whose row is neither sent nor unknown (or that have no row)."""
        ok = (LogStatus.SENT, LogStatus.UNKNOWN)
        return sum(1 for lead in self.emailed if self.statuses.get(lead) not in ok)

    @property
    def logged_sent_not_emailed(self) -> int:
        return sum(1 for lead, s in self.statuses.items() if s == LogStatus.SENT and lead not in self.emailed)

    @property
    def losses(self) -> int:
        """Leads the campaign owes and did not account for, or accounted for wrongly."""
        return self.missing_rows + self.emailed_not_accounted + self.logged_sent_not_emailed

    def summary(self) -> dict[str, int]:
        return {
            "leads": len(self.matched),
            "emailed": len(self.emailed),
            "duplicates": self.duplicates,
            "multi_rows": self.multi_rows,
            "missing_rows": self.missing_rows,
            "losses": self.losses,
            "unknown": self.unknown,
        }


async def audit(conn: asyncpg.Connection, campaign_id: int, matched: set[int], record: Path) -> Audit:
    emailed = collections.Counter(
        int(line["lead_id"]) for line in read_record(record) if line["campaign_id"] == campaign_id
    )
    rows = await conn.fetch("SELECT lead_id, status FROM email_log WHERE campaign_id = $1", campaign_id)
    return Audit(
        matched=matched,
        emailed=emailed,
        rows=collections.Counter(r["lead_id"] for r in rows),
        statuses={r["lead_id"]: r["status"] for r in rows},
    )


# --- a private Postgres cluster -----------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The distribution's Postgres 15 binaries, else the newest installed, else pgserver's."""
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "initdb").exists():
        return preferred
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if installed:
        return installed[-1].parent
    import pgserver._commands  # optional: the embedded extra bundles a build

    return Path(pgserver._commands.POSTGRES_BIN_PATH)


def _system_user() -> str | None:
    """Who runs the cluster: us, unless we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "pgserver"], check=True)
    return "pgserver"


class PrivatePostgres:
    """A cluster of our own on a fixed port, so it can be stopped and started under a daemon."""

    def __init__(self) -> None:
        self.bin_dir = postgres_bin_dir()
        self.user = _system_user()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mailerd-e2e-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, exe: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / exe), *args],
            user=self.user,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{exe} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = " ".join(
            [
                f"-c port={self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c synchronous_commit=off",
                "-c max_connections=200",
            ]
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
