"""Forward-only numbered SQL migrations, safe when several nodes run them at once.

Each file ``NNNN_name.sql`` in ``migrations/`` is applied once, in order, in its own
transaction, while holding a transaction-level advisory lock, so concurrent ``mailerd migrate``
runs serialise and the second finds nothing left to do.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

import asyncpg

MIGRATION_LOCK_KEY = 0x6D61696C6572  # "mailer": one fixed key for every node of a database
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    """One set of migrations: its directory in ``mailerd.db`` and the table that records it."""

    directory: str
    table: str
    lock_key: int


MAIN = Schema("migrations", "mailerd_migrations", MIGRATION_LOCK_KEY)
# The reports database (mailerd/db/reports_migrations): its own numbering and table, so it may
# even share a database with the main schema.
REPORTS = Schema("reports_migrations", "mailerd_reports_migrations", MIGRATION_LOCK_KEY + 1)


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


def available(schema: Schema = MAIN) -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("mailerd.db").joinpath(schema.directory).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def applied(conn: asyncpg.Connection, schema: Schema = MAIN) -> set[int]:
    """Versions already applied to this database (empty before the first migration)."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", schema.table)
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch(f"SELECT version FROM {schema.table}")}


async def migrate(conn: asyncpg.Connection, schema: Schema = MAIN) -> list[Migration]:
    """Apply every pending migration; return the ones this call applied."""
    done: list[Migration] = []
    for migration in available(schema):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", schema.lock_key)
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {schema.table} (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            if migration.version in await applied(conn, schema):
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {schema.table} (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            done.append(migration)
    return done


async def pending(conn: asyncpg.Connection, schema: Schema = MAIN) -> list[Migration]:
    """Migrations not yet applied: the daemon refuses to start while any remain."""
    have = await applied(conn, schema)
    return [m for m in available(schema) if m.version not in have]
