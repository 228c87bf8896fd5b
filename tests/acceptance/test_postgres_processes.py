"""Real `msgbatch migrate` and `msgbatch worker` processes on PostgreSQL: migrations run at once by
several processes, the worker's help, and a worker handing its leases back on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from conftest import manager_for, simple_request
from msgbatch.store.postgres import PostgresStore
from msgbatch.store.queries import load_queries, migrations

# Short-lived processes of their own: these run beside the other tests, not one at a time.
pytestmark = pytest.mark.alongside


def test_migrate_command_is_safe_to_run_at_once(empty_pg_url: str) -> None:
    pg_url = empty_pg_url
    cmd = [sys.executable, "-m", "msgbatch", "migrate", "--database", pg_url]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)]
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all("is up to date" in out for out in outputs)
    with psycopg.connect(pg_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM msgbatch.migrations")]
        assert versions == [v for v, _ in migrations(load_queries("postgres"))]
        assert conn.execute("SELECT count(*) FROM msgbatch.batches").fetchone() == (0,)


def test_worker_command_help_documents_the_shape() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "msgbatch", "worker", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--database", "--concurrency", "--lease", "--grace", "--simulate-latency", "--upstream"):
        assert flag in out
    assert "serve --no-worker" in out


def test_worker_process_hands_back_work_on_sigterm(tmp_path: Path, pg_url: str) -> None:
    """A real `msgbatch worker`: SIGTERM, running requests outlast the grace, the leases go back."""
    slow = [simple_request(f"r{i}", "[[simulate latency=30]] take your time") for i in range(3)]
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "msgbatch", "worker", "--database", pg_url, "--grace", "0.5"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def create() -> None:
            store = PostgresStore(pg_url)
            await store.open()
            try:
                await manager_for(store).create("default", json.dumps({"requests": slow}).encode(), "")
            finally:
                await store.close()

        def leased() -> int:
            with psycopg.connect(pg_url) as conn:
                row = conn.execute("SELECT count(*) FROM msgbatch.jobs WHERE state = 1").fetchone()
                return int(row[0]) if row else 0

        asyncio.run(create())
        deadline = time.monotonic() + 20
        while leased() < 3:
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.05)
        started = time.monotonic()
        worker.terminate()
        assert worker.wait(30) == 0, log.read_text()
        assert time.monotonic() - started < 15  # the grace is 0.5 s; the requests' latency 30 s
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT state, owner, attempts FROM msgbatch.jobs ORDER BY id").fetchall()
        assert rows == [(0, None, 0)] * 3
        # Handed back: running (unfinished) or, on a loaded machine, not yet started (released).
        stopped = re.search(r"dispatcher.stopped .* released=(\d+) unfinished=(\d+)", log.read_text())
        assert stopped is not None and int(stopped.group(1)) + int(stopped.group(2)) == 3
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
