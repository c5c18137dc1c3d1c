"""Postgres access: connections, the embedded server, migrations, partitions and named queries."""
