"""What a parser hands to the loader: the :class:`Source` protocol and its shared pieces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

CHUNK_CHARS = 1 << 20  # about 1 MB of input per chunk handed to COPY (read at call time: tests shrink it)


class Addresses:
    """Lower-cased addresses of the current batch, to notice one that repeats.

    A hint only (Python's ``lower`` is not Postgres's for every script): the merge stays correct
    either way, this just sends a batch with a repeat straight to the folding merge.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.repeated = False

    def note(self, addresses: list[str]) -> None:
        before = len(self.seen)
        self.seen.update(map(str.lower, addresses))
        if len(self.seen) - before != len(addresses):
            self.repeated = True

    def clear(self) -> None:
        self.seen.clear()
        self.repeated = False


@dataclass(frozen=True, slots=True)
class Chunk:
    """Parsed rows on their way to COPY: ``data`` holds one ``account_id, email, attributes``
    row in COPY text format per row, ``lines`` and ``raws`` the first physical line and the
    text as read of each (so that a row the database refuses is rejected by its line)."""

    data: bytes
    lines: list[int]
    raws: Sequence[str | bytes]


EMPTY = Chunk(b"", [], ())


class Source(Protocol):
    """A parser feeding COPY (runs in a worker thread): the file chunk by chunk, ``None`` at
    its end."""

    rows: int
    bytes_read: int
    addresses: Addresses
    retype: bool

    def next_chunk(self) -> Chunk | None: ...
