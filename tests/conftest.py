"""Fixtures: the app in process (ASGI), on a real port in a thread, and as a `msgbatch serve` process."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anthropic
import httpx2
import msgspec
import psycopg
import pytest
import uvicorn
from psycopg import sql

from msgbatch.api.app import MsgBatchServer
from msgbatch.api.http_server import uvicorn_options
from msgbatch.backends.base import CallContext
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.simulate import simulate
from msgbatch.config import Settings, load_settings
from msgbatch.manager import BatchManager
from msgbatch.models import Batch
from msgbatch.store import Store
from msgbatch.testing import ScratchDatabase, ServerDidNotAnswer, free_port, wait_until_answers

TEST_KEY = "sk-test-key"
TIERS = ("unit", "integration", "acceptance")


def pytest_configure(config: pytest.Config) -> None:
    # Each test process (four of them) would otherwise compile the package and rewrite every test
    # module's asserts again, seconds each: where PYTHONDONTWRITEBYTECODE is set (container images
    # often set it), the tests still keep what they compiled in __pycache__ (git ignores it).
    sys.dont_write_bytecode = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, the folder it lives in: `pytest -m "not acceptance"`
    (or `pytest tests/unit tests/integration`) is the fast inner loop."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)
        if tier == "acceptance" and item.get_closest_marker("alongside") is None:
            # Real processes, a browser, faults and timing: one at a time, on one xdist worker.
            # Modules marked `alongside` (short-lived processes of their own) share the others.
            item.add_marker(pytest.mark.xdist_group("acceptance"))


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database": str(tmp_path / "msgbatch.db"),
        "lifecycle_interval": 0.05,
        "poll_interval": 0.05,
        # A test's server stops when the test is done: requests still running are handed back at
        # once rather than waited for (tests of the graceful stop set their own).
        "grace_seconds": 0,
    }
    values.update(overrides)
    return load_settings(None, env={}, **values)


def simple_request(custom_id: str, text: str = "Hello", **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(params)
    return {"custom_id": custom_id, "params": body}


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **overrides: make_settings(tmp_path, **overrides)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MsgBatchServer]:
    srv = MsgBatchServer(make_settings(tmp_path))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def async_client_for(srv: MsgBatchServer, api_key: str = TEST_KEY, **kwargs: Any) -> anthropic.AsyncAnthropic:
    """The official async SDK, talking to the app in process over an ASGI transport."""
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url="http://testserver",
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=srv.app), base_url="http://testserver"),
        _strict_response_validation=True,
        max_retries=0,
        **kwargs,
    )


@pytest.fixture
async def aclient(server: MsgBatchServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = async_client_for(server)
    try:
        yield client
    finally:
        await client.close()


async def wait_ended(client: anthropic.AsyncAnthropic, batch_id: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} did not end: {batch}")
        await asyncio.sleep(0.02)


class ThreadedServer:
    """The app on a real loopback port, in a thread of this process (for the sync SDK)."""

    def __init__(self, settings: Settings, server: MsgBatchServer | None = None) -> None:
        """`server`: one of the caller's making (a store of its own, ...), built from `settings`."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = server or MsgBatchServer(settings)
        # The server exactly as `msgbatch serve` configures it, on this port.
        config = uvicorn.Config(
            self.server.app, **{**uvicorn_options(settings), "host": "127.0.0.1", "port": self.port}
        )
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        wait_until_answers(f"{self.base_url}/health", process=self.thread, timeout=15)
        return self

    def __exit__(self, *exc: object) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_settings(tmp_path)) as srv:
        yield srv


@pytest.fixture
def sync_client(live_server: ThreadedServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        api_key=TEST_KEY, base_url=live_server.base_url, _strict_response_validation=True, max_retries=0
    )
    try:
        yield client
    finally:
        client.close()


class ServeProcess:
    """A real `msgbatch serve` subprocess."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.database = str(tmp_path / "serve.db")
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log = tmp_path / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        cmd = [
            sys.executable, "-m", "msgbatch", "serve",
            "--port", str(self.port), "--database", self.database, *self.args,
        ]  # fmt: skip
        self._log = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        try:
            wait_until_answers(f"{self.base_url}/health", process=self.proc, timeout=20)
        except ServerDidNotAnswer as exc:
            raise RuntimeError(f"msgbatch serve did not start ({exc}):\n{self.log.read_text()}") from None
        return self

    def __enter__(self) -> ServeProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()  # it may have started and then not answered
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "_log"):
            self._log.close()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*args: str, **kwargs: Any) -> ServeProcess:
        proc = ServeProcess(tmp_path, *args, **kwargs).start()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


# -- PostgreSQL: each test gets a database of its own ---------------------------------------

# The server the PostgreSQL tests use: any database on it where the user may CREATE DATABASE.
PG_ADMIN_URL = os.environ.get("MSGBATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_pg_problem: list[str | None] = []


def pg_unreachable() -> str | None:
    """Why PostgreSQL tests cannot run here (checked once), or None."""
    if not _pg_problem:
        try:
            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_problem.append(None)
        except psycopg.Error as exc:
            _pg_problem.append(f"PostgreSQL at {PG_ADMIN_URL} is unreachable ({exc}); set MSGBATCH_TEST_POSTGRES")
    return _pg_problem[0]


def require_pg() -> None:
    """Skip without PostgreSQL, with the reason; in CI (CI=true) its absence is a failure."""
    problem = pg_unreachable()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


def pg_url_for(database: str) -> str:
    """The test server's URL, naming another database."""
    return urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path="/" + database))


_template: list[str] = []


def _migrated_template() -> str:
    """A database migrated once per test process; each test's database starts as a copy of it."""
    if not _template:
        name = f"msgbatch_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

        from msgbatch.store.postgres import PostgresStore

        # In a thread of its own: the first test to ask may be running an event loop already.
        migrating = threading.Thread(target=asyncio.run, args=(PostgresStore(pg_url_for(name)).migrate(),))
        migrating.start()
        migrating.join()
        atexit.register(_drop_database, name)
        _template.append(name)
        _seed.update(_contents(name))
        _shape.append(_schema_shape(name))
    return _template[0]


# Databases a test is done with, emptied back to the template's contents and renamed: copying the
# template costs ~0.3 s on the server (CREATE DATABASE writes the whole copy to the WAL), emptying
# one ~10 ms, and most tests in a process run one after another.
_spare: list[str] = []
# The template's rows by table (the schema's bookkeeping: its version history, the request id
# counter), put back after emptying, and the shape of its schema: a database whose schema a test
# changed is dropped, not reused.
_seed: dict[str, list[tuple[Any, ...]]] = {}
_shape: list[str] = []
_SHAPE = """
    SELECT md5(string_agg(item, ',' ORDER BY item)) FROM (
        SELECT table_name || '.' || column_name || ':' || data_type AS item
        FROM information_schema.columns WHERE table_schema = 'msgbatch'
        UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'msgbatch'
    ) AS parts
"""


def _schema_shape(database: str) -> str:
    with psycopg.connect(pg_url_for(database)) as conn:
        return str(conn.execute(_SHAPE).fetchone())


def _contents(database: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(pg_url_for(database)) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'msgbatch' ORDER BY 1")
        ]
        return {
            table: conn.execute(sql.SQL("SELECT * FROM msgbatch.{}").format(sql.Identifier(table))).fetchall()
            for table in tables
        }


class _NotReusable(Exception):
    pass


def _recycle(name: str) -> str | None:
    """The database, emptied back to the template's contents under a new name (a pool a test left
    behind cannot reconnect to it), or None if it could not be (it is dropped instead)."""
    new = f"msgbatch_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            deadline = time.monotonic() + 5
            while True:
                others = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                ).fetchall()
                if not others:
                    break
                if time.monotonic() > deadline:
                    raise _NotReusable(f"sessions still on {name}")
                time.sleep(0.01)
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(new)))
        if _schema_shape(new) != _shape[0]:
            raise _NotReusable("a test changed the schema")
        with psycopg.connect(pg_url_for(new)) as conn:
            for table, rows in _seed.items():
                target = sql.SQL("msgbatch.{}").format(sql.Identifier(table))
                conn.execute(sql.SQL("DELETE FROM {}").format(target))
                for row in rows:
                    placeholders = sql.SQL(", ").join(sql.Placeholder() * len(row))
                    conn.execute(
                        sql.SQL("INSERT INTO {} OVERRIDING SYSTEM VALUE VALUES ({})").format(target, placeholders), row
                    )
            for (sequence,) in conn.execute(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'msgbatch'"
            ).fetchall():
                conn.execute(sql.SQL("ALTER SEQUENCE msgbatch.{} RESTART").format(sql.Identifier(sequence)))
    except (psycopg.Error, _NotReusable):
        _drop_database(name)
        _drop_database(new)
        return None
    return new


def _drop_database(name: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _drop_spares() -> None:
    while _spare:
        _drop_database(_spare.pop())


atexit.register(_drop_spares)


@contextlib.contextmanager
def fresh_pg_database(*, migrated: bool = True) -> Iterator[str]:
    """A database on the test server for one test: migrated, holding what a new one holds (a copy
    of the session's template, or a database an earlier test used, emptied), or empty."""
    require_pg()
    if not migrated:
        with ScratchDatabase(PG_ADMIN_URL, prefix=f"msgbatch_test_{os.getpid()}") as empty:
            yield empty.url
        return
    template = _migrated_template()
    if _spare:
        name = _spare.pop()
    else:
        name = f"msgbatch_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
            )
    try:
        yield pg_url_for(name)
    finally:
        recycled = _recycle(name)
        if recycled is not None:
            _spare.append(recycled)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh, migrated PostgreSQL database for this test alone."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database with nothing in it (migration tests)."""
    with fresh_pg_database(migrated=False) as url:
        yield url


# -- helpers shared by the test modules ------------------------------------------------------


def params_of(i: int) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": f"q{i}"}]}


def create_body(n: int, prefix: str = "r") -> bytes:
    """A create call's body of `n` requests (`{prefix}0`...)."""
    return msgspec.json.encode({"requests": [{"custom_id": f"{prefix}{i}", "params": params_of(i)} for i in range(n)]})


def manager_for(store: Store, **settings: Any) -> BatchManager:
    """The rules over a store, with settings for what the test needs (expiry_seconds, ...)."""
    return BatchManager(store, load_settings(None, env={}, **settings))


async def make_batch(manager: BatchManager, n: int, prefix: str = "r", workspace: str = "w") -> Batch:
    """A batch of `n` requests (`{prefix}0`...) created through the manager."""
    return await manager.create(workspace, create_body(n, prefix), "")


@contextlib.asynccontextmanager
async def running_server(settings: Settings, **kwargs: Any) -> AsyncIterator[MsgBatchServer]:
    """A started MsgBatchServer (kwargs go to its constructor: router=, store=, ...)."""
    srv = MsgBatchServer(settings, **kwargs)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def raw_client(srv: MsgBatchServer, **kwargs: Any) -> httpx2.AsyncClient:
    """Plain HTTP against the app in process, for what the SDK cannot send."""
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=srv.app), base_url="http://testserver", **kwargs)


def gated_simulator(gate: asyncio.Semaphore | None = None) -> MockBackend:
    """Answers like the simulator; `calls` records every call. With a `gate`, each call first
    acquires a permit: a test holds requests "running" until it releases permits."""

    async def answer(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        if gate is not None:
            await gate.acquire()
        return simulate(params)[0]

    return MockBackend(answer, name="recorder")


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a sync or async predicate until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
