"""The scale-out store: one PostgreSQL database shared by any number of API servers and workers.

Same tables and the same rules as the SQLite store (immutable `requests`, a `jobs` queue that holds
only unfinished work, append-only `results`, counts on the batch row), with what several processes
at once need on top:

- Claims take rows with `FOR UPDATE SKIP LOCKED`, so workers never wait for each other.
- Every transaction that touches a batch's counts or status locks that batch row *first*
  (cancel, expiry, archive, delete, completion; several batches in `seq` order), then its jobs.
  One lock order means no deadlocks, and a batch is transitioned by exactly one process.
- Statements that only touch job rows (claim, renew, reap) skip rows others hold instead of waiting.
- Completions are conditional on the lease (`owner = me AND state = 1`): a worker whose lease ran
  out and was taken over cannot write a second result.
- Request ids come from a counter that only grows: a stale completion can never match a new job.

All SQL is here, next to the Python that runs it; the schema lives in versioned migrations that
`open()` (and `msgbatch migrate`) apply under an advisory lock, so concurrent starts are safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import postgres, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg_pool import AsyncConnectionPool

from msgbatch.clock import now_us
from msgbatch.models import CANCELED, CANCELING, ENDED, EXPIRED, IN_PROGRESS, RESULT_NAMES, Batch, Job, Outcome
from msgbatch.store.base import BATCH_COLUMNS, batch_from_row, keyset_pages

log = logging.getLogger("msgbatch.store.postgres")

CHANNEL = "msgbatch"
_MIGRATION_LOCK = 0x6D73676261746368  # "msgbatch" in ASCII: the advisory lock migrations hold

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "batches, requests, jobs, results",
        """
CREATE TABLE msgbatch.batches (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,   -- ids sort by time in byte order: list order and cursors
    workspace text NOT NULL,
    status smallint NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    ended_at bigint,
    cancel_initiated_at bigint,
    archived_at bigint,
    total integer NOT NULL,
    processing integer NOT NULL,
    succeeded integer NOT NULL DEFAULT 0,
    errored integer NOT NULL DEFAULT 0,
    canceled integer NOT NULL DEFAULT 0,
    expired integer NOT NULL DEFAULT 0,
    first_request bigint NOT NULL,
    betas text NOT NULL DEFAULT ''
) WITH (fillfactor = 50);  -- counter bumps stay HOT updates on the same page
CREATE INDEX batches_by_workspace ON msgbatch.batches (workspace, id);
CREATE INDEX batches_open ON msgbatch.batches (expires_at) WHERE status < 2;
CREATE INDEX batches_claimable ON msgbatch.batches (seq) WHERE status = 0;
CREATE INDEX batches_unarchived ON msgbatch.batches (created_at) WHERE archived_at IS NULL;

-- Immutable once written: what the client sent. A batch's rows are [first_request, first_request + total).
CREATE TABLE msgbatch.requests (
    id bigint PRIMARY KEY,
    custom_id text NOT NULL,
    params bytea NOT NULL
);
-- Large params are stored out of line as they are: compressing them costs more than it saves here.
ALTER TABLE msgbatch.requests ALTER COLUMN params SET STORAGE EXTERNAL;

-- Only unfinished work. state 0: waiting (claimable from not_before on); 1: leased to `owner`
-- until `lease_until`. A finished job's row is deleted in the transaction that writes its result.
CREATE TABLE msgbatch.jobs (
    id bigint PRIMARY KEY,
    batch bigint NOT NULL,
    state smallint NOT NULL DEFAULT 0,
    not_before bigint NOT NULL DEFAULT 0,
    owner text,
    lease_until bigint,
    attempts integer NOT NULL DEFAULT 0
);
-- Claims read a batch's id range of waiting jobs; an index on (batch, id) lets the planner fall
-- back to the primary key and re-scan finished rows (see PERF-NOTES), one on (id) cannot.
CREATE INDEX jobs_waiting ON msgbatch.jobs (id) WHERE state = 0;
CREATE INDEX jobs_leased ON msgbatch.jobs (lease_until) WHERE state = 1;
ALTER TABLE msgbatch.jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);

-- Append-only: one row per request, the whole results line as it will be served.
CREATE TABLE msgbatch.results (
    id bigint PRIMARY KEY,
    type smallint NOT NULL,
    line bytea NOT NULL
);
ALTER TABLE msgbatch.results ALTER COLUMN line SET STORAGE EXTERNAL;

-- Request ids are handed out in blocks, one per batch, and never reused.
CREATE TABLE msgbatch.counters (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO msgbatch.counters VALUES ('request_ids', 0);
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


# -- statements ------------------------------------------------------------------------------

# Lease up to `share` waiting jobs of each batch listed (by id range), in one statement. The
# lateral subqueries run in the order of the list, so the outer LIMIT favours the batches first
# in the rotation. Joins go through primary keys explicitly: without fresh statistics the planner
# must not be tempted into a hash join over a whole table.
_CLAIM = """
WITH picked AS (
    SELECT j.id
    FROM unnest(%(firsts)s::int8[], %(stops)s::int8[]) AS b(first, stop)
    CROSS JOIN LATERAL (
        SELECT id FROM msgbatch.jobs
        WHERE id >= b.first AND id < b.stop AND state = 0 AND not_before <= %(now)s
        ORDER BY id
        LIMIT %(share)s
        FOR UPDATE SKIP LOCKED
    ) AS j
    LIMIT %(limit)s
), leased AS (
    UPDATE msgbatch.jobs
    SET state = 1, owner = %(owner)s, lease_until = %(until)s, attempts = attempts + 1
    WHERE id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING id, batch, attempts
)
SELECT l.id, l.batch, l.attempts, r.custom_id, r.params
FROM leased AS l
CROSS JOIN LATERAL (SELECT custom_id, params FROM msgbatch.requests WHERE id = l.id) AS r
"""

# custom_id is restricted to [a-zA-Z0-9_-], so it can be spliced into JSON without escaping.
_TERMINAL_LINE = 'convert_to(\'{{"custom_id":"\' || r.custom_id || \'","result":{{"type":"{kind}"}}}}\', \'UTF8\')'

# A completion runs as one pipelined transaction, with no round trip to Python in the middle, so
# the batch rows it locks first are held only while the server works:
#   lock the batches; finished jobs -> results; retries -> queue (or `canceled`); end if idle.

_LOCK_BATCHES = "SELECT seq FROM msgbatch.batches WHERE seq = ANY(%(seqs)s::int8[]) ORDER BY seq FOR NO KEY UPDATE"

# Only the jobs this transaction takes from the caller's lease get a result (a lapsed lease writes
# nothing), and the counts move by what was taken. The outcomes come as arrays; each is matched to
# its job by a primary-key lookup (LATERAL), never by a join the planner would order on guesses.
_FINISH = """
WITH held AS (
    SELECT o.id, o.type, o.line, j.batch
    FROM unnest(%(ids)s::int8[], %(types)s::int2[], %(lines)s::bytea[]) AS o(id, type, line)
    CROSS JOIN LATERAL (
        SELECT batch FROM msgbatch.jobs
        WHERE id = o.id AND owner = %(owner)s AND state = 1 AND batch = ANY(%(seqs)s::int8[])
        FOR UPDATE
    ) AS j
), done AS (
    DELETE FROM msgbatch.jobs WHERE id = ANY(ARRAY(SELECT id FROM held))
), kept AS (
    INSERT INTO msgbatch.results (id, type, line) SELECT id, type, line FROM held
)
UPDATE msgbatch.batches AS b
SET processing = b.processing - t.n, succeeded = b.succeeded + t.s, errored = b.errored + t.e,
    canceled = b.canceled + t.c, expired = b.expired + t.x
FROM (
    SELECT batch, count(*) AS n, count(*) FILTER (WHERE type = 0) AS s, count(*) FILTER (WHERE type = 1) AS e,
           count(*) FILTER (WHERE type = 2) AS c, count(*) FILTER (WHERE type = 3) AS x
    FROM held GROUP BY batch
) AS t
WHERE b.seq = ANY(%(seqs)s::int8[]) AND b.seq = t.batch
RETURNING t.n
"""

# A retry goes back to the queue while its batch is in progress (one statement per retry, all
# in the same pipeline: retries are few) ...
_REQUEUE = """
UPDATE msgbatch.jobs
SET state = 0, owner = NULL, lease_until = NULL, not_before = %(not_before)s
WHERE id = %(id)s AND owner = %(owner)s AND state = 1
  AND batch IN (SELECT seq FROM msgbatch.batches WHERE seq = %(batch)s AND status = 0)
"""

# ... and is not run again in a batch being canceled: it becomes a `canceled` result.
_CANCEL_RETRIES = f"""
WITH done AS (
    DELETE FROM msgbatch.jobs
    WHERE id = ANY(%(ids)s::int8[]) AND owner = %(owner)s AND state = 1
      AND batch IN (SELECT seq FROM msgbatch.batches WHERE seq = ANY(%(seqs)s::int8[]) AND status = 1)
    RETURNING id, batch
), kept AS (
    INSERT INTO msgbatch.results (id, type, line)
    SELECT r.id, {CANCELED}, {_TERMINAL_LINE.format(kind="canceled")}
    FROM done CROSS JOIN LATERAL (SELECT id, custom_id FROM msgbatch.requests WHERE id = done.id) AS r
)
UPDATE msgbatch.batches AS b SET processing = b.processing - t.n, canceled = b.canceled + t.n
FROM (SELECT batch, count(*) AS n FROM done GROUP BY batch) AS t
WHERE b.seq = ANY(%(seqs)s::int8[]) AND b.seq = t.batch
RETURNING t.n
"""


def _finish_jobs_sql(result: int, kind: str, waiting_only: bool) -> str:
    """Every job of a batch's id range (or only the waiting ones) becomes a terminal result line,
    and the batch's counts move by as many; the caller holds the batch row."""
    column = RESULT_NAMES[result]
    return f"""
WITH gone AS (
    DELETE FROM msgbatch.jobs
    WHERE id >= %(first)s AND id < %(stop)s{" AND state = 0" if waiting_only else ""}
    RETURNING id
), kept AS (
    INSERT INTO msgbatch.results (id, type, line)
    SELECT r.id, {result}, {_TERMINAL_LINE.format(kind=kind)}
    FROM gone CROSS JOIN LATERAL (SELECT id, custom_id FROM msgbatch.requests WHERE id = gone.id) AS r
)
UPDATE msgbatch.batches
SET processing = processing - (SELECT count(*) FROM gone), {column} = {column} + (SELECT count(*) FROM gone)
WHERE seq = %(seq)s
"""


_CANCEL_WAITING = _finish_jobs_sql(CANCELED, "canceled", waiting_only=True)
_EXPIRE_ALL = _finish_jobs_sql(EXPIRED, "expired", waiting_only=False)

# Only the transaction whose counts took processing to 0 can see it at 0 first (it holds the
# row lock); the status test keeps an ended batch from being ended twice.
_END_IF_IDLE = """
UPDATE msgbatch.batches SET status = 2, ended_at = %(now)s
WHERE seq = ANY(%(seqs)s::int8[]) AND processing = 0 AND status < 2
RETURNING id
"""

# Every query here is a key lookup or an ordered range scan with a limit. Plain index scans suit
# them whatever the statistics say (the queue's change too fast for them, and without autovacuum
# there are none), and unlike bitmap scans they mark the entries of finished jobs dead as they
# pass, so later claims skip them cheaply. JIT compiling would cost more than any of them.
_SESSION_OPTIONS = "-c enable_bitmapscan=off -c jit=off"


_BYTEA = postgres.types["bytea"]


class _ByteaArray(bytes):
    """A bytea[] parameter, already in PostgreSQL's binary array format."""


class _ByteaArrayDumper(Dumper):
    format = Format.BINARY
    oid = _BYTEA.array_oid

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


_array_head = struct.Struct("!iiiii").pack  # 1 dimension, no nulls, element type, length, lower bound


def _bytea_array(items: Sequence[bytes]) -> _ByteaArray:
    """Results lines as one bytea[] parameter. psycopg's generic list dumper takes ~35 µs a line,
    a sixth of a worker's time per request; this takes about one."""
    parts: list[bytes] = [_array_head(1, 0, _BYTEA.oid, len(items), 1)]
    for item in items:
        parts += (_field_len(len(item)), item)
    return _ByteaArray(b"".join(parts))


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_dumper(_ByteaArray, _ByteaArrayDumper)


_COPY_REQUESTS = "COPY msgbatch.requests (id, custom_id, params) FROM STDIN (FORMAT BINARY)"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_COPY_CHUNK = 1 << 20
_row_head = struct.Struct("!hiqi").pack  # 3 fields; int8 id (length 8, value); custom_id length
_field_len = struct.Struct("!i").pack


def _copy_chunks(first: int, requests: Sequence[tuple[str, msgspec.Raw | bytes]]) -> Iterator[bytes]:
    """The requests as a binary COPY stream, in ~1 MiB chunks made as they are asked for."""
    parts: list[Any] = [_COPY_HEADER]
    size = 0
    for i, (custom_id, params) in enumerate(requests):
        cid = custom_id.encode()
        length = len(params)
        parts += (_row_head(3, 8, first + i, len(cid)), cid, _field_len(length), params)
        size += length + 30
        if size >= _COPY_CHUNK:
            yield b"".join(parts)
            parts, size = [], 0
    parts.append(_COPY_TRAILER)
    yield b"".join(parts)


class PostgresStore:
    single_process = False

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._rr_last_seq = 0  # fairness cursor: the batch served last by this process
        self._listener: asyncio.Task[None] | None = None
        self._next_tidy = 0.0  # monotonic time of the next look at the jobs table's dead rows

    # -- connections -------------------------------------------------------------------------

    @property
    def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        await self.migrate()
        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "options": _SESSION_OPTIONS},
            configure=_configure,
            open=False,
            name="msgbatch",
        )
        await pool.open(wait=True, timeout=30.0)
        self._pool = pool

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; returns the versions applied."""
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
                if applied and max(applied) > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"the database was migrated by a newer msgbatch (schema {max(applied)} > {SCHEMA_VERSION})"
                    )
                for version, name, script in MIGRATIONS:
                    if version in applied:
                        continue
                    async with conn.transaction():
                        await conn.execute(script.encode())
                        await conn.execute(
                            "INSERT INTO msgbatch.migrations (version, name) VALUES (%s, %s)", (version, name)
                        )
                    log.info("migration.applied version=%d name=%s", version, name)
                    applied_now.append(version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        return applied_now

    async def ping(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")

    async def _fetchall(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params, binary=True)
            return await cur.fetchall()

    # -- wake-ups ----------------------------------------------------------------------------

    async def _notify(self, conn: psycopg.AsyncConnection[Any], payload: str) -> None:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    async def listen(self, on_work: Callable[[], None], on_canceled: Callable[[int], None]) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(on_work, on_canceled), name="msgbatch-listen")

    async def _listen(self, on_work: Callable[[], None], on_canceled: Callable[[int], None]) -> None:
        """A dedicated connection LISTENs; when it drops, reconnect (the poll interval covers the gap)."""
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    delay = 0.5
                    on_work()  # whatever was announced while we were not listening
                    async for note in conn.notifies():
                        kind, _, seq = note.payload.partition(":")
                        if kind == "cancel" and seq.isdigit():
                            on_canceled(int(seq))
                        else:
                            on_work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listen.lost error=%s retry_in=%.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- batches -----------------------------------------------------------------------------

    async def create_batch(self, batch: Batch, requests: Sequence[tuple[str, msgspec.Raw | bytes]]) -> Batch:
        total = len(requests)
        async with self.pool.connection() as conn:
            # The block of ids is taken in its own tiny transaction: creates never queue behind
            # each other's COPY, and a failed create leaves a gap, never a reused id.
            cur = await conn.execute(
                "UPDATE msgbatch.counters SET value = value + %s WHERE name = 'request_ids' RETURNING value",
                (total,),
            )
            row = await cur.fetchone()
            assert row is not None
            first = row[0] - total + 1
            async with conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO msgbatch.batches (id, workspace, status, created_at, expires_at, total, "
                    "processing, first_request, betas) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq",
                    (
                        batch.id,
                        batch.workspace,
                        IN_PROGRESS,
                        batch.created_at,
                        batch.expires_at,
                        total,
                        total,
                        first,
                        batch.betas,
                    ),
                )
                row = await cur.fetchone()
                assert row is not None
                seq = row[0]
                async with conn.cursor() as cursor, cursor.copy(_COPY_REQUESTS) as copy:
                    # Made as they are sent: the server stores one chunk while we encode the next.
                    for chunk in _copy_chunks(first, requests):
                        await copy.write(chunk)
                await conn.execute(
                    "INSERT INTO msgbatch.jobs (id, batch) SELECT g, %s FROM generate_series(%s::int8, %s::int8) AS g",
                    (seq, first, first + total - 1),
                )
                await self._notify(conn, "work")
        return msgspec.structs.replace(batch, seq=seq, first_request=first, processing=total)

    async def get_batch(self, batch_id: str) -> Batch | None:
        rows = await self._fetchall(f"SELECT {BATCH_COLUMNS} FROM msgbatch.batches WHERE id = %s", (batch_id,))
        return batch_from_row(rows[0]) if rows else None

    async def list_batches(
        self, workspace: str, limit: int, *, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool]:
        base = f"SELECT {BATCH_COLUMNS} FROM msgbatch.batches WHERE workspace = %s"
        if before_id is not None:
            rows = await self._fetchall(f"{base} AND id > %s ORDER BY id LIMIT %s", (workspace, before_id, limit + 1))
            return [batch_from_row(r) for r in reversed(rows[:limit])], len(rows) > limit
        if after_id is not None:
            rows = await self._fetchall(
                f"{base} AND id < %s ORDER BY id DESC LIMIT %s", (workspace, after_id, limit + 1)
            )
        else:
            rows = await self._fetchall(f"{base} ORDER BY id DESC LIMIT %s", (workspace, limit + 1))
        return [batch_from_row(r) for r in rows[:limit]], len(rows) > limit

    async def cancel_batch(self, seq: int, now: int) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            # The conditional update takes the batch row lock: of two cancels, one acts.
            cur = await conn.execute(
                "UPDATE msgbatch.batches SET status = %s, cancel_initiated_at = %s "
                "WHERE seq = %s AND status = %s RETURNING first_request, total",
                (CANCELING, now, seq, IN_PROGRESS),
            )
            row = await cur.fetchone()
            if row is None:
                return
            first, total = row
            await conn.execute(_CANCEL_WAITING, {"first": first, "stop": first + total, "seq": seq})
            await self._end_if_idle(conn, [seq], now)
            await self._notify(conn, f"cancel:{seq}")

    async def delete_batch(self, seq: int) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM msgbatch.batches WHERE seq = %s RETURNING first_request, total", (seq,)
            )
            row = await cur.fetchone()
            if row is None:
                return
            first, total = row
            for table in ("results", "requests", "jobs"):
                await conn.execute(f"DELETE FROM msgbatch.{table} WHERE id >= %s AND id < %s", (first, first + total))

    async def iter_results(
        self, batch: Batch, *, result_type: int | None = None, custom_id: str | None = None
    ) -> AsyncIterator[list[bytes]]:
        end = batch.first_request + batch.total
        type_clause = " AND type = %s" if result_type is not None else ""
        extra: tuple[int, ...] = (result_type,) if result_type is not None else ()
        if custom_id is not None:
            rows = await self._fetchall(
                "SELECT line FROM msgbatch.results WHERE id = (SELECT id FROM msgbatch.requests "
                f"WHERE id >= %s AND id < %s AND custom_id = %s){type_clause}",
                (batch.first_request, end, custom_id, *extra),
            )
            if rows:
                yield [r[0] for r in rows]
            return
        # Each page on a pooled connection for a moment: a slow reader holds nothing.
        query = f"SELECT id, line FROM msgbatch.results WHERE id >= %s AND id < %s{type_clause} ORDER BY id LIMIT %s"

        async def fetch(cursor: int, limit: int) -> list[tuple[int, bytes]]:
            return await self._fetchall(query, (cursor, end, *extra, limit))

        async for lines in keyset_pages(fetch, batch.first_request, end):
            yield lines

    # -- the queue ---------------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, now: int, lease_until: int) -> list[Job]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT seq, first_request, total, betas, expires_at FROM msgbatch.batches "
                "WHERE status = %s ORDER BY seq",
                (IN_PROGRESS,),
                binary=True,
            )
            active = await cur.fetchall()
            if not active:
                return []
            # Start after the batch served last, so every batch gets its turn however many there are.
            pivot = next((i for i, b in enumerate(active) if b[0] > self._rr_last_seq), 0)
            order = active[pivot:] + active[:pivot]
            info = {b[0]: b for b in active}
            jobs: list[Job] = []
            remaining = limit
            while remaining > 0 and order:
                share = max(1, math.ceil(remaining / len(order)))
                cur = await conn.execute(
                    _CLAIM,
                    {
                        "firsts": [b[1] for b in order],
                        "stops": [b[1] + b[2] for b in order],
                        "now": now,
                        "share": share,
                        "limit": remaining,
                        "owner": owner,
                        "until": lease_until,
                    },
                    binary=True,
                )
                rows = await cur.fetchall()
                if not rows:
                    break
                per_batch: dict[int, int] = {}
                for rid, seq, attempts, custom_id, params in rows:
                    _, _, _, betas, expires_at = info[seq]
                    jobs.append(Job(rid, seq, custom_id, params, betas, expires_at, attempts))
                    per_batch[seq] = per_batch.get(seq, 0) + 1
                remaining -= len(rows)
                served = [b for b in order if b[0] in per_batch]
                self._rr_last_seq = served[-1][0]
                # Batches that filled their share may have more; the others are drained for now.
                order = [b for b in served if per_batch[b[0]] >= share]
            return jobs

    async def complete(self, owner: str, outcomes: Sequence[Outcome], now: int) -> tuple[int, list[str]]:
        if not outcomes:
            return 0, []
        seqs = sorted({o.batch for o in outcomes})
        finished = [o for o in outcomes if o.result is not None]
        retries = [o for o in outcomes if o.result is None]
        counted: list[psycopg.AsyncCursor[Any]] = []
        async with self.pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                # Batch rows first, in seq order: the lock order every transaction here follows.
                await conn.execute(_LOCK_BATCHES, {"seqs": seqs})
                if finished:
                    args = {
                        "ids": [o.job for o in finished],
                        "types": [o.result for o in finished],
                        "lines": _bytea_array([o.line for o in finished]),
                        "owner": owner,
                        "seqs": seqs,
                    }
                    counted.append(await conn.execute(_FINISH, args, binary=True))
                if retries:
                    ids = [o.job for o in retries]
                    counted.append(await conn.execute(_CANCEL_RETRIES, {"ids": ids, "owner": owner, "seqs": seqs}))
                    requeued = [
                        await conn.execute(
                            _REQUEUE, {"id": o.job, "batch": o.batch, "not_before": o.not_before, "owner": owner}
                        )
                        for o in retries
                    ]
                ended = await conn.execute(_END_IF_IDLE, {"seqs": seqs, "now": now})
            accepted = 0
            for cur in counted:
                accepted += sum(row[0] for row in await cur.fetchall())
            if retries:
                accepted += sum(cur.rowcount for cur in requeued)
            return accepted, [row[0] for row in await ended.fetchall()]

    async def _end_if_idle(self, conn: psycopg.AsyncConnection[Any], seqs: list[int], now: int) -> list[str]:
        cur = await conn.execute(_END_IF_IDLE, {"seqs": seqs, "now": now})
        return [row[0] for row in await cur.fetchall()]

    async def renew_leases(self, owner: str, lease_until: int) -> None:
        async with self.pool.connection() as conn:
            # Rows being completed or reaped right now are skipped, not waited for.
            await conn.execute(
                "UPDATE msgbatch.jobs SET lease_until = %s WHERE id = ANY(ARRAY("
                "SELECT id FROM msgbatch.jobs WHERE state = 1 AND owner = %s FOR UPDATE SKIP LOCKED))"
                " AND state = 1 AND owner = %s",
                (lease_until, owner, owner),
            )

    async def release(self, owner: str, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE msgbatch.jobs SET state = 0, owner = NULL, lease_until = NULL, attempts = attempts - 1 "
                "WHERE id = ANY(%s::int8[]) AND owner = %s AND state = 1",
                (sorted(job_ids), owner),
            )
            if cur.rowcount:
                await self._notify(conn, "work")

    async def recover(self) -> int:
        # Other processes' leases may be alive: only those that ran out go back to the queue.
        return await self.reap_leases(now_us())

    async def reap_leases(self, now: int) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE msgbatch.jobs SET state = 0, owner = NULL, lease_until = NULL WHERE id = ANY(ARRAY("
                "SELECT id FROM msgbatch.jobs WHERE state = 1 AND lease_until < %s FOR UPDATE SKIP LOCKED)) "
                "AND state = 1",
                (now,),
            )
            reaped = cur.rowcount
            if reaped:
                await self._notify(conn, "work")
        await self._tidy_queue()
        return reaped

    async def _tidy_queue(self) -> None:
        """Vacuum the jobs table when dead rows pile up and the server's autovacuum is off.

        Every request leaves two or three dead row versions in `jobs` (claimed, finished); with
        autovacuum on, the table's own settings make it vacuum early. Checked at most once a
        minute per process; SKIP_LOCKED lets one process do it while the others move on."""
        now = time.monotonic()
        if now < self._next_tidy:
            return
        self._next_tidy = now + 60.0
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT current_setting('autovacuum') = 'off' AND n_dead_tup > greatest(50000, 4 * n_live_tup) "
                "FROM pg_stat_user_tables WHERE relid = 'msgbatch.jobs'::regclass"
            )
            row = await cur.fetchone()
            if row and row[0]:
                await conn.execute("VACUUM (SKIP_LOCKED) msgbatch.jobs")
                log.info("queue.vacuumed")

    async def expire_due(self, now: int) -> list[str]:
        due = await self._fetchall(
            "SELECT seq FROM msgbatch.batches WHERE status < %s AND expires_at <= %s ORDER BY seq", (ENDED, now)
        )
        expired = []
        for (seq,) in due:
            async with self.pool.connection() as conn, conn.transaction():
                # Lock, then look again: another process may have ended it since.
                cur = await conn.execute(
                    "SELECT id, first_request, total FROM msgbatch.batches "
                    "WHERE seq = %s AND status < %s AND expires_at <= %s FOR UPDATE",
                    (seq, ENDED, now),
                )
                row = await cur.fetchone()
                if row is None:
                    continue
                batch_id, first, total = row
                await conn.execute(_EXPIRE_ALL, {"first": first, "stop": first + total, "seq": seq})
                await conn.execute(
                    "UPDATE msgbatch.batches SET status = %s, ended_at = %s WHERE seq = %s", (ENDED, now, seq)
                )
                expired.append(batch_id)
        return expired

    async def archive_due(self, created_before: int, now: int) -> list[str]:
        due = await self._fetchall(
            "SELECT seq FROM msgbatch.batches WHERE archived_at IS NULL AND status = %s AND created_at < %s "
            "ORDER BY created_at LIMIT 100",
            (ENDED, created_before),
        )
        archived = []
        for (seq,) in due:
            async with self.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "UPDATE msgbatch.batches SET archived_at = %s WHERE seq = %s AND archived_at IS NULL "
                    "RETURNING id, first_request, total",
                    (now, seq),
                )
                row = await cur.fetchone()
                if row is None:
                    continue  # another process archived it first
                batch_id, first, total = row
                await conn.execute("DELETE FROM msgbatch.results WHERE id >= %s AND id < %s", (first, first + total))
                await conn.execute("DELETE FROM msgbatch.requests WHERE id >= %s AND id < %s", (first, first + total))
                archived.append(batch_id)
        return archived
