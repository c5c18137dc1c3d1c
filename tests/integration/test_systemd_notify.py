"""The systemd notify protocol against real datagram sockets, and ``mailerd run`` under it.

The end-to-end tests play the service manager: they bind the notify socket, start the daemon
with ``NOTIFY_SOCKET``/``WATCHDOG_USEC`` in its environment, and read what it says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import structlog

from mailerd import systemd
from mailerd.config import systemd_settings
from tests.callback_receiver import Receiver
from tests.integration.relay_rows import log_rows, make_campaign

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "mailerd.service"
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


class NotifySocket:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name  # what goes into NOTIFY_SOCKET

    @classmethod
    def bound_in(cls, directory: Path) -> NotifySocket:
        """A socket bound to ``directory/notify`` (a path socket; the fixture also makes abstract ones)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(directory / "notify"))
        return cls(sock, str(directory / "notify"))

    async def receive(self, within_s: float = 10) -> dict[str, str]:
        """The next message, as its fields."""
        async with asyncio.timeout(within_s):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        lines = data.decode().splitlines()
        assert data.endswith(b"\n") and all("=" in line for line in lines), data
        return dict(line.split("=", 1) for line in lines)

    async def receive_until(self, key: str, within_s: float = 30) -> list[dict[str, str]]:
        """Every message up to and including the first one that carries ``key``."""
        messages = []
        async with asyncio.timeout(within_s):
            while True:
                messages.append(await self.receive(within_s))
                if key in messages[-1]:
                    return messages


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit in sun_path (108 bytes), unlike a deep tmp_path."""
    with tempfile.TemporaryDirectory(prefix="mailerd-sd-") as name:
        yield Path(name)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if request.param == "abstract":
        name = f"@mailerd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name[1:])
    else:
        name = str(short_dir / "notify")
        sock.bind(name)
    with sock:
        yield NotifySocket(sock, name)


def notifier_for(notify: NotifySocket, **env: str) -> systemd.Notifier:
    return systemd.Notifier(systemd_settings({"NOTIFY_SOCKET": notify.name, **env}))


async def test_ready_status_stopping_and_watchdog_arrive(notify_socket: NotifySocket) -> None:
    notifier = notifier_for(notify_socket)
    try:
        assert notifier.ready("listening on 127.0.0.1:8025")
        assert await notify_socket.receive() == {"READY": "1", "STATUS": "listening on 127.0.0.1:8025"}
        assert notifier.status("sending\ncampaign 7")
        assert await notify_socket.receive() == {"STATUS": "sending campaign 7"}
        assert notifier.watchdog()
        assert await notify_socket.receive() == {"WATCHDOG": "1"}
        assert notifier.stopping()
        assert await notify_socket.receive() == {"STOPPING": "1", "STATUS": "draining"}
        assert notifier.stopping("draining, up to 600 s", takes_up_to_s=615)
        assert await notify_socket.receive() == {
            "STOPPING": "1",
            "STATUS": "draining, up to 600 s",
            "EXTEND_TIMEOUT_USEC": "615000000",
        }
    finally:
        notifier.close()


async def test_settings_for_this_process_are_honoured(notify_socket: NotifySocket) -> None:
    notifier = notifier_for(notify_socket, WATCHDOG_PID=str(os.getpid()))
    try:
        assert notifier.watchdog()
        assert await notify_socket.receive() == {"WATCHDOG": "1"}
    finally:
        notifier.close()


async def test_the_watchdog_loop_pings_until_stop(notify_socket: NotifySocket) -> None:
    notifier = notifier_for(notify_socket, WATCHDOG_USEC="20000")  # every 10 ms
    stop = asyncio.Event()
    try:
        loop_task = asyncio.create_task(systemd.watchdog_loop(notifier, stop))
        for _ in range(3):
            assert await notify_socket.receive() == {"WATCHDOG": "1"}
        stop.set()
        async with asyncio.timeout(5):
            await loop_task
    finally:
        notifier.close()


async def test_the_watchdog_loop_is_cancellable(notify_socket: NotifySocket) -> None:
    notifier = notifier_for(notify_socket, WATCHDOG_USEC="60000000")
    try:
        loop_task = asyncio.create_task(systemd.watchdog_loop(notifier))
        assert await notify_socket.receive() == {"WATCHDOG": "1"}  # the first ping is immediate
        loop_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop_task
    finally:
        notifier.close()


def test_a_full_socket_queue_never_blocks_the_sender(notify_socket: NotifySocket) -> None:
    """Nobody reads: sends fail fast (EAGAIN) and are logged, they do not wait."""
    notifier = notifier_for(notify_socket)
    try:
        with structlog.testing.capture_logs() as logs:
            results = [notifier.watchdog() for _ in range(10_000)]
        assert results[0] is True
        assert False in results
        assert logs[0]["event"] == "systemd_notify_failed"
    finally:
        notifier.close()


def test_a_missing_socket_is_logged_not_raised(short_dir: Path) -> None:
    notifier = systemd.Notifier(systemd_settings({"NOTIFY_SOCKET": str(short_dir / "gone")}))
    with structlog.testing.capture_logs() as logs:
        assert notifier.ready() is False
    assert logs == [
        {
            "event": "systemd_notify_failed",
            "log_level": "warning",
            "socket": str(short_dir / "gone"),
            "fields": ["READY", "STATUS"],
            "error": logs[0]["error"],
        }
    ]
    notifier.close()


# --- the daemon under a service manager -----------------------------------------------------


def _mdwe_supported() -> bool:
    """PR_SET_MDWE (Linux 6.3+) is what MemoryDenyWriteExecute=yes does on recent systemd."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # Probe in a child: the flag cannot be cleared once set.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _daemon_command(under_mdwe: bool) -> list[str]:
    if not under_mdwe:
        return [sys.executable, "-m", "mailerd"]
    # As systemd's MemoryDenyWriteExecute=yes: no mapping may gain PROT_EXEC once writable.
    bootstrap = (
        "import ctypes, runpy, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0\n"
        "sys.argv[0] = 'mailerd'\n"
        "runpy.run_module('mailerd', run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", bootstrap]


@contextlib.asynccontextmanager
async def daemon(
    command: list[str], config: Path, env: dict[str, str], stderr: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *command, "run", "--config", str(config), env=env, stdout=err, stderr=err
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("under_mdwe", [False, True], ids=["plain", "memory-deny-write-execute"])
async def test_mailerd_run_speaks_to_systemd(
    dsn: str, short_dir: Path, tmp_path: Path, under_mdwe: bool
) -> None:
    if under_mdwe and not _mdwe_supported():
        pytest.skip("prctl(PR_SET_MDWE) is not available (Linux 6.3+)")
    notify = NotifySocket.bound_in(short_dir)
    config = tmp_path / "mailerd.toml"
    config.write_text(
        f'[database]\ndsn = "{dsn}"\n\n[http]\nlisten = "127.0.0.1:0"\n\n'
        '[logging]\nformat = "json"\n\n[node]\nname = "sd-test"\nshutdown_grace_s = 10\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MAILERD_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=notify.name, WATCHDOG_USEC="400000")
    log_path = tmp_path / "daemon.log"
    with notify.sock:
        async with daemon(_daemon_command(under_mdwe), config, env, log_path) as process:
            try:
                before = await notify.receive_until("READY", within_s=60)
            except TimeoutError:
                pytest.fail(f"no READY=1; daemon output:\n{log_path.read_text(errors='replace')}")
            assert before == [before[-1]], "nothing is said before READY=1"
            ready = before[-1]
            assert ready["READY"] == "1"
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", ready["STATUS"])
            assert match, ready
            # READY=1 means the HTTP port is bound and answering.
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{match.group(1)}/healthz"
                async with session.get(url) as response:
                    assert response.status == 200

            pings = 0
            while pings < 3:
                message = await notify.receive(within_s=5)  # 0.2 s apart: well within 5 s
                assert message == {"WATCHDOG": "1"}
                pings += 1

            process.send_signal(signal.SIGTERM)
            after = await notify.receive_until("STOPPING", within_s=10)
            assert all(m == {"WATCHDOG": "1"} for m in after[:-1])
            assert after[-1]["STOPPING"] == "1"
            # a grace longer than the unit's TimeoutStopSec is not cut short by systemd
            assert after[-1]["EXTEND_TIMEOUT_USEC"] == str((10 + 15) * 1_000_000)
            async with asyncio.timeout(30):
                code = await process.wait()
            assert code == 0, log_path.read_text(errors="replace")


async def test_mailerd_relay_run_says_stopping_when_the_stop_begins(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, short_dir: Path, tmp_path: Path
) -> None:
    """The relay process said STOPPING=1 only once its stop was over: a stop held up (here by a
    position row locked elsewhere; in production by a database or destination that does not
    answer) was, to systemd, a service still running normally."""
    notify = NotifySocket.bound_in(short_dir)
    config = tmp_path / "mailerd.toml"
    config.write_text(
        f'[database]\ndsn = "{dsn}"\n[node]\nname = "sd-relay"\nshutdown_grace_s = 30\n'
        '[logging]\nformat = "json"\n[relay]\nrun_in = "process"\npoll_interval_ms = 50\n'
        f'lock_retry_s = 0.2\n[callbacks.app]\nurl = "{receiver.url}"\n'
        f'secret_file = "{receiver.secret_file(tmp_path)}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MAILERD_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=notify.name)
    log_path = tmp_path / "relay.log"
    campaign_id, leads = await make_campaign(conn, 20)
    await log_rows(conn, campaign_id, leads[:10])
    with notify.sock:
        async with daemon([sys.executable, "-m", "mailerd", "relay"], config, env, log_path) as process:
            assert "READY" in await notify.receive(within_s=60)
            async with asyncio.timeout(30):
                while len(receiver.records) < 10:
                    await asyncio.sleep(0.05)
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM relay_positions FOR UPDATE")
                await log_rows_elsewhere(dsn, campaign_id, leads[10:])
                async with asyncio.timeout(30):  # its position's commit waits for the row
                    while not await conn.fetchval(
                        """SELECT count(*) FROM pg_stat_activity
                           WHERE datname = current_database() AND wait_event_type = 'Lock'"""
                    ):
                        await asyncio.sleep(0.05)
                process.send_signal(signal.SIGTERM)
                try:
                    stopping = await notify.receive_until("STOPPING", within_s=10)
                except TimeoutError:
                    pytest.fail(f"no STOPPING=1; relay output:\n{log_path.read_text(errors='replace')}")
                assert stopping[-1]["STOPPING"] == "1"
                assert "up to 30 s" in stopping[-1]["STATUS"], stopping
                assert stopping[-1]["EXTEND_TIMEOUT_USEC"] == str((30 + 15) * 1_000_000)
                assert process.returncode is None  # the stop is under way, held by the row
            async with asyncio.timeout(30):  # the row is free: the stop ends, cleanly
                code = await process.wait()
            assert code == 0, log_path.read_text(errors="replace")


async def log_rows_elsewhere(dsn: str, campaign_id: int, lead_ids: list[int]) -> None:
    """:func:`log_rows` on a connection of its own (committed while ``conn`` holds its lock)."""
    other = await asyncpg.connect(dsn)
    try:
        await log_rows(other, campaign_id, lead_ids)
    finally:
        await other.close()


# --- the unit file -----------------------------------------------------------------------------


def _verify(unit: Path) -> tuple[int, str]:
    import subprocess

    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


# Each shipped unit and the command it starts: the daemon, and the relay in its own process.
UNITS = {UNIT: "mailerd run ", UNIT.with_name("mailerd-relay.service"): "mailerd relay run "}


@pytest.fixture(params=list(UNITS), ids=lambda unit: unit.name)
def unit_copy(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The unit with ExecStart pointing at this venv's mailerd (verify checks it exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    executable = Path(sys.executable).with_name("mailerd")
    if not executable.exists():
        executable = Path(sys.executable)  # any existing executable will do for verify
    unit: Path = request.param
    text = unit.read_text(encoding="utf-8")
    assert f"ExecStart=/opt/mailerd/.venv/bin/{UNITS[unit]}" in text
    path = tmp_path / unit.name
    path.write_text(text.replace("/opt/mailerd/.venv/bin/mailerd", str(executable)), encoding="utf-8")
    return path


def test_the_unit_file_passes_systemd_analyze_verify(unit_copy: Path) -> None:
    code, output = _verify(unit_copy)
    # verify exits 0 on unknown keys and bad values, but names the file when it complains.
    complaints = [line for line in output.splitlines() if unit_copy.name in line]
    assert code == 0, output
    assert complaints == [], output


def test_verify_would_catch_a_broken_unit(unit_copy: Path) -> None:
    unit_copy.write_text(
        unit_copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"),
        encoding="utf-8",
    )
    _, output = _verify(unit_copy)
    assert any(unit_copy.name in line for line in output.splitlines()), output


def test_the_unit_file_is_hardened(unit_copy: Path) -> None:
    import subprocess

    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "offline" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security review")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


@pytest.mark.parametrize("unit", list(UNITS), ids=lambda unit: unit.name)
def test_the_stop_timeout_outlasts_the_drain(unit: Path) -> None:
    """Both processes stop within [node] shutdown_grace_s and a few seconds (the relay's stop
    too since it has the daemon's deadline): systemd must not kill either first."""
    from mailerd.config import NodeConfig

    settings = dict(
        line.split("=", 1) for line in unit.read_text().splitlines() if re.match(r"^[A-Za-z]+=", line)
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    # past the deadline, what is left is closed within about 11 s (docs/runbook.md)
    assert float(settings["TimeoutStopSec"]) >= NodeConfig().shutdown_grace_s + 15
    assert int(settings["WatchdogSec"]) >= 2
