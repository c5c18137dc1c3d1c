"""Postgres access: connections, the embedded server, migrations, partitions and the queries of
each table (one module per table)."""

import asyncpg

# What a lost or restarting database raises: retry, or treat the connection as gone. It includes
# asyncpg's InternalClientError, raised by a pooled connection the server killed (asyncpg#784).
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
DB_ERRORS_OR_TIMEOUT: tuple[type[BaseException], ...] = (*DB_ERRORS, TimeoutError)

# SQLSTATE classes that say "the database cannot do this now", not "this data is wrong":
# connection exceptions, transaction rollback (serialization, deadlock), insufficient resources,
# object not in prerequisite state (lock not available), operator intervention (shutdown,
# cancel), system errors, configuration file errors, internal errors.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "F0", "XX"})
_READ_ONLY = "25006"  # a standby after a failover: the next connection may reach the primary
# A row Postgres itself routed to a default partition, refused there because the partition of its
# range was attached (another node's maintenance) after the statement began: the same row goes to
# the new partition when tried again. A partition constraint has no name (a CHECK constraint has),
# and the error names the default partition (``<table>_default``, mailerd.db.partitions); a row no
# partition takes at all names the parent, and fails the same way every time.
_CHECK_VIOLATION = "23514"


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same statement later can succeed (a reconnect, a restarted server,
    a promoted standby), as opposed to a failure caused by the data itself, which fails the same
    way every time (a value Postgres refuses, a key too large for its index, a constraint)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state == _CHECK_VIOLATION:
            table = getattr(exc, "table_name", None) or ""
            return getattr(exc, "constraint_name", None) is None and table.endswith("_default")
        return state[:2] in _TRANSIENT_CLASSES or state == _READ_ONLY
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return False  # asyncpg's client-side DataError: a value it cannot encode
    return isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError))
