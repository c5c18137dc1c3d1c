"""Loading: parse in a worker thread while the event loop writes what was parsed before.

The worker thread runs the :class:`~mailerd.importer.source.Source` a chunk at a time, ahead of
the database through a bounded queue, so Python (one core) and Postgres (the other) work at
the same time. Chunks are gathered into batches of about :data:`BATCH_ROWS` rows, and each
batch is written into ``leads`` in file order by a :class:`LeadWriter`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import asyncpg

from mailerd.db import leads as leads_db
from mailerd.importer.progress import Progress
from mailerd.importer.rejects import ImportFailed, Reject
from mailerd.importer.source import Chunk, Source

BATCH_ROWS = 50_000  # rows written at a time (pipeline fill vs. statement overhead)
QUEUE_CHUNKS = 16  # parsed chunks the worker thread may run ahead of the database
DIRECT_COPY_FAILURES = 3  # stop copying straight into leads after this many unique violations
MAX_REFUSED_ROWS = 100  # rows the database refuses before the import stops (each costs statements)

# What the database answers about a row it cannot store (a value out of range, too long, too
# deep, a constraint of the host's): the row is rejected, the others are written.
REFUSALS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)


@dataclass(frozen=True, slots=True)
class _Piece:
    """One parsed chunk on its way to COPY, with what the merge needs to know about it."""

    chunk: Chunk
    rows: int
    batch_end: bool  # merge after this chunk
    repeats: bool  # (at a batch end) the batch repeats an address
    eof: bool = False


@dataclass(slots=True)
class Batch:
    """The chunks of one batch, kept whole: a batch refused by ``leads`` is staged instead."""

    chunks: list[Chunk]
    rows: int
    repeats: bool
    last: bool


class Pipeline:
    """Parse in a worker thread (running ahead through a bounded queue) while the event loop
    writes the batches parsed before."""

    def __init__(self, source: Source, progress: Progress) -> None:
        self.source = source
        self.progress = progress
        self.queue: asyncio.Queue[_Piece] = asyncio.Queue(QUEUE_CHUNKS)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mailerd-import")
        self.pending: Future[_Piece] | None = None  # the chunk the thread is parsing
        self.counted = 0
        self.batch_rows = 0

    def _next_piece(self) -> _Piece:
        """Runs in the worker thread: the next chunk, cut into batches by rows."""
        source = self.source
        chunk = source.next_chunk()
        if chunk is None:
            return _Piece(Chunk(b"", [], ()), 0, True, source.addresses.repeated, eof=True)
        rows, self.counted = source.rows - self.counted, source.rows
        self.batch_rows += rows
        # The first chunk is a batch of its own, so that Postgres starts while this thread parses on.
        end = self.batch_rows >= BATCH_ROWS or self.counted == rows
        piece = _Piece(chunk, rows, end, source.addresses.repeated)
        if end:
            self.batch_rows = 0
            source.addresses.clear()
        return piece

    async def _produce(self) -> None:
        while True:
            self.pending = self.executor.submit(self._next_piece)
            piece = await asyncio.wrap_future(self.pending)
            self.pending = None
            await self.queue.put(piece)
            if piece.eof:
                return

    async def _batch(self) -> Batch:
        """The next batch, whole (the worker thread is meanwhile parsing the ones after)."""
        chunks: list[Chunk] = []
        rows = 0
        while True:
            piece = await self.queue.get()
            self.progress.update(self.source.bytes_read, self.source.rows)
            rows += piece.rows
            if piece.chunk.data:
                chunks.append(piece.chunk)
            if piece.batch_end:
                return Batch(chunks, rows, piece.repeats, piece.eof)

    async def run(self, writer: LeadWriter) -> None:
        """Write batch after batch until the file ends (only read on once a retype is due)."""
        producer = asyncio.create_task(self._produce())
        try:
            while True:
                batch = await self._batch()
                if batch.rows and not self.source.retype:
                    await writer.write(batch)
                if batch.last:
                    break
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            if self.pending is not None:  # a running chunk cannot be cancelled: wait, the file closes next
                await asyncio.gather(asyncio.wrap_future(self.pending), return_exceptions=True)
            self.executor.shutdown(wait=False)


class LeadWriter:
    """Writes each batch into ``leads``, in file order, inside the import's transaction.

    A batch of new addresses is copied straight into ``leads`` (in a savepoint): COPY is the
    cheapest way in. A unique violation (an address exists already, or repeats) rolls the
    savepoint back, and the batch is staged and upserted instead; a batch known to repeat an
    address goes straight to folding its lines in file order. After a few unique violations the
    run stops trying the direct COPY (the file is mostly updates).

    Each batch is written in a savepoint of its own. When the database refuses it for a row it
    cannot store (:data:`REFUSALS`), the batch is written again in halves, down to the rows it
    refuses: those are kept in :attr:`refused` (rejects of the run), the others are written.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.direct_failures = 0
        self.refused: list[Reject] = []

    async def start(self) -> None:
        """Before the first batch, in the import's transaction (not in a batch's savepoint)."""
        await leads_db.create_staging(self.conn)

    async def write(self, batch: Batch) -> None:
        data = [chunk.data for chunk in batch.chunks]
        try:
            async with self.conn.transaction():
                await self._write(data, repeats=batch.repeats)
        except REFUSALS as exc:
            rows = b"".join(data).split(b"\n")[:-1]  # (COPY text rows hold no raw line break)
            lines = list(itertools.chain.from_iterable(chunk.lines for chunk in batch.chunks))
            raws = list(itertools.chain.from_iterable(chunk.raws for chunk in batch.chunks))
            await self._split(rows, lines, raws, exc)

    async def _write(self, data: list[bytes], *, repeats: bool) -> None:
        if not repeats and self.direct_failures < DIRECT_COPY_FAILURES:
            try:
                async with self.conn.transaction():
                    await leads_db.copy_into_leads(self.conn, data)
                return
            except asyncpg.UniqueViolationError:
                self.direct_failures += 1
        await leads_db.copy_into_staging(self.conn, data)
        await self._upsert(folded=repeats)
        await leads_db.truncate_staging(self.conn)

    async def _upsert(self, *, folded: bool) -> None:
        if not folded:
            try:
                async with self.conn.transaction():
                    await leads_db.upsert_staged(self.conn)
                return
            except asyncpg.CardinalityViolationError:
                # "ON CONFLICT DO UPDATE command cannot affect row a second time": the batch
                # repeats an address after all (Postgres lower-cased two spellings alike).
                pass
        await leads_db.upsert_staged_folded(self.conn)

    async def _split(
        self, rows: list[bytes], lines: list[int], raws: Sequence[str | bytes], error: Exception
    ) -> None:
        """Write refused ``rows`` in halves (each in a savepoint), down to single rows refused."""
        if len(rows) == 1:
            self._refuse(lines[0], raws[0], error)
            return
        half = len(rows) // 2
        for part in (slice(None, half), slice(half, None)):
            try:
                async with self.conn.transaction():
                    # Folded: a half may repeat an address; folding is right for any batch.
                    await self._write([b"\n".join(rows[part]) + b"\n"], repeats=True)
            except REFUSALS as exc:
                await self._split(rows[part], lines[part], raws[part], exc)

    def _refuse(self, line: int, raw: str | bytes, error: Exception) -> None:
        reason = str(error).partition("\n")[0]
        text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
        self.refused.append(Reject(line, f"refused by the database: {reason}", text))
        if len(self.refused) > MAX_REFUSED_ROWS:
            first = self.refused[0]
            raise ImportFailed(
                f"the database refused more than {MAX_REFUSED_ROWS} rows (the first at line {first.line}:"
                f" {first.reason.removeprefix('refused by the database: ')}); nothing imported"
            )
