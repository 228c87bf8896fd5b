"""The embedded store: one SQLite file in WAL mode, running the statements of `sql/sqlite.sql`.

All writes go through one thread (SQLite allows one writer at a time, so queueing them in
Python is cheaper than contending for the file lock): a group of steps is one call into that
thread and one transaction. Reads use their own connections and never wait for the writer; a
read marked `-- inline` (a primary-key lookup) runs on the event loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec

from msgbatch.store.base import Refused, Row, Step
from msgbatch.store.queries import Query, load_queries, migrations

log = logging.getLogger("msgbatch.store.sqlite")

T = TypeVar("T")

_RETURNS_ROWS = re.compile(r"^\s*(SELECT|WITH)\b|\bRETURNING\b", re.IGNORECASE)

# How one statement of a block runs: once; once per row with the row as it is (`?`); or once per
# row with the row's columns and the step's parameters by name.
_ONCE, _ROW_AS_IS, _ROW_BY_NAME = 0, 1, 2


def _plan(query: Query) -> tuple[tuple[str, int, bool], ...]:
    plan = []
    for statement in query.statements:
        if not query.rows:
            kind = _ONCE
        elif "?" in statement:
            kind = _ROW_AS_IS
        elif any(re.search(rf":{column}\b", statement) for column in query.columns):
            kind = _ROW_BY_NAME
        else:
            kind = _ONCE
        plan.append((statement, kind, bool(_RETURNS_ROWS.search(statement))))
    return tuple(plan)


def _bind(params: Mapping[str, Any]) -> dict[str, Any]:
    """Lists become JSON arrays (json_each reads them)."""
    return {k: msgspec.json.encode(v).decode() if isinstance(v, list | tuple) else v for k, v in params.items()}


class SQLiteStore:
    dialect = "sqlite"
    single_process = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.queries = load_queries("sqlite")
        self._plans = {name: _plan(query) for name, query in self.queries.items()}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgbatch-sqlite-writer")
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="msgbatch-sqlite-reader")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        for statement in self.queries["_connect"].statements:
            conn.execute(statement)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    async def _in_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    async def open(self) -> None:
        def setup() -> None:
            self._write_conn = self._connect()

        await self._in_writer(setup)
        await self.migrate()

        def scratch() -> None:
            assert self._write_conn is not None
            for statement in self.queries["_writer"].statements:
                self._write_conn.execute(statement)

        await self._in_writer(scratch)
        self._inline = self._connect()

    async def close(self) -> None:
        def shutdown_writer() -> None:
            if self._write_conn is not None:
                try:
                    self._write_conn.execute("PRAGMA optimize")
                except sqlite3.Error:
                    pass
                self._write_conn.close()
                self._write_conn = None

        await self._in_writer(shutdown_writer)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    async def ping(self) -> None:
        assert self._inline is not None
        self._inline.execute("SELECT 1").fetchone()

    async def migrate(self) -> list[int]:
        versions = migrations(self.queries)
        latest = versions[-1][0]

        def apply() -> list[int]:
            conn = self._write_conn
            assert conn is not None, "store is not open"
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > latest:
                raise RuntimeError(f"{self.path} was written by a newer msgbatch (schema {current} > {latest})")
            applied = []
            for version, query in versions:
                if version <= current:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in query.statements:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {version:d}")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                log.info("migration.applied version=%d name=%s", version, query.summary)
                applied.append(version)
            return applied

        return await self._in_writer(apply)

    # -- statements --------------------------------------------------------------------------

    async def read(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        query = self.queries[name]
        bound = _bind(params or {})
        if query.inline:
            assert self._inline is not None, "store is not open"
            return self._inline.execute(query.statements[0], bound).fetchall()

        def fetch() -> list[Row]:
            return self._reader().execute(query.statements[0], bound).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._readers, fetch)

    def _execute(self, conn: sqlite3.Connection, step: Step) -> list[Row]:
        query = self.queries[step.name]
        params = _bind(step.params)
        plan = self._plans[step.name]
        rows: Iterable[Sequence[Any]] = step.rows
        if not isinstance(rows, list | tuple) and sum(kind != _ONCE for _, kind, _ in plan) > 1:
            rows = list(rows)  # several statements read them; one alone streams them (a file's chunks)
        named: list[dict[str, Any]] | None = None
        found: list[Row] = []
        for statement, kind, returns in plan:
            if kind == _ONCE:
                cursor = conn.execute(statement, params)
                if returns:
                    found.extend(cursor.fetchall())
                continue
            if kind == _ROW_AS_IS:
                each: Iterable[Any] = rows
            else:
                if named is None:
                    named = [{**params, **dict(zip(query.columns, row, strict=True))} for row in rows]
                each = named
            if returns:
                for values in each:
                    found.extend(conn.execute(statement, values).fetchall())
            else:
                conn.executemany(statement, each)
        return found

    async def run(self, *steps: Step, durable: bool = False) -> list[list[Row]]:
        if all(not self._plans[step.name] for step in steps):
            return [[] for _ in steps]  # nothing this dialect needs to do (e.g. `notify`)

        def transaction() -> list[list[Row]]:
            conn = self._write_conn
            assert conn is not None, "store is not open"
            if durable:
                # An accepted batch must survive a power loss, not only a crash.
                conn.execute("PRAGMA synchronous=FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    found = []
                    for step in steps:
                        found.append(self._execute(conn, step))
                        if found[-1] and self.queries[step.name].guard:
                            raise Refused(step.name, found[-1])
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return found
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous=NORMAL")

        return await self._in_writer(transaction)

    async def listen(self, on_notice: Callable[[str], None]) -> None:
        return None  # one process owns the file: the manager's callbacks reach the dispatcher directly

    async def tidy(self) -> None:
        return None  # WAL checkpoints and the page cache look after themselves
