"""The files an import reads and writes, checked before anything is read or written."""

from __future__ import annotations

import codecs
from pathlib import Path

from mailerd.importer.rejects import ImportFailed

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # (UTF-32 LE starts like UTF-16 LE)


def check_files(path: Path, rejects: Path | None) -> None:
    """Raise :class:`ImportFailed` for an input that is not a regular file, one that is not UTF-8
    by its byte order mark (a spreadsheet's "Unicode text" export is UTF-16), or a rejects file
    that is the input itself (opening it for writing would empty the file being imported)."""
    try:
        if path.exists() and not path.is_file():
            # a FIFO would be read twice (this look, then the import), a device never ends
            raise ImportFailed(f"{path}: not a regular file (import a file, not a pipe or a device)")
        with path.open("rb") as stream:
            head = stream.read(4)
        if rejects is not None and rejects.exists() and rejects.samefile(path):
            raise ImportFailed(f"--rejects {rejects}: is the file being imported")
    except OSError as exc:
        raise ImportFailed(f"{path}: {exc.strerror or exc}") from None
    if head.startswith(_UTF16_BOMS):
        raise ImportFailed(
            f"{path}: the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"
        )
