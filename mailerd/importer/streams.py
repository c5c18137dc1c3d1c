"""JSONL from a byte stream that lives on the event loop (the body of ``POST /api/leads/bulk``),
imported like a JSONL file: the same source, parser thread, pipeline and writer.

Nothing is buffered whole. The parser thread pulls the body a block at a time from the event
loop (:class:`LoopReader`), so the socket is read only as fast as the rows are written, and
cuts the blocks into lines (:class:`StreamLines`), holding at most one partial line: a line
longer than the limit is handed over cut short and rejected by the source.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Protocol

import asyncpg

from mailerd.importer.leads import import_lines
from mailerd.importer.rejects import ImportFailed, ImportResult, RejectSink

STALL_S = 60.0  # a body that sends nothing for this long is given up (its transaction is open)


class ByteStream(Protocol):
    """An asyncio byte stream (aiohttp's ``request.content``): a block, ``b""`` at its end."""

    async def readany(self) -> bytes: ...


class TooLarge(ImportFailed):
    """The stream is longer than its limit; nothing is imported."""


class Stopped(ImportFailed):
    """The import ended before the stream did (an error on the database side, a cancel)."""


class Unreadable(ImportFailed):
    """The stream failed (the client went away, its encoding does not decode, it stalled for
    :data:`STALL_S` seconds); nothing is imported."""


class LoopReader:
    """The blocks of a :class:`ByteStream`, read from the parser thread.

    :meth:`read` runs in the thread and waits for the event loop to read the next block;
    :meth:`stop` (on the event loop) makes a waiting or later :meth:`read` raise :class:`Stopped`.
    """

    def __init__(self, stream: ByteStream, loop: asyncio.AbstractEventLoop, *, max_bytes: int) -> None:
        self.stream = stream
        self.loop = loop
        self.max_bytes = max_bytes
        self.bytes = 0
        self.stopped = False
        self.future: concurrent.futures.Future[bytes] | None = None

    async def _block(self) -> bytes:
        try:
            async with asyncio.timeout(STALL_S):
                return await self.stream.readany()
        except TimeoutError:
            raise Unreadable(f"nothing arrived for {STALL_S:.0f} s") from None
        except Exception as exc:  # whatever the stream raises: it cannot be read on
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise Unreadable(reason) from exc

    def read(self) -> bytes:
        """The next block (``b""`` at the end); in the parser thread."""
        if self.stopped:
            raise Stopped("the import was stopped")
        future = asyncio.run_coroutine_threadsafe(self._block(), self.loop)
        self.future = future
        if self.stopped:  # stop() ran before self.future was set
            future.cancel()
        try:
            block = future.result()
        except concurrent.futures.CancelledError:
            raise Stopped("the import was stopped") from None
        finally:
            self.future = None
        self.bytes += len(block)
        if self.bytes > self.max_bytes:
            raise TooLarge(f"the body is larger than {self.max_bytes:,} bytes")
        return block

    def stop(self) -> None:
        """On the event loop: no more reading."""
        self.stopped = True
        future = self.future
        if future is not None:
            future.cancel()


class StreamLines:
    """The lines of a stream of blocks, without their ``\\n``, in batches (``readlines``).

    ``read`` returns the next block (``b""`` at the end). A line longer than ``max_line``
    bytes is handed over cut to ``max_line + 2`` bytes, and the rest of it is dropped as it
    arrives: at most one partial line is held. (Two bytes past the limit: a line of the limit
    with its ``\r`` is ``max_line + 1`` bytes, so a cut line is always longer than any whole
    one the source takes.)
    """

    def __init__(self, read: Callable[[], bytes], *, max_line: int) -> None:
        self.read = read
        self.max_line = max_line
        self.rest = b""  # the partial line so far (cut short when too long)
        self.skipping = False  # the partial line is too long: drop until its end
        self.eof = False

    def readlines(self, hint: int = -1, /) -> list[bytes]:
        """Whole lines, at least ``hint`` bytes of them unless the stream ends (``[]`` then)."""
        lines: list[bytes] = []
        size = 0
        while not self.eof and (hint <= 0 or size < hint):
            block = self.read()
            if not block:
                self.eof = True
                if self.rest:
                    lines.append(self.rest)
                    self.rest = b""
                break
            size += self._split(block, lines)
        return lines

    def _split(self, block: bytes, lines: list[bytes]) -> int:
        """Append the lines ``block`` completes; keep its unfinished end. Bytes appended."""
        cut = block.rfind(b"\n")
        if cut < 0:
            self._grow(block)
            return 0
        if self.skipping:
            lines.append(self.rest)
            whole = block[block.index(b"\n") + 1 : cut + 1]
            self.rest, self.skipping = b"", False
        else:
            whole = self.rest + block[: cut + 1] if self.rest else block[: cut + 1]
            self.rest = b""
        if whole:
            lines.extend(whole.split(b"\n")[:-1])
        self._grow(block[cut + 1 :])
        return len(whole)

    def _grow(self, tail: bytes) -> None:
        if self.skipping or not tail:
            return
        self.rest += tail
        if len(self.rest) > self.max_line + 1:
            self.rest = self.rest[: self.max_line + 2]
            self.skipping = True


async def import_stream(
    conn: asyncpg.Connection,
    *,
    account_id: int,
    stream: ByteStream,
    max_bytes: int,
    max_line_bytes: int,
    keep_rejects: int,
) -> ImportResult:
    """Import the JSONL ``stream`` for ``account_id`` in one transaction, as a JSONL file is.

    The first ``keep_rejects`` rejects are kept (without their text), all are counted. Raise
    :class:`TooLarge` past ``max_bytes`` and :class:`ImportFailed` when the run stops (nothing
    imported either way), :class:`Unreadable` when the stream fails.
    """
    started = time.perf_counter()
    reader = LoopReader(stream, asyncio.get_running_loop(), max_bytes=max_bytes)
    sink = RejectSink(None, keep=keep_rejects, raw_chars=0)
    imported = await import_lines(
        conn,
        account_id=account_id,
        lines=StreamLines(reader.read, max_line=max_line_bytes),
        sink=sink,
        interrupt=reader.stop,
        max_line_bytes=max_line_bytes,
    )
    return ImportResult(imported, sink.count, sink.first, time.perf_counter() - started)
