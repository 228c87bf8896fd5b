"""Schema migrations: a database written by an earlier release opens, keeps every batch and result,
and goes on working. And the named SQL: both dialects define the same statements."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from conftest import create_body, manager_for
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.router import Router
from msgbatch.backends.simulate import simulate
from msgbatch.engine.dispatcher import Dispatcher
from msgbatch.manager import BatchManager
from msgbatch.models import ENDED, IN_PROGRESS
from msgbatch.store import open_store
from msgbatch.store.queries import load_queries, migrations
from msgbatch.store.sqlite import SQLiteStore

RELEASE_0_1_0 = Path(__file__).parent.parent / "data" / "release-0.1.0.db"
LATEST = migrations(load_queries("sqlite"))[-1][0]


def test_both_dialects_define_the_same_statements() -> None:
    shared = {name for name in load_queries("sqlite") if not name.startswith("_")}
    assert shared == {name for name in load_queries("postgres") if not name.startswith("_")}
    for dialect in ("sqlite", "postgres"):
        versions = [v for v, _ in migrations(load_queries(dialect))]
        assert versions == list(range(1, LATEST + 1)), dialect
        assert all(
            q.statements
            for name, q in load_queries(dialect).items()
            if name not in ("notify", "lock_batches", "lock_workspace")
        )


def _instant() -> Router:
    return Router([], MockBackend(lambda params, context: simulate(params)[0]))


async def _all_results(manager: BatchManager, workspace: str, batch_id: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    async for page in await manager.results(workspace, batch_id):
        for raw in page:
            line = json.loads(raw)
            found[line["custom_id"]] = line["result"]
    return found


async def test_a_sqlite_file_of_release_0_1_0_opens_and_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(RELEASE_0_1_0, path)
    store = SQLiteStore(str(path))
    await store.open()
    try:
        manager = manager_for(store)
        batches, more = await manager.list_batches("default", limit=100, after_id=None, before_id=None)
        assert not more
        by_prefix = {}
        for batch in batches:
            results = await _all_results(manager, "default", batch.id) if batch.status == ENDED else {}
            by_prefix[batch.id] = (batch, results)
        counts = sorted(
            (b.total, b.status, b.processing, b.succeeded, b.errored, b.canceled, b.betas, b.headers)
            for b, _ in by_prefix.values()
        )
        assert counts == [
            (1, ENDED, 0, 1, 0, 0, "files-api-2025-04-14", "{}"),
            (2, ENDED, 0, 0, 0, 2, "", "{}"),
            (3, IN_PROGRESS, 3, 0, 0, 0, "", "{}"),
            (4, ENDED, 0, 2, 2, 0, "", "{}"),
        ]
        finished = {cid: result["type"] for _, results in by_prefix.values() for cid, result in results.items()}
        assert finished == {
            "ok-1": "succeeded",
            "ok-2": "succeeded",
            "bad": "errored",
            "boom": "errored",
            "b-1": "succeeded",
            "c-0": "canceled",
            "c-1": "canceled",
        }
        # The batch that was in progress runs to its end, and new batches get new request ids.
        [running] = [b for b, _ in by_prefix.values() if b.status == IN_PROGRESS]
        await manager.recover()
        new = await manager.create("default", create_body(2, "new"), "")
        assert new.first_request > running.first_request + running.total - 1
        await Dispatcher(manager, _instant(), owner="after-upgrade", poll_interval=0.05).run_burst(timeout=30)
        resumed = await _all_results(manager, "default", running.id)
        assert sorted(resumed) == ["slow-0", "slow-1", "slow-2"]
        assert {r["type"] for r in resumed.values()} == {"succeeded"}
        assert set(await _all_results(manager, "default", new.id)) == {"new0", "new1"}
    finally:
        await store.close()
    # Opening it again applies nothing more.
    again = SQLiteStore(str(path))
    await again.open()
    assert await again.migrate() == []
    await again.close()


async def test_a_newer_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    store = SQLiteStore(str(path))
    await store.open()
    await store.close()
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(RuntimeError, match="newer msgbatch"):
        await SQLiteStore(str(path)).open()


async def test_a_postgres_database_of_schema_1_is_upgraded(empty_pg_url: str) -> None:
    """A database as the first release left it: schema 1, a finished and a running batch."""
    [(_, first)] = [m for m in migrations(load_queries("postgres")) if m[0] == 1]
    with psycopg.connect(empty_pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA msgbatch")
        conn.execute(
            "CREATE TABLE msgbatch.migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        with conn.transaction():
            for statement in first.statements:
                conn.execute(statement.encode())
            conn.execute("INSERT INTO msgbatch.migrations (version, name) VALUES (1, %s)", (first.summary,))
        params = msgspec.json.encode({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        columns = (
            "id, workspace, status, created_at, expires_at, ended_at, total, processing, succeeded, "
            "first_request, betas"
        )
        for values in (
            ("msgbatch_000000000000000000000001", "default", 2, 1, 1 << 60, 2, 1, 0, 1, 1, "b"),
            ("msgbatch_000000000000000000000002", "default", 0, 3, 1 << 60, None, 2, 2, 0, 2, ""),
        ):
            conn.execute(f"INSERT INTO msgbatch.batches ({columns}) VALUES ({', '.join(['%s'] * 11)})", values)
        for rid, cid in ((1, "done"), (2, "todo-0"), (3, "todo-1")):
            conn.execute("INSERT INTO msgbatch.requests VALUES (%s, %s, %s)", (rid, cid, params))
        conn.execute("INSERT INTO msgbatch.jobs (id, batch) VALUES (2, 2), (3, 2)")
        conn.execute(
            "INSERT INTO msgbatch.results VALUES (1, 0, %s)", (b'{"custom_id":"done","result":{"type":"canceled"}}',)
        )
        conn.execute("UPDATE msgbatch.counters SET value = 3")
    store = open_store(empty_pg_url)
    await store.open()
    try:
        with psycopg.connect(empty_pg_url) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM msgbatch.migrations ORDER BY version")]
        assert versions == list(range(1, LATEST + 1))
        manager = manager_for(store)
        done = await manager.get("default", "msgbatch_000000000000000000000001")
        assert (done.status, done.succeeded, done.betas, done.headers) == (ENDED, 1, "b", "{}")
        assert await _all_results(manager, "default", done.id) == {"done": {"type": "canceled"}}
        new = await manager.create("default", create_body(1), "")
        assert new.first_request == 4
        await Dispatcher(manager, _instant(), owner="after-upgrade", poll_interval=0.05).run_burst(timeout=30)
        resumed = await _all_results(manager, "default", "msgbatch_000000000000000000000002")
        assert sorted(resumed) == ["todo-0", "todo-1"]
    finally:
        await store.close()
