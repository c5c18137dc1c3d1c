"""Request bodies' ``Content-Encoding`` (gzip, deflate), decoded here rather than by aiohttp.

aiohttp checks at the end of a ``deflate`` body that its compressed stream was complete, but not
at the end of a ``gzip`` one (3.14): a gzip body that breaks off (``gzip file | curl --data-binary
@-`` with gzip killed half-way, a proxy that cut it) reads as a shorter body that ended cleanly.
For ``POST /api/leads/bulk`` that imported the lines before the cut and answered 200. So the
server runs with ``auto_decompress = False`` (:data:`SERVER_OPTIONS`) and bodies are decoded by
:class:`Decoder`, which refuses a stream that ends early. Output is produced a bounded block at
a time, so a small body that expands enormously ("zip bomb") is refused at the size limit
without ever being held whole.

Where another server decompressed already (a runner started without :data:`SERVER_OPTIONS`,
such as aiohttp's ``TestServer``), the body is taken as it comes, as aiohttp decoded it.
"""

from __future__ import annotations

import collections
import zlib
from typing import Any

from aiohttp import web

from mailerd.http.errors import ApiError
from mailerd.importer.streams import ByteStream

SERVER_OPTIONS: dict[str, Any] = {"auto_decompress": False}  # for every runner that serves build_app()

BLOCK_BYTES = 256 * 1024  # decompressed bytes produced at a time
WINDOW_BYTES = 64 * 1024  # compressed bytes given to zlib at a time
MAX_MEMBERS = 1024  # gzip members in one body (aiohttp's own limit)
_GZIP = 16 + zlib.MAX_WBITS
_MODES = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": zlib.MAX_WBITS}


class BodyUndecodable(Exception):
    """The body does not decode by its ``Content-Encoding`` (bad data, or it ends early)."""


class Decoder:
    """One body's decompression: feed it the raw bytes, then :meth:`finish` at their end.

    Input goes to zlib a window at a time and output comes back a block at a time, so neither a
    body that expands enormously nor one of many tiny gzip members (each member's end makes zlib
    copy what follows it) costs more than a bounded amount per call."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._mode = _MODES[encoding]
        self._zlib: zlib._Decompress | None = None
        self._queue: collections.deque[memoryview] = collections.deque()  # raw, not yet to zlib
        self._extra: bytes = b""  # what zlib gave back: held behind the output bound, or a next member
        self._full = False  # zlib filled a block: it may hold more output without more input
        self._members = 0
        self._fed = False

    @property
    def has_pending(self) -> bool:
        """Whether :meth:`decompress` has more to give without more input."""
        return bool(self._extra or self._queue or self._full)

    def decompress(self, data: bytes) -> bytes:
        """Up to :data:`BLOCK_BYTES` decompressed bytes of what was fed and ``data``; the rest
        stays pending (:attr:`has_pending`). ``b""`` only once nothing more can come out
        without more input."""
        if data:
            self._queue.append(memoryview(data))
            self._fed = True
        while True:
            piece = self._next_input()
            if not piece and not self._full:
                return b""
            if piece and (self._zlib is None or self._zlib.eof):
                self._zlib = self._next_member(piece)
            assert self._zlib is not None
            try:
                out = self._zlib.decompress(piece, BLOCK_BYTES)
            except zlib.error as exc:
                raise BodyUndecodable(f"{self.encoding}: {exc}") from None
            self._full = len(out) == BLOCK_BYTES and not self._zlib.eof
            # after the end of a member, what follows it (zlib leaves it in unconsumed_tail too)
            self._extra = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
            if out:
                return out

    def _next_input(self) -> bytes | memoryview:
        if self._extra:
            piece, self._extra = self._extra, b""
            return piece
        while self._queue:
            view = self._queue[0]
            if len(view) > WINDOW_BYTES:
                self._queue[0] = view[WINDOW_BYTES:]
                return view[:WINDOW_BYTES]
            self._queue.popleft()
            if view:
                return view
        return b""

    def _next_member(self, piece: bytes | memoryview) -> zlib._Decompress:
        """A decompressor for the stream that starts with ``piece``: the first, or the next of
        concatenated gzip members (``cat a.gz b.gz``). Deflate is one stream: data after its
        end is refused, however the body's chunks fall."""
        if self._zlib is not None and self._mode != _GZIP:
            raise BodyUndecodable(f"{self.encoding}: data after the end of the compressed stream")
        self._members += 1
        if self._members > MAX_MEMBERS:
            raise BodyUndecodable(f"{self.encoding}: more than {MAX_MEMBERS} gzip members")
        mode = self._mode
        if mode == zlib.MAX_WBITS and piece[0] & 0x0F != 8:
            mode = -zlib.MAX_WBITS  # deflate sent without its zlib header, as aiohttp also accepts
        return zlib.decompressobj(mode)

    def finish(self) -> None:
        """At the end of the raw body: refuse a compressed stream that is not complete (an empty
        body is a complete one)."""
        if self.has_pending:
            raise BodyUndecodable(f"{self.encoding}: undecoded data left")
        if self._fed and (self._zlib is None or not self._zlib.eof):
            raise BodyUndecodable(f"{self.encoding}: the body ends before its compressed stream does")


def decoder(request: web.Request) -> Decoder | None:
    """The request's :class:`Decoder`, None for a body to take as it is; 415 for an encoding other
    than gzip and deflate."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity") or _decoded_by_aiohttp(request):
        return None
    if encoding not in _MODES:
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding[:40]!r} is not taken (gzip, deflate or none)",
            "Content-Encoding",
        )
    return Decoder(encoding)


def _decoded_by_aiohttp(request: web.Request) -> bool:
    # aiohttp's own decompression gives the stream a count of compressed bytes (None otherwise)
    return getattr(request.content, "total_compressed_bytes", None) is not None


def decode_whole(decoding: Decoder, raw: bytes, limit: int) -> bytes:
    """``raw`` decoded whole; :class:`BodyUndecodable`, or 413 past ``limit`` decoded bytes."""
    parts: list[bytes] = []
    size = 0
    data = raw
    while True:
        part = decoding.decompress(data)
        data = b""
        if not part:
            break
        size += len(part)
        if size > limit:
            raise ApiError(413, "too_large", f"the decoded body is larger than {limit:,} bytes")
        parts.append(part)
    decoding.finish()
    return b"".join(parts)


class DecodedStream:
    """A :class:`ByteStream` of the decoded blocks of another (``b""`` at the end, once the
    compressed stream was found complete)."""

    def __init__(self, raw: ByteStream, decoding: Decoder) -> None:
        self._raw = raw
        self._decoding = decoding
        self._done = False

    async def readany(self) -> bytes:
        while not self._done:
            if self._decoding.has_pending:
                block = self._decoding.decompress(b"")
            else:
                data = await self._raw.readany()
                if not data:
                    self._decoding.finish()
                    self._done = True
                    break
                block = self._decoding.decompress(data)
            if block:
                return block
        return b""
