"""Segments against a real Postgres: the SQL selects exactly what ``segments.evaluate`` selects."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mailerd import segments
from mailerd.db import leads

REPO = Path(__file__).resolve().parents[2]
_accounts = itertools.count(1000)


async def insert_leads(
    conn: asyncpg.Connection, account_id: int, rows: list[tuple[str, Any, dt.datetime]]
) -> dict[str, int]:
    """Insert (email, attributes, created_at) rows; attributes go in as JSON text. Email -> id."""
    records = await conn.fetch(
        """INSERT INTO leads (account_id, email, attributes, created_at)
           SELECT $1, e, a::jsonb, c FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS u(e, a, c)
           RETURNING id, email""",
        account_id,
        [r[0] for r in rows],
        [json.dumps(r[1], ensure_ascii=False) for r in rows],
        [r[2] for r in rows],
    )
    return {r["email"]: r["id"] for r in records}


async def matching_ids(conn: asyncpg.Connection, account_id: int, condition: Any) -> set[int]:
    sql, params = segments.compile(segments.parse(condition), first_param=2)
    rows = await conn.fetch(
        f"SELECT l.id FROM leads l WHERE l.account_id = $1 AND {sql}", account_id, *params
    )
    return {r["id"] for r in rows}


def expected_ids(condition: Any, rows: list[tuple[str, Any, dt.datetime]], ids: dict[str, int]) -> set[int]:
    segment = segments.parse(condition)
    return {
        ids[email]
        for email, attributes, created_at in rows
        if segments.evaluate(segment, email=email, created_at=created_at, attributes=attributes)
    }


# --- explicit cases ------------------------------------------------------------------------------

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
FIXED: list[tuple[str, Any, dt.datetime]] = [
    ("ann@example.com", {"plan": "pro", "age": 30, "vip": True, "joined": "2023-05-01"}, T0),
    ("Bob@Example.COM", {"plan": "Pro", "age": 30.0, "vip": False, "joined": "2023-02-30"}, T0),
    ("cé@exämple.de", {"plan": "ÉCOLE", "age": "30", "joined": "2024-01-01T10:00+02:00"}, T0),
    ("dan@example.com", {"plan": None, "age": True, "tags": ["pro"], "addr": {"city": "Oslo"}}, T0),
    ("eve@example.com", ["plan"], T0 + dt.timedelta(days=30)),
    ("fay@example.com", {"addr": {"city": "oslo", "0": "x"}, "list": [{"city": "Oslo"}]}, T0),
]


CASES: list[tuple[Any, set[str]]] = [
    ({"field": "attributes.plan", "op": "eq", "value": "pro"}, {"ann"}),
    ({"field": "attributes.plan", "op": "ne", "value": "pro"}, {"bob", "cé"}),
    ({"not": {"field": "attributes.plan", "op": "eq", "value": "pro"}}, {"bob", "cé", "dan", "eve", "fay"}),
    ({"field": "attributes.plan", "op": "contains", "value": "RO"}, {"ann", "bob"}),
    ({"field": "attributes.plan", "op": "starts_with", "value": "é"}, set()),
    ({"field": "attributes.plan", "op": "ends_with", "value": "cole"}, {"cé"}),
    ({"field": "attributes.age", "op": "eq", "value": 30}, {"ann", "bob"}),
    ({"field": "attributes.age", "op": "in", "value": ["30"]}, {"cé"}),
    ({"field": "attributes.age", "op": "not_in", "value": [31, 32]}, {"ann", "bob"}),
    ({"field": "attributes.age", "op": "gte", "value": 30.0}, {"ann", "bob"}),
    ({"field": "attributes.vip", "op": "eq", "value": False}, {"bob"}),
    ({"field": "attributes.age", "op": "eq", "value": True}, {"dan"}),
    ({"field": "attributes.joined", "op": "lt", "value": "2024-01-01T09:00"}, {"ann", "cé"}),
    ({"field": "attributes.joined", "op": "gte", "value": "2000-01-01"}, {"ann", "cé"}),
    ({"field": "attributes.plan", "op": "exists", "value": True}, {"ann", "bob", "cé"}),
    ({"field": "attributes.plan", "op": "exists", "value": False}, {"dan", "eve", "fay"}),
    ({"field": "attributes.addr.city", "op": "eq", "value": "Oslo"}, {"dan"}),
    ({"field": "attributes.addr.0", "op": "eq", "value": "x"}, {"fay"}),
    ({"field": "attributes.tags.0", "op": "eq", "value": "pro"}, set()),
    ({"field": "attributes.list.city", "op": "exists", "value": True}, set()),
    ({"field": "email", "op": "eq", "value": "BOB@example.com"}, {"bob"}),
    ({"field": "email", "op": "ends_with", "value": "@EXAMPLE.com"}, {"ann", "bob", "dan", "eve", "fay"}),
    ({"field": "email", "op": "contains", "value": "CÉ"}, set()),
    (
        {"field": "email", "op": "not_in", "value": ["ann@example.com", "FAY@example.com"]},
        {"bob", "cé", "dan", "eve"},
    ),
    ({"field": "created_at", "op": "gt", "value": "2024-01-01T00:00:00Z"}, {"eve"}),
    (
        {
            "all": [
                {"field": "attributes.age", "op": "eq", "value": 30},
                {"not": {"field": "attributes.vip", "op": "eq", "value": True}},
            ]
        },
        {"bob"},
    ),
    ({"any": []}, set()),
    ({"all": []}, {"ann", "bob", "cé", "dan", "eve", "fay"}),
]


async def test_explicit_cases(conn: asyncpg.Connection) -> None:
    """One database for the whole table: a fresh one per case would cost more than the cases."""
    ids = await insert_leads(conn, 1, FIXED)
    by_name = {email.split("@")[0].lower(): lead_id for email, lead_id in ids.items()}
    for condition, names in CASES:
        want = {by_name[name] for name in names}
        assert await matching_ids(conn, 1, condition) == want, condition
        assert expected_ids(condition, FIXED, ids) == want, condition


async def test_suppressed_leads_never_match(conn: asyncpg.Connection) -> None:
    ids = await insert_leads(conn, 1, FIXED)
    await insert_leads(conn, 2, FIXED[:2])
    await conn.executemany(
        "INSERT INTO suppressions (account_id, email, reason) VALUES ($1, $2, 'hard_bounce')",
        [(1, "bob@example.com"), (1, "nobody@example.com"), (2, "ann@example.com")],
    )
    everyone = segments.parse({"all": []})
    assert await leads.count_matching(conn, 1, everyone) == len(FIXED) - 1
    assert await leads.count_matching(conn, 2, everyone) == 1
    bob = segments.parse({"field": "email", "op": "eq", "value": "bob@example.com"})
    assert await leads.count_matching(conn, 1, bob) == 0
    sample = await leads.sample_matching(conn, 1, everyone, limit=3)
    assert [row["id"] for row in sample] == sorted(i for e, i in ids.items() if e != "Bob@Example.COM")[:3]
    assert sample[0]["email"] == "ann@example.com"
    assert sample[0]["attributes"]["plan"] == "pro"
    # The scheduler's window query shape: account, id range, then the segment.
    sql, params = leads.matching_sql(bob, first_param=4)
    rows = await conn.fetch(
        f"SELECT l.id FROM leads l WHERE l.account_id = $1 AND l.id > $2 AND l.id <= $3 AND {sql}",
        1,
        0,
        max(ids.values()),
        *params,
    )
    assert rows == []


async def run_cli(dsn: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILERD_")}
    env["MAILERD_DSN"] = dsn
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_segment_count(conn: asyncpg.Connection, dsn: str) -> None:
    await insert_leads(conn, 7, FIXED)
    await conn.execute("INSERT INTO suppressions VALUES (7, 'ann@example.com', 'complaint')")
    condition = {"field": "email", "op": "ends_with", "value": "@example.com"}
    code, out, err = await run_cli(dsn, "segment", "count", "--account", "7", json.dumps(condition))
    assert (code, out) == (0, "4\n"), err
    bad = {"all": [condition, {"field": "email", "op": "gtt", "value": 1}]}
    code, out, err = await run_cli(dsn, "segment", "count", "--account", "7", json.dumps(bad))
    assert code == 2
    assert out == ""
    assert 'mailerd segment count: $.all[1].op: unknown operator "gtt"' in err


# --- property: SQL == reference ------------------------------------------------------------------

KEYS = ["a", "b", "0", "ü", "x y"]
STRINGS = [
    "", "a", "A", "ab", "AB", "b", "é", "É", "straße", "STRASSE", "İ", "i̇", "ı", "ς", "Σ", "σ",
    "x y", "1", "true", "2024-01-01", "2024-02-30", "2024-01-01T10:00:00+02:00",
    "2024-06-01T00:00Z", "2023-12-31T23:59:59.999999", "0001-01-01T00:00+01:00",
]  # fmt: skip
NUMBERS = [0, 1, -1, 2, 10, 1.0, 0.1, 2.5, -0.0, 1e16, 10**20]

text = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=6)


def iso_text(moment: dt.datetime, precision: str, zone: str) -> str:
    if precision == "date":
        return moment.date().isoformat()
    return moment.isoformat(timespec=precision) + zone


iso = st.builds(
    iso_text,
    st.datetimes(min_value=dt.datetime(2023, 1, 1), max_value=dt.datetime(2025, 12, 31)),
    st.sampled_from(["date", "minutes", "seconds", "milliseconds", "microseconds"]),
    st.sampled_from(["", "Z", "+02:00", "-05:30", "+15:59"]),
)


def mostly(pool: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values from a small shared pool three times in four, so conditions and leads meet."""
    return st.one_of(pool, pool, pool, other)


VALID_DATES = [s for s in STRINGS if segments._parse_iso(s) and not s.startswith("0001")]
strings = mostly(
    st.sampled_from(["a", "A", "é", "2024-01-01", "2024-06-01T00:00Z"]),
    st.sampled_from(STRINGS) | text | iso,
)
numbers = mostly(
    st.sampled_from([0, 1, 1.0, 2.5]),
    st.sampled_from(NUMBERS)
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(strings, numbers, st.booleans())
json_values = st.recursive(
    st.none() | scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.fixed_dictionaries({}, optional={key: inner for key in KEYS})
    ),
    max_leaves=6,
)
values = mostly(scalars, st.none() | json_values)  # mostly scalars where conditions look
# Each key leans to one type, so leads often share a path and a type (and ne, gt... split them).
leaning = {
    "a": strings,
    "b": numbers,
    "0": mostly(st.sampled_from(VALID_DATES), iso),
    "ü": st.booleans(),
    "x y": values,
}
typed = {key: mostly(leaning[key], values) for key in KEYS}
nested = st.fixed_dictionaries({}, optional=typed)
attributes = mostly(
    st.fixed_dictionaries({}, optional={key: mostly(typed[key], nested) for key in KEYS}),
    mostly(st.dictionaries(text, json_values, max_size=3), st.lists(json_values, max_size=2)),
)
created = st.datetimes(
    min_value=dt.datetime(2023, 1, 1), max_value=dt.datetime(2025, 12, 31), timezones=st.just(dt.UTC)
)
emails = st.tuples(
    st.text(alphabet="aAbBéÉ.+-İ", max_size=3),
    st.sampled_from(["example.com", "EXAMPLE.com", "exämple.de", "İ.tr"]),
)
ATTRIBUTE_OPS = [op for op in segments.OPERATORS if op != "exists"] + ["exists"]


def homogeneous(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(values, min_size=1, max_size=4)


def lead_scalars(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, scalar) for each scalar a condition can reach in attributes (no arrays)."""
    if isinstance(value, dict):
        return [
            found
            for key, inner in value.items()
            if "." not in key and key
            for found in lead_scalars(inner, (*path, key))
        ]
    return [] if value is None or isinstance(value, list) or not path else [(path, value)]


def from_leads(seen: list[Any], fallback: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return mostly(st.sampled_from(seen), fallback) if seen else fallback


@st.composite
def fragments(draw: st.DrawFn, whole: str) -> str:
    """A piece of a string some lead holds, in some case: for contains and friends."""
    start = draw(st.integers(0, len(whole)))
    end = draw(st.integers(start, len(whole)))
    return draw(st.sampled_from([whole[start:end], whole[start:end].swapcase(), whole]))


def fits(op: str, sample: Any) -> bool:
    """Whether ``op`` can take a value derived from ``sample``."""
    if op in ("contains", "starts_with", "ends_with"):
        return isinstance(sample, str)
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(sample, str):
            return segments._parse_iso(sample) is not None and sample[:4] != "0001"
        return not isinstance(sample, bool)
    return True


def same_type(sample: Any) -> st.SearchStrategy[Any]:
    if isinstance(sample, bool):
        return st.booleans()
    return strings if isinstance(sample, str) else numbers


@st.composite
def attribute_value(draw: st.DrawFn, op: str, sample: Any) -> Any:
    """A value for ``op``, derived from ``sample`` (a value some lead holds) when it fits."""
    if op == "exists":
        return draw(st.booleans())
    if op in ("eq", "ne"):
        return sample if sample is not None else draw(scalars)
    if op in ("in", "not_in"):
        if sample is None:
            return draw(homogeneous(strings) | homogeneous(numbers) | homogeneous(st.booleans()))
        return [sample, *draw(st.lists(same_type(sample), max_size=3))]
    if op in ("gt", "gte", "lt", "lte"):
        if sample is not None:
            return sample
        return draw(numbers | mostly(st.sampled_from(VALID_DATES), iso))
    return draw(fragments(sample)) if isinstance(sample, str) else draw(strings)


@st.composite
def leaf_conditions(draw: st.DrawFn, rows: list[tuple[str, Any, dt.datetime]]) -> dict[str, Any]:
    """A leaf whose path and value often come from a lead, so that it splits the leads."""
    field = draw(st.sampled_from(["attributes", "attributes", "attributes", "email", "created_at"]))
    if field == "email":
        ops = ["ends_with", "starts_with", "contains", "eq", "ne", "in", "not_in", "exists"]
        op = draw(st.sampled_from(ops))
        if op == "exists":
            return {"field": field, "op": op, "value": draw(st.booleans())}
        pool = mostly(st.sampled_from([email for email, _, _ in rows]).flatmap(fragments), text)
        value = draw(homogeneous(pool) if op in ("in", "not_in") else pool)
        return {"field": field, "op": op, "value": value}
    if field == "created_at":
        op = draw(st.sampled_from(["gt", "gte", "lt", "lte", "exists"]))
        if op == "exists":
            return {"field": field, "op": op, "value": draw(st.booleans())}
        moments = st.sampled_from([at for _, _, at in rows]).map(lambda at: at.isoformat())
        return {"field": field, "op": op, "value": draw(mostly(moments, iso))}
    found = [pair for _, attrs, _ in rows for pair in lead_scalars(attrs)]
    paths = st.sampled_from(KEYS).map(lambda k: (k,)) | st.lists(
        st.sampled_from(KEYS), min_size=1, max_size=3
    ).map(tuple)
    op = draw(st.sampled_from(ATTRIBUTE_OPS))
    usable = [(path, v) for path, v in found if fits(op, v)]
    path, sample = draw(from_leads(usable, st.tuples(paths, st.none())))
    value = draw(attribute_value(op, sample))
    return {"field": "attributes." + ".".join(path), "op": op, "value": value}


def conditions(rows: list[tuple[str, Any, dt.datetime]]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf_conditions(rows),
        lambda inner: (
            st.lists(inner, max_size=3).map(lambda c: {"all": c})
            | st.lists(inner, max_size=3).map(lambda c: {"any": c})
            | inner.map(lambda c: {"not": c})
        ),
        max_leaves=6,
    )


lead_rows = st.lists(st.tuples(emails, attributes, created), min_size=5, max_size=30).map(
    lambda rows: [
        (f"lead{i}{local}@{domain}", attrs, at) for i, ((local, domain), attrs, at) in enumerate(rows)
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leads_rows=lead_rows, data=st.data())
async def test_sql_selects_what_evaluate_selects(
    conn: asyncpg.Connection, leads_rows: list[tuple[str, Any, dt.datetime]], data: st.DataObject
) -> None:
    """Every condition and every node inside it, on every lead: SQL and Python agree, never NULL."""
    condition_list = data.draw(st.lists(conditions(leads_rows), min_size=3, max_size=10))
    account = next(_accounts)
    ids = await insert_leads(conn, account, leads_rows)
    for condition in condition_list:
        assert await matching_ids(conn, account, condition) == expected_ids(condition, leads_rows, ids), (
            condition
        )

    # One query evaluates all nodes as columns, so leaves are checked one by one as well.
    nodes = [segments.parse(node) for c in condition_list for node in subconditions(c)]
    columns, params = [], []
    for node in nodes:
        sql, node_params = segments.compile(node, first_param=2 + len(params))
        columns.append(sql)
        params.extend(node_params)
    records = await conn.fetch(
        f"SELECT l.email, {', '.join(columns)} FROM leads l WHERE l.account_id = $1",
        account,
        *params,
    )
    by_email = {email: (attrs, at) for email, attrs, at in leads_rows}
    outcomes: dict[int, set[bool]] = {i: set() for i in range(len(nodes))}
    for record in records:
        attrs, at = by_email[record["email"]]
        for i, node in enumerate(nodes):
            want = segments.evaluate(node, email=record["email"], created_at=at, attributes=attrs)
            assert record[i + 1] is want, (node, record["email"], attrs)
            outcomes[i].add(want)
    for i, node in enumerate(nodes):
        if isinstance(node.root, segments.Condition) and outcomes[i] == {True, False}:
            event(f"leaf {node.root.target} {node.root.op} {node.root.kind} split the leads")


def subconditions(condition: Any) -> list[Any]:
    """The condition and every condition nested in it."""
    found = [condition]
    for key in ("all", "any"):
        for child in condition.get(key, []):
            found += subconditions(child)
    if "not" in condition:
        found += subconditions(condition["not"])
    return found


iso_like = st.text(alphabet="0123456789-+:.TZ ", max_size=32) | iso | st.sampled_from(STRINGS) | text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        iso_like
        | st.from_regex(
            r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,7})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?\Z"
        ),
        max_size=40,
    )
)
async def test_sql_and_python_accept_the_same_dates(conn: asyncpg.Connection, texts: list[str]) -> None:
    rows = await conn.fetch(
        """SELECT (extract(epoch FROM mailerd_iso_timestamptz(v)) * 1000000)::bigint AS micros
           FROM unnest($1::text[]) WITH ORDINALITY AS u(v, n) ORDER BY n""",
        texts,
    )
    assert [r["micros"] for r in rows] == [segments._parse_iso(t) for t in texts]
