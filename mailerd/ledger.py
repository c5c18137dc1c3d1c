"""Which dispatched batches of a shard are logged: the source of the shard's checkpoint.

The scheduler adds an entry per batch in lead-id order (``upto`` never decreases). The writer
resolves entries when their rows commit. The checkpoint is the ``upto`` of the longest prefix of
entries that are all logged: every lead at or below it has its row. An entry that was not
(fully) sent, because its shard stopped or its provider halted, is *discarded*: it blocks the
checkpoint, so the next owner of the shard re-dispatches the leads of that gap that have no row.
Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import collections
import enum


class EntryState(enum.IntEnum):
    """Where a dispatched batch stands."""

    PENDING = 0
    LOGGED = 1
    DISCARDED = 2


class Ledger:
    """Entries of one shard, oldest first, and the checkpoint they allow."""

    __slots__ = ("_entries", "_unresolved", "checkpoint")

    def __init__(self, checkpoint: int) -> None:
        self.checkpoint = checkpoint
        # seq -> [upto, state]; insertion order is seq order.
        self._entries: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self._unresolved = 0

    def add(self, seq: int, upto: int) -> None:
        """Record a dispatched batch (in seq order) covering leads up to ``upto``."""
        self._entries[seq] = [upto, EntryState.PENDING]
        self._unresolved += 1

    def discard(self, seq: int) -> None:
        """The batch will not be logged in full: the checkpoint stops before it."""
        entry = self._entries.get(seq)
        if entry is not None and entry[1] == EntryState.PENDING:
            entry[1] = EntryState.DISCARDED
            self._unresolved -= 1

    def checkpoint_if_logged(self, seqs: set[int]) -> int:
        """The checkpoint that would hold if ``seqs`` were logged now (no change made)."""
        checkpoint = self.checkpoint
        for seq, (upto, state) in self._entries.items():
            if state == EntryState.LOGGED or (state == EntryState.PENDING and seq in seqs):
                checkpoint = upto
            else:
                break
        return checkpoint

    def mark_logged(self, seqs: set[int], complete: set[int] | None = None) -> int:
        """Resolve ``seqs`` after their rows committed; return the new checkpoint.

        Seqs not in ``complete`` (when given) were only partly sent and become discarded.
        """
        for seq in seqs:
            entry = self._entries.get(seq)
            if entry is None or entry[1] != EntryState.PENDING:
                continue
            entry[1] = EntryState.LOGGED if complete is None or seq in complete else EntryState.DISCARDED
            self._unresolved -= 1
        while self._entries:
            seq, (upto, state) = next(iter(self._entries.items()))
            if state != EntryState.LOGGED:
                break
            self.checkpoint = upto
            del self._entries[seq]
        return self.checkpoint

    def pending_before(self, seq: int) -> int:
        """Entries older than ``seq`` that hold the checkpoint back (dispatched, not all logged)."""
        count = 0
        for entry_seq in self._entries:
            if entry_seq >= seq:
                break
            count += 1
        return count

    def upto_ahead(self, seq: int, count: int) -> int:
        """The ``upto`` of the entry ``count`` places after ``seq`` (or the last one added)."""
        found = False
        upto = 0
        remaining = count
        for entry_seq, (entry_upto, _) in self._entries.items():
            if entry_seq == seq:
                found = True
            if found:
                upto = entry_upto
                if remaining == 0:
                    break
                remaining -= 1
        return upto

    @property
    def unresolved(self) -> int:
        """Entries neither logged nor discarded: batches queued or in flight."""
        return self._unresolved

    @property
    def has_discarded(self) -> bool:
        return any(state == EntryState.DISCARDED for _, state in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
