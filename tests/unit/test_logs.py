"""Log output: the console renderer's tracebacks show no local variables."""

from __future__ import annotations

import io

import structlog

from mailerd import logs


def _fail(depth: int) -> None:
    password = "hunter2-in-a-local"  # what a traceback must not print
    if depth:
        _fail(depth - 1)
    raise RuntimeError(f"failed with {len(password)}")


def test_a_console_traceback_shows_no_locals() -> None:
    stream = io.StringIO()
    before = structlog.get_config()
    logs.configure(fmt="console", stream=stream)
    try:
        try:
            _fail(3)
        except RuntimeError:
            structlog.get_logger("test").exception("unexpected_error")
    finally:
        structlog.configure(**before)
    output = stream.getvalue()
    assert "unexpected_error" in output and "RuntimeError: failed with 18" in output
    assert "hunter2" not in output
