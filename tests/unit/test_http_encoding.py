"""Request bodies' Content-Encoding: complete streams decode, cut or corrupt ones are refused,
and a body that expands enormously is refused at the limit without being held whole."""

from __future__ import annotations

import gzip
import zlib

import pytest

from mailerd.http import encoding
from mailerd.http.errors import ApiError

TEXT = b"".join(b'{"email": "lead%d@example.com", "attributes": {"n": %d}}\n' % (n, n) for n in range(5000))


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _decode(kind: str, body: bytes, limit: int = 10**9) -> bytes:
    return encoding.decode_whole(encoding.Decoder(kind), body, limit)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("gzip", gzip.compress(TEXT[:1000]) + gzip.compress(TEXT[1000:])),  # cat a.gz b.gz
        ("deflate", zlib.compress(TEXT)),
        ("deflate", _raw_deflate(TEXT)),  # without the zlib header, as aiohttp also takes
    ],
)
def test_a_complete_stream_decodes(kind: str, body: bytes) -> None:
    assert _decode(kind, body) == TEXT


def test_an_empty_body_is_a_complete_one() -> None:
    assert _decode("gzip", b"") == b""


@pytest.mark.parametrize(
    ("kind", "body", "reason"),
    [
        ("gzip", gzip.compress(TEXT)[:-8], "ends before its compressed stream does"),  # no trailer
        ("gzip", gzip.compress(TEXT)[:200], "ends before its compressed stream does"),
        ("deflate", zlib.compress(TEXT)[:200], "ends before its compressed stream does"),
        ("gzip", b"hello, not gzip", "gzip: Error -3"),
        ("gzip", gzip.compress(TEXT) + b"junk after it", "gzip: Error -3"),
        ("deflate", zlib.compress(TEXT) + b"junk", "data after the end of the compressed stream"),
    ],
)
def test_a_cut_or_corrupt_stream_is_refused(kind: str, body: bytes, reason: str) -> None:
    with pytest.raises(encoding.BodyUndecodable, match=reason):
        _decode(kind, body)


def test_a_stream_cut_at_a_flush_point_is_refused() -> None:
    # Its decoded text is whole lines: only the compressed stream shows it did not end.
    compressor = zlib.compressobj(wbits=31)
    cut = compressor.compress(TEXT) + compressor.flush(zlib.Z_FULL_FLUSH)
    decoder = encoding.Decoder("gzip")
    decoded = b""
    data = cut
    while block := decoder.decompress(data):
        decoded += block
        data = b""
    assert decoded == TEXT
    with pytest.raises(encoding.BodyUndecodable, match="ends before"):
        decoder.finish()


def test_a_body_that_expands_past_the_limit_is_refused_a_block_at_a_time() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB from about 50 kB
    assert len(bomb) < 100_000
    with pytest.raises(ApiError) as refused:
        _decode("gzip", bomb, limit=1_000_000)
    assert refused.value.status == 413
    decoder = encoding.Decoder("gzip")
    blocks = [decoder.decompress(bomb)]
    while decoder.has_pending and len(blocks) < 10:
        blocks.append(decoder.decompress(b""))
    assert all(len(block) <= encoding.BLOCK_BYTES for block in blocks)


class _Chunks:
    def __init__(self, data: bytes, size: int) -> None:
        self._parts = [data[i : i + size] for i in range(0, len(data), size)]

    async def readany(self) -> bytes:
        return self._parts.pop(0) if self._parts else b""


async def test_a_stream_decodes_in_blocks_and_refuses_an_early_end() -> None:
    body = gzip.compress(TEXT)
    stream = encoding.DecodedStream(_Chunks(body, 7), encoding.Decoder("gzip"))
    decoded = b""
    while block := await stream.readany():
        decoded += block
    assert decoded == TEXT
    assert await stream.readany() == b""
    cut = encoding.DecodedStream(_Chunks(body[:-4], 4096), encoding.Decoder("gzip"))
    with pytest.raises(encoding.BodyUndecodable):
        while await cut.readany():
            pass


@pytest.mark.parametrize("size", [262_165, 262_300, 262_392])
def test_output_that_fills_a_block_exactly_is_drained(size: int) -> None:
    # zlib took all the input but still held output when the block was full: it must be asked again
    text = b"a" * size
    assert _decode("deflate", _raw_deflate(text)) == text
    stream_text = b"".join(_decode_in_chunks("deflate", _raw_deflate(text), 4096))
    assert stream_text == text


def _decode_in_chunks(kind: str, body: bytes, size: int) -> list[bytes]:
    decoder = encoding.Decoder(kind)
    blocks = []
    for start in range(0, len(body), size):
        blocks.append(decoder.decompress(body[start : start + size]))
        while decoder.has_pending:
            blocks.append(decoder.decompress(b""))
    decoder.finish()
    return blocks


def test_gzip_members_are_capped() -> None:
    empty = gzip.compress(b"")
    assert _decode("gzip", empty * encoding.MAX_MEMBERS) == b""
    # a megabyte of empty members (52,000 of them) is refused at the cap, not decoded one by one
    with pytest.raises(encoding.BodyUndecodable, match="more than 1024 gzip members"):
        _decode("gzip", empty * (1_048_576 // len(empty)))


@pytest.mark.parametrize("chunk", [10**6, 11])
def test_data_after_a_deflate_stream_is_refused_however_the_chunks_fall(chunk: int) -> None:
    first = zlib.compress(b"first")
    body = first + zlib.compress(b"second")
    with pytest.raises(encoding.BodyUndecodable, match="data after the end"):
        _decode_in_chunks("deflate", body, chunk if chunk != 11 else len(first))
