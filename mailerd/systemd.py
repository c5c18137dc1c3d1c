"""The systemd notify protocol (``Type=notify``, ``WatchdogSec=``) without libsystemd.

The protocol is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (see sd_notify(3)). The daemon says ``READY=1`` once migrations are checked
and the HTTP port is bound, ``STOPPING=1`` when the drain begins (with ``EXTEND_TIMEOUT_USEC``:
how long the stop may take), and ``WATCHDOG=1`` from the
event loop every half ``WatchdogSec``: a stuck loop stops the pings and systemd restarts the unit.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. Sends never block the event loop
and never raise: a failed send is logged and reported as ``False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket

import structlog

from mailerd.config import SystemdSettings

log = structlog.get_logger(__name__)

_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


def format_message(fields: dict[str, str | int]) -> bytes:
    """``{"READY": 1, "STATUS": "up"}`` -> ``b"READY=1\\nSTATUS=up\\n"`` (keys upper-cased).

    Raises ValueError for a key that is not ``[A-Z][A-Z0-9_]*`` or a value with a newline:
    either would corrupt the message.
    """
    if not fields:
        raise ValueError("a notification needs at least one field")
    lines = []
    for key, value in fields.items():
        name = key.upper()
        text = str(int(value)) if isinstance(value, bool) else str(value)
        if not _KEY.fullmatch(name):
            raise ValueError(f"invalid notify key {key!r}")
        if "\n" in text:
            raise ValueError(f"notify value of {name} contains a newline")
        lines.append(f"{name}={text}\n")
    return "".join(lines).encode()


def socket_address(notify_socket: str) -> str:
    """The address to send to: a leading ``@`` names the abstract namespace (``\\0``)."""
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    return notify_socket


def one_line(text: str) -> str:
    """Status text flattened to one line (the protocol is line-based)."""
    return " ".join(text.split())


class Notifier:
    """Sends notifications to the service manager named in :class:`SystemdSettings`.

    ``WATCHDOG_PID`` names the process the settings were meant for: when it is set and is not
    this process (the environment was inherited), the notifier stays silent, watchdog included.
    """

    def __init__(self, settings: SystemdSettings | None = None, *, pid: int | None = None) -> None:
        self.settings = settings or SystemdSettings()  # None: not under systemd, a no-op
        self._pid = os.getpid() if pid is None else pid
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify and the settings are meant for this process."""
        if self.settings.notify_socket is None:
            return False
        return self.settings.watchdog_pid is None or self.settings.watchdog_pid == self._pid

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds, or None when no watchdog applies to us."""
        if not self.enabled or self.settings.watchdog_usec is None:
            return None
        return self.settings.watchdog_usec / 2 / 1_000_000

    def notify(self, **fields: str | int) -> bool:
        """Send one message (``notify(READY=1, STATUS="...")``); True if it was handed over."""
        message = format_message(fields)
        if not self.enabled:
            return False
        assert self.settings.notify_socket is not None
        address = socket_address(self.settings.notify_socket)
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, address)
        except OSError as exc:  # BlockingIOError (a full queue) included: never wait for it
            log.warning(
                "systemd_notify_failed",
                socket=self.settings.notify_socket,
                fields=sorted(k.upper() for k in fields),
                error=str(exc) or type(exc).__name__,
            )
            return False
        return True

    def ready(self, status: str = "ready") -> bool:
        """``READY=1``: startup is over (migrations checked, HTTP bound)."""
        return self.notify(READY=1, STATUS=one_line(status))

    def stopping(self, status: str = "draining", *, takes_up_to_s: float | None = None) -> bool:
        """``STOPPING=1``: the drain has begun; with ``takes_up_to_s``, also
        ``EXTEND_TIMEOUT_USEC``, so that a ``shutdown_grace_s`` longer than the unit's
        ``TimeoutStopSec`` is not cut short by a SIGKILL (systemd 236 and later; it only ever
        extends the timeout, never shortens it)."""
        if takes_up_to_s is None:
            return self.notify(STOPPING=1, STATUS=one_line(status))
        extend_usec = max(1, round(takes_up_to_s * 1_000_000))
        return self.notify(STOPPING=1, STATUS=one_line(status), EXTEND_TIMEOUT_USEC=extend_usec)

    def status(self, text: str) -> bool:
        """``STATUS=...``: a free-form line shown by ``systemctl status``."""
        return self.notify(STATUS=one_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the event loop is alive."""
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        """Close the socket (a later notification opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def watchdog_loop(notifier: Notifier, stop: asyncio.Event | None = None) -> None:
    """Send ``WATCHDOG=1`` every half ``WatchdogSec`` from this event loop until ``stop``.

    Returns at once when no watchdog is configured, and when ``stop`` is set: after
    ``STOPPING=1`` systemd bounds the drain with ``TimeoutStopSec`` instead. Cancellable.
    """
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    log.info("systemd_watchdog_started", interval_s=interval)
    while stop is None or not stop.is_set():
        notifier.watchdog()
        if stop is None:
            await asyncio.sleep(interval)
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()
