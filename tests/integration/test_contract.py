"""The contract of the rules (BatchManager) and the engine (Dispatcher), run on SQLite and
PostgreSQL alike: a rule one store forgot shows up here.

Every test gets a database of its own (a SQLite file in tmp_path, or a PostgreSQL database cloned
from the migrated template). The race tests open more managers on the same database: several
processes' worth of connections doing the same work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import create_body, fresh_pg_database, make_batch, manager_for, params_of
from msgbatch.backends.base import CallContext
from msgbatch.backends.mock import MockBackend
from msgbatch.backends.retry import RetryPolicy
from msgbatch.backends.router import Router
from msgbatch.backends.simulate import SimulatorBackend, simulate
from msgbatch.clock import now_us
from msgbatch.engine.dispatcher import Dispatcher
from msgbatch.engine.lifecycle import Lifecycle
from msgbatch.errors import InvalidRequestError, NotFoundError, OverloadedError, RateLimitError
from msgbatch.fairness import SHARED, Holdings, Slots
from msgbatch.files import FileManager, StoredFile
from msgbatch.ids import new_batch_id
from msgbatch.manager import BatchManager
from msgbatch.models import (
    CANCELED,
    CANCELING,
    ENDED,
    ERRORED,
    EXPIRED,
    HIGH,
    IN_PROGRESS,
    LOW,
    NORMAL,
    RESULT_CODES,
    RESULT_NAMES,
    SUCCEEDED,
    Batch,
    Job,
    Outcome,
)
from msgbatch.openai_batches import OpenAIBatch, OpenAIBatches
from msgbatch.results import canceled_line, errored_line, expired_line, openai_errored_line, openai_succeeded_line
from msgbatch.store import open_store
from msgbatch.store.base import Step
from msgbatch.usage import TOKEN_KINDS, UsageReader

HOUR = 3600 * 1_000_000
SECOND = 1_000_000

ManagerFactory = Callable[..., Awaitable[BatchManager]]


def database_for(kind: str, tmp_path: Path) -> contextlib.AbstractContextManager[str]:
    """A SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        return contextlib.nullcontext(str(tmp_path / "contract.db"))
    return fresh_pg_database()


@pytest.fixture(params=["sqlite", "postgres"])
async def open_another(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ManagerFactory]:
    """Opens managers on one database for this test (each one stands for a process)."""
    with database_for(request.param, tmp_path) as database:
        opened: list[BatchManager] = []

        async def factory(**settings: Any) -> BatchManager:
            store = open_store(database)
            await store.open()
            manager = manager_for(store, **settings)
            opened.append(manager)
            return manager

        try:
            yield factory
        finally:
            for manager in opened:
                await manager.store.close()


@pytest.fixture
async def manager(open_another: ManagerFactory) -> BatchManager:
    return await open_another()


def line(job: Job, kind: str = "succeeded") -> bytes:
    return b'{"custom_id":"' + job.custom_id.encode() + b'","result":{"type":"' + kind.encode() + b'"}}'


def done(job: Job, result: int = SUCCEEDED) -> Outcome:
    return Outcome(job.id, job.batch, result, line(job, RESULT_NAMES[result]))


async def claim_all(manager: BatchManager, owner: str = "w1", *, lease: int = HOUR, limit: int = 100_000) -> list[Job]:
    now = now_us()
    return await manager.claim(owner, limit, now, now + lease)


async def results_of(manager: BatchManager, batch: Batch, **kwargs: Any) -> list[dict[str, Any]]:
    lines = []
    async for page in await manager.results(batch.workspace, batch.id, partial=True, **kwargs):
        lines += [json.loads(raw) for raw in page]
    return lines


async def raw_results(manager: BatchManager, batch: Batch) -> dict[str, bytes]:
    found = {}
    async for page in await manager.results(batch.workspace, batch.id, partial=True):
        for raw in page:
            found[json.loads(raw)["custom_id"]] = raw
    return found


async def check_consistent(manager: BatchManager, batch: Batch) -> Batch:
    """Counts add up, match the results, and every custom_id has exactly one result."""
    fresh = await manager.find(batch.id)
    assert fresh is not None
    counts = (fresh.succeeded, fresh.errored, fresh.canceled, fresh.expired)
    assert fresh.processing + sum(counts) == fresh.total
    lines = await results_of(manager, fresh)
    ids = [r["custom_id"] for r in lines]
    assert len(ids) == len(set(ids)), "a request has two results"
    tally = [0, 0, 0, 0]
    for r in lines:
        tally[RESULT_CODES[r["result"]["type"]]] += 1
    assert tuple(tally) == counts
    if fresh.processing == 0:
        assert len(ids) == fresh.total
        assert fresh.status == ENDED and fresh.ended_at is not None
    return fresh


# -- batches ---------------------------------------------------------------------------------


async def test_create_and_find(manager: BatchManager) -> None:
    batch = await manager.create(
        "w", create_body(3), "b1,b2", {"anthropic-version": "2026-10-21"}, metadata={"team": "search"}
    )
    assert batch.seq > 0 and batch.first_request > 0
    assert (batch.status, batch.total, batch.processing, batch.betas) == (IN_PROGRESS, 3, 3, "b1,b2")
    assert await manager.find(batch.id) == batch
    assert json.loads(batch.headers) == {"anthropic-version": "2026-10-21"}
    assert json.loads(batch.metadata) == {"team": "search"}
    assert await manager.find(new_batch_id()) is None


async def test_request_ids_are_blocks_never_reused(manager: BatchManager) -> None:
    a = await make_batch(manager, 5)
    b = await make_batch(manager, 7)
    assert b.first_request >= a.first_request + 5
    jobs = await claim_all(manager)
    await manager.complete("w1", [done(j) for j in jobs if j.batch == a.seq], now_us())
    await manager.delete("w", a.id)
    c = await make_batch(manager, 2)
    assert c.first_request >= b.first_request + 7
    assert await manager.find(a.id) is None


async def test_list_newest_first_with_cursors(manager: BatchManager) -> None:
    mine = [await make_batch(manager, 1) for _ in range(5)]
    await make_batch(manager, 1, workspace="other")
    newest_first = [b.id for b in reversed(mine)]

    async def page(limit: int, after: str | None = None, before: str | None = None) -> tuple[list[str], bool]:
        batches, more = await manager.list_batches("w", limit=limit, after_id=after, before_id=before)
        return [b.id for b in batches], more

    assert await page(2) == (newest_first[:2], True)
    assert await page(2, after=newest_first[1]) == (newest_first[2:4], True)
    assert await page(2, after=newest_first[3]) == (newest_first[4:], False)
    # before_id: the ones just newer than it, still newest first
    assert await page(2, before=newest_first[4]) == (newest_first[2:4], True)
    assert await page(10, before=newest_first[1]) == (newest_first[:1], False)
    assert await page(1000) == (newest_first, False)


async def test_large_params_round_trip(manager: BatchManager) -> None:
    big = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x" * 300_000}]}
    body = msgspec.json.encode(
        {"requests": [{"custom_id": "big", "params": big}, {"custom_id": "small", "params": {"a": 1}}]}
    )
    batch = await manager.create("w", body, "")
    jobs = sorted(await claim_all(manager), key=lambda j: j.custom_id)
    assert [(j.custom_id, msgspec.json.decode(j.params)) for j in jobs] == [("big", big), ("small", {"a": 1})]
    assert all(j.batch == batch.seq for j in jobs)


# -- the queue -------------------------------------------------------------------------------


async def test_claim_leases_each_request_once(manager: BatchManager) -> None:
    batch = await manager.create("w", create_body(10), "x", {"anthropic-user-profile-id": "p"})
    first = await manager.claim("w1", 4, now_us(), now_us() + HOUR)
    second = await claim_all(manager, "w2")
    assert len(first) == 4 and len(second) == 6
    assert {j.id for j in first}.isdisjoint({j.id for j in second})
    assert await claim_all(manager, "w3") == []
    job = first[0]
    assert (job.batch, job.betas, job.expires_at, job.attempts) == (batch.seq, "x", batch.expires_at, 1)
    assert json.loads(job.headers) == {"anthropic-user-profile-id": "p"}
    assert msgspec.json.decode(job.params) == params_of(int(job.custom_id[1:]))


async def test_claim_is_fair_across_batches(manager: BatchManager) -> None:
    big = await make_batch(manager, 100, prefix="big")
    small = await make_batch(manager, 5, prefix="small")
    jobs = await manager.claim("w1", 10, now_us(), now_us() + HOUR)
    per_batch = {seq: sum(j.batch == seq for j in jobs) for seq in (big.seq, small.seq)}
    assert per_batch == {big.seq: 5, small.seq: 5}
    # What a drained batch leaves goes to the others.
    jobs = await manager.claim("w1", 10, now_us(), now_us() + HOUR)
    assert [j.batch for j in jobs] == [big.seq] * 10
    # An uneven limit is split as evenly as it goes, and never exceeded.
    jobs = await manager.claim("w1", 7, now_us(), now_us() + HOUR)
    assert len(jobs) == 7
    # With one request per claim, the batches take turns.
    third = await make_batch(manager, 5, prefix="third")
    await make_batch(manager, 1, prefix="fourth")
    served = [(await manager.claim("w1", 1, now_us(), now_us() + HOUR))[0].batch for _ in range(6)]
    assert len(set(served[:3])) == 3 and third.seq in served


async def test_claim_skips_batches_not_in_progress(manager: BatchManager) -> None:
    batch = await make_batch(manager, 3)
    await manager.cancel("w", batch.id)
    assert await claim_all(manager) == []


async def test_complete_counts_results_and_ends_once(manager: BatchManager) -> None:
    batch = await make_batch(manager, 6)
    jobs = await claim_all(manager)
    kinds = [SUCCEEDED, SUCCEEDED, ERRORED, SUCCEEDED]
    assert await manager.complete("w1", [done(j, k) for j, k in zip(jobs, kinds, strict=False)], now_us()) == []
    mid = await check_consistent(manager, batch)
    assert (mid.processing, mid.succeeded, mid.errored, mid.status) == (2, 3, 1, IN_PROGRESS)
    assert await manager.complete("w1", [done(j) for j in jobs[4:]], now_us()) == [batch.id]
    final = await check_consistent(manager, batch)
    assert (final.status, final.processing, final.succeeded) == (ENDED, 0, 5)
    # Completing again is refused: the jobs are gone.
    assert await manager.complete("w1", [done(j) for j in jobs], now_us()) == []
    assert await check_consistent(manager, batch) == final


async def test_token_usage_adds_up_per_batch(manager: BatchManager) -> None:
    batch = await make_batch(manager, 3)
    other = await make_batch(manager, 1, prefix="o")
    jobs = await claim_all(manager)
    mine = [j for j in jobs if j.batch == batch.seq]
    outcomes = [Outcome(j.id, j.batch, SUCCEEDED, line(j), tokens=(10, 20, 3, 4)) for j in mine[:2]]
    outcomes.append(done(mine[2], ERRORED))
    outcomes += [Outcome(j.id, j.batch, SUCCEEDED, line(j), tokens=(1, 1, 1, 1)) for j in jobs if j.batch == other.seq]
    await manager.complete("w1", outcomes, now_us())
    found = await manager.find(batch.id)
    assert found is not None
    usage = (found.input_tokens, found.output_tokens, found.cache_read_input_tokens, found.cache_creation_input_tokens)
    assert usage == (20, 40, 6, 8)
    found = await manager.find(other.id)
    assert found is not None and found.input_tokens == 1


async def test_complete_is_conditional_on_the_lease(manager: BatchManager) -> None:
    batch = await make_batch(manager, 2)
    jobs = await claim_all(manager, "owner-a")
    assert await manager.complete("owner-b", [done(j) for j in jobs], now_us()) == []
    assert await results_of(manager, batch) == []
    assert (await check_consistent(manager, batch)).processing == 2


async def test_stale_owner_is_rejected_after_reap_and_reclaim(manager: BatchManager) -> None:
    batch = await make_batch(manager, 1)
    now = now_us()
    [stale] = await manager.claim("slow", 10, now, now + SECOND)
    assert await manager.reap(now + 2 * SECOND) == 1
    [fresh] = await manager.claim("fast", 10, now + 2 * SECOND, now + HOUR)
    assert fresh.id == stale.id and fresh.attempts == 2
    assert await manager.complete("slow", [done(stale, ERRORED)], now_us()) == []
    assert await manager.complete("fast", [done(fresh)], now_us()) == [batch.id]
    final = await check_consistent(manager, batch)
    assert (final.succeeded, final.errored) == (1, 0)


async def test_retry_goes_back_to_the_queue(manager: BatchManager) -> None:
    batch = await make_batch(manager, 1)
    [job] = await claim_all(manager)
    later = now_us() + 5 * SECOND
    assert await manager.complete("w1", [Outcome(job.id, job.batch, None, not_before=later)], now_us()) == []
    assert (await check_consistent(manager, batch)).processing == 1
    assert await manager.claim("w1", 10, later - SECOND, later + HOUR) == []
    [again] = await manager.claim("w1", 10, later, later + HOUR)
    assert (again.id, again.attempts) == (job.id, 2)


async def test_retry_in_a_canceling_batch_is_canceled(manager: BatchManager) -> None:
    batch = await make_batch(manager, 3)
    jobs = await manager.claim("w1", 2, now_us(), now_us() + HOUR)
    await manager.cancel("w", batch.id)
    retry = Outcome(jobs[0].id, jobs[0].batch, None, not_before=now_us())
    assert await manager.complete("w1", [retry, done(jobs[1])], now_us()) == [batch.id]
    final = await check_consistent(manager, batch)
    assert (final.status, final.canceled, final.succeeded) == (ENDED, 2, 1)
    assert await claim_all(manager) == []


async def test_renew_extends_only_the_leases_named(manager: BatchManager) -> None:
    await make_batch(manager, 3)
    now = now_us()
    jobs = await manager.claim("w1", 10, now, now + SECOND)
    await manager.renew("w1", [jobs[0].id, jobs[1].id], now + HOUR)
    await manager.renew("someone-else", [jobs[2].id], now + HOUR)  # touches nothing of w1's
    assert await manager.reap(now + 2 * SECOND) == 1  # the lease not named lapsed
    assert await manager.reap(now + 2 * HOUR) == 2


async def test_release_hands_jobs_back_unspent(manager: BatchManager) -> None:
    await make_batch(manager, 3)
    jobs = await claim_all(manager)
    assert await manager.release("someone-else", [j.id for j in jobs]) == 0  # not theirs
    assert await claim_all(manager, "w2") == []
    assert await manager.release("w1", [jobs[0].id, jobs[1].id]) == 2
    again = await claim_all(manager, "w2")
    assert sorted(j.id for j in again) == sorted(j.id for j in jobs[:2])
    assert all(j.attempts == 1 for j in again)


async def test_reap_takes_only_lapsed_leases(manager: BatchManager) -> None:
    await make_batch(manager, 4)
    now = now_us()
    await manager.claim("short", 2, now, now + SECOND)
    await manager.claim("long", 2, now, now + HOUR)
    assert await manager.reap(now + 2 * SECOND) == 2
    assert await manager.reap(now + 2 * SECOND) == 0
    assert len(await manager.claim("w3", 10, now + 2 * SECOND, now + HOUR)) == 2


async def test_recover(manager: BatchManager) -> None:
    await make_batch(manager, 3)
    now = now_us()
    await manager.claim("w1", 1, now, now + HOUR)
    await manager.claim("w2", 1, now, now - SECOND)  # already lapsed
    recovered = await manager.recover()
    # One process per database: every lease is stale at start. Shared: only lapsed leases go back.
    assert recovered == (2 if manager.store.single_process else 1)


# -- cancel, and what becomes of its running requests -----------------------------------------


async def test_cancel_running_requests_finish(manager: BatchManager) -> None:
    batch = await make_batch(manager, 5)
    running = await manager.claim("w1", 2, now_us(), now_us() + HOUR)
    await manager.cancel("w", batch.id)
    mid = await check_consistent(manager, batch)
    assert (mid.status, mid.canceled, mid.processing) == (CANCELING, 3, 2)
    assert mid.cancel_initiated_at is not None
    assert await manager.cancel("w", batch.id) == mid  # again: nothing changes
    assert await manager.complete("w1", [done(j) for j in running], now_us()) == [batch.id]
    final = await check_consistent(manager, batch)
    assert (final.status, final.succeeded, final.canceled) == (ENDED, 2, 3)
    lines = await results_of(manager, final, result_type=CANCELED)
    assert len(lines) == 3 and all(r["result"] == {"type": "canceled"} for r in lines)


async def test_cancel_of_an_idle_batch_ends_it(manager: BatchManager) -> None:
    batch = await make_batch(manager, 3)
    canceled = await manager.cancel("w", batch.id)
    assert (canceled.status, canceled.canceled) == (ENDED, 3)
    final = await check_consistent(manager, batch)
    with pytest.raises(Exception, match="already ended"):
        await manager.cancel("w", batch.id)
    assert await manager.find(batch.id) == final


async def _canceled_with_two_running(manager: BatchManager, lease: int = HOUR) -> tuple[Batch, list[Job]]:
    """Claim 2 of a batch's 3 requests, then cancel it: `canceling`, 2 still processing."""
    batch = await make_batch(manager, 3)
    now = now_us()
    running = await manager.claim("w1", 2, now, now + lease)
    mid = await manager.cancel("w", batch.id)
    assert (mid.status, mid.canceled, mid.processing) == (CANCELING, 1, 2)
    return batch, running


async def test_cancel_then_release_ends_the_batch(manager: BatchManager) -> None:
    """A worker stopping (SIGTERM) hands back running requests of a canceling batch."""
    batch, running = await _canceled_with_two_running(manager)
    assert await manager.release("w1", [j.id for j in running]) == 2
    final = await check_consistent(manager, batch)
    assert (final.status, final.canceled, final.processing) == (ENDED, 3, 0)
    assert await claim_all(manager) == []


async def test_cancel_then_reap_ends_the_batch(manager: BatchManager) -> None:
    """A worker killed: its leases lapse and are reaped."""
    batch, _ = await _canceled_with_two_running(manager, lease=SECOND)
    assert await manager.reap(now_us() + 2 * SECOND) == 2
    final = await check_consistent(manager, batch)
    assert (final.status, final.canceled, final.processing) == (ENDED, 3, 0)


async def test_cancel_then_recover_ends_the_batch(manager: BatchManager) -> None:
    """A restart: stale leases are recovered (single process) or have lapsed (shared)."""
    batch, _ = await _canceled_with_two_running(manager, lease=-SECOND)
    await manager.recover()
    final = await check_consistent(manager, batch)
    assert (final.status, final.canceled, final.processing) == (ENDED, 3, 0)


async def test_cancel_then_expiry_ends_the_batch(open_another: ManagerFactory) -> None:
    manager = await open_another(expiry_seconds=3600)
    batch, running = await _canceled_with_two_running(manager)
    later = now_us() + 2 * HOUR
    assert await manager.expire_due(later) == [batch.id]
    final = await check_consistent(manager, batch)
    assert (final.status, final.canceled, final.expired, final.ended_at) == (ENDED, 1, 2, later)
    assert await manager.complete("w1", [done(j) for j in running], now_us()) == []  # too late
    assert await check_consistent(manager, batch) == final


async def test_canceling_batch_ends_across_processes(open_another: ManagerFactory) -> None:
    """API server + worker: cancel while requests run, the worker stops, another takes over."""
    api, worker = await open_another(), await open_another()
    batch = await make_batch(api, 6)
    running = await claim_all(worker, "first-worker", limit=4)
    await api.cancel("w", batch.id)
    await worker.release("first-worker", [j.id for j in running])
    final = await check_consistent(api, batch)
    assert (final.status, final.canceled) == (ENDED, 6)


# -- expiry, retention, delete -------------------------------------------------------------------


async def test_expire_due(open_another: ManagerFactory) -> None:
    manager = await open_another(expiry_seconds=3600)
    batch = await make_batch(manager, 5)
    other = await (await open_another(expiry_seconds=36000)).create("w", create_body(1), "")
    jobs = [j for j in await manager.claim("w1", 3, now_us(), now_us() + 10 * HOUR) if j.batch == batch.seq]
    await manager.complete("w1", [done(jobs[0])], now_us())
    later = now_us() + 2 * HOUR
    assert await manager.expire_due(later) == [batch.id]
    assert await manager.expire_due(later) == []
    final = await check_consistent(manager, batch)
    assert (final.status, final.expired, final.succeeded, final.ended_at) == (ENDED, 4, 1, later)
    # A request still running when the batch expired cannot write a result any more.
    assert await manager.complete("w1", [done(j) for j in jobs[1:]], now_us()) == []
    await check_consistent(manager, final)
    found = await manager.find(other.id)
    assert found is not None and found.status == IN_PROGRESS


async def test_archive_due_drops_results(open_another: ManagerFactory) -> None:
    manager = await open_another(retention_seconds=1800)
    old = await make_batch(manager, 2)
    running = await make_batch(manager, 1)
    for job in await claim_all(manager):
        if job.batch == old.seq:
            await manager.complete("w1", [done(job)], now_us())
    later = now_us() + HOUR
    assert await manager.archive_due(later) == [old.id]
    assert await manager.archive_due(later) == []
    archived = await manager.find(old.id)
    assert archived is not None and archived.archived_at == later and archived.succeeded == 2
    with pytest.raises(Exception, match="no available results"):
        await manager.results("w", old.id)
    found = await manager.find(running.id)
    assert found is not None and found.archived_at is None


async def test_delete_batch(manager: BatchManager) -> None:
    batch = await make_batch(manager, 2)
    await manager.cancel("w", batch.id)
    await manager.delete("w", batch.id)
    assert await manager.find(batch.id) is None
    assert await manager.list_batches("w", limit=10, after_id=None, before_id=None) == ([], False)


async def test_results_pages_and_filters(manager: BatchManager) -> None:
    batch = await make_batch(manager, 4500)
    jobs = await claim_all(manager)
    outcomes = [done(j, ERRORED if i % 3 == 0 else SUCCEEDED) for i, j in enumerate(jobs)]
    assert await manager.complete("w1", outcomes, now_us()) == [batch.id]
    final = await check_consistent(manager, batch)
    pages = [page async for page in await manager.results("w", batch.id)]
    assert len(pages) > 1 and sum(map(len, pages)) == 4500
    errored = await results_of(manager, final, result_type=ERRORED)
    assert len(errored) == 1500 and all(r["result"]["type"] == "errored" for r in errored)
    assert await results_of(manager, final, custom_id="r42") == [{"custom_id": "r42", "result": {"type": "errored"}}]
    assert await results_of(manager, final, custom_id="r43", result_type=ERRORED) == []
    assert await results_of(manager, final, custom_id="nope") == []


async def test_lines_made_in_sql_match_the_results_module(open_another: ManagerFactory) -> None:
    manager = await open_another(expiry_seconds=3600)
    canceled = await make_batch(manager, 2, prefix="c-")
    await manager.cancel("w", canceled.id)
    expiring = await make_batch(manager, 2, prefix="e_")
    await manager.expire_due(now_us() + 2 * HOUR)
    assert await raw_results(manager, canceled) == {f"c-{i}": canceled_line(f"c-{i}") for i in range(2)}
    assert await raw_results(manager, expiring) == {f"e_{i}": expired_line(f"e_{i}") for i in range(2)}


# -- several processes at once ---------------------------------------------------------------


async def test_racing_claims_never_share_a_job(open_another: ManagerFactory) -> None:
    a, b = await open_another(), await open_another()
    await make_batch(a, 600)
    await make_batch(a, 50)
    seen: list[int] = []

    async def worker(manager: BatchManager, owner: str) -> None:
        while jobs := await manager.claim(owner, 25, now_us(), now_us() + HOUR):
            seen.extend(j.id for j in jobs)

    await asyncio.gather(worker(a, "a"), worker(b, "b"), worker(a, "a2"), worker(b, "b2"))
    assert len(seen) == len(set(seen)) == 650


async def test_racing_expiry_transitions_once(open_another: ManagerFactory) -> None:
    a, b = await open_another(expiry_seconds=3600), await open_another(expiry_seconds=3600)
    batch = await make_batch(a, 200)
    jobs = await a.claim("w1", 50, now_us(), now_us() + 10 * HOUR)
    later = now_us() + 2 * HOUR
    first, second, _ = await asyncio.gather(
        a.expire_due(later), b.expire_due(later), a.complete("w1", [done(j) for j in jobs], now_us())
    )
    assert sorted(first + second) == [batch.id]
    final = await check_consistent(a, batch)
    assert final.status == ENDED and final.expired + final.succeeded == 200


async def test_racing_cancels_count_once(open_another: ManagerFactory) -> None:
    a, b = await open_another(), await open_another()
    batch = await make_batch(a, 300)
    running = await b.claim("w1", 40, now_us(), now_us() + HOUR)
    await asyncio.gather(
        a.cancel("w", batch.id),
        b.cancel("w", batch.id),
        a.cancel("w", batch.id),
        b.complete("w1", [done(j) for j in running[:20]], now_us()),
    )
    mid = await check_consistent(a, batch)
    assert (mid.status, mid.canceled, mid.succeeded, mid.processing) == (CANCELING, 260, 20, 20)
    assert await b.complete("w1", [done(j) for j in running[20:]], now_us()) == [batch.id]
    assert (await check_consistent(b, batch)).status == ENDED


async def test_racing_completions_and_reaping(open_another: ManagerFactory) -> None:
    """Two workers finish a batch while a third process reaps lapsed leases and requeues them."""
    a, b, c = await open_another(), await open_another(), await open_another()
    batch = await make_batch(a, 400)

    async def ended(manager: BatchManager) -> bool:
        found = await manager.find(batch.id)
        return found is not None and found.status == ENDED

    async def worker(manager: BatchManager, owner: str, lease: int) -> None:
        while not await ended(manager):
            jobs = await manager.claim(owner, 30, now_us(), now_us() + lease)
            await asyncio.sleep(0.002)
            await manager.complete(owner, [done(j) for j in jobs], now_us())

    async def reaper() -> None:
        while not await ended(c):
            await c.reap(now_us())
            await asyncio.sleep(0.001)

    # Worker "a" holds its leases for no time at all: the reaper hands its jobs to "b" while "a"
    # is still running them, and "a"'s completions must then be refused.
    await asyncio.wait_for(asyncio.gather(worker(a, "a", 0), worker(b, "b", HOUR), reaper()), 60)
    final = await check_consistent(a, batch)
    assert (final.status, final.succeeded) == (ENDED, 400)


async def test_racing_cancel_reap_and_release(open_another: ManagerFactory) -> None:
    """Cancel while one worker hands its requests back and another process reaps: ends once."""
    a, b, c = await open_another(), await open_another(), await open_another()
    batch = await make_batch(a, 120)
    short = await b.claim("short", 40, now_us(), now_us() - SECOND)  # already lapsed
    held = await b.claim("held", 40, now_us(), now_us() + HOUR)
    await asyncio.gather(
        a.cancel("w", batch.id), c.reap(now_us()), b.release("held", [j.id for j in held]), c.reap(now_us())
    )
    final = await check_consistent(a, batch)
    assert (final.status, final.canceled, final.processing) == (ENDED, 120, 0)
    assert len(short) == 40


async def test_racing_archive_and_delete(open_another: ManagerFactory) -> None:
    a, b = await open_another(retention_seconds=1800), await open_another(retention_seconds=1800)
    batches = [await make_batch(a, 3) for _ in range(4)]
    for batch in batches:
        await a.cancel("w", batch.id)
    later = now_us() + HOUR
    first, second, _ = await asyncio.gather(a.archive_due(later), b.archive_due(later), b.delete("w", batches[0].id))
    assert len(first) + len(second) == len(set(first + second))
    assert set(first + second) <= {b.id for b in batches}
    for batch in batches[1:]:
        found = await a.find(batch.id)
        assert found is not None and found.archived_at == later


# -- the dispatcher on each store ----------------------------------------------------------


def simulator_backend(**kwargs: Any) -> MockBackend:
    return MockBackend(lambda params, context: simulate(params)[0], **kwargs)


async def test_dispatcher_writes_one_outcome_per_request(manager: BatchManager) -> None:
    """A request whose lease lapsed can run twice in one process; only one outcome is written."""
    batch = await make_batch(manager, 2)
    dispatcher = Dispatcher(manager, Router([], simulator_backend()), owner="w1")
    jobs = await claim_all(manager, "w1")
    dispatcher._done = [done(jobs[0]), done(jobs[0], ERRORED), done(jobs[1])]
    await dispatcher._flush()
    assert dispatcher._done == []
    final = await check_consistent(manager, batch)
    assert (final.status, final.succeeded, final.errored) == (ENDED, 2, 0)


async def test_burst_runs_every_batch_to_the_end(manager: BatchManager) -> None:
    """Burst mode: retries come due and run; invalid params and unknown models end errored."""
    failed_once: set[str] = set()

    def flaky(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        text = params["messages"][0]["content"]
        if text.startswith("retry") and text not in failed_once:
            failed_once.add(text)
            raise OverloadedError("busy", retry_after=0.05)
        return simulate(params)[0]

    router = Router([], MockBackend(flaky, retry=RetryPolicy(max_attempts=3, base=0.01, cap=0.05)))
    requests = [{"custom_id": f"ok-{i}", "params": params_of(i)} for i in range(30)]
    requests += [
        {"custom_id": f"retry-{i}", "params": {**params_of(i), "messages": [{"role": "user", "content": f"retry {i}"}]}}
        for i in range(5)
    ]
    requests.append({"custom_id": "bad", "params": {"model": "m"}})
    batch = await manager.create("w", msgspec.json.encode({"requests": requests}), "")
    small = await make_batch(manager, 3, prefix="small")
    await Dispatcher(manager, router, owner="burst", poll_interval=0.05).run_burst(timeout=30)
    final = await check_consistent(manager, batch)
    assert (final.status, final.succeeded, final.errored) == (ENDED, 35, 1)
    assert (await check_consistent(manager, small)).succeeded == 3
    assert failed_once == {f"retry {i}" for i in range(5)}
    [bad] = await results_of(manager, final, custom_id="bad")
    assert bad["result"]["error"]["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}


async def test_a_dispatcher_started_again_runs_new_work(manager: BatchManager) -> None:
    """Stopped (its runners with it) and started again, a dispatcher runs what comes next."""
    dispatcher = Dispatcher(manager, Router([], MockBackend(lambda p, c: simulate(p)[0])), owner="again")
    first = await make_batch(manager, 40, prefix="first")
    await dispatcher.run_burst(timeout=30)
    second = await make_batch(manager, 40, prefix="second")
    await dispatcher.run_burst(timeout=30)
    assert (await check_consistent(manager, first)).succeeded == 40
    assert (await check_consistent(manager, second)).succeeded == 40


async def test_dispatcher_stop_hands_back_what_it_holds(manager: BatchManager) -> None:
    gate = asyncio.Event()

    async def held(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        await gate.wait()
        return simulate(params)[0]

    batch = await make_batch(manager, 6)
    dispatcher = Dispatcher(manager, Router([], MockBackend(held)), owner="stopping", concurrency=4, poll_interval=0.05)
    await dispatcher.start()
    await asyncio.wait_for(dispatcher._until(lambda: len(dispatcher._running) == 4), 10)
    await dispatcher.stop(grace=0.05)
    # Nothing was finished; everything comes back claimable, no attempt spent.
    again = await claim_all(manager, "next")
    assert len(again) == 6 and all(j.attempts == 1 for j in again)
    assert (await check_consistent(manager, batch)).processing == 6


async def test_a_lost_claim_lapses_and_runs(manager: BatchManager) -> None:
    """A claim commits but its answer never reaches the worker (the database restarted as it
    committed): the lease is recorded under the worker's name. The worker renews only the leases
    it knows it holds, so that one lapses, is reaped, and runs, while the worker stays busy."""
    owner = "worker-1"
    lost_batch = await make_batch(manager, 1, prefix="lost")
    now = now_us()
    [lost] = await manager.claim(owner, 10, now, now + SECOND)
    busy_batch = await make_batch(manager, 2, prefix="busy")
    release = asyncio.Event()

    async def answer(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        if params["messages"][0]["content"] in ("q0", "q1") and context.betas == ("busy",):
            await release.wait()
        return simulate(params)[0]

    busy = await manager.create("w", create_body(2, "busy-held"), "busy")
    dispatcher = Dispatcher(
        manager, Router([], MockBackend(answer)), owner=owner, lease_seconds=1.0, poll_interval=0.05
    )
    lifecycle = Lifecycle(manager, interval=0.1)
    await dispatcher.start()
    lifecycle.start()
    try:

        async def lost_ran() -> bool:
            found = await manager.find(lost_batch.id)
            return found is not None and found.status == ENDED

        async def until_lost_ran() -> None:
            while not await lost_ran():
                await asyncio.sleep(0.05)

        await asyncio.wait_for(until_lost_ran(), 15)
        still = await manager.find(busy.id)
        assert still is not None and still.status == IN_PROGRESS  # the worker was busy all along
        [result] = await results_of(manager, lost_batch)
        assert result["custom_id"] == lost.custom_id and result["result"]["type"] == "succeeded"
    finally:
        release.set()
        await lifecycle.stop()
        await dispatcher.stop(grace=5)
    await check_consistent(manager, busy_batch)


# -- batch features beyond the hosted API ------------------------------------------------------

HOOK = {"url": "http://hooks.example/batches", "secret_env": "TEST_WEBHOOK_SECRET"}


def options_body(n: int, prefix: str = "r", **options: Any) -> bytes:
    requests = [{"custom_id": f"{prefix}{i}", "params": params_of(i)} for i in range(n)]
    return msgspec.json.encode({"requests": requests, **options})


async def test_options_are_kept_and_metadata_filters_lists(manager: BatchManager) -> None:
    manager.settings = manager_for(manager.store, webhook_url_prefixes=["https://hooks.example/"],
                                   webhook_url_secret_env="S").settings  # fmt: skip
    plain = await make_batch(manager, 1)
    tagged = await manager.create(
        "w",
        options_body(
            2,
            metadata={"team": "search", "env": "prod"},
            fail_fast={"min_results": 10, "max_error_rate": 0.25},
            webhook_url="https://hooks.example/b/1",
        ),
        "",
    )
    other = await manager.create("w", options_body(1, metadata={"team": "ads"}), "")
    found = await manager.find(tagged.id)
    assert found is not None and found == tagged
    assert (found.fail_fast_min_results, found.fail_fast_max_error_rate) == (10, 0.25)
    assert found.webhook_url == "https://hooks.example/b/1"
    shown = manager.render(found, "http://x")
    assert shown["metadata"] == {"team": "search", "env": "prod"}
    assert shown["fail_fast"] == {"min_results": 10, "max_error_rate": 0.25}
    # A batch that uses no option shows exactly the hosted API's keys.
    assert "metadata" not in manager.render(plain, "http://x") and "fail_fast" not in manager.render(plain, "http://x")

    async def listed(**filters: str) -> list[str]:
        batches, _ = await manager.list_batches("w", limit=10, after_id=None, before_id=None, metadata=filters or None)
        return [b.id for b in batches]

    assert await listed(team="search") == [tagged.id]
    assert await listed(team="search", env="prod") == [tagged.id]
    assert await listed(team="search", env="dev") == []
    assert await listed(team="ads") == [other.id]
    assert await listed() == [other.id, tagged.id, plain.id]
    page, more = await manager.list_batches("w", limit=1, after_id=None, before_id=plain.id, metadata={"team": "ads"})
    assert [b.id for b in page] == [other.id] and not more


async def test_idempotency_key_gives_back_the_same_batch(manager: BatchManager) -> None:
    first, replayed = await manager.create_once("w", create_body(3), "", idempotency_key="k-1")
    assert not replayed
    again, replayed = await manager.create_once("w", create_body(3), "", idempotency_key="k-1")
    assert replayed and again.id == first.id
    with pytest.raises(Exception, match="different request") as refused:
        await manager.create_once("w", create_body(4), "", idempotency_key="k-1")
    assert getattr(refused.value, "status", None) == 409
    # Keys are per workspace; without a key, every create is a new batch.
    elsewhere, replayed = await manager.create_once("other", create_body(3), "", idempotency_key="k-1")
    assert not replayed and elsewhere.id != first.id
    assert (await manager.create("w", create_body(3), "")).id != first.id
    batches, _ = await manager.list_batches("w", limit=10, after_id=None, before_id=None)
    assert len(batches) == 2
    # After 24 h the key is forgotten (swept) and may be used again.
    await manager.sweep(now_us() + 25 * HOUR)
    later, replayed = await manager.create_once("w", create_body(4), "", idempotency_key="k-1")
    assert not replayed and later.id != first.id


async def test_racing_creates_with_one_key_make_one_batch(open_another: ManagerFactory) -> None:
    """Several processes create with the same key at once: one batch; every caller gets it."""
    managers = [await open_another() for _ in range(3)]
    body = create_body(200)
    results = await asyncio.gather(
        *(m.create_once("w", body, "", idempotency_key="same") for m in managers for _ in range(2))
    )
    assert len({batch.id for batch, _ in results}) == 1
    assert sum(not replayed for _, replayed in results) == 1
    batches, _ = await managers[0].list_batches("w", limit=10, after_id=None, before_id=None)
    assert len(batches) == 1
    await check_consistent(managers[0], batches[0])


async def _ended_with_mixed_results(manager: BatchManager) -> tuple[Batch, dict[str, str]]:
    """r0..r5: succeeded, errored (overloaded), errored (invalid), succeeded, expired, errored (overloaded)."""
    body = options_body(6, metadata={"team": "t"}, fail_fast={"min_results": 100, "max_error_rate": 0.9})
    batch = await manager.create("w", body, "b1", {"anthropic-version": "2026-10-21"})
    jobs = {j.custom_id: j for j in await claim_all(manager)}
    kinds = {"r0": "ok", "r1": "overloaded_error", "r2": "invalid_request_error", "r3": "ok", "r5": "overloaded_error"}
    outcomes = []
    for cid, kind in kinds.items():
        job = jobs[cid]
        if kind == "ok":
            outcomes.append(done(job))
        else:
            outcomes.append(Outcome(job.id, job.batch, ERRORED, errored_line(cid, kind, "no"), error_type=kind))
    await manager.complete("w1", outcomes, now_us())
    [ended] = await manager.expire_due(now_us() + 25 * HOUR)  # r4 never ran
    assert ended == batch.id
    return await check_consistent(manager, batch), kinds


async def test_retry_makes_a_linked_batch_of_the_failed_lines(manager: BatchManager) -> None:
    parent, _ = await _ended_with_mixed_results(manager)
    child, replayed = await manager.retry("w", parent.id)
    assert not replayed
    assert child.retry_of == parent.id and child.total == 4
    # Same custom_ids, params, betas, headers and options as the parent's lines.
    jobs = {j.custom_id: j for j in await claim_all(manager) if j.batch == child.seq}
    assert sorted(jobs) == ["r1", "r2", "r4", "r5"]
    assert all(msgspec.json.decode(j.params) == params_of(int(j.custom_id[1:])) for j in jobs.values())
    assert child.betas == "b1" and json.loads(child.headers) == {"anthropic-version": "2026-10-21"}
    assert json.loads(child.metadata) == {"team": "t"} and child.fail_fast_min_results == 100
    parent_now = await manager.find(parent.id)
    assert parent_now is not None and parent_now.retried_by == child.id
    # Only some types, and errors of some types.
    only, _ = await manager.retry("w", parent.id, result_types=["errored"], error_types=["overloaded_error"])
    only_jobs = sorted(j.custom_id for j in await claim_all(manager) if j.batch == only.seq)
    assert only_jobs == ["r1", "r5"]
    expired, _ = await manager.retry("w", parent.id, result_types=["expired"])
    assert expired.total == 1
    with pytest.raises(Exception, match="nothing to retry"):
        await manager.retry("w", parent.id, result_types=["canceled"])
    with pytest.raises(Exception, match="result_types"):
        await manager.retry("w", parent.id, result_types=["bogus"])
    with pytest.raises(Exception, match="has not ended"):
        await manager.retry("w", child.id)
    with pytest.raises(Exception, match="not found"):
        await manager.retry("elsewhere", parent.id)


async def test_retry_with_a_key_is_made_once(manager: BatchManager) -> None:
    parent, _ = await _ended_with_mixed_results(manager)
    child, _ = await manager.retry("w", parent.id, idempotency_key="retry-1")
    again, replayed = await manager.retry("w", parent.id, idempotency_key="retry-1")
    assert replayed and again.id == child.id
    with pytest.raises(Exception, match="different request"):
        await manager.retry("w", parent.id, result_types=["expired"], idempotency_key="retry-1")


async def test_fail_fast_cancels_where_results_are_written(open_another: ManagerFactory) -> None:
    """The process that writes the results that trip the policy cancels the batch, as a hard cancel."""
    api, worker = await open_another(), await open_another()
    canceled: list[Batch] = []
    worker.on_canceled.append(canceled.append)
    policy = {"min_results": 4, "max_error_rate": 0.5}
    batch = await api.create("w", options_body(10, fail_fast=policy), "")
    calm = await api.create("w", options_body(10, prefix="c", fail_fast={"min_results": 4, "max_error_rate": 0.9}), "")
    jobs = await claim_all(worker, limit=100)
    mine = [j for j in jobs if j.batch == batch.seq]
    theirs = [j for j in jobs if j.batch == calm.seq]
    # 3 results (below min_results), all errored: nothing yet.
    await worker.complete("w1", [done(j, ERRORED) for j in mine[:3]] + [done(j, ERRORED) for j in theirs[:3]], now_us())
    assert (await check_consistent(api, batch)).status == IN_PROGRESS
    # The fourth: 3 of 4 errored > 0.5: canceled. The other policy (0.9) is not tripped.
    await worker.complete("w1", [done(mine[3]), done(theirs[3])], now_us())
    tripped = await check_consistent(api, batch)
    assert (tripped.status, tripped.cancel_reason, tripped.abort_running) == (CANCELING, "fail_fast", True)
    assert [b.id for b in canceled] == [batch.id] and canceled[0].abort_running
    assert api.render(tripped, "http://x")["cancel_reason"] == "fail_fast"
    assert await api.aborting([batch.seq, calm.seq]) == [batch.seq]
    assert (await check_consistent(api, calm)).status == IN_PROGRESS
    # The requests still running come back (stopped: canceled) and the batch ends.
    assert await worker.complete("w1", [done(j, CANCELED) for j in mine[4:]], now_us()) == [batch.id]
    final = await check_consistent(api, batch)
    assert (final.status, final.errored, final.succeeded, final.canceled) == (ENDED, 3, 1, 6)


async def test_hard_cancel_marks_the_batch_for_every_process(open_another: ManagerFactory) -> None:
    api, worker = await open_another(), await open_another()
    hard = await make_batch(api, 4, prefix="h")
    soft = await make_batch(api, 4, prefix="s")
    await claim_all(worker, limit=100)  # all running
    assert (await api.cancel("w", hard.id, abort_running=True)).abort_running
    assert not (await api.cancel("w", soft.id)).abort_running
    assert await worker.aborting([hard.seq, soft.seq]) == [hard.seq]
    # A canceling batch is upgraded by a cancel that asks for it.
    upgraded = await api.cancel("w", soft.id, abort_running=True)
    assert upgraded.status == CANCELING and upgraded.abort_running
    assert "cancel_reason" not in api.render(upgraded, "http://x")


async def deliveries_of(manager: BatchManager) -> list[tuple[str, str, str]]:
    rows, _ = await manager.outbox.list("w", limit=1000)
    return sorted((d["batch_id"], d["event"], d["source"]) for d in rows)


async def test_webhook_events_are_written_with_their_transitions(open_another: ManagerFactory) -> None:
    manager = await open_another(
        webhooks=[HOOK, {**HOOK, "url": "http://other.example/", "workspace": "elsewhere"},
                  {**HOOK, "url": "http://ended-only.example/", "events": ["message_batch.ended"]}],
        webhook_url_prefixes=["http://mine.example/"], webhook_url_secret_env="BATCH_SECRET", expiry_seconds=3600,
    )  # fmt: skip
    done_batch = await make_batch(manager, 2, prefix="d")
    running = await make_batch(manager, 2, prefix="r")
    jobs = await claim_all(manager)
    idle = await make_batch(manager, 2, prefix="i")
    own = await manager.create("w", options_body(1, prefix="o", webhook_url="http://mine.example/hook"), "")
    await manager.complete("w1", [done(j) for j in jobs if j.batch == done_batch.seq], now_us())
    await manager.cancel("w", idle.id)  # nothing running: canceling and ended at once
    await manager.cancel("w", running.id)  # still running: canceling now, ended later
    ended, canceling = "message_batch.ended", "message_batch.canceling"
    assert await deliveries_of(manager) == sorted([
        (done_batch.id, ended, "config"), (done_batch.id, ended, "config"),
        (idle.id, canceling, "config"), (idle.id, ended, "config"), (idle.id, ended, "config"),
        (running.id, canceling, "config"),
    ])  # fmt: skip
    await manager.complete("w1", [done(j) for j in jobs if j.batch == running.seq], now_us())
    await manager.expire_due(now_us() + 2 * HOUR)  # `own` expires
    found = await deliveries_of(manager)
    assert found.count((running.id, ended, "config")) == 2
    assert (own.id, ended, "batch") in found and found.count((own.id, ended, "config")) == 2
    # Nothing is written twice, however often the transitions are looked at again.
    assert await manager.announce_pending(now_us()) == 0
    assert len(await deliveries_of(manager)) == len(found) == 11


async def test_webhook_deliveries_are_leased_retried_and_given_up(open_another: ManagerFactory) -> None:
    a = await open_another(webhooks=[HOOK], webhook_retry_for=60)
    b = await open_another(webhooks=[HOOK], webhook_retry_for=60)
    batch = await make_batch(a, 1)
    await a.cancel("w", batch.id)  # canceling + ended: two deliveries
    now = now_us()
    claimed = await a.outbox.claim("a", 10, now, now + SECOND)
    assert len(claimed) == 2 and {d.event for d in claimed} == {"message_batch.canceling", "message_batch.ended"}
    assert await b.outbox.claim("b", 10, now, now + SECOND) == []  # held by a
    first, second = sorted(claimed, key=lambda d: d.id)
    await a.outbox.delivered("a", first, 204, b'{"x":1}', now)
    # a's lease on the second lapses; b takes it over and a's late record counts for nothing.
    [taken] = await b.outbox.claim("b", 10, now + 2 * SECOND, now + 3 * SECOND)
    assert taken.id == second.id
    assert not await a.outbox.failed("a", second, status=500, error="late", body=b"{}", next_at=now)
    assert not await b.outbox.failed("b", taken, status=503, error="busy", body=b'{"y":2}', next_at=now + 5 * SECOND)
    [again] = await b.outbox.claim("b", 10, now + 5 * SECOND, now + 6 * SECOND)
    assert (again.attempts, again.payload) == (1, b'{"y":2}')  # the body is fixed at the first attempt
    assert await b.outbox.failed("b", again, status=None, error="refused", body=None, next_at=now + 120 * SECOND)
    rows, _ = await a.outbox.list("w", limit=10)
    by_id = {r["id"]: r for r in rows}
    assert by_id[f"whdel_{first.id}"]["status"] == "delivered"
    gave_up = by_id[f"whdel_{second.id}"]
    assert (gave_up["status"], gave_up["attempts"], gave_up["last_error"]) == ("failed", 2, "refused")
    assert (await a.outbox.list("w", limit=10, state="failed"))[0] == [gave_up]
    assert (await a.outbox.list("w", limit=10, batch_id="nope"))[0] == []
    # Redeliver: due again at once, with a fresh retry window; not from another workspace.
    with pytest.raises(Exception, match="not found"):
        await a.outbox.redeliver("other", gave_up["id"], now_us())
    assert (await a.outbox.redeliver("w", gave_up["id"], now_us()))["status"] == "pending"
    [redo] = await a.outbox.claim("a", 10, now_us(), now_us() + SECOND)
    assert redo.id == second.id


def blocking_backend() -> tuple[MockBackend, list[str], list[str]]:
    """A backend whose calls never finish on their own; it notes each call, and each cut."""
    started: list[str] = []
    cut: list[str] = []

    async def answer(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        text = params["messages"][0]["content"]
        started.append(text)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cut.append(text)
            raise
        raise AssertionError("unreachable")

    return MockBackend(answer), started, cut


@pytest.mark.parametrize("wake_up", ["signal", "poll"])
async def test_dispatcher_hard_cancel_cuts_running_requests(open_another: ManagerFactory, wake_up: str) -> None:
    """The process running the requests may not be the one that cancels: the running calls are cut
    (a callback in one process, NOTIFY across processes, else the abort loop's look at the store),
    they end `canceled`, and nothing more of the batch is sent."""
    worker = await open_another()
    api = worker if worker.store.single_process else await open_another()
    if wake_up == "poll":
        if worker.store.single_process:
            pytest.skip("one process per SQLite file: the callback always reaches the dispatcher")
        real_run = api.store.run

        async def without_notify(*steps: Step, durable: bool = False) -> list[list[Any]]:
            return await real_run(*(s for s in steps if s.name != "notify"), durable=durable)

        api.store.run = without_notify  # type: ignore[method-assign]
    backend, started, cut = blocking_backend()
    dispatcher = Dispatcher(worker, Router([], backend), owner="w1", concurrency=2, poll_interval=0.05)
    worker.on_canceled.append(dispatcher.batch_canceled)
    batch = await make_batch(api, 6)
    await dispatcher.start()
    try:
        await asyncio.wait_for(dispatcher._until(lambda: len(started) == 2), 10)
        await api.cancel("w", batch.id, abort_running=True)

        async def ended() -> bool:
            found = await api.find(batch.id)
            return found is not None and found.status == ENDED

        deadline = asyncio.get_running_loop().time() + 10
        while not await ended():
            assert asyncio.get_running_loop().time() < deadline, "the hard cancel did not reach the dispatcher"
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop(grace=0)
    assert sorted(cut) == sorted(started) and len(started) == 2  # both cut, none sent after
    final = await check_consistent(api, batch)
    assert (final.canceled, final.succeeded, final.errored) == (6, 0, 0)


# -- the OpenAI Batch API's rules, on the same engine ----------------------------------------

CHAT = "/v1/chat/completions"
TRICKY_IDS = ["plain", "with space", 'quote"d', "back\\slash", "new\nline", "tab\t", "ctl\x01", "uni é ☃ 😀"]


def openai_lines(custom_ids: list[str], url: str = CHAT) -> bytes:
    return b"".join(
        msgspec.json.encode({"custom_id": cid, "method": "POST", "url": url, "body": params_of(i)}) + b"\n"
        for i, cid in enumerate(custom_ids)
    )


async def openai_batch(
    openai: OpenAIBatches, content: bytes, workspace: str = "w", **extra: Any
) -> tuple[StoredFile, OpenAIBatch]:
    stored = await openai.files.create(workspace, "batch", "in.jsonl", io.BytesIO(content), len(content), None)
    body = {"input_file_id": stored.id, "endpoint": CHAT, "completion_window": "24h", **extra}
    return stored, await openai.create(workspace, msgspec.json.encode(body))


async def test_openai_batch_runs_its_lines_as_requests(manager: BatchManager) -> None:
    openai = OpenAIBatches(manager)
    content = openai_lines(TRICKY_IDS)
    stored, created = await openai_batch(openai, content, metadata={"run": "1"})
    assert created.batch.id.startswith("batch_") and created.status == "in_progress"
    assert (created.endpoint, created.input_file_id, created.completion_window) == (CHAT, stored.id, "24h")
    assert (created.batch.total, created.batch.processing, json.loads(created.batch.metadata)) == (8, 8, {"run": "1"})
    jobs = await claim_all(manager)
    assert {j.custom_id: msgspec.json.decode(j.params) for j in jobs} == {
        cid: params_of(i) for i, cid in enumerate(TRICKY_IDS)
    }
    assert {j.endpoint for j in jobs} == {CHAT}
    # The file outlives nothing: deleting it leaves the batch its requests.
    await openai.files.delete("w", stored.id)
    assert await openai.files.find(stored.id) is None
    assert (await openai.get("w", created.batch.id)).batch.processing == 8


async def test_openai_batch_with_a_bad_line_fails_and_nothing_runs(manager: BatchManager) -> None:
    openai = OpenAIBatches(manager)
    content = openai_lines(["a", "b", "a"]) + b"not json\n"
    _, failed = await openai_batch(openai, content)
    assert failed.status == "failed"
    assert (failed.batch.status, failed.batch.total, failed.batch.ended_at) == (ENDED, 0, failed.batch.created_at)
    assert [(e["code"], e["line"]) for e in json.loads(failed.errors or "")] == [
        ("duplicate_custom_id", 3),
        ("invalid_json_line", 4),
    ]
    assert await claim_all(manager) == []
    assert not failed.has_file("output") and not failed.has_file("error")


async def test_each_api_sees_only_its_own_batches(manager: BatchManager) -> None:
    openai = OpenAIBatches(manager)
    messages = await make_batch(manager, 1)
    _, theirs = await openai_batch(openai, openai_lines(["x"]))
    listed, more = await manager.list_batches("w", limit=10, after_id=None, before_id=None)
    assert ([b.id for b in listed], more) == ([messages.id], False)
    assert await manager.list_batches("w", limit=10, after_id=messages.id, before_id=None) == ([], False)
    found, more = await openai.list_batches("w", limit=10, after=None)
    assert ([b.batch.id for b in found], more) == ([theirs.batch.id], False)
    # A cursor from anywhere stays within the API's own ids.
    for cursor in ("zzz", "a", "batch_", "msgbatch_"):
        listed, _ = await manager.list_batches("w", limit=10, after_id=cursor, before_id=None)
        assert {b.id for b in listed} <= {messages.id}
        listed, _ = await manager.list_batches("w", limit=10, after_id=None, before_id=cursor)
        assert {b.id for b in listed} <= {messages.id}
        found, _ = await openai.list_batches("w", limit=10, after=cursor)
        assert {b.batch.id for b in found} <= {theirs.batch.id}
    assert [b.batch.id for b in (await openai.list_batches("w", limit=10, after="zzz"))[0]] == [theirs.batch.id]
    for call in (manager.get, manager.cancel, manager.delete):
        with pytest.raises(NotFoundError):
            await call("w", theirs.batch.id)
    with pytest.raises(NotFoundError):
        await openai.get("w", messages.id)
    with pytest.raises(NotFoundError):
        await openai.get("other", theirs.batch.id)
    cancelled = await openai.cancel("w", theirs.batch.id)
    assert cancelled.status == "cancelled" and cancelled.batch.canceled == 1


async def test_openai_files_are_results_lines(open_another: ManagerFactory) -> None:
    """Output file: the succeeded requests' lines as stored; error file: the errored ones as
    stored and the canceled / expired ones (made in SQL, dialect-neutral) turned into OpenAI
    lines, whatever their custom_ids hold."""
    manager = await open_another(expiry_seconds=3600)
    openai = OpenAIBatches(manager)
    _, created = await openai_batch(openai, openai_lines(TRICKY_IDS))
    first = await manager.claim("w1", 3, now_us(), now_us() + HOUR)
    answer = {"id": "chatcmpl-x", "object": "chat.completion", "choices": []}
    outcomes = [Outcome(j.id, j.batch, SUCCEEDED, openai_succeeded_line(j.id, j.custom_id, answer)) for j in first[:2]]
    failed = openai_errored_line(first[2].id, first[2].custom_id, "api_error", "no", 500)
    outcomes.append(Outcome(first[2].id, first[2].batch, ERRORED, failed))
    await manager.complete("w1", outcomes, now_us())
    cancelled = await openai.cancel("w", created.batch.id)
    assert cancelled.status == "cancelled"
    assert (cancelled.batch.succeeded, cancelled.batch.errored, cancelled.batch.canceled) == (2, 1, 5)
    # The canceled lines made in SQL quote the custom_ids byte for byte as results.py does.
    b = cancelled.batch
    stored = await manager.store.read(
        "results_page", {"cursor": b.first_request, "stop": b.stop_request, "type": CANCELED, "limit": 100}
    )
    assert [bytes(row[1]) for row in stored] == [canceled_line(cid) for cid in TRICKY_IDS[3:]]
    assert cancelled.has_file("output") and cancelled.has_file("error")

    async def read(file_id: str) -> list[dict[str, Any]]:
        file = await openai.output_file("w", file_id)
        return [json.loads(raw) for page in [p async for p in openai.output_lines(file)] for raw in page]

    output = await read(f"file-{created.batch.id}-output")
    assert [r["custom_id"] for r in output] == TRICKY_IDS[:2]
    assert all(r["response"]["status_code"] == 200 and r["response"]["body"] == answer for r in output)
    errors = await read(f"file-{created.batch.id}-error")
    assert [r["custom_id"] for r in errors] == TRICKY_IDS[2:]
    assert errors[0]["response"]["status_code"] == 500 and errors[0]["error"] is None
    assert {r["error"]["code"] for r in errors[1:]} == {"batch_cancelled"}
    assert len({r["id"] for r in output + errors}) == len(TRICKY_IDS)
    size = await openai.output_size(await openai.output_file("w", f"file-{created.batch.id}-error"))
    assert size == sum(len(msgspec.json.encode(r)) + 1 for r in errors) > 0
    # The size is measured once and kept; another process reads it.
    again = OpenAIBatches(await open_another())
    assert (await again.get("w", created.batch.id)).error_bytes == size
    # An expired batch's unfinished requests: batch_expired, in an `expired` batch.
    _, expiring = await openai_batch(openai, openai_lines(TRICKY_IDS[:3]))
    await manager.expire_due(now_us() + 2 * HOUR)
    expired = await openai.get("w", expiring.batch.id)
    assert expired.status == "expired" and expired.batch.expired == 3
    b = expired.batch
    stored = await manager.store.read(
        "results_page", {"cursor": b.first_request, "stop": b.stop_request, "type": None, "limit": 100}
    )
    assert [bytes(row[1]) for row in stored] == [expired_line(cid) for cid in TRICKY_IDS[:3]]
    assert {r["error"]["code"] for r in await read(f"file-{expiring.batch.id}-error")} == {"batch_expired"}
    # Deleting a file drops its lines and hides it; the batch keeps its counts.
    await openai.delete_file("w", f"file-{created.batch.id}-output")
    with pytest.raises(NotFoundError):
        await openai.output_file("w", f"file-{created.batch.id}-output")
    assert (await openai.get("w", created.batch.id)).batch.succeeded == 2


async def test_files_list_uploads_and_outputs_in_order(manager: BatchManager) -> None:
    openai = OpenAIBatches(manager)
    uploaded, batch_ids = [], []
    for i in range(3):
        stored, created = await openai_batch(openai, openai_lines([f"r{i}"]))
        uploaded.append(stored.id)
        batch_ids.append(created.batch.id)
        jobs = await claim_all(manager)
        await manager.complete("w1", [done(j) for j in jobs], now_us())
    await openai.files.create("other", "batch", "x.jsonl", io.BytesIO(b"x"), 1, None)
    # Newest first: each batch's output file (it ended after the next upload was made).
    expected = [f"file-{batch_ids[2]}-output", uploaded[2], f"file-{batch_ids[1]}-output", uploaded[1]]
    expected += [f"file-{batch_ids[0]}-output", uploaded[0]]

    async def walk(limit: int, ascending: bool = False, purpose: str | None = None) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            files, more = await openai.list_files("w", purpose=purpose, limit=limit, after=after, ascending=ascending)
            seen += [f.id for f in files]
            if not more:
                return seen
            after = files[-1].id

    assert await walk(100) == await walk(1) == await walk(4) == expected
    assert await walk(2, ascending=True) == expected[::-1]
    assert await walk(2, purpose="batch") == uploaded[::-1]
    assert await walk(2, purpose="batch_output") == [f"file-{b}-output" for b in reversed(batch_ids)]
    assert await walk(2, purpose="fine-tune") == []


async def test_uploaded_files_round_trip_in_chunks_and_expire(manager: BatchManager) -> None:
    files = FileManager(manager.store)
    content = bytes(range(256)) * (5 * 4096 + 3)  # just over 5 MiB: six chunks
    stored = await files.create("w", "batch", "big.jsonl", io.BytesIO(content), len(content), 3600)
    assert (stored.bytes, stored.filename) == (len(content), "big.jsonl")
    chunks = [c async for c in files.content(stored)]
    assert len(chunks) == 6 and b"".join(chunks) == content
    assert await files.read(stored) == content
    with pytest.raises(NotFoundError):
        await files.get("other", stored.id)
    assert await files.expire_due(now_us()) == []
    assert await files.expire_due(now_us() + 2 * HOUR) == [stored.id]
    assert await files.find(stored.id) is None
    assert [c async for c in files.content(stored)] == []


async def test_dispatcher_runs_openai_batches_on_their_endpoints(manager: BatchManager) -> None:
    openai = OpenAIBatches(manager)
    embeddings = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "e", "input": f"t{i}"}}
        for i in range(3)
    ]
    content = b"".join(msgspec.json.encode(x) + b"\n" for x in embeddings)
    stored = await openai.files.create("w", "batch", "e.jsonl", io.BytesIO(content), len(content), None)
    body = {"input_file_id": stored.id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    vectors = await openai.create("w", msgspec.json.encode(body))
    _, chats = await openai_batch(openai, openai_lines(["c0", "c1"]))
    messages = await make_batch(manager, 2)
    router = Router([], SimulatorBackend())
    await Dispatcher(manager, router, owner="burst", poll_interval=0.05).run_burst(timeout=30)
    done_vectors = await openai.get("w", vectors.batch.id)
    assert (done_vectors.status, done_vectors.batch.succeeded, done_vectors.batch.input_tokens) == ("completed", 3, 3)
    file = await openai.output_file("w", f"file-{vectors.batch.id}-output")
    lines = [json.loads(raw) for page in [p async for p in openai.output_lines(file)] for raw in page]
    assert [len(r["response"]["body"]["data"][0]["embedding"]) for r in lines] == [1536] * 3
    done_chats = await openai.get("w", chats.batch.id)
    assert done_chats.status == "completed" and done_chats.batch.output_tokens > 0
    assert (await check_consistent(manager, messages)).succeeded == 2


# -- many teams: fair shares, quotas, usage ------------------------------------------------


def per_workspace(jobs: list[Job]) -> dict[str, int]:
    found: dict[str, int] = {}
    for job in jobs:
        found[job.workspace] = found.get(job.workspace, 0) + 1
    return found


async def test_claim_shares_a_pool_by_workspace_weight(open_another: ManagerFactory) -> None:
    manager = await open_another(limits={"a": {"weight": 3}, "b": {"weight": 1}})
    await make_batch(manager, 100, prefix="a", workspace="a")
    await make_batch(manager, 100, prefix="b", workspace="b")
    await make_batch(manager, 100, prefix="b2", workspace="b")
    jobs = await manager.claim("w1", Slots({SHARED: 40}), now_us(), now_us() + HOUR)
    assert per_workspace(jobs) == {"a": 30, "b": 10}
    # Decided against what the claimer holds: with 30 and 10 held, 8 more split 6:2.
    held = Holdings()
    for job in jobs:
        held.add(SHARED, job.workspace, job.batch)
    more = await manager.claim("w1", Slots({SHARED: 8}, held=held), now_us(), now_us() + HOUR)
    assert per_workspace(more) == {"a": 6, "b": 2}
    # A workspace holding less than its share gets the slots until it catches up.
    held = Holdings()
    held.add(SHARED, "a", 1, 30)
    more = await manager.claim("w1", Slots({SHARED: 12}, held=held), now_us(), now_us() + HOUR)
    assert per_workspace(more) == {"a": 1, "b": 11}
    # Within workspace b, its two batches share equally.
    assert len({j.batch for j in more if j.workspace == "b"}) == 2


async def test_claim_serves_priority_first_within_a_workspace(manager: BatchManager) -> None:
    def body(prefix: str, n: int, priority: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "requests": [{"custom_id": f"{prefix}{i}", "params": params_of(i)} for i in range(n)]
        }
        if priority:
            payload["priority"] = priority
        return msgspec.json.encode(payload)

    low = await manager.create("w", body("low", 10, "low"), "")
    normal = await manager.create("w", body("normal", 10), "")
    high = await manager.create("w", body("high", 10, "high"), "")
    other = await manager.create("x", body("other", 30, "low"), "")
    assert (low.priority, normal.priority, high.priority) == (LOW, NORMAL, HIGH)
    assert manager.render(high, "http://x")["priority"] == "high"
    jobs = await manager.claim("w1", 30, now_us(), now_us() + HOUR)
    taken = {seq: sum(j.batch == seq for j in jobs) for seq in (low.seq, normal.seq, high.seq, other.seq)}
    # Workspaces share equally; within w, high first, then normal; another workspace's low is its own business.
    assert taken == {high.seq: 10, normal.seq: 5, low.seq: 0, other.seq: 15}
    with pytest.raises(InvalidRequestError, match="priority: Input should be 'high', 'normal' or 'low'"):
        await manager.create("w", body("bad", 1, "urgent"), "")


async def test_claim_asks_each_backend_pool_for_what_it_can_start(manager: BatchManager) -> None:
    requests = [
        {"custom_id": f"r{i}", "params": {**params_of(i), "model": "fast-model" if i % 3 else "slow-model"}}
        for i in range(60)
    ]
    batch = await manager.create("w", msgspec.json.encode({"requests": requests}), "")

    def pool_of(model: str) -> str:
        return {"fast-model": "fast", "slow-model": "slow"}.get(model, SHARED)

    jobs = await manager.claim("w1", Slots({"fast": 7, "slow": 2}, pool_of), now_us(), now_us() + HOUR)
    assert sorted(j.model for j in jobs) == ["fast-model"] * 7 + ["slow-model"] * 2
    # Only the backend with free slots gets work; the other's requests stay in the store.
    jobs = await manager.claim("w1", Slots({"slow": 100}, pool_of), now_us(), now_us() + HOUR)
    assert {j.model for j in jobs} == {"slow-model"} and len(jobs) == 20 - 2
    assert all(j.batch == batch.seq and j.workspace == "w" for j in jobs)
    rest = await manager.claim("w1", Slots({"fast": 100, "slow": 100}, pool_of), now_us(), now_us() + HOUR)
    assert {j.model for j in rest} == {"fast-model"} and len(rest) == 40 - 7


async def test_claim_caps_a_workspace_per_backend(open_another: ManagerFactory) -> None:
    manager = await open_another(limits={"default": {"max_in_flight_per_backend": 4}, "big": {"weight": 10}})
    await make_batch(manager, 50, prefix="big", workspace="big")
    await make_batch(manager, 50, prefix="small", workspace="small")
    held = Holdings()
    held.add(SHARED, "big", 1, 3)
    jobs = await manager.claim("w1", Slots({SHARED: 20}, held=held), now_us(), now_us() + HOUR)
    # The weight asks for more, the cap (from [limits.default]) allows one more; what is left of
    # the 20 goes nowhere: `small` is capped at 4 too.
    assert per_workspace(jobs) == {"big": 1, "small": 4}


async def test_quotas_refuse_a_create_and_store_nothing(open_another: ManagerFactory) -> None:
    manager = await open_another(limits={"default": {"max_queued_requests": 10, "max_batches_in_progress": 2}})
    first = await make_batch(manager, 6, prefix="a")
    with pytest.raises(RateLimitError) as refused:
        await make_batch(manager, 5, prefix="b")
    assert refused.value.status == 429 and refused.value.headers == {"x-should-retry": "false"}
    assert refused.value.message == (
        "max_queued_requests: workspace w may have at most 10 requests not yet finished; "
        "it has 6, and this batch adds 5."
    )
    listed, _ = await manager.list_batches("w", limit=10, after_id=None, before_id=None)
    assert [b.id for b in listed] == [first.id]
    assert len(await claim_all(manager, "w0", lease=1)) == 6  # no request of the refused batch is queued
    await make_batch(manager, 3, prefix="c")
    with pytest.raises(RateLimitError) as refused:
        await make_batch(manager, 1, prefix="d")  # 10 queued would do; a third batch would not
    assert (
        refused.value.message
        == "max_batches_in_progress: workspace w may have at most 2 batches in progress; it has 2."
    )
    with pytest.raises(RateLimitError) as refused:
        await make_batch(manager, 2, prefix="d")
    assert refused.value.message.startswith("max_queued_requests: workspace w may have at most 10 requests")
    assert refused.value.message.endswith(
        "; max_batches_in_progress: workspace w may have at most 2 batches in progress; it has 2."
    )
    await make_batch(manager, 1, prefix="e", workspace="other-team")  # each workspace has its own
    # Finished work no longer counts.
    jobs = [j for j in await claim_all(manager, "w1") if j.batch == first.seq]
    await manager.reap(now_us() + 2 * SECOND)
    jobs = [j for j in await claim_all(manager, "w2") if j.batch == first.seq]
    await manager.complete("w2", [done(j) for j in jobs], now_us())
    await make_batch(manager, 6, prefix="f")


async def test_concurrent_creates_cannot_both_pass_a_quota(open_another: ManagerFactory) -> None:
    quota = {"limits": {"default": {"max_queued_requests": 10}}}
    managers = [await open_another(**quota) for _ in range(4)]
    outcomes = await asyncio.gather(
        *(make_batch(m, 6, prefix=f"p{i}_") for i, m in enumerate(managers)), return_exceptions=True
    )
    assert sum(isinstance(o, Batch) for o in outcomes) == 1
    assert all(isinstance(o, RateLimitError) for o in outcomes if not isinstance(o, Batch))
    listed, _ = await managers[0].list_batches("w", limit=10, after_id=None, before_id=None)
    assert len(listed) == 1


async def test_usage_and_outcomes_add_up_to_the_results(manager: BatchManager) -> None:
    """Per batch, per model and per workspace, the counted tokens are the sum over the results lines."""
    requests = [
        {"custom_id": f"r{i}", "params": {**params_of(i), "model": ("model-a", "model-b")[i % 2]}} for i in range(40)
    ]
    requests.append({"custom_id": "bad", "params": {"model": "model-a"}})  # no max_tokens: errored, no backend
    failing = {**params_of(0), "model": "model-b", "messages": [{"role": "user", "content": "simulate error=x"}]}
    requests.append({"custom_id": "fails", "params": failing})  # errored by the backend
    batch = await manager.create("w", msgspec.json.encode({"requests": requests}), "")
    other = await make_batch(manager, 3, prefix="o", workspace="elsewhere")
    router = Router([], MockBackend(lambda params, context: _simulated(params), name="sim"))
    await Dispatcher(manager, router, owner="burst", poll_interval=0.05).run_burst(timeout=30)
    final = await check_consistent(manager, batch)
    lines = await results_of(manager, final)
    expected: dict[str, list[int]] = {}
    for item in lines:
        if item["result"]["type"] == "succeeded":
            message = item["result"]["message"]
            usage = message["usage"]
            counts = expected.setdefault(message["model"], [0, 0, 0, 0])
            for i, kind in enumerate(TOKEN_KINDS):
                counts[i] += usage.get(kind) or 0
    assert set(expected) == {"model-a", "model-b"}
    summed = [sum(c[i] for c in expected.values()) for i in range(4)]
    assert manager.render(final, "http://x")["usage"] == dict(zip(TOKEN_KINDS, summed, strict=True))
    reader = UsageReader(manager.store, manager.settings)
    now = now_us() // SECOND
    usage = await reader.usage("w", now - 3600, now + 1, ["model"])
    assert {row["model"]: [row[k] for k in TOKEN_KINDS] for row in usage["data"]} == expected
    assert {row["model"]: (row["succeeded"], row["errored"]) for row in usage["data"]} == {
        "model-a": (20, 1),
        "model-b": (20, 1),
    }
    assert [row[k] for row in [usage["total"]] for k in TOKEN_KINDS] == summed
    elsewhere = await reader.usage("elsewhere", now - 3600, now + 1, [])
    assert elsewhere["total"]["succeeded"] == 3 and await check_consistent(manager, other)
    breakdown = await reader.breakdown(final)
    rows = {(r["model"], r["backend"]): r for r in breakdown["requests"]}
    assert rows[("model-a", "sim")]["succeeded"] == 20 and rows[("model-b", "sim")]["succeeded"] == 20
    assert rows[("model-b", "sim")]["errored"] == 1  # the overloaded one reached the backend
    assert rows[("model-a", None)]["errored"] == 1  # the invalid one did not
    for kind in ("processing", "succeeded", "errored", "canceled", "expired"):
        assert sum(r[kind] for r in breakdown["requests"]) == getattr(final, kind)
    assert breakdown["errors"] == [
        {"type": "invalid_request_error", "count": 1},
        {"type": "overloaded_error", "count": 1},
    ]
    throughput = await reader.throughput(final)
    assert sum(n for _, n in throughput["points"]) == final.total


def _simulated(params: dict[str, Any]) -> dict[str, Any]:
    text = params["messages"][-1]["content"]
    if "simulate error=" in text:
        raise OverloadedError("overloaded", retryable=False)
    message = simulate(params)[0]
    return {**message, "model": params["model"]}


async def test_outcomes_count_requests_finished_in_bulk(open_another: ManagerFactory) -> None:
    manager = await open_another(expiry_seconds=0.2)
    bulk: list[tuple[int, int]] = []
    manager.on_finished_in_bulk.append(lambda result, n: bulk.append((result, n)))
    canceled = await make_batch(manager, 5, prefix="c")
    running = await claim_all(manager, "w1")
    await manager.cancel("w", canceled.id)
    assert bulk == []  # all five were running: nothing waited
    await manager.complete("w1", [done(j) for j in running[:2]], now_us())
    await manager.release("w1", [j.id for j in running[2:]])
    assert bulk == [(CANCELED, 3)]
    expiring = await make_batch(manager, 4, prefix="x")
    await asyncio.sleep(0.25)
    assert await manager.expire_due(now_us()) == [expiring.id]
    assert bulk == [(CANCELED, 3), (EXPIRED, 4)]
    reader = UsageReader(manager.store, manager.settings)
    for batch, kind, n in ((canceled, "canceled", 3), (expiring, "expired", 4)):
        final = await check_consistent(manager, batch)
        rows = (await reader.breakdown(final))["requests"]
        assert getattr(final, kind) == n
        for count in ("processing", "succeeded", "errored", "canceled", "expired"):
            assert sum(r[count] for r in rows) == getattr(final, count)


def _refilled(dispatcher: Dispatcher, finished: list[str], before: int) -> bool:
    """One more finished, and its slot claimed again (held: claimed and not finished)."""
    return len(finished) > before and sum(dispatcher._slots.by_pool.values()) == 5


def texts_body(prefix: str, n: int) -> bytes:
    requests = [
        {"custom_id": f"{prefix}{i}", "params": {**params_of(i), "messages": [{"role": "user", "content": prefix}]}}
        for i in range(n)
    ]
    return msgspec.json.encode({"requests": requests})


async def test_dispatcher_claims_per_backend_no_more_than_it_can_start(open_another: ManagerFactory) -> None:
    """A backend running 4 at once is held 4 + 1 requests: the rest stays in the store, shared 3:1
    by weight as slots free, and a batch of a third workspace created meanwhile gets the next slot."""
    manager = await open_another(limits={"a": {"weight": 3}, "b": {"weight": 1}})
    finished: list[str] = []
    gate = asyncio.Semaphore(0)

    async def answer(params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        await gate.acquire()
        finished.append(params["messages"][0]["content"])
        return simulate(params)[0]

    backend = MockBackend(answer, name="small", max_concurrency=4)
    await manager.create("a", texts_body("a", 60), "")
    await manager.create("b", texts_body("b", 60), "")
    dispatcher = Dispatcher(manager, Router([], backend), owner="d1", poll_interval=0.05)

    async def step(n: int) -> None:
        for _ in range(n):
            before = len(finished)
            gate.release()
            await asyncio.wait_for(dispatcher._until(partial(_refilled, dispatcher, finished, before)), 10)

    await dispatcher.start()
    try:
        await asyncio.wait_for(dispatcher._until(lambda: sum(dispatcher._slots.by_pool.values()) == 5), 10)
        _, waiting, _ = await manager.queue_summary(now_us())
        assert waiting == 115  # claimed: the 4 slots and one ahead; the rest waits in the store
        await step(40)
        assert 27 <= finished.count("a") <= 33, finished  # 3:1 of 40
        await manager.create("c", texts_body("c", 1), "")
        await step(6)
        # The newcomer took the first slot that freed: it ran behind the five held, not the queue.
        assert "c" in finished[40:46], finished[40:]
    finally:
        for _ in range(200):
            gate.release()
        await dispatcher.stop(grace=5)


async def test_list_filters_by_status_and_metadata(manager: BatchManager) -> None:
    made = [
        await manager.create("w", create_body(2, f"b{i}_"), "", metadata={"team": ("nlp", "vision")[i % 2]})
        for i in range(5)
    ]
    await manager.cancel("w", made[0].id)  # nothing ran: it ends at once
    page, more = await manager.list_batches("w", limit=10, after_id=None, before_id=None, metadata={"team": "nlp"})
    assert [b.id for b in page] == [made[4].id, made[2].id, made[0].id] and not more
    page, _ = await manager.list_batches(
        "w", limit=10, after_id=None, before_id=None, status=IN_PROGRESS, metadata={"team": "nlp"}
    )
    assert [b.id for b in page] == [made[4].id, made[2].id]
    page, more = await manager.list_batches("w", limit=1, after_id=None, before_id=made[0].id, status=IN_PROGRESS)
    assert [b.id for b in page] == [made[1].id] and more
    page, _ = await manager.list_batches("w", limit=10, after_id=None, before_id=None, metadata={"team": "x"})
    assert page == []
