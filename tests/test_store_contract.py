"""The Store contract, run against SQLite and PostgreSQL alike so that they cannot drift.

Every test gets a store on a database of its own (a SQLite file in tmp_path, or a freshly
created PostgreSQL database that is dropped afterwards). The race tests open a second store on
the same database: two processes' worth of connections doing the same housekeeping at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from conftest import draft, fresh_pg_database, make_batch, params_of
from msgbatch.clock import now_us
from msgbatch.ids import new_batch_id
from msgbatch.models import (
    CANCELED,
    CANCELING,
    ENDED,
    ERRORED,
    IN_PROGRESS,
    RESULT_CODES,
    RESULT_NAMES,
    SUCCEEDED,
    Batch,
    Job,
    Outcome,
)
from msgbatch.store import Store, open_store

HOUR = 3600 * 1_000_000
SECOND = 1_000_000

StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_another(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores on one database for this test (each one stands for a process)."""
    with database_for(request.param, tmp_path) as database:
        opened: list[Store] = []

        async def factory() -> Store:
            store = open_store(database)
            await store.open()
            opened.append(store)
            return store

        try:
            yield factory
        finally:
            for store in opened:
                await store.close()


def database_for(kind: str, tmp_path: Path) -> contextlib.AbstractContextManager[str]:
    """A SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        return contextlib.nullcontext(str(tmp_path / "contract.db"))
    return fresh_pg_database()


@pytest.fixture
async def store(open_another: StoreFactory) -> Store:
    return await open_another()


def line(job: Job, kind: str = "succeeded") -> bytes:
    return b'{"custom_id":"' + job.custom_id.encode() + b'","result":{"type":"' + kind.encode() + b'"}}'


def done(job: Job, result: int = SUCCEEDED) -> Outcome:
    return Outcome(job.id, job.batch, result, line(job, RESULT_NAMES[result]))


async def claim_all(store: Store, owner: str = "w1", *, lease: int = 60 * SECOND, limit: int = 100_000) -> list[Job]:
    now = now_us()
    return await store.claim(owner, limit, now, now + lease)


async def results_of(store: Store, batch: Batch, **kwargs: object) -> list[dict[str, object]]:
    lines = []
    async for page in store.iter_results(batch, **kwargs):  # type: ignore[arg-type]
        lines += [json.loads(raw) for raw in page]
    return lines


async def check_consistent(store: Store, batch: Batch) -> Batch:
    """Counts add up, match the results, and every custom_id has exactly one result."""
    fresh = await store.get_batch(batch.id)
    assert fresh is not None
    counts = (fresh.succeeded, fresh.errored, fresh.canceled, fresh.expired)
    assert fresh.processing + sum(counts) == fresh.total
    lines = await results_of(store, fresh)
    ids = [r["custom_id"] for r in lines]
    assert len(ids) == len(set(ids)), "a request has two results"
    tally = [0, 0, 0, 0]
    for r in lines:
        kind = r["result"]["type"]  # type: ignore[index]
        tally[RESULT_CODES[kind]] += 1
    assert tuple(tally) == counts
    if fresh.processing == 0:
        assert len(ids) == fresh.total
    return fresh


# -- batches ---------------------------------------------------------------------------------


async def test_create_and_get(store: Store) -> None:
    batch = await make_batch(store, 3, betas="b1,b2")
    assert batch.seq > 0 and batch.first_request > 0
    assert (batch.status, batch.total, batch.processing) == (IN_PROGRESS, 3, 3)
    assert await store.get_batch(batch.id) == batch
    assert await store.get_batch(new_batch_id()) is None


async def test_request_ids_are_blocks_never_reused(store: Store) -> None:
    a = await make_batch(store, 5)
    b = await make_batch(store, 7)
    assert b.first_request >= a.first_request + 5
    jobs = await claim_all(store)
    await store.complete("w1", [done(j) for j in jobs if j.batch == a.seq], now_us())
    await store.delete_batch(a.seq)
    c = await make_batch(store, 2)
    assert c.first_request >= b.first_request + 7
    assert await store.get_batch(a.id) is None


async def test_list_newest_first_with_cursors(store: Store) -> None:
    mine = [await make_batch(store, 1) for _ in range(5)]
    await make_batch(store, 1, workspace="other")
    newest_first = [b.id for b in reversed(mine)]

    page, more = await store.list_batches("w", 2, after_id=None, before_id=None)
    assert [b.id for b in page] == newest_first[:2] and more
    page, more = await store.list_batches("w", 2, after_id=newest_first[1], before_id=None)
    assert [b.id for b in page] == newest_first[2:4] and more
    page, more = await store.list_batches("w", 2, after_id=newest_first[3], before_id=None)
    assert [b.id for b in page] == newest_first[4:] and not more
    # before_id: the ones just newer than it, still newest first
    page, more = await store.list_batches("w", 2, after_id=None, before_id=newest_first[4])
    assert [b.id for b in page] == newest_first[2:4] and more
    page, more = await store.list_batches("w", 10, after_id=None, before_id=newest_first[1])
    assert [b.id for b in page] == newest_first[:1] and not more
    page, more = await store.list_batches("w", 1000, after_id=None, before_id=None)
    assert [b.id for b in page] == newest_first and not more


async def test_large_params_round_trip(store: Store) -> None:
    big = msgspec.json.encode({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x" * 300_000}]})
    batch = await store.create_batch(draft(2), [("big", msgspec.Raw(big)), ("small", b'{"a":1}')])
    jobs = sorted(await claim_all(store), key=lambda j: j.custom_id)
    assert [(j.custom_id, bytes(j.params)) for j in jobs] == [("big", big), ("small", b'{"a":1}')]
    assert all(j.batch == batch.seq for j in jobs)


# -- the queue -------------------------------------------------------------------------------


async def test_claim_leases_each_request_once(store: Store) -> None:
    batch = await make_batch(store, 10, betas="x")
    first = await store.claim("w1", 4, now_us(), now_us() + HOUR)
    second = await claim_all(store, "w2")
    assert len(first) == 4 and len(second) == 6
    assert {j.id for j in first}.isdisjoint({j.id for j in second})
    assert await claim_all(store, "w3") == []
    job = first[0]
    assert (job.batch, job.betas, job.expires_at, job.attempts) == (batch.seq, "x", batch.expires_at, 1)
    assert bytes(job.params) == params_of(int(job.custom_id[1:]))


async def test_claim_is_fair_across_batches(store: Store) -> None:
    big = await make_batch(store, 100, prefix="big")
    small = await make_batch(store, 5, prefix="small")
    jobs = await store.claim("w1", 10, now_us(), now_us() + HOUR)
    per_batch = {seq: sum(j.batch == seq for j in jobs) for seq in (big.seq, small.seq)}
    assert per_batch == {big.seq: 5, small.seq: 5}
    # What a drained batch leaves goes to the others.
    jobs = await store.claim("w1", 10, now_us(), now_us() + HOUR)
    assert [j.batch for j in jobs] == [big.seq] * 10
    # With one request per claim, the batches take turns.
    third = await make_batch(store, 5, prefix="third")
    await make_batch(store, 1, prefix="fourth")
    served = [(await store.claim("w1", 1, now_us(), now_us() + HOUR))[0].batch for _ in range(6)]
    assert len(set(served[:3])) == 3 and third.seq in served


async def test_claim_skips_batches_not_in_progress(store: Store) -> None:
    batch = await make_batch(store, 3)
    await store.cancel_batch(batch.seq, now_us())
    assert await claim_all(store) == []


async def test_complete_counts_results_and_ends_once(store: Store) -> None:
    batch = await make_batch(store, 6)
    jobs = await claim_all(store)
    kinds = [SUCCEEDED, SUCCEEDED, ERRORED, SUCCEEDED]
    accepted, ended = await store.complete("w1", [done(j, k) for j, k in zip(jobs, kinds, strict=False)], now_us())
    assert (accepted, ended) == (4, [])
    mid = await check_consistent(store, batch)
    assert (mid.processing, mid.succeeded, mid.errored, mid.status) == (2, 3, 1, IN_PROGRESS)
    accepted, ended = await store.complete("w1", [done(j) for j in jobs[4:]], now_us())
    assert (accepted, ended) == (2, [batch.id])
    final = await check_consistent(store, batch)
    assert (final.status, final.processing, final.succeeded) == (ENDED, 0, 5)
    assert final.ended_at is not None
    # Completing again is refused: the jobs are gone.
    assert await store.complete("w1", [done(j) for j in jobs], now_us()) == (0, [])
    assert len(await results_of(store, final)) == 6


async def test_complete_is_conditional_on_the_lease(store: Store) -> None:
    batch = await make_batch(store, 2)
    jobs = await claim_all(store, "owner-a")
    assert await store.complete("owner-b", [done(j) for j in jobs], now_us()) == (0, [])
    assert await results_of(store, batch) == []
    assert (await check_consistent(store, batch)).processing == 2


async def test_stale_owner_is_rejected_after_reap_and_reclaim(store: Store) -> None:
    batch = await make_batch(store, 1)
    now = now_us()
    [stale] = await store.claim("slow", 10, now, now + SECOND)
    assert await store.reap_leases(now + 2 * SECOND) == 1
    [fresh] = await store.claim("fast", 10, now + 2 * SECOND, now + HOUR)
    assert fresh.id == stale.id and fresh.attempts == 2
    assert await store.complete("slow", [done(stale, ERRORED)], now_us()) == (0, [])
    assert await store.complete("fast", [done(fresh)], now_us()) == (1, [batch.id])
    final = await check_consistent(store, batch)
    assert (final.succeeded, final.errored) == (1, 0)


async def test_retry_goes_back_to_the_queue(store: Store) -> None:
    batch = await make_batch(store, 1)
    [job] = await claim_all(store)
    later = now_us() + 5 * SECOND
    assert await store.complete("w1", [Outcome(job.id, job.batch, None, not_before=later)], now_us()) == (1, [])
    assert (await check_consistent(store, batch)).processing == 1
    assert await store.claim("w1", 10, later - SECOND, later + HOUR) == []
    [again] = await store.claim("w1", 10, later, later + HOUR)
    assert (again.id, again.attempts) == (job.id, 2)


async def test_retry_in_a_canceling_batch_is_canceled(store: Store) -> None:
    batch = await make_batch(store, 3)
    jobs = await store.claim("w1", 2, now_us(), now_us() + HOUR)
    await store.cancel_batch(batch.seq, now_us())
    retry = Outcome(jobs[0].id, jobs[0].batch, None, not_before=now_us())
    accepted, ended = await store.complete("w1", [retry, done(jobs[1])], now_us())
    assert (accepted, ended) == (2, [batch.id])
    final = await check_consistent(store, batch)
    assert (final.status, final.canceled, final.succeeded) == (ENDED, 2, 1)
    assert await claim_all(store) == []


async def test_renew_extends_the_lease(store: Store) -> None:
    await make_batch(store, 2)
    now = now_us()
    await store.claim("w1", 10, now, now + SECOND)
    await store.renew_leases("w1", now + HOUR)
    await store.renew_leases("someone-else", now)  # touches nothing of w1's
    assert await store.reap_leases(now + 2 * SECOND) == 0
    assert await store.reap_leases(now + 2 * HOUR) == 2


async def test_release_hands_jobs_back_unspent(store: Store) -> None:
    await make_batch(store, 3)
    jobs = await claim_all(store)
    await store.release("someone-else", [j.id for j in jobs])  # not theirs: nothing happens
    assert await claim_all(store, "w2") == []
    await store.release("w1", [jobs[0].id, jobs[1].id])
    again = await claim_all(store, "w2")
    assert sorted(j.id for j in again) == sorted(j.id for j in jobs[:2])
    assert all(j.attempts == 1 for j in again)


async def test_reap_takes_only_lapsed_leases(store: Store) -> None:
    await make_batch(store, 4)
    now = now_us()
    await store.claim("short", 2, now, now + SECOND)
    await store.claim("long", 2, now, now + HOUR)
    assert await store.reap_leases(now + 2 * SECOND) == 2
    assert await store.reap_leases(now + 2 * SECOND) == 0
    again = await store.claim("w3", 10, now + 2 * SECOND, now + HOUR)
    assert len(again) == 2


async def test_recover(store: Store) -> None:
    await make_batch(store, 2)
    now = now_us()
    await store.claim("w1", 1, now, now + HOUR)
    recovered = await store.recover()
    # One process per database: every lease is stale at start. Shared: only lapsed leases go back.
    assert recovered == (1 if store.single_process else 0)


# -- transitions -----------------------------------------------------------------------------


async def test_cancel_running_requests_finish(store: Store) -> None:
    batch = await make_batch(store, 5)
    running = await store.claim("w1", 2, now_us(), now_us() + HOUR)
    await store.cancel_batch(batch.seq, now_us())
    mid = await check_consistent(store, batch)
    assert (mid.status, mid.canceled, mid.processing) == (CANCELING, 3, 2)
    assert mid.cancel_initiated_at is not None
    await store.cancel_batch(batch.seq, now_us())  # again: nothing changes
    assert await store.get_batch(batch.id) == mid
    accepted, ended = await store.complete("w1", [done(j) for j in running], now_us())
    assert (accepted, ended) == (2, [batch.id])
    final = await check_consistent(store, batch)
    assert (final.status, final.succeeded, final.canceled) == (ENDED, 2, 3)
    lines = await results_of(store, final, result_type=CANCELED)
    assert len(lines) == 3 and all(r["result"] == {"type": "canceled"} for r in lines)


async def test_cancel_of_an_idle_batch_ends_it(store: Store) -> None:
    batch = await make_batch(store, 3)
    await store.cancel_batch(batch.seq, now_us())
    final = await check_consistent(store, batch)
    assert (final.status, final.canceled) == (ENDED, 3)
    await store.cancel_batch(batch.seq, now_us())
    assert await store.get_batch(batch.id) == final


async def test_expire_due(store: Store) -> None:
    batch = await make_batch(store, 5, expires_in=HOUR)
    other = await make_batch(store, 1, expires_in=10 * HOUR)
    jobs = [j for j in await store.claim("w1", 3, now_us(), now_us() + 10 * HOUR) if j.batch == batch.seq]
    await store.complete("w1", [done(jobs[0])], now_us())
    later = now_us() + 2 * HOUR
    assert await store.expire_due(later) == [batch.id]
    assert await store.expire_due(later) == []
    final = await check_consistent(store, batch)
    assert (final.status, final.expired, final.succeeded, final.ended_at) == (ENDED, 4, 1, later)
    # A request still running when the batch expired cannot write a result any more.
    assert await store.complete("w1", [done(j) for j in jobs[1:]], now_us()) == (0, [])
    await check_consistent(store, final)
    assert (await store.get_batch(other.id)).status == IN_PROGRESS  # type: ignore[union-attr]


async def test_archive_due_drops_results(store: Store) -> None:
    old = await make_batch(store, 2)
    running = await make_batch(store, 1)
    for job in await claim_all(store):
        if job.batch == old.seq:
            await store.complete("w1", [done(job)], now_us())
    later = now_us() + HOUR
    assert await store.archive_due(later, later) == [old.id]
    assert await store.archive_due(later, later) == []
    archived = await store.get_batch(old.id)
    assert archived is not None and archived.archived_at == later and archived.succeeded == 2
    assert await results_of(store, archived) == []
    assert (await store.get_batch(running.id)).archived_at is None  # type: ignore[union-attr]


async def test_delete_batch(store: Store) -> None:
    batch = await make_batch(store, 2)
    await store.cancel_batch(batch.seq, now_us())
    await store.delete_batch(batch.seq)
    assert await store.get_batch(batch.id) is None
    assert await results_of(store, batch) == []
    page, _ = await store.list_batches("w", 10, after_id=None, before_id=None)
    assert page == []


async def test_iter_results_pages_and_filters(store: Store) -> None:
    batch = await make_batch(store, 4500)
    jobs = await claim_all(store)
    outcomes = [done(j, ERRORED if i % 3 == 0 else SUCCEEDED) for i, j in enumerate(jobs)]
    assert await store.complete("w1", outcomes, now_us()) == (4500, [batch.id])
    final = await check_consistent(store, batch)
    pages = [page async for page in store.iter_results(final)]
    assert len(pages) > 1 and sum(map(len, pages)) == 4500
    errored = await results_of(store, final, result_type=ERRORED)
    assert len(errored) == 1500 and all(r["result"]["type"] == "errored" for r in errored)  # type: ignore[index]
    assert await results_of(store, final, custom_id="r42") == [{"custom_id": "r42", "result": {"type": "errored"}}]
    assert await results_of(store, final, custom_id="r43", result_type=ERRORED) == []
    assert await results_of(store, final, custom_id="nope") == []


# -- several processes at once ---------------------------------------------------------------


async def test_racing_claims_never_share_a_job(open_another: StoreFactory) -> None:
    a, b = await open_another(), await open_another()
    await make_batch(a, 600)
    await make_batch(a, 50)
    seen: list[int] = []

    async def worker(store: Store, owner: str) -> None:
        while jobs := await store.claim(owner, 25, now_us(), now_us() + HOUR):
            seen.extend(j.id for j in jobs)

    await asyncio.gather(worker(a, "a"), worker(b, "b"), worker(a, "a2"), worker(b, "b2"))
    assert len(seen) == len(set(seen)) == 650


async def test_racing_expiry_transitions_once(open_another: StoreFactory) -> None:
    a, b = await open_another(), await open_another()
    batch = await make_batch(a, 200, expires_in=HOUR)
    jobs = await a.claim("w1", 50, now_us(), now_us() + 10 * HOUR)
    later = now_us() + 2 * HOUR
    first, second, late = await asyncio.gather(
        a.expire_due(later), b.expire_due(later), a.complete("w1", [done(j) for j in jobs], now_us())
    )
    assert sorted(first + second) == [batch.id]
    final = await check_consistent(a, batch)
    assert final.status == ENDED and final.expired + final.succeeded == 200
    assert final.succeeded == late[0]


async def test_racing_cancels_count_once(open_another: StoreFactory) -> None:
    a, b = await open_another(), await open_another()
    batch = await make_batch(a, 300)
    running = await b.claim("w1", 40, now_us(), now_us() + HOUR)
    await asyncio.gather(
        a.cancel_batch(batch.seq, now_us()),
        b.cancel_batch(batch.seq, now_us()),
        a.cancel_batch(batch.seq, now_us()),
        b.complete("w1", [done(j) for j in running[:20]], now_us()),
    )
    mid = await check_consistent(a, batch)
    assert (mid.status, mid.canceled, mid.succeeded, mid.processing) == (CANCELING, 260, 20, 20)
    _, ended = await b.complete("w1", [done(j) for j in running[20:]], now_us())
    assert ended == [batch.id]
    assert (await check_consistent(b, batch)).status == ENDED


async def test_racing_completions_and_reaping(open_another: StoreFactory) -> None:
    """Two workers finish a batch while a third process reaps lapsed leases and requeues them."""
    a, b, c = await open_another(), await open_another(), await open_another()
    batch = await make_batch(a, 400)

    async def worker(store: Store, owner: str, lease: int) -> None:
        while (await store.get_batch(batch.id)).status != ENDED:  # type: ignore[union-attr]
            jobs = await store.claim(owner, 30, now_us(), now_us() + lease)
            await asyncio.sleep(0.002)
            await store.complete(owner, [done(j) for j in jobs], now_us())

    async def reaper() -> None:
        while (await c.get_batch(batch.id)).status != ENDED:  # type: ignore[union-attr]
            await c.reap_leases(now_us())
            await asyncio.sleep(0.001)

    # Worker "a" holds its leases for no time at all: the reaper hands its jobs to "b" while "a"
    # is still running them, and "a"'s completions must then be refused.
    await asyncio.wait_for(asyncio.gather(worker(a, "a", 0), worker(b, "b", HOUR), reaper()), 60)
    final = await check_consistent(a, batch)
    assert (final.status, final.succeeded) == (ENDED, 400)


async def test_racing_archive_and_delete(open_another: StoreFactory) -> None:
    a, b = await open_another(), await open_another()
    batches = [await make_batch(a, 3) for _ in range(4)]
    for batch in batches:
        await a.cancel_batch(batch.seq, now_us())
    later = now_us() + HOUR
    first, second, _ = await asyncio.gather(
        a.archive_due(later, later), b.archive_due(later, later), b.delete_batch(batches[0].seq)
    )
    assert len(first) + len(second) == len(set(first + second))
    assert set(first + second) <= {b.id for b in batches}
    for batch in batches[1:]:
        assert (await a.get_batch(batch.id)).archived_at == later  # type: ignore[union-attr]


async def test_dispatcher_writes_one_outcome_per_request(store: Store) -> None:
    """A request whose lease lapsed can run twice in one process; only one outcome is written."""
    from msgbatch.backends.router import Router
    from msgbatch.engine.dispatcher import Dispatcher

    batch = await make_batch(store, 2)
    dispatcher = Dispatcher(store, Router([], None), owner="w1")
    jobs = await claim_all(store, "w1")
    dispatcher._done = [done(jobs[0]), done(jobs[0], ERRORED), done(jobs[1])]
    await dispatcher._flush()
    assert dispatcher._done == []
    final = await check_consistent(store, batch)
    assert (final.status, final.succeeded, final.errored) == (ENDED, 2, 0)
