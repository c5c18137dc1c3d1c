"""The JSON-lines record of the recipients an emulator accepted (tests and benchmarks audit it).

Lines are buffered and written off the loop, in order, at least every ``FLUSH_INTERVAL_S`` and
on close, so the emulator's hot path only appends bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from pathlib import Path
from typing import IO, Final

FLUSH_INTERVAL_S: Final = 0.1


class Recorder:
    """Buffers record lines; its flushing task writes them in a worker thread.

    An async context manager (``async with Recorder(path) as recorder``), or :meth:`open` and
    :meth:`close`: the flushing task lives in a TaskGroup the recorder enters on open and leaves
    on close, so it never outlives the recorder; close lets it finish, then writes what is left.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buffer = bytearray()  # one growing buffer: many small bytes objects cost more
        self._file: IO[bytes] | None = None
        self._tasks: contextlib.AsyncExitStack | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one write at a time, in order
        self._closing = False

    async def __aenter__(self) -> Recorder:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        self._file = await asyncio.to_thread(self.path.open, "ab")
        self._closing = False
        self._tasks = contextlib.AsyncExitStack()
        group = await self._tasks.enter_async_context(asyncio.TaskGroup())
        group.create_task(self._run(), name="sink-recorder")

    def add(self, line: bytes) -> None:
        self._buffer += line

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL_S):
                    await self._wake.wait()
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer or self._file is None:
                return
            chunk, self._buffer = self._buffer, bytearray()
            await asyncio.to_thread(_write, self._file, chunk)

    async def close(self) -> None:
        """Stop the flushing task (it finishes its write), then write the rest and close."""
        self._closing = True
        self._wake.set()
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            await tasks.aclose()
        await self.flush()
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None


def _write(file: IO[bytes], chunk: bytearray) -> None:
    file.write(chunk)
    file.flush()
