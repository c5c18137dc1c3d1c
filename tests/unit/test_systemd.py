"""The systemd notify protocol: messages, addresses, settings, and when the notifier is silent."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from mailerd import systemd
from mailerd.config import ConfigError, SystemdSettings, systemd_settings


def test_a_message_is_key_value_lines() -> None:
    message = systemd.format_message({"READY": 1, "STATUS": "listening on 127.0.0.1:8025"})
    assert message == b"READY=1\nSTATUS=listening on 127.0.0.1:8025\n"


def test_keys_are_upper_cased_and_booleans_are_numbers() -> None:
    assert systemd.format_message({"watchdog": True}) == b"WATCHDOG=1\n"
    assert systemd.format_message({"EXTEND_TIMEOUT_USEC": 5_000_000}) == b"EXTEND_TIMEOUT_USEC=5000000\n"


@pytest.mark.parametrize(
    "fields",
    [{}, {"STATUS": "two\nlines"}, {"READY=1\nSTOPPING": 1}, {"1X": 1}, {"": 1}],
)
def test_a_message_that_would_corrupt_the_protocol_is_refused(fields: dict[str, str | int]) -> None:
    with pytest.raises(ValueError):
        systemd.format_message(fields)


def test_status_text_is_flattened_to_one_line() -> None:
    assert systemd.one_line("  draining,\n  up to 30 s\t") == "draining, up to 30 s"


def test_a_leading_at_sign_names_the_abstract_namespace() -> None:
    assert systemd.socket_address("@/org/freedesktop/systemd1/notify/42") == (
        "\0/org/freedesktop/systemd1/notify/42"
    )
    assert systemd.socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_settings_are_read_from_the_given_environment() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}
    assert systemd_settings(env) == SystemdSettings("/run/systemd/notify", 30_000_000, 42)


def test_settings_outside_systemd_are_all_unset() -> None:
    assert systemd_settings({}) == SystemdSettings(None, None, None)
    assert systemd_settings({"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "0"}) == SystemdSettings()


@pytest.mark.parametrize("key", ["WATCHDOG_USEC", "WATCHDOG_PID"])
def test_a_malformed_number_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        systemd_settings({"NOTIFY_SOCKET": "/run/systemd/notify", key: "30s"})


def test_the_watchdog_interval_is_half_of_watchdog_usec() -> None:
    notifier = systemd.Notifier(SystemdSettings("/run/systemd/notify", 30_000_000, None), pid=7)
    assert notifier.watchdog_interval_s == 15.0
    notifier = systemd.Notifier(SystemdSettings("@notify", 400_000, 7), pid=7)
    assert notifier.watchdog_interval_s == pytest.approx(0.2)


def test_no_watchdog_without_watchdog_usec() -> None:
    notifier = systemd.Notifier(SystemdSettings("/run/systemd/notify", None, None), pid=7)
    assert notifier.enabled
    assert notifier.watchdog_interval_s is None


def test_settings_meant_for_another_process_silence_the_notifier() -> None:
    """WATCHDOG_PID names the main process: a child that inherited the environment is silent."""
    notifier = systemd.Notifier(SystemdSettings("/nonexistent/notify", 30_000_000, 41), pid=42)
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.ready() is False
    assert notifier._socket is None


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    for notifier in (systemd.Notifier(), systemd.Notifier(SystemdSettings(None, 30_000_000, None))):
        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None
        with structlog.testing.capture_logs() as logs:
            assert notifier.ready() is False
            assert notifier.stopping() is False
            assert notifier.status("idle") is False
            assert notifier.watchdog() is False
        assert logs == []
        assert notifier._socket is None
        notifier.close()


def test_a_malformed_message_is_refused_even_without_a_socket() -> None:
    with pytest.raises(ValueError):
        systemd.Notifier().notify(**{"bad key": 1})


async def test_the_watchdog_loop_returns_at_once_without_a_watchdog() -> None:
    async with asyncio.timeout(1):
        await systemd.watchdog_loop(systemd.Notifier())
        await systemd.watchdog_loop(systemd.Notifier(SystemdSettings("/run/x", None, None)), None)
