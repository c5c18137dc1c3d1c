"""StreamLines: the bulk API's body cut into lines, whatever the block boundaries."""

from __future__ import annotations

import random

import pytest

from mailerd.importer.jsonl_source import JsonlSource
from mailerd.importer.rejects import RejectSink
from mailerd.importer.streams import StreamLines


def lines_of(blocks: list[bytes], *, max_line: int = 1000, hint: int = 10) -> list[bytes]:
    pending = list(blocks)

    def read() -> bytes:
        return pending.pop(0) if pending else b""

    reader = StreamLines(read, max_line=max_line)
    found: list[bytes] = []
    while batch := reader.readlines(hint):
        found += batch
    assert reader.readlines(hint) == []
    return found


def test_lines_split_on_line_feeds_only() -> None:
    body = b'{"a": 1}\r\n\n{"b":\r 2}\nlast'
    assert lines_of([body]) == [b'{"a": 1}\r', b"", b'{"b":\r 2}', b"last"]


@pytest.mark.parametrize("seed", range(20))
def test_any_block_boundaries_give_the_same_lines(seed: int) -> None:
    rng = random.Random(seed)
    lines = [b"x" * rng.randint(0, 40) for _ in range(50)]
    body = b"\n".join(lines) + rng.choice([b"", b"\n"])
    cuts = sorted(rng.sample(range(1, len(body)), 15))
    blocks = [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    expected = body.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert lines_of(blocks, hint=rng.randint(1, 100)) == expected


def test_a_line_longer_than_the_limit_is_cut_short_and_the_next_ones_are_whole() -> None:
    blocks = [b"ok\n" + b"y" * 7, b"y" * 20, b"yyy", b"\nnext\nzz", b"z" * 30]
    assert lines_of(blocks, max_line=10) == [b"ok", b"y" * 12, b"next", b"z" * 12]


def test_long_lines_inside_one_block_are_handed_whole_for_the_source_to_reject() -> None:
    # (at most one block long: the memory they take is the block's)
    assert lines_of([b"a" * 30 + b"\nb\n"], max_line=10) == [b"a" * 30, b"b"]


def test_a_line_cut_where_it_holds_a_carriage_return_is_still_too_long() -> None:
    """Cut one byte past the limit, a line whose next byte was a \r looked like a line of the
    limit with its CRLF end: the cut text was parsed, and imported when it was JSON on its own."""
    head = b'{"email": "cut@example.com"}'
    line = head + b" " * (40 - len(head)) + b"\r, not JSON past the limit"
    blocks = [line[:10], line[10:], b"\n" + b'{"email": "ok@example.com"}\r\n']
    pending = list(blocks)
    sink = RejectSink(None)
    source = JsonlSource(
        StreamLines(lambda: pending.pop(0) if pending else b"", max_line=40),
        sink,
        1,
        lower_ascii=False,
        max_line_bytes=40,
    )
    rows = b""
    while chunk := source.next_chunk():
        rows += chunk.data
    assert [(reject.line, reject.reason) for reject in sink.first] == [
        (1, "the line is longer than 40 bytes")
    ]
    assert b"cut@example.com" not in rows and b"ok@example.com" in rows
