"""Storage: SQLite (embedded) and PostgreSQL (scale-out) behind one interface."""

from __future__ import annotations

from msgbatch.store.base import Store


def open_store(database: str) -> Store:
    """A store for a `--database` value: a PostgreSQL URL, else a SQLite file path."""
    if database.startswith(("postgres://", "postgresql://")):
        from msgbatch.config import ConfigError

        raise ConfigError("PostgreSQL storage is not available in this build yet")
    from msgbatch.store.sqlite import SQLiteStore

    return SQLiteStore(database)


__all__ = ["Store", "open_store"]
