"""The scale-out store: one PostgreSQL database shared by any number of API servers and workers,
running the statements of `sql/postgres.sql` (which also says how several processes stay safe).

What this module knows is the dialect: a pool of connections; a group of steps as one pipelined
transaction (one round trip); rows passed as arrays, or streamed with binary COPY; NOTIFY wake-ups
received on a LISTEN connection of its own; migrations applied under an advisory lock, so
concurrent starts are safe; and vacuuming the queue table when the server's autovacuum is off.

And riding out the database going away: a call that finds it gone (or waits `timeout` for a
connection) raises `ServiceUnavailableError` (503, retry-after); the store is then marked down,
once, with one WARNING, and later calls answer at once instead of queueing for the pool. A probe
connects every half second or so; when it gets through, a fresh pool replaces the old one (whose
reconnection back-off can reach tens of seconds) and one INFO line says so. A transaction cut by
the outage may or may not have committed: every caller's transaction is safe to run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import postgres, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from msgbatch.errors import ServiceUnavailableError
from msgbatch.store.base import Refused, Row, Step
from msgbatch.store.queries import Query, load_queries, migrations

log = logging.getLogger("msgbatch.store.postgres")

# SQLSTATE classes that mean the server or the connection went away, not that a statement failed.
_GONE_STATES = ("08", "57P01", "57P02", "57P03")
_PROBE_FIRST, _PROBE_MAX = 0.1, 0.5  # seconds between probes while the database is down
_READY_TIMEOUT = 0.9  # /ready answers within a second


def _is_gone(exc: BaseException) -> bool:
    """Does this failure say the database cannot be reached (rather than a statement failing)?"""
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(_GONE_STATES)
    return False


CHANNEL = "msgbatch"
_MIGRATION_LOCK = 0x6D73676261746368  # "msgbatch" in ASCII: the advisory lock migrations hold

# Every query is a key lookup or an ordered range scan with a limit. Plain index scans suit them
# whatever the statistics say (the queue's change too fast for them, and without autovacuum there
# are none), and unlike bitmap scans they mark the entries of finished jobs dead as they pass, so
# later claims skip them cheaply. JIT compiling would cost more than any of them.
_SESSION_OPTIONS = "-c enable_bitmapscan=off -c jit=off"

_BYTEA = postgres.types["bytea"]


class _BinaryArray(bytes):
    """An array parameter already in PostgreSQL's binary array format, of the element type `kind`."""

    kind = ""


class _ByteaArray(_BinaryArray):
    kind = "bytea"


class _Int8Array(_BinaryArray):
    kind = "int8"


class _Int4Array(_BinaryArray):
    kind = "int4"


class _Int2Array(_BinaryArray):
    kind = "int2"


class _TextArray(_BinaryArray):
    kind = "text"


def _array_dumper(cls: type[_BinaryArray]) -> type[Dumper]:
    class ArrayDumper(Dumper):
        format = Format.BINARY
        oid = postgres.types[cls.kind].array_oid

        def dump(self, obj: Any) -> bytes:
            return bytes(obj)

    return ArrayDumper


_ARRAY_TYPES = (_ByteaArray, _TextArray, _Int8Array, _Int4Array, _Int2Array)


_array_head = struct.Struct("!iiiii").pack  # 1 dimension, no nulls, element type, length, lower bound
_field_len = struct.Struct("!i").pack
_DUMPERS = {cls: _array_dumper(cls) for cls in _ARRAY_TYPES}
_INTS: dict[str, tuple[type[_BinaryArray], int, str, int]] = {
    "int8": (_Int8Array, postgres.types["int8"].oid, "iq", 8),
    "int4": (_Int4Array, postgres.types["int4"].oid, "ii", 4),
    "int2": (_Int2Array, postgres.types["int2"].oid, "ih", 2),
}


def _bytea_array(items: Sequence[bytes]) -> _ByteaArray:
    """Byte strings as one bytea[] parameter. psycopg's generic list dumper takes ~35 µs an
    item (a sixth of a worker's time per request when results lines went that way); this ~1 µs."""
    parts: list[bytes] = [_array_head(1, 0, _BYTEA.oid, len(items), 1)]
    for item in items:
        parts += (_field_len(len(item)), item)
    return _ByteaArray(b"".join(parts))


def _text_array(items: Sequence[str]) -> _TextArray:
    """Strings as one text[] parameter, the same way (the binary form of text is its UTF-8)."""
    parts: list[bytes] = [_array_head(1, 0, postgres.types["text"].oid, len(items), 1)]
    for item in items:
        data = item.encode()
        parts += (_field_len(len(data)), data)
    return _TextArray(b"".join(parts))


def _int_array(kind: str, items: Sequence[int]) -> _BinaryArray:
    """Integers as one array parameter, packed in one call: psycopg's list dumper costs ~0.4 µs an
    item, which for the seven columns of a completion of 500 was a fifth of its time."""
    cls, oid, code, size = _INTS[kind]
    n = len(items)
    # (length, value) pairs, interleaved by slice assignment: a third of the time of a generator.
    flat = [size] * (2 * n)
    flat[1::2] = items
    return cls(_array_head(1, 0, oid, n, 1) + struct.pack("!" + code * n, *flat))


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    for cls in _ARRAY_TYPES:
        conn.adapters.register_dumper(cls, _DUMPERS[cls])


# -- binary COPY ---------------------------------------------------------------------------------

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_COPY_CHUNK = 1 << 20
_int8 = struct.Struct("!iq").pack  # length 8, value
_int4 = struct.Struct("!ii").pack
_row_start = struct.Struct("!h").pack
# (int8, text, bytea) rows: the requests of a batch, the one hot COPY.
_id_text_head = struct.Struct("!hiqi").pack  # 3 fields; int8 id (length 8, value); text length


def _field(kind: str, value: Any) -> bytes:
    if kind == "int8":
        return _int8(8, value)
    if kind == "int4":
        return _int4(4, value)
    data = value.encode() if isinstance(value, str) else bytes(value)
    return _field_len(len(data)) + data


def _copy_chunks(types: tuple[str, ...], rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    """Rows as a binary COPY stream, in ~1 MiB chunks made as they are asked for."""
    parts: list[Any] = [_COPY_HEADER]
    size = 0
    if types == ("int8", "text", "bytea"):
        for rid, text, blob in rows:
            encoded = text.encode()
            length = len(blob)
            parts += (_id_text_head(3, 8, rid, len(encoded)), encoded, _field_len(length), blob)
            size += length + 30
            if size >= _COPY_CHUNK:
                yield b"".join(parts)
                parts, size = [], 0
    else:
        count = _row_start(len(types))
        for row in rows:
            parts.append(count)
            for kind, value in zip(types, row, strict=True):
                field = _field(kind, value)
                parts.append(field)
                size += len(field)
            if size >= _COPY_CHUNK:
                yield b"".join(parts)
                parts, size = [], 0
    parts.append(_COPY_TRAILER)
    yield b"".join(parts)


def _array_params(query: Query, rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """The step's rows as one array parameter per column."""
    materialized = rows if isinstance(rows, list | tuple) else list(rows)
    columns: list[Sequence[Any]] = list(zip(*materialized, strict=True)) if materialized else [()] * len(query.rows)
    return {name: _array(kind, values) for (name, kind), values in zip(query.rows, columns, strict=True)}


def _array(kind: str, values: Sequence[Any]) -> Any:
    if kind == "bytea":
        return _bytea_array(values)
    if kind == "text":
        return _text_array(values)
    if kind in _INTS:
        return _int_array(kind, values)
    return list(values)


class PostgresStore:
    dialect = "postgres"
    single_process = False

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 3.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self.queries = load_queries("postgres")
        self._pool: AsyncConnectionPool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._next_tidy = 0.0  # monotonic time of the next look at the jobs table's dead rows
        self._down_since: float | None = None  # wall clock, while the database is unreachable
        self._recovery: asyncio.Task[None] | None = None

    # -- connections -------------------------------------------------------------------------

    @property
    def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        # This store reports the database going and coming back itself, once each; the pool's
        # own line per reconnection attempt would bury them.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        await self.migrate()
        self._pool = await self._new_pool(wait=30.0)

    async def _new_pool(self, *, wait: float) -> AsyncConnectionPool:
        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "options": _SESSION_OPTIONS},
            configure=_configure,
            open=False,
            name="msgbatch",
            timeout=self.timeout,
        )
        await pool.open(wait=True, timeout=wait)
        return pool

    async def close(self) -> None:
        for task in (self._listener, self._recovery):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._recovery = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        self._check_up()
        try:
            async with self.pool.connection(timeout=min(self.timeout, _READY_TIMEOUT)) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            raise self._failed(exc) from None

    # -- the database going away, and coming back ----------------------------------------------

    def _check_up(self) -> None:
        if self._down_since is not None:
            raise self._unavailable()

    @staticmethod
    def _unavailable() -> ServiceUnavailableError:
        return ServiceUnavailableError(
            "The database is unavailable; try again shortly.", retry_after=1.0, headers={"retry-after": "1"}
        )

    def _failed(self, exc: BaseException) -> BaseException:
        """What to raise for a failure: a database gone marks the store down (once)."""
        if not _is_gone(exc):
            return exc
        if self._down_since is None:
            self._down_since = time.time()
            log.warning("database.unavailable error=%s: calls answer 503 until it is back", str(exc).strip())
            self._recovery = asyncio.create_task(self._recover(), name="msgbatch-db-recovery")
        return self._unavailable()

    async def _recover(self) -> None:
        delay = _PROBE_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _PROBE_MAX)
            try:
                probe = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=2)
                await probe.close()
                fresh = await self._new_pool(wait=5.0)
            except Exception:
                continue
            stale, self._pool = self._pool, fresh
            down_for = time.time() - (self._down_since or time.time())
            self._down_since = None
            log.info("database.back down_for=%.1fs", down_for)
            if stale is not None:
                with contextlib.suppress(Exception):
                    await stale.close(timeout=1.0)
            return

    async def migrate(self) -> list[int]:
        versions = migrations(self.queries)
        latest = versions[-1][0]
        applied_now: list[int] = []
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        async with conn:
            # Session-level lock: concurrent starts wait here, then find nothing left to do.
            await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
            try:
                await conn.execute("CREATE SCHEMA IF NOT EXISTS msgbatch")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS msgbatch.migrations (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT version FROM msgbatch.migrations")
                applied = {row[0] for row in await cur.fetchall()}
                if applied and max(applied) > latest:
                    raise RuntimeError(
                        f"the database was migrated by a newer msgbatch (schema {max(applied)} > {latest})"
                    )
                for version, query in versions:
                    if version in applied:
                        continue
                    async with conn.transaction():
                        for statement in query.statements:
                            await conn.execute(statement.encode())
                        await conn.execute(
                            "INSERT INTO msgbatch.migrations (version, name) VALUES (%s, %s)", (version, query.summary)
                        )
                    log.info("migration.applied version=%d name=%s", version, query.summary)
                    applied_now.append(version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        return applied_now

    # -- statements --------------------------------------------------------------------------

    async def read(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        query = self.queries[name]
        self._check_up()
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(query.statements[0], params or {}, binary=True)
                return await cur.fetchall()
        except Exception as exc:
            raise self._failed(exc) from None

    async def run(self, *steps: Step, durable: bool = False) -> list[list[Row]]:
        self._check_up()
        try:
            return await self._run(steps)
        except Exception as exc:
            raise self._failed(exc) from None

    async def _run(self, steps: Sequence[Step]) -> list[list[Row]]:
        # Every commit is durable here (synchronous_commit): `durable` asks for nothing more.
        queries = [self.queries[step.name] for step in steps]
        copies = any(s.startswith("COPY") for q in queries for s in q.statements)
        async with self.pool.connection() as conn:
            if len(steps) == 1 and len(queries[0].statements) == 1 and not copies:
                # One statement is atomic by itself: no transaction or pipeline around it.
                return [await self._execute(conn, queries[0], steps[0])]
            if copies:
                # COPY cannot be pipelined: run the group statement by statement.
                async with conn.transaction():
                    found = []
                    for query, step in zip(queries, steps, strict=True):
                        found.append(await self._execute(conn, query, step))
                        if found[-1] and query.guard:
                            raise Refused(step.name, found[-1])
                    return found
            pending: list[list[psycopg.AsyncCursor[Any]]] = []
            async with conn.pipeline(), conn.transaction():
                for query, step in zip(queries, steps, strict=True):
                    params = dict(step.params)
                    if query.rows:
                        params.update(_array_params(query, step.rows))
                    pending.append(
                        [await conn.execute(statement, params, binary=True) for statement in query.statements]
                    )
                    if query.guard:  # its answer decides whether the rest runs: wait for it
                        rows = [row for cur in pending[-1] if cur.description for row in await cur.fetchall()]
                        if rows:
                            raise Refused(step.name, rows)
                        pending[-1] = []
            return [[row for cur in cursors if cur.description for row in await cur.fetchall()] for cursors in pending]

    async def _execute(self, conn: psycopg.AsyncConnection[Any], query: Query, step: Step) -> list[Row]:
        found: list[Row] = []
        for statement in query.statements:
            if statement.startswith("COPY"):
                types = tuple(kind for _, kind in query.rows)
                async with conn.cursor() as cursor, cursor.copy(statement) as copy:
                    # Made as they are sent: the server stores one chunk while we encode the next.
                    for chunk in _copy_chunks(types, step.rows):
                        await copy.write(chunk)
                continue
            params = dict(step.params)
            if query.rows:
                params.update(_array_params(query, step.rows))
            cur = await conn.execute(statement, params, binary=True)
            if cur.description:
                found.extend(await cur.fetchall())
        return found

    # -- wake-ups ----------------------------------------------------------------------------

    async def listen(self, on_notice: Callable[[str], None]) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(on_notice), name="msgbatch-listen")

    async def _listen(self, on_notice: Callable[[str], None]) -> None:
        """A dedicated connection LISTENs; when it drops, reconnect (the poll interval covers the
        gap). Said once when it drops, not at every attempt while the database is away."""
        delay = 0.25
        lost = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=2)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    delay, lost = 0.25, False
                    on_notice("work")  # whatever was announced while we were not listening
                    async for note in conn.notifies():
                        on_notice(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not lost:
                    log.warning("listen.lost error=%s: polling until it is back", str(exc).strip())
                    lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- housekeeping of this dialect --------------------------------------------------------

    async def tidy(self) -> None:
        """Vacuum the jobs table when dead rows pile up and the server's autovacuum is off.

        Every request leaves two or three dead row versions in `jobs` (claimed, finished); with
        autovacuum on, the table's own settings make it vacuum early. Checked at most once a
        minute per process; SKIP_LOCKED lets one process do it while the others move on."""
        now = time.monotonic()
        if now < self._next_tidy:
            return
        self._next_tidy = now + 60.0
        rows = await self.read("_dead_jobs")
        if rows and rows[0][0]:
            try:
                async with self.pool.connection() as conn:
                    await conn.execute("VACUUM (SKIP_LOCKED) msgbatch.jobs")
            except Exception as exc:
                raise self._failed(exc) from None
            log.info("queue.vacuumed")
