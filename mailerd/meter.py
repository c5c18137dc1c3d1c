"""What one render of a template may still spend, and the clock it spends by.

Pure: no I/O, no Jinja. A :class:`Meter` is made per render (per recipient) from the
``[content]`` limits and set in :data:`METER` for the render's duration; the hooks of
:mod:`mailerd.sandbox` charge it, and it raises :class:`Overrun` past a limit:

- ``max_loop_iterations``: :meth:`Meter.iterate`, for the three parts together;
- ``max_output_bytes``: :meth:`Meter.size` for one value, :meth:`Meter.produce` for the text a
  part produces in all (up to :data:`PRODUCED_FACTOR` times the limit: set blocks and macros
  capture text that is printed again later);
- ``max_render_ms``: every hook ticks; every :data:`CHECK_CLOCK_EVERY` ticks the clock is read.
  The clock is :func:`cpu_clock`, this thread's CPU time without garbage collection: it measures
  what the template costs, not how busy the host is, so a good template's render is not failed
  because the process was preempted or collected garbage; the wall-clock stall a render causes
  is bounded by it plus what the host adds.
"""

from __future__ import annotations

import contextvars
import gc
import threading
import time
from collections.abc import Callable
from typing import Final

from mailerd.config import ContentConfig

CHECK_CLOCK_EVERY: Final = 32
PRODUCED_FACTOR: Final = 4


class Overrun(Exception):
    """A render passed a limit; ``limit`` is the setting's name, ``detail`` says what happened."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit
        self.detail = detail


class Meter:
    """What one render has left to spend; every hook charges it."""

    __slots__ = ("clock", "countdown", "deadline", "iterations_left", "limits", "produced_left")

    def __init__(self, limits: ContentConfig, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.max_render_ms / 1000
        self.countdown = CHECK_CLOCK_EVERY
        self.iterations_left = limits.max_loop_iterations
        self.produced_left = PRODUCED_FACTOR * limits.max_output_bytes

    def start_part(self) -> None:
        self.produced_left = PRODUCED_FACTOR * self.limits.max_output_bytes

    def tick(self) -> None:
        self.countdown -= 1
        if self.countdown <= 0:
            self.check_clock()

    def check_clock(self) -> None:
        self.countdown = CHECK_CLOCK_EVERY
        if self.clock() > self.deadline:
            limit = self.limits.max_render_ms
            raise Overrun("max_render_ms", f"the render took more than {limit} ms of CPU")

    def iterate(self, count: int, what: str) -> None:
        self.iterations_left -= max(count, 0)  # a negative count (slice(-5)) must not refund
        if self.iterations_left < 0:
            raise Overrun(
                "max_loop_iterations",
                f"more than {self.limits.max_loop_iterations} loop iterations (at {what})",
            )
        self.tick()

    def produce(self, characters: int) -> None:
        self.countdown -= 1
        if self.countdown <= 0:
            self.check_clock()
        self.produced_left -= max(characters, 0)
        if self.produced_left < 0:
            raise Overrun(
                "max_output_bytes",
                f"more than {PRODUCED_FACTOR} x {self.limits.max_output_bytes} characters produced "
                "(loops, set blocks and macros included)",
            )

    def size(self, size: int, what: str) -> None:
        # Big values took long to make: look at the clock sooner (one tick per 16 KiB).
        self.countdown -= max(size, 0) >> 14
        if self.countdown <= 0:
            self.check_clock()
        if size > self.limits.max_output_bytes:
            raise Overrun(
                "max_output_bytes",
                f"{what} of {size} characters or items (at most {self.limits.max_output_bytes})",
            )


METER: Final[contextvars.ContextVar[Meter | None]] = contextvars.ContextVar("mailerd_template_meter")
_gc_time = threading.local()


def cpu_clock() -> float:
    """CPU seconds of this thread, garbage collection excluded: what a render costs by itself.

    A collection pauses whichever thread triggers it, for as long as the whole heap takes; left
    in, it would fail a good template's render now and then.
    """
    spent: float = getattr(_gc_time, "spent", 0.0)
    return time.thread_time() - spent


def _on_gc(phase: str, info: dict[str, int]) -> None:
    now = time.thread_time()
    if phase == "start":
        _gc_time.started = now
    else:
        _gc_time.spent = getattr(_gc_time, "spent", 0.0) + now - getattr(_gc_time, "started", now)


gc.callbacks.append(_on_gc)
_UNMETERED: Final = ContentConfig()


def current() -> Meter:
    """The meter of the render under way; a fresh default one outside a render (fail closed:
    the size checks still apply)."""
    meter = METER.get(None)
    return meter if meter is not None else Meter(_UNMETERED, lambda: 0.0)
