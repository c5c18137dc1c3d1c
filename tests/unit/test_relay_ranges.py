"""How a reader that is behind splits a read into ranges and sizes them (no database)."""

from __future__ import annotations

from typing import Any, cast

from mailerd.relay.position import Snapshot
from mailerd.relay.reader import FILL, Reader


def reader(limit: int = 5000, parts: int = 3) -> Reader:
    return Reader(cast(Any, None), {"email"}, limit, parts)


def test_one_range_up_to_the_snapshot_until_a_span_is_learnt() -> None:
    assert reader()._uppers(Snapshot(100, 100), Snapshot(90, 500)) == [500]


def test_behind_up_to_parts_consecutive_spans_the_last_ending_at_the_snapshot() -> None:
    three = reader(parts=3)
    three.span = 10
    assert three._uppers(Snapshot(100, 100), Snapshot(90, 500)) == [110, 120, 130]
    assert three._uppers(Snapshot(100, 100), Snapshot(90, 125)) == [110, 120, 125]
    assert three._uppers(Snapshot(100, 100), Snapshot(90, 105)) == [105]
    one = reader(parts=1)
    one.span = 10
    assert one._uppers(Snapshot(100, 100), Snapshot(90, 500)) == [110]


def test_each_range_is_sized_to_a_share_of_the_batch_and_capped_at_a_whole_one() -> None:
    three = reader(limit=5000, parts=3)
    assert (three._share(3), three._share(1), three.limit) == (1667, 5000, 5000)
    three._largest = 2000  # never sized below a whole transaction
    assert (three._share(3), three._share(1), three.limit) == (2000, 5000, 5000)
    three._largest = 8000  # nor capped below one
    assert (three._share(3), three.limit) == (8000, 8000)


def test_ranges_at_once_follow_the_rows_per_transaction_id() -> None:
    r = reader(parts=3)
    r._learn(lower=1000, upper=1100, rows=5000, share=1667)  # 50 rows per id
    assert r.span == int(FILL * 1667 * 100 / 5000)
    r._learn(lower=1000, upper=1100, rows=100, share=1667)  # sparse: wider, but at most twofold
    assert r.span == 2 * int(FILL * 1667 * 100 / 5000)
    r.span = 40
    r._learn(lower=1000, upper=1120, rows=0, share=1667)  # nothing found: doubles
    assert r.span == 80
    r._learn(lower=1000, upper=1001, rows=100_000, share=1667)  # never below the minimum
    assert r.span == 4


def test_a_lone_range_keeps_twice_the_ids_of_a_capped_batch() -> None:
    r = reader(parts=1)
    r._learn_alone(first=1000, cutoff=1100, truncated=True)
    assert r.span == 200
    r._learn_alone(first=1000, cutoff=1010, truncated=True)
    assert r.span == 64  # the minimum
    r._learn_alone(first=1000, cutoff=1200, truncated=False)  # short: doubles
    assert r.span == 128
