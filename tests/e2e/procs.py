"""Real processes for the fault-injection suite and ``bench/faults.py``.

- :class:`Daemon`: ``python -m mailerd run`` as a subprocess that can be SIGKILLed, SIGTERMed
  and restarted (its config file is written once, its output appended to one log file).
- :class:`TimedSink`: the loopback SES emulator in this process, remembering when each
  SendBulkEmail call *arrived* (for pause latency and outage checks).
- :class:`PrivatePostgres`: a throwaway cluster (initdb + pg_ctl in a temp dir) that a test can
  stop and start again on the same port. As root, it runs as an unprivileged system user, the
  way pgserver does, because initdb refuses to run as root.
- :func:`audit`: the sink's record (ground truth of what was emailed) against ``email_log``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import pwd
import random
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
from aiohttp import web

from mailerd import campaigns
from mailerd import config as config_mod
from mailerd.db import connect as db_connect
from mailerd.db import migrate
from mailerd.emulator import sink
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


# --- the sink ---------------------------------------------------------------------------------


class TimedSink(sink.Sink):
    """The emulator, plus the monotonic arrival time of every SendBulkEmail call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[float] = []

    async def _send_bulk_email(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        return await super()._send_bulk_email(request)

    def arrivals_since(self, moment: float) -> int:
        return sum(1 for at in self.arrivals if at > moment)

    def last_arrival(self) -> float:
        return self.arrivals[-1] if self.arrivals else 0.0


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
        """Leads that one crash may leave uncertain: the batches the workers hold, plus each
        claimed shard's reservation ahead of them."""
        return self.concurrency * self.batch_size + min(shards, self.max_shards_per_node) * self.step


def config_text(dsn: str, sink_port: int, http_port: int, name: str, options: DaemonOptions) -> str:
    return f"""\
[database]
dsn = "{dsn}"
pool_min_size = 1
pool_max_size = 6
command_timeout_s = 10
[http]
listen = "127.0.0.1:{http_port}"
[providers.sink]
kind = "sink"
endpoint = "http://127.0.0.1:{sink_port}"
concurrency = {options.concurrency}
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


class Daemon:
    """One ``mailerd run`` node; :meth:`start` may be called again after it died."""

    def __init__(self, *, dsn: str, sink_port: int, name: str, workdir: Path, options: DaemonOptions) -> None:
        self.name = name
        self.options = options
        self.http_port = free_port()
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        # Tagged so that a test can see when a dead node's backends are gone.
        tagged = f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"
        self.config_path.write_text(
            config_text(tagged, sink_port, self.http_port, name, options), encoding="utf-8"
        )
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

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
                "run",
                "--config",
                str(self.config_path),
                env=base_env(MAILERD_ADMIN_TOKEN=ADMIN_TOKEN),
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

    async def post(self, path: str) -> int:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.post(self.url + path, headers=headers) as response,
        ):
            await response.read()
            return response.status

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

    async def shutdown(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if the drain takes too long."""
        if self.process is None or self.process.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            await self.wait(self.options.shutdown_grace_s + 5)
        except TimeoutError:
            await self.kill_and_reap()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

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


# --- scenarios (shared by the tests and bench/faults.py) ----------------------------------------


def campaign_config(sink_port: int) -> config_mod.Config:
    """Enough configuration to validate a campaign in this process (its provider must exist)."""
    return config_mod.from_mapping(
        {"providers": {"sink": {"kind": "sink", "endpoint": f"http://127.0.0.1:{sink_port}"}}}, env={}
    )


def new_campaign(*, rate_per_s: float | None, resend_uncertain: bool = False) -> campaigns.NewCampaign:
    return campaigns.NewCampaign(
        account_id=ACCOUNT_ID,
        name="faults",
        segment={"field": "attributes.plan", "op": "eq", "value": "pro"},
        subject="Hi {{ lead.attributes.n }}",
        html_body="<p>Hello {{ lead.email }}</p>",
        text_body="Hello {{ lead.email }}",
        from_address="news@example.com",
        provider="sink",
        start=True,
        rate_per_s=rate_per_s,
        resend_uncertain=resend_uncertain,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """Kill / pause rounds on a campaign of ``leads`` leads (a third of them match)."""

    name: str
    leads: int = 9000
    nodes: int = 1
    kills: int = 3
    pauses: int = 0
    resend_uncertain: bool = False
    rate_per_s: float = 1200.0
    latency_ms: float = 10.0
    seed: int = 1
    shard_size: int = 2000
    finish_timeout_s: float = 60.0


@dataclasses.dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    audit: Audit
    bound: int
    uncertain_per_crash: list[int] = dataclasses.field(default_factory=list)
    takeover_s: list[float] = dataclasses.field(default_factory=list)
    pause_latency_s: list[float] = dataclasses.field(default_factory=list)
    crashes: int = 0
    pauses: int = 0
    elapsed_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "rounds": self.crashes + self.pauses,
            "crashes": self.crashes,
            "pauses": self.pauses,
            **self.audit.summary(),
            "max_unknown_per_crash": max(self.uncertain_per_crash, default=0),
            "in_flight_bound": self.bound,
            "takeover_s": _spread(self.takeover_s),
            "pause_latency_s": _spread(self.pause_latency_s),
            "elapsed_s": round(self.elapsed_s, 2),
        }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 3),
        "avg": round(sum(values) / len(values), 3),
        "max": round(max(values), 3),
    }


async def backends_gone(conn: asyncpg.Connection, name: str) -> None:
    """Wait until Postgres has ended every backend of a dead node: only then is its last word
    (a COMMIT already on the wire) known, and its claims free."""

    async def gone() -> bool:
        return not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
        )

    await wait_until(gone, 10, interval=0.005)


async def uncertain_now(conn: asyncpg.Connection, campaign_id: int, owner: str) -> int:
    """Matched leads reserved by ``owner``'s unreleased shards and not logged: what the next
    claim will log ``unknown`` (or re-send). Read right after the owner died."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM campaign_shards s
               JOIN leads l ON l.account_id = $3 AND l.id > s.checkpoint AND l.id <= s.reserved_upto
               WHERE s.campaign_id = $1 AND s.owner = $2 AND s.state = 'pending'
                 AND NOT s.released_clean AND l.attributes->>'plan' = 'pro'
                 AND NOT EXISTS (SELECT 1 FROM email_log e
                                 WHERE e.campaign_id = $1 AND e.lead_id = l.id)""",
            campaign_id,
            owner,
            ACCOUNT_ID,
        )
    )


class _Finished(Exception):
    """The campaign finished before the next fault could be injected."""


async def _progress(
    conn: asyncpg.Connection, sink_: TimedSink, campaign_id: int, leads: int, within: float
) -> None:
    """Wait until the sink accepted ``leads`` more recipients; _Finished if the campaign ends."""
    target = sink_.counters.accepted + leads
    async with asyncio.timeout(within):
        while sink_.counters.accepted < target:
            if await campaign_status(conn, campaign_id) == "finished":
                raise _Finished
            await asyncio.sleep(0.02)


async def _takeover(
    conn: asyncpg.Connection, campaign_id: int, victim: str, started: float, within: float
) -> float | None:
    """Seconds from ``started`` (the kill) until another node claimed one of the victim's shards."""
    before = {
        shard: epoch
        for shard, (owner, epoch, state) in (await shard_owners(conn, campaign_id)).items()
        if owner == victim and state == "pending"
    }
    if not before:
        return None
    async with asyncio.timeout(within):
        while True:
            owners = await shard_owners(conn, campaign_id)
            for shard, epoch in before.items():
                owner, now_epoch, _ = owners[shard]
                if now_epoch > epoch and owner != victim:
                    return time.monotonic() - started
            await asyncio.sleep(0.01)


async def run_scenario(
    dsn: str, workdir: Path, scenario: Scenario, options: DaemonOptions | None = None
) -> ScenarioResult:
    """Run one campaign to the end through ``scenario``'s faults; return what was measured."""
    options = options or DaemonOptions(
        shard_size=scenario.shard_size, max_shards_per_node=8 if scenario.nodes > 1 else 4
    )
    rng = random.Random(scenario.seed)
    record = workdir / f"{scenario.name}-record.jsonl"
    began = time.monotonic()
    conn = await db_connect.connect(dsn)
    sink_ = TimedSink(record=record, latency_ms=scenario.latency_ms, seed=scenario.seed)
    port = await sink_.start()
    daemons = [
        Daemon(dsn=dsn, sink_port=port, name=f"node-{i}", workdir=workdir, options=options)
        for i in range(scenario.nodes)
    ]
    try:
        matched = await add_leads(conn, scenario.leads)
        campaign_id = await campaigns.create(
            conn,
            new_campaign(rate_per_s=scenario.rate_per_s, resend_uncertain=scenario.resend_uncertain),
            campaign_config(port),
        )
        await asyncio.gather(*(d.start() for d in daemons))
        shards = await _shard_count(conn, campaign_id)
        result = ScenarioResult(
            scenario,
            audit=Audit(set(), collections.Counter(), collections.Counter(), {}),
            bound=options.in_flight_bound(shards),
        )
        actions = ["kill"] * scenario.kills + ["pause"] * scenario.pauses
        rng.shuffle(actions)
        per_round = max(50, len(matched) // (len(actions) + 2))
        try:
            for action in actions:
                await _progress(conn, sink_, campaign_id, rng.randint(per_round // 3, per_round), 30)
                await asyncio.sleep(rng.uniform(0, 0.1))  # a random phase within the flow
                if action == "kill":
                    await _kill_round(conn, daemons, campaign_id, rng, result)
                else:
                    await _pause_round(conn, daemons, sink_, campaign_id, rng, result)
        except _Finished:
            pass
        await wait_for_status(conn, campaign_id, ("finished",), scenario.finish_timeout_s)
        await sink_.flush()
        result.audit = await audit(conn, campaign_id, matched, record)
        result.elapsed_s = time.monotonic() - began
        return result
    finally:
        await asyncio.gather(*(d.shutdown() for d in daemons))
        await sink_.close()
        await conn.close()


async def _shard_count(conn: asyncpg.Connection, campaign_id: int) -> int:
    """Shards of the campaign, once a node has split it."""
    count = 0

    async def split() -> bool:
        nonlocal count
        count = int(
            await conn.fetchval("SELECT count(*) FROM campaign_shards WHERE campaign_id = $1", campaign_id)
        )
        return count > 0

    await wait_until(split, 20, interval=0.05)
    return count


async def _kill_round(
    conn: asyncpg.Connection,
    daemons: list[Daemon],
    campaign_id: int,
    rng: random.Random,
    result: ScenarioResult,
) -> None:
    # A node that holds pending shards, when one does: killing an idle node (its peer claimed
    # every shard first, as a busy machine makes likely) would test no takeover at all.
    owners = await shard_owners(conn, campaign_id)
    holding = [d for d in daemons if any(o == d.name and s == "pending" for o, _, s in owners.values())]
    victim = rng.choice(holding or daemons)
    killed_at = time.monotonic()
    await victim.kill_and_reap()
    await backends_gone(conn, victim.name)
    result.crashes += 1
    result.uncertain_per_crash.append(await uncertain_now(conn, campaign_id, victim.name))
    if len(daemons) > 1 and await campaign_status(conn, campaign_id) == "running":
        took = await _takeover(conn, campaign_id, victim.name, killed_at, 15)
        if took is not None:
            result.takeover_s.append(took)
    await victim.start()


async def _pause_round(
    conn: asyncpg.Connection,
    daemons: list[Daemon],
    sink_: TimedSink,
    campaign_id: int,
    rng: random.Random,
    result: ScenarioResult,
) -> None:
    paused_at = time.monotonic()
    try:
        await campaigns.transition(conn, campaign_id, "pause")
    except campaigns.TransitionError:
        raise _Finished from None
    result.pauses += 1

    async def released() -> bool:
        return await claims_held(conn, campaign_id) == 0

    await wait_until(released, 15)
    # Every claim is gone, so nothing more can be sent: the last arrival is the pause's end.
    result.pause_latency_s.append(max(0.0, sink_.last_arrival() - paused_at))
    quiet_from = time.monotonic()
    if rng.random() < 0.5:  # a crash while paused must not change anything
        await _kill_round(conn, daemons, campaign_id, rng, result)
    assert sink_.arrivals_since(quiet_from) == 0, "sent while paused"
    try:
        await campaigns.transition(conn, campaign_id, "resume")
    except campaigns.TransitionError:
        # The last batches in flight at the pause completed the campaign: that is allowed.
        raise _Finished from None


@dataclasses.dataclass(slots=True)
class OutageResult:
    audit: Audit
    outage_s: float
    calls_before_outage: int
    calls_during_outage: int
    stop_lag_s: float
    late_calls: int
    resume_s: float | None
    elapsed_s: float

    def figures(self) -> dict[str, Any]:
        return {
            "scenario": f"postgres-outage-{self.outage_s:g}s",
            "rounds": 1,
            **self.audit.summary(),
            "calls_during_outage": self.calls_during_outage,
            "sending_stopped_after_s": round(self.stop_lag_s, 3),
            "calls_later_than_3s": self.late_calls,
            "resumed_after_s": None if self.resume_s is None else round(self.resume_s, 3),
            "elapsed_s": round(self.elapsed_s, 2),
        }


async def run_outage(
    server: PrivatePostgres,
    workdir: Path,
    *,
    outage_s: float,
    leads: int = 9000,
    rate_per_s: float = 600.0,
    mode: str = "fast",
    seed: int = 21,
    options: DaemonOptions | None = None,
) -> OutageResult:
    """Stop Postgres under a sending daemon for ``outage_s`` seconds, start it on the same
    port, and let the campaign finish."""
    began = time.monotonic()
    dsn = server.dsn()
    conn = await db_connect.connect(dsn)
    await migrate.migrate(conn)
    record = workdir / "outage-record.jsonl"
    sink_ = TimedSink(record=record, latency_ms=10.0, seed=seed)
    port = await sink_.start()
    daemon = Daemon(
        dsn=dsn, sink_port=port, name="node-0", workdir=workdir, options=options or DaemonOptions()
    )
    try:
        matched = await add_leads(conn, leads)
        campaign_id = await campaigns.create(conn, new_campaign(rate_per_s=rate_per_s), campaign_config(port))
        await daemon.start()
        await _progress(conn, sink_, campaign_id, len(matched) // 4, 30)
        await conn.close()
        before = len(sink_.arrivals)
        await asyncio.to_thread(server.stop, mode)
        stopped_at = time.monotonic()
        await asyncio.sleep(outage_s)  # the outage itself is the scenario, not a wait for a condition
        during = [at for at in sink_.arrivals if at > stopped_at]
        assert daemon.running, daemon.log_tail()
        await asyncio.to_thread(server.start)
        restarted_at = time.monotonic()
        conn = await db_connect.connect(dsn)
        await wait_for_status(conn, campaign_id, ("finished",), 60)
        after = [at for at in sink_.arrivals if at > restarted_at]
        await sink_.flush()
        return OutageResult(
            audit=await audit(conn, campaign_id, matched, record),
            outage_s=outage_s,
            calls_before_outage=before,
            calls_during_outage=len(during),
            stop_lag_s=(max(during) - stopped_at) if during else 0.0,
            late_calls=sum(1 for at in during if at > stopped_at + 3.0),
            resume_s=(after[0] - restarted_at) if after else None,
            elapsed_s=time.monotonic() - began,
        )
    finally:
        await daemon.shutdown()
        await sink_.close()
        if not conn.is_closed():
            await conn.close()
