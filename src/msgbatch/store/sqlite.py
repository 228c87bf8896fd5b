"""The embedded store: one SQLite file in WAL mode.

All writes go through one thread (SQLite allows one writer at a time, so queueing them in
Python is cheaper than contending for the file lock); reads use their own connections and
never wait for the writer.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import msgspec

from msgbatch.clock import now_us
from msgbatch.models import CANCELED, CANCELING, ENDED, EXPIRED, IN_PROGRESS, Batch, Job, Outcome
from msgbatch.store.base import BATCH_COLUMNS, batch_from_row, keyset_pages

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workspace TEXT NOT NULL,
    status INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER,
    cancel_initiated_at INTEGER,
    archived_at INTEGER,
    total INTEGER NOT NULL,
    processing INTEGER NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    errored INTEGER NOT NULL DEFAULT 0,
    canceled INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    first_request INTEGER NOT NULL,
    betas TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS batches_by_workspace ON batches (workspace, id);
CREATE INDEX IF NOT EXISTS batches_open ON batches (expires_at) WHERE status < 2;
CREATE INDEX IF NOT EXISTS batches_unarchived ON batches (created_at) WHERE archived_at IS NULL;

-- Immutable once written: what the client sent.
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    custom_id TEXT NOT NULL,
    params BLOB NOT NULL
);

-- Only unfinished work lives here, so the queue stays small however much history there is.
-- state 0: waiting (claimable from not_before on), 1: leased to `owner` until `lease_until`.
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (batch, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (owner) WHERE state = 1;

-- Append-only: one row per request, the whole results line as it will be served.
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    type INTEGER NOT NULL,
    line BLOB NOT NULL
);
"""


_COUNT_COLUMNS = ("succeeded", "errored", "canceled", "expired")

# custom_id is restricted to [a-zA-Z0-9_-], so it can be spliced into JSON without escaping.
_TERMINAL_LINE_SQL = 'CAST(\'{"custom_id":"\' || r.custom_id || \'","result":{"type":"{kind}"}}\' AS BLOB)'


class SQLiteStore:
    single_process = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgbatch-sqlite-writer")
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="msgbatch-sqlite-reader")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._rr_last_seq = 0  # fairness cursor: the batch served last

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process; a power loss can only roll back the last
        # results, which are then run again. Batch creation upgrades itself to FULL.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._write_conn
            assert conn is not None, "store is not open"
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return value

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, lambda: fn(self._reader()))

    async def open(self) -> None:
        def setup() -> None:
            conn = self._connect()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer msgbatch (schema {version} > {SCHEMA_VERSION})")
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._write_conn = conn

        await asyncio.get_running_loop().run_in_executor(self._writer, setup)
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

        await asyncio.get_running_loop().run_in_executor(self._writer, shutdown_writer)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    async def ping(self) -> None:
        assert self._inline is not None
        self._inline.execute("SELECT 1").fetchone()

    # -- batches -----------------------------------------------------------------------------

    async def create_batch(self, batch: Batch, requests: Sequence[tuple[str, msgspec.Raw | bytes]]) -> Batch:
        def insert(conn: sqlite3.Connection) -> Batch:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'requests'").fetchone()
            first = (row[0] if row else 0) + 1
            cur = conn.execute(
                "INSERT INTO batches (id, workspace, status, created_at, expires_at, total, processing, "
                "first_request, betas) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.id,
                    batch.workspace,
                    IN_PROGRESS,
                    batch.created_at,
                    batch.expires_at,
                    batch.total,
                    batch.total,
                    first,
                    batch.betas,
                ),
            )
            seq = cur.lastrowid
            assert seq is not None
            conn.executemany(
                "INSERT INTO requests (id, custom_id, params) VALUES (?, ?, ?)",
                ((first + i, cid, params) for i, (cid, params) in enumerate(requests)),
            )
            conn.execute(
                "INSERT INTO jobs (id, batch) SELECT id, ? FROM requests WHERE id >= ? AND id < ?",
                (seq, first, first + batch.total),
            )
            return msgspec.structs.replace(batch, seq=seq, first_request=first, processing=batch.total)

        def run() -> Batch:
            conn = self._write_conn
            assert conn is not None
            # An accepted batch must survive a power loss, not only a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                created = insert(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                conn.execute("PRAGMA synchronous=NORMAL")
                raise
            conn.execute("COMMIT")
            conn.execute("PRAGMA synchronous=NORMAL")
            return created

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def get_batch(self, batch_id: str) -> Batch | None:
        # A primary-key read takes microseconds and never waits in WAL mode: do it on the loop
        # rather than queueing it behind slower reads.
        assert self._inline is not None
        row = self._inline.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return batch_from_row(row) if row else None

    async def list_batches(
        self, workspace: str, limit: int, *, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool]:
        def query(conn: sqlite3.Connection) -> tuple[list[Batch], bool]:
            if before_id is not None:
                rows = conn.execute(
                    f"SELECT {BATCH_COLUMNS} FROM batches WHERE workspace = ? AND id > ? ORDER BY id LIMIT ?",
                    (workspace, before_id, limit + 1),
                ).fetchall()
                more = len(rows) > limit
                return [batch_from_row(r) for r in reversed(rows[:limit])], more
            if after_id is not None:
                rows = conn.execute(
                    f"SELECT {BATCH_COLUMNS} FROM batches WHERE workspace = ? AND id < ? ORDER BY id DESC LIMIT ?",
                    (workspace, after_id, limit + 1),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {BATCH_COLUMNS} FROM batches WHERE workspace = ? ORDER BY id DESC LIMIT ?",
                    (workspace, limit + 1),
                ).fetchall()
            return [batch_from_row(r) for r in rows[:limit]], len(rows) > limit

        return await self._read(query)

    async def cancel_batch(self, seq: int, now: int) -> None:
        def cancel(conn: sqlite3.Connection) -> None:
            changed = conn.execute(
                "UPDATE batches SET status = ?, cancel_initiated_at = ? WHERE seq = ? AND status = ?",
                (CANCELING, now, seq, IN_PROGRESS),
            ).rowcount
            if not changed:
                return
            _finish_jobs(conn, seq, CANCELED, "canceled", "j.state = 0")
            _end_if_idle(conn, [seq], now)

        await self._write(cancel)

    async def delete_batch(self, seq: int) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT first_request, total FROM batches WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return
            first, total = row
            conn.execute("DELETE FROM results WHERE id >= ? AND id < ?", (first, first + total))
            conn.execute("DELETE FROM requests WHERE id >= ? AND id < ?", (first, first + total))
            conn.execute("DELETE FROM jobs WHERE batch = ?", (seq,))
            conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))

        await self._write(delete)

    async def iter_results(
        self, batch: Batch, *, result_type: int | None = None, custom_id: str | None = None
    ) -> AsyncIterator[list[bytes]]:
        end = batch.first_request + batch.total
        if custom_id is not None:

            def find(conn: sqlite3.Connection) -> list[bytes]:
                rows = conn.execute(
                    "SELECT res.line FROM requests r JOIN results res ON res.id = r.id "
                    "WHERE r.id >= ? AND r.id < ? AND r.custom_id = ?"
                    + (" AND res.type = ?" if result_type is not None else ""),
                    (batch.first_request, end, custom_id) + ((result_type,) if result_type is not None else ()),
                ).fetchall()
                return [r[0] for r in rows]

            lines = await self._read(find)
            if lines:
                yield lines
            return

        type_clause = " AND type = ?" if result_type is not None else ""
        extra: tuple[int, ...] = (result_type,) if result_type is not None else ()
        sql = f"SELECT id, line FROM results WHERE id >= ? AND id < ?{type_clause} ORDER BY id LIMIT ?"

        async def fetch(cursor: int, limit: int) -> list[tuple[int, bytes]]:
            return await self._read(lambda conn: conn.execute(sql, (cursor, end, *extra, limit)).fetchall())

        async for lines in keyset_pages(fetch, batch.first_request, end):
            yield lines

    # -- the queue ---------------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, now: int, lease_until: int) -> list[Job]:
        def claim(conn: sqlite3.Connection) -> list[Job]:
            active = conn.execute(
                "SELECT seq, betas, expires_at FROM batches WHERE status = ? ORDER BY seq", (IN_PROGRESS,)
            ).fetchall()
            if not active:
                return []
            # Start after the batch served last, so every batch gets its turn however many there are.
            pivot = next((i for i, b in enumerate(active) if b[0] > self._rr_last_seq), 0)
            order = active[pivot:] + active[:pivot]
            jobs: list[Job] = []
            remaining = limit
            share = max(1, math.ceil(limit / len(order)))
            while remaining > 0 and order:
                still_open = []
                for seq, betas, expires_at in order:
                    if remaining <= 0:
                        break
                    take = min(share, remaining)
                    rows = conn.execute(
                        "UPDATE jobs SET state = 1, owner = ?, lease_until = ?, attempts = attempts + 1 "
                        "WHERE id IN (SELECT id FROM jobs WHERE batch = ? AND state = 0 AND not_before <= ? "
                        "ORDER BY id LIMIT ?) RETURNING id, attempts",
                        (owner, lease_until, seq, now, take),
                    ).fetchall()
                    if not rows:
                        continue
                    self._rr_last_seq = seq
                    rows.sort()
                    params = conn.execute(
                        "SELECT id, custom_id, params FROM requests WHERE id >= ? AND id <= ? ORDER BY id",
                        (rows[0][0], rows[-1][0]),
                    ).fetchall()
                    wanted = dict(rows)
                    for rid, custom_id, blob in params:
                        attempts = wanted.get(rid)
                        if attempts is not None:
                            jobs.append(Job(rid, seq, custom_id, blob, betas, expires_at, attempts))
                    remaining -= len(rows)
                    if len(rows) == take:
                        still_open.append((seq, betas, expires_at))
                order = still_open
                share = max(1, math.ceil(remaining / len(order))) if order else 0
            return jobs

        return await self._write(claim)

    async def complete(self, owner: str, outcomes: Sequence[Outcome], now: int) -> tuple[int, list[str]]:
        def complete(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            if not outcomes:
                return 0, []
            ids = msgspec.json.encode([o.job for o in outcomes])
            held = {
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT id, batch FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                    "AND owner = ? AND state = 1",
                    (ids, owner),
                )
            }
            valid = [o for o in outcomes if (o.job, o.batch) in held]
            if not valid:
                return 0, []
            retries = [o for o in valid if o.result is None]
            finished = [o for o in valid if o.result is not None]
            if retries:
                open_batches = {
                    r[0]
                    for r in conn.execute(
                        "SELECT seq FROM batches WHERE seq IN (SELECT value FROM json_each(?)) AND status = ?",
                        (msgspec.json.encode(sorted({o.batch for o in retries})), IN_PROGRESS),
                    )
                }
                requeue = [o for o in retries if o.batch in open_batches]
                conn.executemany(
                    "UPDATE jobs SET state = 0, owner = NULL, lease_until = NULL, not_before = ? WHERE id = ?",
                    [(o.not_before, o.job) for o in requeue],
                )
                # A retry for a batch being canceled is not run again: it is canceled.
                for o in retries:
                    if o.batch not in open_batches:
                        cid = conn.execute("SELECT custom_id FROM requests WHERE id = ?", (o.job,)).fetchone()[0]
                        line = b'{"custom_id":"' + cid.encode() + b'","result":{"type":"canceled"}}'
                        finished.append(Outcome(o.job, o.batch, CANCELED, line))
            if finished:
                conn.executemany("DELETE FROM jobs WHERE id = ?", [(o.job,) for o in finished])
                conn.executemany(
                    "INSERT INTO results (id, type, line) VALUES (?, ?, ?)",
                    [(o.job, o.result, o.line) for o in finished],
                )
                tally: dict[int, list[int]] = {}
                for o in finished:
                    counts = tally.setdefault(o.batch, [0, 0, 0, 0])
                    counts[o.result or 0] += 1
                conn.executemany(
                    "UPDATE batches SET processing = processing - ?, succeeded = succeeded + ?, "
                    "errored = errored + ?, canceled = canceled + ?, expired = expired + ? WHERE seq = ?",
                    [(sum(c), *c, seq) for seq, c in tally.items()],
                )
                ended = _end_if_idle(conn, list(tally), now)
            else:
                ended = []
            return len(valid), ended

        return await self._write(complete)

    async def renew_leases(self, owner: str, lease_until: int) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE owner = ? AND state = 1", (lease_until, owner)
            )
        )

    async def release(self, owner: str, job_ids: Sequence[int]) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE jobs SET state = 0, owner = NULL, lease_until = NULL, attempts = attempts - 1 "
                "WHERE id = ? AND owner = ? AND state = 1",
                [(j, owner) for j in job_ids],
            )
            _settle_canceling(conn, now_us())

        await self._write(release)

    async def recover(self) -> int:
        def recover(conn: sqlite3.Connection) -> int:
            n = conn.execute("UPDATE jobs SET state = 0, owner = NULL, lease_until = NULL WHERE state = 1").rowcount
            _settle_canceling(conn, now_us())
            return n

        return await self._write(recover)

    async def listen(self, on_work: Callable[[], None], on_canceled: Callable[[int], None]) -> None:
        return None  # one process owns the file: the manager's callbacks reach the dispatcher directly

    async def reap_leases(self, now: int) -> int:
        def reap(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "UPDATE jobs SET state = 0, owner = NULL, lease_until = NULL WHERE state = 1 AND lease_until < ?",
                (now,),
            ).rowcount
            if n:
                _settle_canceling(conn, now)
            return n

        return await self._write(reap)

    async def expire_due(self, now: int) -> list[str]:
        def expire(conn: sqlite3.Connection) -> list[str]:
            due = conn.execute(
                "SELECT seq, id FROM batches WHERE status < ? AND expires_at <= ?", (ENDED, now)
            ).fetchall()
            for seq, _ in due:
                _finish_jobs(conn, seq, EXPIRED, "expired", "1")
                conn.execute(
                    "UPDATE batches SET status = ?, ended_at = ? WHERE seq = ? AND status < ?",
                    (ENDED, now, seq, ENDED),
                )
            return [batch_id for _, batch_id in due]

        return await self._write(expire)

    async def archive_due(self, created_before: int, now: int) -> list[str]:
        due = await self._read(
            lambda conn: conn.execute(
                "SELECT seq, id, first_request, total FROM batches "
                "WHERE archived_at IS NULL AND status = ? AND created_at < ? LIMIT 100",
                (ENDED, created_before),
            ).fetchall()
        )
        archived = []
        for seq, batch_id, first, total in due:

            def archive(conn: sqlite3.Connection, seq: int = seq, first: int = first, total: int = total) -> int:
                conn.execute("DELETE FROM results WHERE id >= ? AND id < ?", (first, first + total))
                conn.execute("DELETE FROM requests WHERE id >= ? AND id < ?", (first, first + total))
                return conn.execute(
                    "UPDATE batches SET archived_at = ? WHERE seq = ? AND archived_at IS NULL", (now, seq)
                ).rowcount

            if await self._write(archive):
                archived.append(batch_id)
        return archived


def _finish_jobs(conn: sqlite3.Connection, seq: int, result: int, kind: str, where: str) -> int:
    """Give every job of a batch matching `where` a terminal result of the given kind, in SQL."""
    line_sql = _TERMINAL_LINE_SQL.replace("{kind}", kind)
    n = conn.execute(
        f"INSERT INTO results (id, type, line) SELECT j.id, ?, {line_sql} "
        f"FROM jobs j JOIN requests r ON r.id = j.id WHERE j.batch = ? AND {where}",
        (result, seq),
    ).rowcount
    if n:
        conn.execute(f"DELETE FROM jobs AS j WHERE j.batch = ? AND {where}", (seq,))
        column = "canceled" if result == CANCELED else "expired"
        conn.execute(
            f"UPDATE batches SET processing = processing - ?, {column} = {column} + ? WHERE seq = ?",
            (n, n, seq),
        )
    return n


def _settle_canceling(conn: sqlite3.Connection, now: int) -> list[str]:
    """Jobs that went back to the queue (released, reaped, recovered) of a batch being canceled
    will never be claimed again: they are canceled, and the batch ends if nothing else runs."""
    seqs = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT j.batch FROM jobs j JOIN batches b ON b.seq = j.batch WHERE b.status = ? AND j.state = 0",
            (CANCELING,),
        )
    ]
    for seq in seqs:
        _finish_jobs(conn, seq, CANCELED, "canceled", "j.state = 0")
    return _end_if_idle(conn, seqs, now)


def _end_if_idle(conn: sqlite3.Connection, seqs: list[int], now: int) -> list[str]:
    ended = []
    for seq in seqs:
        row = conn.execute(
            "UPDATE batches SET status = ?, ended_at = ? WHERE seq = ? AND processing = 0 AND status < ? RETURNING id",
            (ENDED, now, seq, ENDED),
        ).fetchone()
        if row:
            ended.append(row[0])
    return ended
