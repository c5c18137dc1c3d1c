"""Compilation: a validated segment into a boolean SQL expression over ``leads`` in which every
value and attribute path is a bind parameter. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailerd.segments.nodes import (
    _IDENTIFIER,
    _ORDER,
    _TEXT,
    All,
    AnyOf,
    Condition,
    Kind,
    Node,
    Not,
    Scalar,
    Segment,
    fold,
)

# --- SQL -----------------------------------------------------------------------------------------

_SQL_TYPES: dict[Kind, str] = {
    "string": "text",
    "number": "numeric",
    "boolean": "boolean",
    "date": "timestamptz",
}


def compile(  # the verb of this module; shadows the builtin inside this module only
    segment: Segment, *, first_param: int = 1, alias: str = "l"
) -> tuple[str, list[Any]]:
    """A non-NULL boolean SQL expression over ``leads`` aliased ``alias``, and its parameters.

    Placeholders start at ``$first_param``; every value and attribute path is a parameter.
    ``alias`` is trusted code, never user input.
    """
    if not _IDENTIFIER.fullmatch(alias):
        raise ValueError(f"alias must be an SQL identifier, got {alias!r}")
    compiler = _Compiler(first_param, alias)
    return compiler.node(segment.root), compiler.params


class _Compiler:
    def __init__(self, first_param: int, alias: str) -> None:
        self.first = first_param
        self.alias = alias
        self.params: list[Any] = []
        self.seen: dict[tuple[str, Any], str] = {}

    def param(self, sql_type: str, value: Any) -> str:
        """A placeholder with its cast; equal values share one parameter."""
        key = (sql_type, tuple(value) if isinstance(value, list) else value)
        if key not in self.seen:
            self.params.append(value)
            self.seen[key] = f"${self.first + len(self.params) - 1}::{sql_type}"
        return self.seen[key]

    def node(self, node: Node) -> str:
        if isinstance(node, All):
            return "(" + " AND ".join(map(self.node, node.conditions)) + ")" if node.conditions else "true"
        if isinstance(node, AnyOf):
            return "(" + " OR ".join(map(self.node, node.conditions)) + ")" if node.conditions else "false"
        if isinstance(node, Not):
            return f"(NOT {self.node(node.condition)})"
        if node.target == "attributes":
            return self.attribute(node)
        return self.builtin(node)

    def value(self, node: Condition, transform: Callable[[Scalar], Scalar] = lambda v: v) -> str:
        sql_type = _SQL_TYPES[node.kind]
        if isinstance(node.value, tuple):
            return self.param(sql_type + "[]", [transform(v) for v in node.value])
        return self.param(sql_type, transform(node.value))

    def builtin(self, node: Condition) -> str:
        if node.op == "exists":
            return "true" if node.value else "false"
        if node.target == "created_at":
            return f"({self.alias}.created_at {_ORDER[node.op]} {self.value(node)})"
        return _string_test(node.op, f'lower({self.alias}.email COLLATE "C")', self.folded(node))

    def folded(self, node: Condition) -> str:
        return self.value(node, lambda v: fold(v) if isinstance(v, str) else v)

    def attribute(self, node: Condition) -> str:
        path = self.param("text[]", list(node.path))
        attr = f"{self.alias}.attributes" + "".join(
            f" -> ({path})[{i}]" for i in range(1, len(node.path) + 1)
        )
        if node.op == "exists":
            present = f"coalesce(jsonb_typeof({attr}) <> 'null', false)"
            return present if node.value else f"(NOT {present})"
        json_type = "string" if node.kind == "date" else node.kind
        text = f"({attr} #>> '{{}}')"
        if node.op in _TEXT:
            test = _string_test(node.op, f'lower({text} COLLATE "C")', self.folded(node))
        elif node.kind == "date":
            test = f"coalesce(mailerd_iso_timestamptz({text}) {_ORDER[node.op]} {self.value(node)}, false)"
        elif node.kind == "string":
            test = _string_test(node.op, text, self.value(node))
        else:
            typed = f"({attr})::{_SQL_TYPES[node.kind]}"
            test = _ordered_test(node.op, typed, self.value(node))
        return f"(CASE WHEN jsonb_typeof({attr}) = '{json_type}' THEN {test} ELSE false END)"


def _ordered_test(op: str, column: str, value: str) -> str:
    if op == "eq":
        return f"{column} = {value}"
    if op == "ne":
        return f"{column} <> {value}"
    if op == "in":
        return f"{column} = ANY({value})"
    if op == "not_in":
        return f"NOT ({column} = ANY({value}))"
    return f"{column} {_ORDER[op]} {value}"


def _string_test(op: str, column: str, value: str) -> str:
    if op == "contains":
        return f"(strpos({column}, {value}) > 0)"
    if op == "starts_with":
        return f"starts_with({column}, {value})"
    if op == "ends_with":
        return f"(right({column}, length({value})) = {value})"
    return _ordered_test(op, column, value)
