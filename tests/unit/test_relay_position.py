"""Txid snapshots as positions: nothing committed is skipped, nothing read twice, whatever the
order of commits, polls and batch caps (a model of Postgres transactions, checked by hypothesis)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailerd.relay.position import Snapshot, advance, due, earliest


def test_snapshot_text_round_trip() -> None:
    snapshot = Snapshot.parse("100:110:103,105")
    assert snapshot == Snapshot(100, 110, (103, 105))
    assert str(snapshot) == "100:110:103,105"
    assert Snapshot.parse("7:7:") == Snapshot(7, 7)


@pytest.mark.parametrize("text", ["", "1:2", "a:b:", "5:4:", "1:5:9"])
def test_snapshot_parse_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="snapshot"):
        Snapshot.parse(text)


def test_a_running_transaction_is_not_due_and_not_passed() -> None:
    position = Snapshot(100, 100)
    snapshot = Snapshot(100, 105, (101,))  # 101 took its id early and is still running
    assert [tx for tx in range(95, 110) if due(position, snapshot, tx)] == [100, 102, 103, 104]
    end = advance(position, snapshot)
    assert not end.passed(101)
    later = Snapshot(106, 106)  # 101 committed meanwhile
    assert [tx for tx in range(95, 110) if due(end, later, tx)] == [101, 105]


def test_a_cutoff_keeps_running_transactions_below_it_unpassed() -> None:
    """The naive end (xmin = xmax = cutoff) would pass 101 while it is still running."""
    position = Snapshot(100, 100)
    snapshot = Snapshot(101, 110, (101, 104))
    end = advance(position, snapshot, cutoff=103)
    assert end == Snapshot(101, 103, (101,))
    assert [tx for tx in range(100, 112) if not end.passed(tx)] == [
        101,
        103,
        104,
        105,
        106,
        107,
        108,
        109,
        110,
        111,
    ]


def test_a_cutoff_below_the_old_xmax_keeps_what_was_not_passed_above_it() -> None:
    position = Snapshot(100, 120, (100, 110))
    snapshot = Snapshot(130, 130)
    end = advance(position, snapshot, cutoff=105)
    assert end == Snapshot(110, 120, (110,))


def test_earliest_passes_only_rows_written_before_the_migration() -> None:
    assert earliest().passed(0)
    assert not earliest().passed(1)


@dataclasses.dataclass
class _Database:
    """Transactions get ids in order, write rows, commit or abort; snapshots as Postgres takes them."""

    next_xid: int = 10
    running: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    committed_rows: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (tx, row)
    rows_made: int = 0

    def begin(self) -> None:
        self.running[self.next_xid] = []
        self.next_xid += 1

    def write(self, tx: int, count: int) -> None:
        for _ in range(count):
            self.rows_made += 1
            self.running[tx].append(self.rows_made)

    def end(self, tx: int, *, commit: bool) -> None:
        rows = self.running.pop(tx)
        if commit:
            self.committed_rows += [(tx, row) for row in rows]

    def snapshot(self) -> Snapshot:
        return Snapshot.of(min(self.running, default=self.next_xid), self.next_xid, self.running)


def _poll(db: _Database, position: Snapshot, limit: int) -> tuple[list[int], Snapshot]:
    """What the reader does, on the model: due rows in tx order, LIMIT limit + 1, cut at the tx
    of the last row (a single oversized transaction is read whole)."""
    snapshot = db.snapshot()
    rows = sorted((tx, row) for tx, row in db.committed_rows if due(position, snapshot, tx))
    cutoff = None
    if len(rows) > limit:
        last = rows[limit][0]
        kept = [r for r in rows if r[0] < last]
        if kept:
            rows, cutoff = kept, last
        else:
            rows, cutoff = [r for r in rows if r[0] == last], last + 1
    return [row for _, row in rows], advance(position, snapshot, cutoff)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_committed_row_is_read_once_and_no_aborted_row_ever(data: st.DataObject) -> None:
    db = _Database()
    position = Snapshot(db.next_xid, db.next_xid)
    read: list[int] = []
    for _ in range(data.draw(st.integers(10, 80))):
        action = data.draw(st.sampled_from(["begin", "write", "commit", "abort", "poll"]))
        if action == "begin" or (action in ("write", "commit", "abort") and not db.running):
            db.begin()
        elif action == "write":
            db.write(data.draw(st.sampled_from(sorted(db.running))), data.draw(st.integers(1, 6)))
        elif action in ("commit", "abort"):
            db.end(data.draw(st.sampled_from(sorted(db.running))), commit=action == "commit")
        else:
            rows, position = _poll(db, position, data.draw(st.integers(1, 5)))
            read += rows
    for tx in sorted(db.running):
        db.end(tx, commit=True)
    for _ in range(1000):
        rows, position = _poll(db, position, 3)
        read += rows
        if not rows and position == db.snapshot():
            break
    assert sorted(read) == sorted(row for _, row in db.committed_rows)
    assert len(read) == len(set(read))
