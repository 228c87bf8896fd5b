"""Storage: SQLite (embedded) and PostgreSQL (scale-out) behind one interface."""

from __future__ import annotations

from msgbatch.store.base import Store


def is_postgres_url(database: str) -> bool:
    return database.startswith(("postgres://", "postgresql://"))


def open_store(database: str, *, timeout: float = 3.0) -> Store:
    """A store for a `--database` value: a PostgreSQL URL (calls wait at most `timeout` for a
    connection), else a SQLite file path."""
    if is_postgres_url(database):
        from msgbatch.store.postgres import PostgresStore

        return PostgresStore(database, timeout=timeout)
    from msgbatch.store.sqlite import SQLiteStore

    return SQLiteStore(database)


__all__ = ["Store", "is_postgres_url", "open_store"]
