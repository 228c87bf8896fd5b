"""The dispatcher's job queue: FIFO, one wake-up on its way at a time, none lost to a cancel."""

from __future__ import annotations

import asyncio

import pytest

from msgbatch.engine.jobqueue import JobQueue
from msgbatch.models import Job


def jobs(*ids: int) -> list[Job]:
    return [Job(i, 1, f"c{i}", b"{}", "", "{}", 1 << 62, 1) for i in ids]


async def test_jobs_come_out_in_order_and_take_all_empties_it() -> None:
    queue = JobQueue()
    queue.put(jobs(1, 2, 3))
    assert len(queue) == 3
    assert (await queue.get()).id == 1
    assert [job.id for job in queue.take_all()] == [2, 3]
    assert len(queue) == 0 and not queue


async def test_runners_that_suspend_hand_on_one_job_each() -> None:
    """Runners whose calls suspend: every job gets its own runner, as with asyncio.Queue."""
    queue = JobQueue()
    started: list[tuple[int, int]] = []
    release = asyncio.Event()

    async def runner(n: int) -> None:
        while True:
            job = await queue.get()
            started.append((n, job.id))
            await release.wait()

    tasks = [asyncio.create_task(runner(n)) for n in range(4)]
    await asyncio.sleep(0)
    queue.put(jobs(1, 2, 3))
    for _ in range(10):
        await asyncio.sleep(0)
    assert sorted(job for _, job in started) == [1, 2, 3]
    assert len({n for n, _ in started}) == 3  # three runners, one job each
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_runner_that_does_not_suspend_takes_the_jobs_in_one_go() -> None:
    queue = JobQueue()
    ran: dict[int, list[int]] = {}

    async def runner(n: int) -> None:
        while True:
            job = await queue.get()
            ran.setdefault(n, []).append(job.id)

    tasks = [asyncio.create_task(runner(n)) for n in range(8)]
    await asyncio.sleep(0)
    queue.put(jobs(*range(100)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(i for ids in ran.values() for i in ids) == list(range(100))
    assert max(len(ids) for ids in ran.values()) == 100  # one runner, no wake-up per job
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_woken_runner_canceled_before_it_runs_passes_the_wake_up_on() -> None:
    queue = JobQueue()
    got: list[int] = []

    async def runner() -> None:
        got.append((await queue.get()).id)

    first = asyncio.create_task(runner())
    await asyncio.sleep(0)
    second = asyncio.create_task(runner())
    await asyncio.sleep(0)
    queue.put(jobs(7))  # wakes `first`...
    first.cancel()  # ...which is canceled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert got == [7]


async def test_a_canceled_idle_runner_leaves_no_waiter_behind() -> None:
    queue = JobQueue()
    task = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    queue.put(jobs(1))
    assert (await asyncio.wait_for(queue.get(), 1)).id == 1


async def test_runners_are_made_as_work_comes_up_to_the_limit() -> None:
    release = asyncio.Event()
    started: list[int] = []
    runners: list[asyncio.Task[None]] = []

    async def runner() -> None:
        job = await queue.get(first=True)
        while True:
            started.append(job.id)
            await release.wait()
            job = await queue.get()

    def spawn() -> bool:
        if len(runners) >= 3:
            return False
        runners.append(asyncio.create_task(runner()))
        return True

    queue = JobQueue(spawn)
    await asyncio.sleep(0)
    assert runners == []  # none before there is work
    queue.put(jobs(1, 2, 3, 4, 5))
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(runners) == 3 and sorted(started) == [1, 2, 3] and len(queue) == 2
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert sorted(started) == [1, 2, 3, 4, 5] and len(runners) == 3
    for task in runners:
        task.cancel()
    await asyncio.gather(*runners, return_exceptions=True)


async def test_after_its_runners_are_stopped_a_reset_queue_wakes_new_ones() -> None:
    """A runner made for a job but stopped before it ran (the dispatcher stopping) must not leave
    the queue waiting for it when the dispatcher starts again."""
    runners: list[asyncio.Task[None]] = []
    got: list[int] = []

    async def runner() -> None:
        while True:
            got.append((await queue.get(first=not got)).id)

    def spawn() -> bool:
        runners.append(asyncio.create_task(runner()))
        return True

    queue = JobQueue(spawn)
    queue.put(jobs(1))  # a runner is made...
    for task in runners:
        task.cancel()  # ...and stopped before it ever ran
    await asyncio.gather(*runners, return_exceptions=True)
    queue.take_all()
    queue.reset()
    runners.clear()
    queue.put(jobs(2))
    for _ in range(5):
        await asyncio.sleep(0)
    assert got == [2]
    for task in runners:
        task.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
