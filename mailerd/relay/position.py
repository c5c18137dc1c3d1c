"""Transaction-id snapshots: which outbox rows a destination has passed, and which come next.

Pure: no I/O. Every outbox row carries ``tx``, the id of the transaction that wrote it
(``txid_current()``). A destination's position is a snapshot ``(xmin, xmax, xip)`` read as the
set of transactions it has *passed*: every ``tx < xmax`` that is not in ``xip``. A poll takes
the database's current snapshot ``S`` (``txid_current_snapshot()``) and reads the rows whose
transaction is committed in ``S`` and not passed yet. A transaction still running at the poll is
in ``S.xip``: its rows are read by a later poll, once it has committed, never skipped (PgQ's
method).

A poll that reads only part of what ``S`` makes visible (its batch is capped) stops at a
*cutoff*: every row with ``tx < cutoff`` is read in full, none at or above it. The new position
then passes exactly the transactions below the cutoff that ``S`` saw committed, and keeps every
transaction running in ``S`` below the cutoff in its ``xip``, so those are still read later
(:func:`advance`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

# Rows written before migration 0008 read tx = 0: a new destination starts after them (they are
# reached with `mailerd relay replay`), so "earliest" is (1, 1, ()).
EARLIEST_TX = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """``xmin <= every xip < xmax``. As a position: the transactions it has passed."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.xmin > self.xmax:
            raise ValueError(f"snapshot xmin {self.xmin} above xmax {self.xmax}")
        if any(not self.xmin <= tx < self.xmax for tx in self.xip):
            raise ValueError(f"snapshot xip {self.xip} outside [{self.xmin}, {self.xmax})")

    @classmethod
    def of(cls, xmin: int, xmax: int, xip: Iterable[int] = ()) -> Snapshot:
        """A snapshot with its xip sorted and without repeats."""
        return cls(xmin, xmax, tuple(sorted(set(xip))))

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """The text form of ``txid_current_snapshot()``: ``xmin:xmax:xip,xip,...``."""
        try:
            xmin_text, xmax_text, xip_text = text.split(":")
            xip = [int(part) for part in xip_text.split(",") if part]
            return cls.of(int(xmin_text), int(xmax_text), xip)
        except ValueError as exc:
            raise ValueError(f"not a txid snapshot: {text!r}") from exc

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"

    def passed(self, tx: int) -> bool:
        """As a position: whether transaction ``tx`` is behind it. As a database snapshot: whether
        ``tx`` had ended (committed or aborted) when it was taken."""
        return tx < self.xmax and tx not in self.xip


def earliest() -> Snapshot:
    """The position of a destination that has passed nothing written since migration 0008."""
    return Snapshot(EARLIEST_TX, EARLIEST_TX)


def due(position: Snapshot, snapshot: Snapshot, tx: int, cutoff: int | None = None) -> bool:
    """Whether a row of transaction ``tx`` is read by a poll from ``position`` in ``snapshot``
    (below ``cutoff`` when one is given). The SQL in :mod:`mailerd.db.relay` says the same."""
    upper = snapshot.xmax if cutoff is None else min(cutoff, snapshot.xmax)
    return tx < upper and snapshot.passed(tx) and not position.passed(tx)


def advance(position: Snapshot, snapshot: Snapshot, cutoff: int | None = None) -> Snapshot:
    """The position once every row :func:`due` for this poll has been delivered.

    Without a cutoff, that is ``snapshot`` itself. With one (``position.xmin <= cutoff <=
    snapshot.xmax``), the new position passes what ``position`` passed plus every transaction
    below the cutoff that had ended in ``snapshot``; transactions below the cutoff still running
    in ``snapshot`` stay unpassed, and so does whatever ``position`` had not passed at or above
    the cutoff.
    """
    if cutoff is None or cutoff >= snapshot.xmax:
        return snapshot
    if cutoff < position.xmin:
        raise ValueError(f"cutoff {cutoff} below the position's xmin {position.xmin}")
    xmax = max(cutoff, position.xmax)
    running = {tx for tx in snapshot.xip if tx < cutoff and not position.passed(tx)}
    left = {tx for tx in position.xip if tx >= cutoff}
    xip = running | left
    return Snapshot.of(min(xip, default=xmax), xmax, xip)


def count_behind(position: Snapshot, snapshot: Snapshot) -> int:
    """How many transaction ids ``snapshot`` has ended that ``position`` has not passed (an
    upper bound on the transactions still to read; for lag estimates only)."""
    if snapshot.xmax <= position.xmax:
        return 0
    return snapshot.xmax - position.xmax - sum(1 for tx in snapshot.xip if tx >= position.xmax)
