"""JSONL lines to COPY input: one ``{"email": ..., "attributes": {...}}`` per line."""

from __future__ import annotations

import codecs
from typing import IO

import orjson

from mailerd.importer import source
from mailerd.importer.encoding import copy_text, lead_address
from mailerd.importer.parsing import check_jsonl_line
from mailerd.importer.rejects import RejectSink


class JsonlSource:
    """JSONL lines to COPY input (address, attributes as JSON text)."""

    retype = False  # JSONL values carry their own types

    def __init__(self, stream: IO[bytes], sink: RejectSink, account_id: int, *, lower_ascii: bool) -> None:
        self.stream = stream
        self.sink = sink
        self.prefix = f"{int(account_id)}\t"
        self.lower_ascii = lower_ascii
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
        for raw in lines:
            self.line += 1
            self.bytes_read += len(raw)
            if not raw.strip():
                continue
            parsed = check_jsonl_line(raw)
            if isinstance(parsed, str):
                self.sink.add(self.line, parsed, raw.decode("utf-8", "surrogateescape"))
                continue
            address = lead_address(parsed[0], self.lower_ascii)
            addresses.append(address)
            starts.append(self.line)
            raws.append(raw)
            document = copy_text(orjson.dumps(parsed[1]).decode())
            out.append(f"{self.prefix}{address}\t{document}\n")
        self.addresses.note(addresses)
        self.rows += len(out)
        return source.Chunk("".join(out).encode("utf-8"), starts, raws)
