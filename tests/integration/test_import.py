"""`mailerd leads import` against a real Postgres: inference, upsert, rejects, exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from mailerd import importer
from mailerd.db import leads as leads_db
from mailerd.importer import loading
from mailerd.importer import source as source_mod

ACCOUNT = 7


async def attributes_by_email(conn: asyncpg.Connection, account: int = ACCOUNT) -> dict[str, Any]:
    rows = await conn.fetch("SELECT email, attributes FROM leads WHERE account_id = $1 ORDER BY id", account)
    return {r["email"]: r["attributes"] for r in rows}


async def run(
    conn: asyncpg.Connection,
    path: Path,
    *,
    types: str | None = None,
    rejects: Path | None = None,
    account: int = ACCOUNT,
) -> int:
    return await importer.run_cli(conn, account_id=account, path=path, types=types, rejects=rejects)


def read_rejects(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_csv_infers_types_and_skips_empty_values(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(
        "Email,name,age,score,vip,zip,note\n"
        "  Ada@Example.COM ,Ada,36,1.50,true,007,\n"
        'grace@example.com,Grace,,2e3,FALSE,12345,"likes, commas"\n'
        'linus@example.org,,54,-0.25,,00501,"two\nlines"\n',
        encoding="utf-8",
    )
    assert await run(conn, path) == 0
    leads = await attributes_by_email(conn)
    assert leads == {
        "ada@example.com": {"name": "Ada", "age": 36, "score": 1.5, "vip": True, "zip": "007"},
        "grace@example.com": {
            "name": "Grace",
            "score": 2000,
            "vip": False,
            "zip": "12345",
            "note": "likes, commas",
        },
        "linus@example.org": {"age": 54, "score": -0.25, "zip": "00501", "note": "two\nlines"},
    }
    # Numbers keep their exact decimal text (an exponent is applied, as Postgres numeric does).
    assert (
        await conn.fetchval("SELECT attributes->>'score' FROM leads WHERE email = 'ada@example.com'")
        == "1.50"
    )
    assert (
        await conn.fetchval("SELECT attributes->>'score' FROM leads WHERE email = 'grace@example.com'")
        == "2000"
    )
    out = capsys.readouterr().out
    assert out.startswith("imported 3, rejected 0, in ")


async def test_types_override_and_forced_type_rejects(conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(
        "email,age,code,flag\na@example.com,42,17,true\nb@example.com,43,x1,yes\n",
        encoding="utf-8",
    )
    rejects = tmp_path / "rejects.jsonl"
    status = await run(conn, path, types="age=string, code=number,flag=boolean", rejects=rejects)
    assert status == 2
    assert await attributes_by_email(conn) == {"a@example.com": {"age": "42", "code": 17, "flag": True}}
    [reject] = read_rejects(rejects)
    assert reject["line"] == 3
    assert "'code'" in reject["reason"] and "not a number" in reject["reason"]


async def test_jsonl(conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "leads.jsonl"
    lines = [
        {"email": "Ada@Example.com", "attributes": {"plan": "pro", "tags": ["a", "b"], "n": 1.5}},
        {"email": "grace@example.com"},
        {"email": "ken@example.com", "attributes": {"note": 'say "hi"\\\n\tbye', "gone": None}},
    ]
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n\n")
    assert await run(conn, path) == 0
    assert await attributes_by_email(conn) == {
        "ada@example.com": {"plan": "pro", "tags": ["a", "b"], "n": 1.5},
        "grace@example.com": {},
        "ken@example.com": {"note": 'say "hi"\\\n\tbye', "gone": None},
    }


async def test_jsonl_numbers_are_stored_as_written(conn: asyncpg.Connection, tmp_path: Path) -> None:
    """A number no double holds (an id beyond 64 bits, a long decimal) is stored as the CSV
    import stores it: as written (orjson had made it a float)."""
    path = tmp_path / "leads.jsonl"
    path.write_bytes(
        b'{"email": "ada@example.com", "attributes": {"id": 123456789012345678901234567890,'
        b' "ratio": 3.14159265358979323846, "tiny": 1e-400, "n": 2}}\n'
    )
    assert await run(conn, path) == 0
    row = await conn.fetchrow(
        "SELECT attributes->>'id' AS id, attributes->>'ratio' AS ratio, attributes->>'tiny' AS tiny,"
        " attributes->'n' = '2'::jsonb AS n FROM leads WHERE account_id = $1",
        ACCOUNT,
    )
    assert dict(row) == {
        "id": "123456789012345678901234567890",
        "ratio": "3.14159265358979323846",
        "tiny": "0." + "0" * 399 + "1",  # orjson had made it 0.0
        "n": True,
    }


async def test_upsert_merges_attributes_case_insensitively(conn: asyncpg.Connection, tmp_path: Path) -> None:
    await conn.execute(
        "INSERT INTO leads (account_id, email, attributes, updated_at)"
        " VALUES ($1, 'ada@example.com', $2, now() - interval '1 day'),"
        "        ($3, 'ada@example.com', $4, now())",
        ACCOUNT,
        {"plan": "free", "city": "London"},
        ACCOUNT + 1,
        {"other": "account"},
    )
    await conn.execute(
        "INSERT INTO leads (account_id, email, attributes, updated_at)"
        " VALUES ($1, 'same@example.com', '{\"plan\": \"free\", \"n\": 1}', now() - interval '1 day')",
        ACCOUNT,
    )
    path = tmp_path / "leads.csv"
    path.write_text(
        "email,plan,score\nADA@example.com,pro,3\nnew@example.com,free,1\nSame@example.com,free,\n",
        encoding="utf-8",
    )
    assert await run(conn, path) == 0
    leads = await attributes_by_email(conn)
    assert leads == {
        "ada@example.com": {"plan": "pro", "city": "London", "score": 3},
        "same@example.com": {"plan": "free", "n": 1},
        "new@example.com": {"plan": "free", "score": 1},
    }
    assert await attributes_by_email(conn, ACCOUNT + 1) == {"ada@example.com": {"other": "account"}}
    # A lead the file changes is marked updated; one it leaves as it was is not touched.
    fresh = await conn.fetch(
        "SELECT email, updated_at > now() - interval '1 minute' AS fresh FROM leads"
        " WHERE account_id = $1 AND email <> 'new@example.com' ORDER BY email",
        ACCOUNT,
    )
    assert [tuple(r) for r in fresh] == [("ada@example.com", True), ("same@example.com", False)]


async def test_later_line_for_same_address_wins(conn: asyncpg.Connection, tmp_path: Path) -> None:
    await conn.execute(
        "INSERT INTO leads (account_id, email, attributes) VALUES ($1, 'ada@example.com', $2)",
        ACCOUNT,
        {"keep": "me", "plan": "old"},
    )
    path = tmp_path / "leads.csv"
    path.write_text(
        "email,plan,city\n"
        "ada@example.com,free,Paris\n"
        "bob@example.com,free,\n"
        "Ada@Example.com,pro,\n"
        "BOB@example.com,,Rome\n",
        encoding="utf-8",
    )
    assert await run(conn, path) == 0
    assert await attributes_by_email(conn) == {
        "ada@example.com": {"keep": "me", "plan": "pro", "city": "Paris"},
        "bob@example.com": {"plan": "free", "city": "Rome"},
    }


async def test_bad_csv_rows_are_rejected_with_lines_and_reasons(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "leads.csv"
    path.write_bytes(
        b"email,name\n"
        b"good@example.com,Good\n"  # 2
        b"not-an-address,Bad\n"  # 3
        b"two@@example.com,Bad\n"  # 4
        b"short@example.com\n"  # 5
        b"long@example.com,a,b\n"  # 6
        b"bytes@example.com,\xff\xfe\n"  # 7
        b"nul@example.com,a\x00b\n"  # 8
        b"\n"  # 9: blank, ignored
        b"also@example.com,Fine\n"  # 10
    )
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, rejects=rejects) == 2
    assert set(await attributes_by_email(conn)) == {"good@example.com", "also@example.com"}
    found = {r["line"]: r["reason"] for r in read_rejects(rejects)}
    assert sorted(found) == [3, 4, 5, 6, 7, 8]
    assert "invalid email address" in found[3] and "invalid email address" in found[4]
    assert found[5] == "expected 2 columns, found 1"
    assert found[6] == "expected 2 columns, found 3"
    assert "invalid UTF-8" in found[7]
    assert "NUL" in found[8]
    captured = capsys.readouterr()
    assert f"{path}:3: invalid email address" in captured.err
    assert captured.out.startswith("imported 2, rejected 6, in ")


async def test_bad_jsonl_rows_are_rejected(conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "leads.jsonl"
    path.write_bytes(
        b'{"email": "ok@example.com", "attributes": {"a": 1}}\n'
        b'{"email": "ok2@example.com", "attributes": {"a": 1}\n'
        b'{"email": "x@example.com", "attributes": [1, 2]}\n'
        b'{"email": "bad address@example.com"}\n'
        b'{"email": "y@example.com", "attributes": {"n": "\xff"}}\n'
        b"[1, 2]\n"
        b'{"email": "z@example.com", "first_name": "Z"}\n'
        b'{"attributes": {}}\n'
    )
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, rejects=rejects) == 2
    assert await attributes_by_email(conn) == {"ok@example.com": {"a": 1}}
    found = {r["line"]: r["reason"] for r in read_rejects(rejects)}
    assert sorted(found) == [2, 3, 4, 5, 6, 7, 8]
    assert found[2].startswith("invalid JSON")
    assert found[3] == "attributes is not an object"
    assert found[4].startswith("invalid email address")
    assert found[5].startswith("invalid UTF-8")
    assert found[6] == "not a JSON object"
    assert found[7].startswith("unexpected key(s) first_name")
    assert found[8] == "missing email"


@pytest.mark.parametrize(
    ("name", "content", "types", "reason"),
    [
        ("plain.csv", "email,n\n{long},1\n", None, "invalid email address 'xxx"),
        ("quoted.csv", 'email,n\n{long},"1"\n', None, "invalid email address 'xxx"),
        ("typed.csv", "email,n\na@example.com,{long}\n", "n=number", "column 'n': 'xxx"),
        ("keys.jsonl", '{{"email": "a@example.com", {keys}}}\n', None, "unexpected key(s) k0000, k0001"),
    ],
    ids=["address", "quoted-address", "forced-type", "stray-keys"],
)
async def test_a_reason_shows_only_the_start_of_a_long_value(
    conn: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str,
    types: str | None,
    reason: str,
) -> None:
    # Reasons quoted the value whole: a 100 KB address made a 100 KB line on stderr (and a line
    # of 100,000 stray keys a reason listing them all, in the bulk API's answer too).
    keys = ", ".join(f'"k{i:04d}": {i}' for i in range(5000))
    path = tmp_path / name
    path.write_text(content.format(long="x" * 100_000, keys=keys), encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, types=types, rejects=rejects) == 1
    [found] = read_rejects(rejects)
    assert found["line"] == (2 if name.endswith(".csv") else 1)
    assert found["reason"].startswith(reason) and len(found["reason"]) < 400, found["reason"][:500]
    assert len(found["raw"]) > 50_000  # the rejects file keeps the whole line
    assert len(capsys.readouterr().err) < 1000


@pytest.mark.parametrize(
    ("content", "types", "message"),
    [
        (None, None, "No such file"),
        (b"name,city\nAda,London\n", None, "no email column"),
        (b"", None, "empty file"),
        (b"email,\xffname\na@example.com,x\n", None, "unreadable header"),
        (b"email,email\na@example.com,b@example.com\n", None, "repeats column"),
        (b"email,age\na@example.com,1\n", "size=number", "not in the header"),
    ],
)
async def test_fatal_errors_import_nothing(
    conn: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    types: str | None,
    message: str,
) -> None:
    path = tmp_path / "leads.csv"
    if content is not None:
        path.write_bytes(content)
    assert await run(conn, path, types=types) == 1
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0
    err = capsys.readouterr().err
    assert message in err
    assert "leads.csv" in err or "--types" in err


@pytest.mark.parametrize(
    ("types", "message"),
    [("age=date", "--types: unknown type 'date'"), ("age", "--types: expected column=type")],
)
async def test_a_bad_types_argument_is_a_usage_error(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str], types: str, message: str
) -> None:
    # exit 1 (a failure) it was, unlike every other command's refused argument
    path = tmp_path / "leads.csv"
    path.write_bytes(b"email,age\na@example.com,1\n")
    assert await run(conn, path, types=types) == 2
    assert message in capsys.readouterr().err
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0


async def test_many_rows_cross_chunks(
    conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks so that fast and slow chunks alternate and a quoted field spans a chunk end.
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 200)
    lines = ["email,n,note"]
    for i in range(500):
        note = f'"multi\nline {i}"' if i % 97 == 0 else f"n{i}"
        email = f"user{i}@example.com" if i % 50 else f"bad{i}"
        lines.append(f"{email},{i},{note}")
    path = tmp_path / "leads.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, rejects=rejects) == 2
    assert await conn.fetchval("SELECT count(*) FROM leads") == 490
    assert await conn.fetchval("SELECT attributes FROM leads WHERE email = 'user194@example.com'") == {
        "n": 194,
        "note": "multi\nline 194",
    }
    rejected = read_rejects(rejects)
    assert len(rejected) == 10
    # Line numbers are physical lines: the multi-line records before shift them.
    first = rejected[0]
    assert first["line"] == 2 and first["raw"].startswith("bad0,0,")
    assert rejected[1]["line"] == 2 + 50 + 1


async def test_cli_subprocess(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("email,plan\na@example.com,pro\nbroken,free\n", encoding="utf-8")
    env = {**os.environ, "MAILERD_DSN": dsn, "MAILERD_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("", encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        "leads",
        "import",
        "--account",
        str(ACCOUNT),
        "--rejects",
        str(tmp_path / "rejects.jsonl"),
        str(path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 2, err.decode()
    assert out.decode().startswith("imported 1, rejected 1, in ")
    assert f"{path}:3: invalid email address 'broken'" in err.decode()
    assert await attributes_by_email(conn) == {"a@example.com": {"plan": "pro"}}


async def test_batches_merge_in_file_order(
    conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny chunks and batches: repeats within a batch, across batches, and existing leads in
    # later batches (the plain insert meets a unique violation and falls back to the upsert).
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 64)
    monkeypatch.setattr(loading, "BATCH_ROWS", 5)
    await conn.execute(
        "INSERT INTO leads (account_id, email, attributes)"
        " SELECT $1, 'old' || i || '@example.com', jsonb_build_object('keep', i, 'n', -1)"
        " FROM generate_series(0, 9) i",
        ACCOUNT,
    )
    lines = ["email,n,tag"]
    expected: dict[str, dict[str, Any]] = {f"old{i}@example.com": {"keep": i, "n": -1} for i in range(10)}
    for i in range(120):
        address = f"old{i % 10}@example.com" if i % 7 == 0 else f"u{i % 40}@example.com"
        tag = "" if i % 3 else f"t{i}"
        lines.append(f"{address.upper() if i % 2 else address},{i},{tag}")
        attributes = expected.setdefault(address, {})
        attributes["n"] = i
        if tag:
            attributes["tag"] = tag
    path = tmp_path / "leads.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert await run(conn, path) == 0
    assert await attributes_by_email(conn) == expected


async def test_column_that_turns_string_late_restarts_the_run(
    conn: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first batches are merged with "code" as a number; a late "x9" makes it a string
    # column, so the run starts over and every code is stored as the text it was.
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 64)
    monkeypatch.setattr(loading, "BATCH_ROWS", 5)
    lines = ["email,code,flag"]
    for i in range(60):
        email = "broken" if i == 3 else f"u{i}@example.com"
        lines.append(f"{email},{'x9' if i == 50 else f'{i}.50'},{'TRUE' if i % 2 else 'false'}")
    path = tmp_path / "leads.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, rejects=rejects) == 2
    leads = await attributes_by_email(conn)
    assert len(leads) == 59
    assert leads["u1@example.com"] == {"code": "1.50", "flag": True}
    assert leads["u50@example.com"] == {"code": "x9", "flag": False}
    # Rejects are reported once, by the run that counted.
    assert [r["line"] for r in read_rejects(rejects)] == [5]
    captured = capsys.readouterr()
    assert captured.err.count("invalid email address") == 1
    assert captured.out.startswith("imported 59, rejected 1, in ")


async def test_a_restarted_run_reports_its_rejects_once_into_a_pipe_too(
    conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --rejects /dev/stdout | jq: a pipe cannot be emptied when the run starts over, so every
    # reject of the file came out twice (the first run reads on to the end for the types).
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 64)
    lines = ["email,code"] + [f"{'broken' if i == 3 else f'u{i}@example.com'},{i}" for i in range(60)]
    path = tmp_path / "leads.csv"
    path.write_text("\n".join([*lines, "u60@example.com,x9"]) + "\n", encoding="utf-8")
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as pipe:
        with os.fdopen(write_end, "wb"):
            assert await run(conn, path, rejects=Path(f"/dev/fd/{write_end}")) == 2
        found = [orjson.loads(line) for line in pipe.read().splitlines()]
    assert [r["line"] for r in found] == [5]
    code = await conn.fetchval("SELECT attributes->>'code' FROM leads WHERE email = 'u60@example.com'")
    assert code == "x9"


async def test_non_ascii_addresses_are_one_lead_whatever_their_case(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Python lower-cases ASCII addresses only (the database's lower() may differ on the rest):
    # the others keep their first spelling and are matched by lower(email) like every address.
    # The first file is copied straight into leads, the second meets them and is upserted.
    assert await leads_db.lowers_ascii_like_python(conn)
    await conn.execute(
        "INSERT INTO leads (account_id, email, attributes) VALUES ($1, 'Élise@Example.com', '{\"old\": 1}')",
        ACCOUNT,
    )
    first = tmp_path / "first.csv"
    first.write_text("email,n\nZOË@Exämple.de,1\nΣΑΣ@example.gr,1\nÉLISE@example.com,1\n", encoding="utf-8")
    assert await run(conn, first) == 0
    second = tmp_path / "second.csv"
    second.write_text("email,m\nzoë@exämple.de,2\nσασ@EXAMPLE.gr,2\nÉlise@EXAMPLE.com,2\n", encoding="utf-8")
    assert await run(conn, second) == 0
    assert await attributes_by_email(conn) == {
        "Élise@Example.com": {"old": 1, "n": 1, "m": 2},
        "ZOË@Exämple.de": {"n": 1, "m": 2},
        "ΣΑΣ@example.gr": {"n": 1, "m": 2},
    }


async def test_a_decomposed_address_is_read_alike_in_plain_and_quoted_files(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "exámple" typed decomposed (a + U+0301, as macOS may write it): the plain-file fast path
    # checked the address before composing it, and a combining mark is no letter of a domain,
    # so the row was rejected there and imported from a file with a quote anywhere in it.
    decomposed = unicodedata.normalize("NFD", "ana@exámple.com")
    plain = tmp_path / "plain.csv"
    plain.write_text(f"email,n\n{decomposed},1\n {decomposed} ,2\n", encoding="utf-8")
    quoted = tmp_path / "quoted.csv"
    quoted.write_text(f'email,n\n{decomposed},"3, quoted"\n', encoding="utf-8")
    assert await run(conn, plain) == 0, capsys.readouterr().err
    assert await attributes_by_email(conn) == {"ana@exámple.com": {"n": 2}}
    assert await run(conn, quoted) == 0, capsys.readouterr().err
    assert await attributes_by_email(conn) == {"ana@exámple.com": {"n": "3, quoted"}}
    # and a line that is a whole row of its own ends a stray quote's value, decomposed or not
    stray = tmp_path / "stray.csv"
    stray.write_text(f'email,n\nbob@example.com,"Bob\n{decomposed},4"\n', encoding="utf-8")
    assert await run(conn, stray) == 2
    assert "stray.csv:2: unbalanced quote" in capsys.readouterr().err
    assert await attributes_by_email(conn) == {"ana@exámple.com": {"n": '4"'}}


async def test_a_failed_import_waits_for_its_parser_thread(
    conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parser thread may be in the middle of a chunk when the import fails: the import must
    # not return (and close the file) before the thread is done with it.
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 64)
    started: list[float] = []
    parse = importer.CsvSource.next_chunk

    def slow_parse(source: importer.CsvSource) -> source_mod.Chunk | None:
        time.sleep(0.2)
        started.append(time.monotonic())
        return parse(source)

    async def refuse(writer: object, batch: object) -> None:
        raise RuntimeError("refused")

    monkeypatch.setattr(importer.CsvSource, "next_chunk", slow_parse)
    monkeypatch.setattr(loading.LeadWriter, "write", refuse)
    path = tmp_path / "leads.csv"
    path.write_text("email,n\n" + "".join(f"u{i}@example.com,{i}\n" for i in range(100)), encoding="utf-8")
    with pytest.raises(RuntimeError, match="refused"):
        await importer.import_file(conn, account_id=ACCOUNT, path=path)
    returned = time.monotonic()
    await asyncio.sleep(0.5)
    assert started and max(started) <= returned


@pytest.mark.parametrize(
    ("name", "content", "summary", "message"),
    [
        (
            "all-bad.csv",
            b"email,n\nbroken,1\nalso broken,2\n",
            "imported 0, rejected 2, in ",
            "invalid email",
        ),
        ("all-bad.jsonl", b'{"email": "broken"}\n[1]\n', "imported 0, rejected 2, in ", "invalid email"),
        ("header-only.csv", b"email,n\n", "", "no rows to import"),
        ("blank.jsonl", b"\n\n", "", "no rows to import"),
    ],
)
async def test_nothing_imported_exits_1_as_documented(
    conn: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
    summary: str,
    message: str,
) -> None:
    # The runbook and the README: "0 every row imported, 2 some rows rejected (the rest
    # imported), 1 nothing imported".
    path = tmp_path / name
    path.write_bytes(content)
    assert await run(conn, path) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(summary)
    assert message in captured.err
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0


@pytest.mark.parametrize(
    ("content", "imported", "rejected_lines", "expected"),
    [
        pytest.param(
            # No other quote in the file: the value ran to the end and swallowed every line.
            'email,name\na@example.com,Ada\nb@example.com,"Bob\nc@example.com,Cy\nd@example.com,Di\n',
            3,
            [3],
            {"c@example.com": {"name": "Cy"}, "d@example.com": {"name": "Di"}},
            id="runs-to-the-end",
        ),
        pytest.param(
            # The stray quote pairs with the opening quote of a real multi-line value further on.
            'email,name,note\na@example.com,"Ada,x\nb@example.com,Bob,plain\n'
            'c@example.com,Cy,"two\nlines"\nd@example.com,Di,x\n',
            3,
            [2],
            {
                "b@example.com": {"name": "Bob", "note": "plain"},
                "c@example.com": {"name": "Cy", "note": "two\nlines"},
            },
            id="meets-a-real-quoted-value",
        ),
        pytest.param(
            # Two stray quotes make a well-formed record of the right width: the second line is a
            # whole row by itself, so the first one is the stray.
            'email,name,n\na@example.com,"Ada,1\nb@example.com,Bob",2\nc@example.com,Cy,3\n',
            2,
            [2],
            {"b@example.com": {"name": 'Bob"', "n": 2}, "c@example.com": {"name": "Cy", "n": 3}},
            id="two-stray-quotes",
        ),
        pytest.param(
            # Beyond the csv module's field limit (131,072 characters) the reader gave up midway.
            'email,name\nx@example.com,"X\n'
            + "".join(f"u{i}@example.com,name {i:06d}\n" for i in range(6000)),
            6000,
            [2],
            {"u5999@example.com": {"name": "name 005999"}},
            id="longer-than-the-field-limit",
        ),
        pytest.param(
            # On the file's last line, which has no line end: it was imported as name "Bob".
            'email,name\na@example.com,Ada\nb@example.com,"Bob',
            1,
            [3],
            {"a@example.com": {"name": "Ada"}},
            id="last-line-without-a-line-end",
        ),
    ],
)
async def test_a_stray_quote_rejects_its_line_and_the_lines_after_import(
    conn: asyncpg.Connection,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    imported: int,
    rejected_lines: list[int],
    expected: dict[str, Any],
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text(content, encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, rejects=rejects) == 2
    found = read_rejects(rejects)
    assert [r["line"] for r in found] == rejected_lines
    assert all(r["reason"].startswith("unbalanced quote") for r in found)
    leads = await attributes_by_email(conn)
    assert len(leads) == imported
    assert {email: leads[email] for email in expected} == expected
    assert capsys.readouterr().out.startswith(f"imported {imported:,}, rejected {len(rejected_lines)}, in ")


async def test_a_long_unquoted_value_imports_whatever_the_rows_around_it(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # A value past the csv module's field limit (131,072 characters), unquoted (a base64 avatar):
    # imported from a file without quotes, rejected as "malformed CSV: field larger than field
    # limit" when a quote elsewhere in its chunk sent the chunk through the csv module.
    avatar = "QUJD" * 50_000
    for name, other in (("plain.csv", "b@example.com,Bob"), ("quoted.csv", 'b@example.com,"Bob"')):
        path = tmp_path / name
        path.write_text(f"email,avatar\na@example.com,{avatar}\n{other}\n", encoding="utf-8")
        assert await run(conn, path) == 0, name
        assert await attributes_by_email(conn) == {
            "a@example.com": {"avatar": avatar},
            "b@example.com": {"avatar": "Bob"},
        }
        await conn.execute("DELETE FROM leads")


async def test_quoted_values_over_many_lines_still_import(conn: asyncpg.Connection, tmp_path: Path) -> None:
    note = "\n".join(f'line {i}, with a comma and ""quotes""' for i in range(50))
    path = tmp_path / "leads.csv"
    path.write_text(
        f'email,note,n\na@example.com,"{note}",1\nb@example.com,"short\nnote",2\n', encoding="utf-8"
    )
    assert await run(conn, path) == 0
    leads = await attributes_by_email(conn)
    assert leads["a@example.com"] == {"note": note.replace('""', '"'), "n": 1}
    assert leads["b@example.com"] == {"note": "short\nnote", "n": 2}


async def test_a_stray_quote_in_the_header_imports_nothing(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text('email,"name\na@example.com,Ada\nb@example.com,Bob\n', encoding="utf-8")
    assert await run(conn, path) == 1
    assert "unbalanced quote" in capsys.readouterr().err
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0


async def test_a_number_postgres_cannot_store_rejects_its_row(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Postgres numeric holds 131,072 digits before the decimal point and 16,383 after: these
    # crashed the import with a traceback.
    path = tmp_path / "leads.csv"
    path.write_text(
        "email,n,name\n"
        "a@example.com,1,Ada\n"
        f"b@example.com,1{'0' * 131_072},Bob\n"  # 3
        "c@example.com,3,Cy\n"
        f"d@example.com,0.{'1' * 16_384},Di\n"  # 5
        "e@example.com,5,Ed\n",
        encoding="utf-8",
    )
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, rejects=rejects) == 2
    found = read_rejects(rejects)
    assert [(r["line"], r["reason"]) for r in found] == [
        (3, "refused by the database: value overflows numeric format"),
        (5, "refused by the database: value overflows numeric format"),
    ]
    assert found[0]["raw"].startswith("b@example.com,1000")
    assert await attributes_by_email(conn) == {
        "a@example.com": {"n": 1, "name": "Ada"},
        "c@example.com": {"n": 3, "name": "Cy"},
        "e@example.com": {"n": 5, "name": "Ed"},
    }
    assert capsys.readouterr().out.startswith("imported 3, rejected 2, in ")


async def test_rows_the_database_refuses_are_found_in_every_kind_of_batch(
    conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches: refused rows in a batch copied straight into leads, in one that meets
    # existing leads (staged and upserted), and in one that repeats an address (folded); the
    # other rows of those batches are imported, in file order.
    monkeypatch.setattr(source_mod, "CHUNK_CHARS", 64)
    monkeypatch.setattr(loading, "BATCH_ROWS", 8)
    await conn.execute(
        "INSERT INTO leads (account_id, email, attributes) VALUES ($1, 'old5@example.com', '{\"keep\": 1}')",
        ACCOUNT,
    )
    huge = "9" * 131_073
    lines = ["email,n"]
    expected: dict[str, dict[str, Any]] = {"old5@example.com": {"keep": 1}}
    bad: list[int] = []
    for i in range(40):
        address = "old5@example.com" if i in (12, 30) else f"u{i % 35}@example.com"
        value = huge if i in (3, 13, 31, 32) else str(i)
        lines.append(f"{address},{value}")
        if value == huge:
            bad.append(i + 2)
        else:
            expected.setdefault(address, {})["n"] = i
    path = tmp_path / "leads.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    assert await run(conn, path, rejects=rejects) == 2
    assert sorted(r["line"] for r in read_rejects(rejects)) == bad
    assert await attributes_by_email(conn) == expected


async def test_many_rows_the_database_refuses_stop_the_import(
    conn: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(loading, "MAX_REFUSED_ROWS", 2)
    path = tmp_path / "leads.csv"
    huge = "9" * 131_073
    path.write_text(
        f"email,n\na@example.com,1\nb@example.com,{huge}\nc@example.com,{huge}\nd@example.com,{huge}\n"
    )
    assert await run(conn, path) == 1
    err = capsys.readouterr().err
    assert "the database refused more than 2 rows" in err and "line 3: value overflows numeric format" in err
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0


async def test_a_byte_order_mark_starts_a_jsonl_file_too(conn: asyncpg.Connection, tmp_path: Path) -> None:
    # The first line was rejected as invalid JSON.
    path = tmp_path / "leads.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"email": "a@example.com", "attributes": {"n": 1}}\n{"email": "b@example.com"}\n'
    )
    assert await run(conn, path) == 0
    assert await attributes_by_email(conn) == {"a@example.com": {"n": 1}, "b@example.com": {}}


@pytest.mark.parametrize("name", ["leads.csv", "leads.jsonl"])
@pytest.mark.parametrize("bom", [b"\xff\xfe", b"\xfe\xff"])
async def test_a_utf16_file_is_named_as_such(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, bom: bytes
) -> None:
    path = tmp_path / name
    text = "email,n\na@example.com,1\n" if name.endswith(".csv") else '{"email": "a@example.com"}\n'
    path.write_bytes(bom + text.encode("utf-16-le" if bom == b"\xff\xfe" else "utf-16-be"))
    assert await run(conn, path) == 1
    assert "UTF-16" in capsys.readouterr().err
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0


async def test_two_email_columns_are_refused(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "Email" and "email" were two columns: the second one became an attribute named "email".
    path = tmp_path / "leads.csv"
    path.write_text("Email,name,email\na@example.com,Ada,b@example.com\n", encoding="utf-8")
    assert await run(conn, path) == 1
    assert "more than one email column" in capsys.readouterr().err
    assert await conn.fetchval("SELECT count(*) FROM leads") == 0


async def test_rejects_file_cannot_be_the_file_imported(
    conn: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Opening the rejects file emptied the file being imported.
    path = tmp_path / "leads.csv"
    content = "email,n\na@example.com,1\n"
    path.write_text(content, encoding="utf-8")
    assert await run(conn, path, rejects=tmp_path / "." / "leads.csv") == 1
    assert "--rejects" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == content


@pytest.mark.parametrize(
    "command",
    [
        ["leads", "import", "FILE"],
        ["segment", "count", "{}"],
        ["suppressions", "import", "FILE"],
        ["suppressions", "add", "a@example.com"],
        ["suppressions", "list"],
    ],
)
@pytest.mark.parametrize("account", ["9223372036854775808", "-1"])
async def test_an_account_id_out_of_range_is_a_usage_error(
    dsn: str, tmp_path: Path, command: list[str], account: str
) -> None:
    # An account id beyond bigint crashed these commands with a traceback from the driver.
    path = tmp_path / "leads.csv"
    path.write_text("email\na@example.com\n", encoding="utf-8")
    (tmp_path / "none.toml").write_text("", encoding="utf-8")
    env = {**os.environ, "MAILERD_DSN": dsn, "MAILERD_CONFIG": str(tmp_path / "none.toml")}
    args = [str(path) if arg == "FILE" else arg for arg in command]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailerd",
        *args,
        "--account",
        account,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 2, err.decode()
    assert "argument --account: " in err.decode() and "Traceback" not in err.decode()
