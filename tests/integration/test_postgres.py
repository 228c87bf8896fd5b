"""The scale-out shape in process: API servers, workers and migrations on one PostgreSQL database.

Through the official SDK (over ASGI) against a MsgBatchServer on PostgreSQL; an API server with
no dispatcher and a separate Worker sharing one database; a worker handing back its work on
shutdown; and `msgbatch migrate` run by several processes at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anthropic
import psycopg
import pytest

from conftest import (
    async_client_for,
    fresh_pg_database,
    gated_simulator,
    make_batch,
    make_settings,
    manager_for,
    running_server,
    simple_request,
    wait_ended,
    wait_until,
)
from msgbatch.backends.router import Router
from msgbatch.clock import now_us
from msgbatch.engine.worker import Worker
from msgbatch.store import open_store
from msgbatch.store.postgres import PostgresStore


def test_open_store_picks_postgres_for_urls() -> None:
    for url in ("postgresql://u@db.internal:5432/msgbatch", "postgres://db.internal/msgbatch"):
        store = open_store(url)
        assert isinstance(store, PostgresStore) and not store.single_process
    assert open_store("msgbatch.db").single_process


async def test_sdk_round_trip_on_postgres(tmp_path: Path, pg_url: str) -> None:
    settings = make_settings(tmp_path, database=pg_url)
    async with running_server(settings) as srv:
        client = async_client_for(srv)
        try:
            bad = {"custom_id": "bad", "params": {"model": "m"}}  # no messages: errored, later
            batch = await client.messages.batches.create(requests=[simple_request("ok-1"), simple_request("ok-2"), bad])
            assert batch.processing_status == "in_progress" and batch.request_counts.processing == 3
            ended = await wait_ended(client, batch.id)
            counts = ended.request_counts
            assert (counts.processing, counts.succeeded, counts.errored) == (0, 2, 1)
            assert ended.results_url == f"http://testserver/v1/messages/batches/{batch.id}/results"
            results = {r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)}
            assert results["ok-1"].type == "succeeded" and results["bad"].type == "errored"

            more = [await client.messages.batches.create(requests=[simple_request("x")]) for _ in range(3)]
            listed = [b.id async for b in client.messages.batches.list(limit=2)]
            assert listed == [b.id for b in reversed([batch, *more])]

            for b in more:
                await wait_ended(client, b.id)
            deleted = await client.messages.batches.delete(more[0].id)
            assert deleted.type == "message_batch_deleted"
            with pytest.raises(anthropic.NotFoundError):
                await client.messages.batches.retrieve(more[0].id)
        finally:
            await client.close()


async def test_cancel_on_postgres_lets_running_requests_finish(tmp_path: Path, pg_url: str) -> None:
    gate = asyncio.Semaphore(0)
    backend = gated_simulator(gate)
    settings = make_settings(tmp_path, database=pg_url, concurrency=2)
    async with running_server(settings, router=Router([], backend)) as srv:
        client = async_client_for(srv)
        try:
            batch = await client.messages.batches.create(requests=[simple_request(f"r{i}") for i in range(10)])
            await wait_until(lambda: len(backend.calls) == 2, what="two requests running")
            canceling = await client.messages.batches.cancel(batch.id)
            assert canceling.processing_status == "canceling"
            assert (canceling.request_counts.canceled, canceling.request_counts.processing) == (8, 2)
            gate.release()
            gate.release()
            ended = await wait_ended(client, batch.id)
            assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (2, 8)
            assert len(backend.calls) == 2
        finally:
            await client.close()


async def test_api_server_and_worker_share_one_database(tmp_path: Path, pg_url: str) -> None:
    """`serve --no-worker` and `worker`, in process: the worker is woken by NOTIFY, not polling."""
    api_settings = make_settings(tmp_path, database=pg_url, worker=False)
    worker_settings = make_settings(tmp_path, database=pg_url, poll_interval=120.0)
    async with running_server(api_settings) as api:
        assert api.dispatcher is None
        worker = Worker(worker_settings)
        await worker.start()
        client = async_client_for(api)
        try:
            await asyncio.sleep(0.5)  # the worker's first (empty) claim is behind it: it waits 120 s now
            started = time.monotonic()
            batch = await client.messages.batches.create(requests=[simple_request(f"r{i}") for i in range(50)])
            ended = await wait_ended(client, batch.id, timeout=60)
            assert ended.request_counts.succeeded == 50
            assert time.monotonic() - started < 60, "the worker was not woken by the create"
        finally:
            await client.close()
            await worker.stop()


async def test_worker_shutdown_finishes_or_hands_back_work(tmp_path: Path, pg_url: str) -> None:
    gate = asyncio.Semaphore(0)
    backend = gated_simulator(gate)
    settings = make_settings(tmp_path, database=pg_url, concurrency=4, grace_seconds=0.3)
    worker = Worker(settings, router=Router([], backend))
    await worker.start()
    store = PostgresStore(pg_url)
    await store.open()
    try:
        async with running_server(make_settings(tmp_path, database=pg_url, worker=False)) as api:
            client = async_client_for(api)
            try:
                batch = await client.messages.batches.create(requests=[simple_request(f"r{i}") for i in range(4)])
                await wait_until(lambda: len(backend.calls) == 4, what="four requests running")
                gate.release()
                gate.release()  # two finish; the other two are still running when the grace runs out
                await wait_until(lambda: len(worker.dispatcher._running) == 2, what="two finished")
                await worker.stop()
                after = await client.messages.batches.retrieve(batch.id)
                assert (after.request_counts.succeeded, after.request_counts.processing) == (2, 2)
            finally:
                await client.close()
        # Everything unfinished is claimable at once by another worker, the attempt unspent.
        jobs = await manager_for(store).claim("next-worker", 10, now_us(), now_us() + 60_000_000)
        assert len(jobs) == 2 and all(j.attempts == 1 for j in jobs)
    finally:
        await store.close()
        await worker.stop()


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO msgbatch.migrations (version, name) VALUES (%s, 'from the future')", (999,))
    with pytest.raises(RuntimeError, match="newer msgbatch"):
        await PostgresStore(pg_url).open()


async def test_listen_hears_other_processes(pg_url: str) -> None:
    listener, other = PostgresStore(pg_url), PostgresStore(pg_url)
    await listener.open()
    await other.open()
    notices: list[str] = []
    try:
        await listener.listen(notices.append)
        await wait_until(lambda: notices == ["work"], what="the first wake-up, on connecting")
        notices.clear()
        manager = manager_for(other)
        batch = await make_batch(manager, 3)
        await wait_until(lambda: notices == ["work"], what="a wake-up for the new batch")
        await manager.cancel(batch.workspace, batch.id)
        await wait_until(lambda: notices == ["work", f"cancel:{batch.seq}"], what="the cancel")
    finally:
        await listener.close()
        await other.close()


async def test_dropped_database_connections_lose_nothing(tmp_path: Path, pg_url: str) -> None:
    """Every session of the server is cut twice mid-batch (a failover, a restart): the pool and
    the listener reconnect, and each request still ends with exactly one result."""
    settings = make_settings(tmp_path, database=pg_url, concurrency=16)
    async with running_server(settings) as srv:
        client = async_client_for(srv)
        try:
            requests = [simple_request(f"r{i}", f"[[simulate latency=0.01]] item {i}") for i in range(3000)]
            batch = await client.messages.batches.create(requests=requests)
            with psycopg.connect(pg_url, autocommit=True) as admin:
                for _ in range(2):
                    await asyncio.sleep(0.4)
                    cut = admin.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).fetchone()
                    assert cut is not None and cut[0] >= 2
            deadline = time.monotonic() + 90
            while True:
                try:
                    current = await client.messages.batches.retrieve(batch.id)
                except anthropic.InternalServerError:  # a request that met a cut connection
                    current = None
                if current is not None and current.processing_status == "ended":
                    break
                assert time.monotonic() < deadline, f"the batch did not end: {current}"
                await asyncio.sleep(0.05)
            assert current.request_counts.succeeded == 3000
            for attempt in range(5):  # as the SDK's own retries would (this client has them off)
                try:
                    seen = [r.custom_id async for r in await client.messages.batches.results(batch.id)]
                    break
                except anthropic.InternalServerError:
                    assert attempt < 4
            assert sorted(seen) == sorted(f"r{i}" for i in range(3000))
        finally:
            await client.close()


def test_a_scratch_database_is_made_and_dropped_with_its_connections(pg_url: str) -> None:
    from conftest import PG_ADMIN_URL
    from msgbatch.testing import ScratchDatabase

    def exists(name: str) -> bool:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    with ScratchDatabase(PG_ADMIN_URL, prefix="msgbatch_test_scratch") as db:
        assert exists(db.name) and db.name.startswith("msgbatch_test_scratch_")
        left_open = psycopg.connect(db.url)  # a connection the drop must not wait for
        assert left_open.execute("SELECT current_database()").fetchone() == (db.name,)
    assert not exists(db.name)
    left_open.close()


def test_a_database_a_test_is_done_with_comes_back_as_new() -> None:
    """The PostgreSQL fixture reuses databases (emptying one is ~30x cheaper than copying the
    template): the next test must find what a new copy holds, under a name of its own."""
    names, firsts, versions = [], [], []
    for _ in range(2):
        with fresh_pg_database() as url, psycopg.connect(url, autocommit=True) as conn:
            names.append(conn.execute("SELECT current_database()").fetchone())
            versions.append(conn.execute("SELECT count(*), max(version) FROM msgbatch.migrations").fetchone())
            firsts.append(conn.execute("SELECT nextval(pg_get_serial_sequence('msgbatch.batches', 'seq'))").fetchone())
            counter = conn.execute("SELECT value FROM msgbatch.counters WHERE name = 'request_ids'").fetchone()
            assert counter == (0,)
            # What a test may leave behind: rows, a moved counter, a version from the future.
            conn.execute("UPDATE msgbatch.counters SET value = 99")
            conn.execute("INSERT INTO msgbatch.migrations (version, name) VALUES (999, 'from the future')")
    assert names[0] != names[1]
    assert firsts == [(1,), (1,)]
    assert versions[0] == versions[1]
