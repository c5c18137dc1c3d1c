"""What a parser hands to the loader: the :class:`Source` protocol and its shared pieces."""

from __future__ import annotations

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


class Source(Protocol):
    """A parser feeding COPY (runs in a worker thread): each chunk is ``account_id, email,
    attributes`` rows in COPY text format, ``None`` at the end of the file."""

    rows: int
    bytes_read: int
    addresses: Addresses
    retype: bool

    def next_chunk(self) -> bytes | None: ...
