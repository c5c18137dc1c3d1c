"""Postgres access: connections, the embedded server, migrations, partitions and named queries."""

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
