"""Loaded by schemathesis in tests/integration/test_openapi_fuzz.py (``SCHEMATHESIS_HOOKS``):
how to put a generated ``application/x-ndjson`` body on the wire.

The document describes a bulk body as the array of its lines (NDJSON has no JSON Schema of its
own); each generated item becomes one line, and anything else (negative cases) one line of JSON.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(context: Any, value: Any) -> bytes:
    """One JSON text per line (json, not orjson: generated integers may exceed 64 bits)."""
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)
