"""JSONL lines to COPY input: one ``{"email": ..., "attributes": {...}}`` per line (a file, or
the body of ``POST /api/leads/bulk``)."""

from __future__ import annotations

import codecs

from mailerd.importer import parsing, source
from mailerd.importer.encoding import copy_text, lead_address
from mailerd.importer.rejects import RejectSink


class JsonlSource:
    """JSONL lines to COPY input (address, attributes as JSON text).

    With ``max_line_bytes``, a longer line (its line end aside) is rejected: the bulk API's body
    hands over such a line cut short (see :class:`mailerd.importer.streams.StreamLines`).
    """

    retype = False  # JSONL values carry their own types

    def __init__(
        self,
        stream: source.Lines,
        sink: RejectSink,
        account_id: int,
        *,
        lower_ascii: bool,
        max_line_bytes: int | None = None,
    ) -> None:
        self.stream = stream
        self.sink = sink
        self.prefix = f"{int(account_id)}\t"
        self.lower_ascii = lower_ascii
        self.max_line = max_line_bytes
        self.line = 0
        self.rows = 0
        self.bytes_read = 0
        self.addresses = source.Addresses()

    def next_chunk(self) -> source.Chunk | None:
        lines = self.stream.readlines(source.CHUNK_CHARS)
        if not lines:
            return None
        if self.line == 0 and lines[0].startswith(codecs.BOM_UTF8):  # as a CSV file may start
            lines[0] = lines[0][len(codecs.BOM_UTF8) :]
        out: list[str] = []
        addresses: list[str] = []
        starts: list[int] = []
        raws: list[bytes] = []
        # None: each line is looked at on its own (a number in the chunk may need the exact reader)
        maybe_inexact = None if parsing.may_hold_inexact_numbers(b"".join(lines)) else False
        for raw in lines:
            self.line += 1
            self.bytes_read += len(raw)
            if not raw.strip():
                continue
            if self.max_line is not None and len(raw) > self.max_line and self._too_long(raw):
                continue
            parsed = parsing.check_jsonl_line(raw, maybe_inexact)
            if isinstance(parsed, str):
                self.sink.add(self.line, parsed, raw.decode("utf-8", "surrogateescape"))
                continue
            address = lead_address(parsed[0], self.lower_ascii)
            addresses.append(address)
            starts.append(self.line)
            raws.append(raw)
            out.append(f"{self.prefix}{address}\t{copy_text(parsed[1])}\n")
        self.addresses.note(addresses)
        self.rows += len(out)
        return source.Chunk("".join(out).encode("utf-8"), starts, raws)

    def _too_long(self, raw: bytes) -> bool:
        assert self.max_line is not None
        # (its line end's \r only: a line cut short may end in one where it was cut)
        if len(raw.removesuffix(b"\r")) <= self.max_line:
            return False
        reason = f"the line is longer than {self.max_line:,} bytes"
        self.sink.add(self.line, reason, raw.decode("utf-8", "surrogateescape"))
        return True
