"""Segments: a JSON condition over leads, validated, compiled to parameterised SQL; pure.

Grammar::

    {"all": [C, ...]}   every C holds (an empty list matches every lead)
    {"any": [C, ...]}   some C holds (an empty list matches no lead)
    {"not": C}          the full complement of C
    {"field": F, "op": OP, "value": V}

``F`` is ``email``, ``created_at`` or ``attributes.KEY[.KEY...]`` (a dotted path through nested
objects; keys cannot contain dots; arrays are never traversed, so ``attributes.tags.0`` reads the
key ``"0"`` of an object, never an array element). Operators and the values they take:

- ``eq``, ``ne``: a string, number or boolean. ``in``, ``not_in``: a non-empty array of such
  values, all of one JSON type (at most 10,000).
- ``gt``, ``gte``, ``lt``, ``lte``: a number, or an ISO-8601 date or date-time string
  (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|±HH:MM]``; date-only and naive mean UTC),
  compared as a timestamp.
- ``contains``, ``starts_with``, ``ends_with``: a string, compared case-insensitively.
- ``exists``: true or false.

Typed comparison: the JSON type of V decides. A lead whose attribute is missing, null, of another
type, or (for a date comparison) a string that is not a valid date by the rules above, does not
match; nothing ever raises on lead data. ``ne``/``not_in`` are the negation of ``eq``/``in`` among
the leads that have the attribute with V's type; ``not`` is the full complement. ``exists: true``
means present and not null. Numbers compare exactly as decimals (``1 = 1.0``); booleans are not
numbers.

Case-insensitive means ASCII case folding (``A-Z`` = ``a-z``; ``É`` and ``é`` differ): Unicode
case mapping differs between Postgres collations, ICU and Python versions, and a segment must
select the same leads wherever it runs and in :func:`evaluate`.

The built-in fields: ``email`` takes the string operators (``eq``, ``ne``, ``in``, ``not_in``,
``contains``, ``starts_with``, ``ends_with``), all case-insensitive, since addresses are unique
per account whatever their case. ``created_at`` takes ``gt``, ``gte``, ``lt``, ``lte`` with a
date or date-time (equality to the microsecond is never what is meant). Both take ``exists``,
which is always true for them.

Validation rejects unknown keys, nulls, strings containing NUL or lone surrogates (Postgres text
cannot hold them), numbers out of Postgres ``numeric`` range, nesting deeper than 32, more than
1,000 condition nodes and value lists longer than 10,000. Errors name the JSON path:
``$.all[2].op: unknown operator "gtt"``.

SQL: :func:`compile` returns a boolean expression over ``leads`` in which every value and every
attribute path is a bind parameter; every leaf is a non-NULL boolean (casts guarded by ``CASE``,
since Postgres does not promise the order of ``AND``), so ``NOT`` is the exact complement. Date
strings in lead attributes are parsed by ``mailerd_iso_timestamptz()`` (migration 0002), which
accepts exactly what :func:`_parse_iso` accepts.
"""

from mailerd.segments.evaluate import evaluate
from mailerd.segments.nodes import (
    MAX_DEPTH,
    MAX_LIST_VALUES,
    MAX_NODES,
    MAX_PATH_KEYS,
    OPERATORS,
    All,
    AnyOf,
    Condition,
    Kind,
    Node,
    Not,
    Scalar,
    Segment,
    SegmentError,
    Target,
    _parse_iso,
    fold,
)
from mailerd.segments.parse import as_json, parse
from mailerd.segments.sql import compile

__all__ = [
    "MAX_DEPTH",
    "MAX_LIST_VALUES",
    "MAX_NODES",
    "MAX_PATH_KEYS",
    "OPERATORS",
    "All",
    "AnyOf",
    "Condition",
    "Kind",
    "Node",
    "Not",
    "Scalar",
    "Segment",
    "SegmentError",
    "Target",
    "_parse_iso",
    "as_json",
    "compile",
    "evaluate",
    "fold",
    "parse",
]
