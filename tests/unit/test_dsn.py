"""DSNs: every form libpq accepts loses its password when shown; asyncpg's misreadings are refused."""

from __future__ import annotations

import pytest

from mailerd import dsn

M = dsn.MASK


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # URLs: user info, one host or several, either scheme, any case.
        ("postgresql://u:pw-1@h:5432/d", f"postgresql://u:{M}@h:5432/d"),
        ("postgres://u:pw-1@h/d", f"postgres://u:{M}@h/d"),
        ("POSTGRESQL://u:pw-1@h/d", f"POSTGRESQL://u:{M}@h/d"),
        ("postgresql://u:pw-1@h1:5432,h2:5433/d", f"postgresql://u:{M}@h1:5432,h2:5433/d"),
        ("postgresql://u:p%40w-1@[::1]:5432/d", f"postgresql://u:{M}@[::1]:5432/d"),
        ("postgresql://u:@h/d", f"postgresql://u:{M}@h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://h/d", "postgresql://h/d"),
        ("postgresql://", "postgresql://"),
        # What libpq reads as a password although asyncpg would not ("?" before the "@").
        ("postgresql://u:pw?x-1@h/d", f"postgresql://u:{M}@h/d"),
        ("postgresql://u:pw#x-1@h/d", f"postgresql://u:{M}@h/d"),
        # Neither reads a password holding "/" as one, but it is hidden all the same.
        ("postgresql://u:pw/x-1@h/d", f"postgresql://u:{M}@h/d"),
        # Query parameters, first or later, plain or percent-encoded names, sslpassword too.
        ("postgresql://u@h/d?password=pw-1", f"postgresql://u@h/d?password={M}"),
        (
            "postgresql://u@h/d?sslmode=require&password=pw-1&application_name=x",
            f"postgresql://u@h/d?sslmode=require&password={M}&application_name=x",
        ),
        ("postgresql://u@h/d?pass%77ord=pw-1", f"postgresql://u@h/d?pass%77ord={M}"),
        ("postgresql://u@h/d?%70assword=pw%20-1", f"postgresql://u@h/d?%70assword={M}"),
        ("postgresql://u@h/d?sslpassword=pw-1", f"postgresql://u@h/d?sslpassword={M}"),
        ("postgresql:///d?host=/run/pg&password=pw-1", f"postgresql:///d?host=/run/pg&password={M}"),
        (
            "postgresql://u:pw-1@h/d?password=pw-2&passfile=/x",
            f"postgresql://u:{M}@h/d?password={M}&passfile=/x",
        ),
        # key=value strings: bare, quoted, escaped, spaced, several secrets.
        ("host=db password=pw-1 dbname=d", f"host=db password={M} dbname=d"),
        ("host=db password='pw -1' dbname=d", f"host=db password={M} dbname=d"),
        ("host=db password='it\\'s pw-1' dbname=d", f"host=db password={M} dbname=d"),
        ("host=db password=pw\\ -1 dbname=d", f"host=db password={M} dbname=d"),
        ("host = db  password = pw-1", f"host = db  password = {M}"),
        ("PASSWORD=pw-1", f"PASSWORD={M}"),
        ("sslpassword=pw-1 sslkey=/k", f"sslpassword={M} sslkey=/k"),
        ("password=", f"password={M}"),
        ("host=db\tpassword=pw-1\n", f"host=db\tpassword={M}\n"),
        # libpq's syntax errors: everything that follows is hidden.
        ("host=db password='pw-1", f"host=db password={M}"),
        ("host=db password pw-1", f"host=db password {M}"),
        # A dbname that is a connection string itself (libpq expands it).
        ("dbname='postgresql://u:pw-1@h/d'", f"dbname='postgresql://u:{M}@h/d'"),
        ("dbname='host=h password=pw-1' user=u", f"dbname='host=h password={M}' user=u"),
        ("dbname=d user=u", "dbname=d user=u"),
        # Not a connection string with a password at all.
        ("embedded", "embedded"),
        ("mydb", "mydb"),
    ],
)
def test_redact_hides_every_password(text: str, shown: str) -> None:
    assert dsn.redact(text) == shown
    assert "pw" not in dsn.redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u@h/d",
        "postgresql://u:pw@h:5432/d",
        "postgres://u:p%40%2F%3F%23w@h1:5432,h2/d?sslmode=require&application_name=n",
        "postgresql://[::1]:5432/d",
        "postgresql:///d?host=/run/postgresql&port=5433",
        "postgresql://u:pa:ss@h/d",
    ],
)
def test_usable_dsns_have_no_problem(text: str) -> None:
    assert dsn.problem(text) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("  ", "must not be empty"),
        ("host=db password=pw-secret", "expected a postgresql:// URL"),
        ("mysql://u:pw-secret@h/d", "expected a postgresql:// URL"),
        ("postgresql://u:pw?secret@h/d", "must be percent-encoded"),
        ("postgresql://u:pw#secret@h/d", "must be percent-encoded"),
        ("postgresql://u:pw@secret@h/d", "must be percent-encoded"),
        ("postgresql://u:pw/secret@h/d", "a port is not a number"),
        ("postgresql://u@h:port/d", "a port is not a number"),
        ("postgresql://u@h/d?port=5432,x", "a port is not a number"),
        ("postgresql://u@h/d?password", "malformed query string"),
        ("postgresql://[::1/d", "not a valid URL"),
        # asyncpg refuses these only when it connects (a traceback from every command before)
        ("postgresql://u:secret@h:99999999/d", "a port is beyond 65535"),
        ("postgresql://u@h/d?port=70000", "a port is beyond 65535"),
        ("postgresql://u:secret@h/d?sslmode=bogus", "sslmode must be one of"),
        ("postgresql://u:secret@h:\u00b2/d", "a port is not a number"),  # "²".isdigit(): int() raised
    ],
)
def test_problems_are_named_without_quoting_the_dsn(text: str, message: str) -> None:
    found = dsn.problem(text)
    assert found is not None
    assert message in found
    assert "secret" not in found
