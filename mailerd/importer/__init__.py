"""Imports: lead files into ``leads`` (`mailerd leads import`), and the pieces the suppression
import (:mod:`mailerd.suppressions`) shares with it.

Modules, one job each:

- :mod:`~mailerd.importer.rejects`: what a run reports (rejected lines, the result), shared;
- :mod:`~mailerd.importer.parsing`: addresses, numbers, booleans, type inference, the CSV
  header, one JSONL line (pure);
- :mod:`~mailerd.importer.csv_records`: CSV records with their line numbers, and the rule that
  catches a stray quote (shared);
- :mod:`~mailerd.importer.files`: the input and rejects files, checked first (shared);
- :mod:`~mailerd.importer.encoding`: parsed rows to COPY text input (attributes as JSON text);
- :mod:`~mailerd.importer.csv_source`, :mod:`~mailerd.importer.jsonl_source`: a file, chunk by
  chunk, to COPY input (run in a worker thread; :mod:`~mailerd.importer.source` is their
  protocol);
- :mod:`~mailerd.importer.loading`: the worker thread and the event loop working at the same
  time, and the writes into ``leads`` (its SQL is in :mod:`mailerd.db.leads`), rows the
  database refuses found and rejected;
- :mod:`~mailerd.importer.progress`: the progress bar;
- :mod:`~mailerd.importer.leads`: one lead import, start to end, and its command;
- :mod:`~mailerd.importer.streams`: the bulk API's body (``POST /api/leads/bulk``), a JSONL
  stream on the event loop that the parser thread reads a block at a time, imported as a file.

The leads API (:mod:`mailerd.http.leads`) shares these rules: one lead is checked as a JSONL line
(:func:`~mailerd.importer.parsing.check_lead`) and merged with the same SQL.

Semantics (for users in docs/runbook.md, "Importing leads"):

- addresses are trimmed; one lead per (account, lower(email)); a new lead's address is stored
  lower-cased when ASCII, as first written otherwise (see :func:`.encoding.lead_address`);
- existing attributes are merged with the new ones, the file's values win; within one file a
  later line for the same address wins (as if the lines were applied one after another);
- CSV: empty value = attribute absent; values are taken verbatim (not trimmed); a column whose
  non-empty values are all JSON-style numbers (no leading zeros, so zip codes stay strings)
  is numeric and stored with its digits as written (Postgres numeric: ``1.50`` stays ``1.50``,
  ``2e3`` is ``2000``); a column of ``true``/``false`` (any case) is boolean; else string.
  ``--types col=string|number|boolean``
  overrides, and rows whose value does not fit a forced type are rejected;
- CSV quoted fields may span lines (a stray quote is caught: see :mod:`.csv_records`); line
  numbers are physical lines (first line of the record);
- JSONL: ``{"email": ..., "attributes": {...}}`` per line (``attributes`` optional, other keys
  rejected); values are stored as given (including ``null``).
"""

from mailerd.importer.csv_source import CsvSource
from mailerd.importer.jsonl_source import JsonlSource
from mailerd.importer.leads import import_file, run_cli
from mailerd.importer.parsing import ColumnType, is_valid_email, parse_header, parse_types
from mailerd.importer.progress import Progress
from mailerd.importer.rejects import ImportFailed, ImportResult, Reject, RejectSink

__all__ = [
    "ColumnType",
    "CsvSource",
    "ImportFailed",
    "ImportResult",
    "JsonlSource",
    "Progress",
    "Reject",
    "RejectSink",
    "import_file",
    "is_valid_email",
    "parse_header",
    "parse_types",
    "run_cli",
]
