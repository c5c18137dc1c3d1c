"""Every published record checked against the JSON Schema of its kind (shipped as package data)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources
from typing import Any

import jsonschema
import orjson


@functools.cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    text = resources.files("mailerd.relay").joinpath("schemas", f"{kind}.json").read_text("utf-8")
    schema = orjson.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check(records: Iterable[dict[str, Any]]) -> int:
    """Validate each record against its kind's schema; returns how many were checked."""
    count = 0
    for record in records:
        validator(record["kind"]).validate(record)
        count += 1
    return count
