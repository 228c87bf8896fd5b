"""Backend slots: how many requests one dispatcher holds per backend, and how many to claim now.

A backend with a concurrency limit of its own (every HTTP backend: its `concurrency`, or the
adaptive limit below it) is a pool of its own; every other backend, and requests no backend will
take, share the pool `SHARED`, bounded by the dispatcher's `concurrency`. A dispatcher holds
(claimed, running or waiting to run) at most `limit + ahead` requests of a pool, `ahead` being a
quarter of the limit: enough that a freed slot is refilled at once from requests already claimed
(a claim takes a round trip to the store), few enough that a request waits in the backend's queue
at most a quarter of one request's time. Shares are decided by the claim (`msgbatch.fairness`),
when slots free, from what this process holds: the rest of the queue stays in the store, where
any batch, and any worker, can still get to it first.

A pool asks for more once `ahead / 2` of its slots are free (the shared pool: a quarter of
`concurrency`, or any free slot when nothing waits), so that claims come in groups. A pool whose
last claim found less than it asked for is "dry" until new work is announced, one of its requests
finishes (a workspace at its `max_in_flight_per_backend` may take one more), or the poll interval
passes.

Across workers: a backend's `concurrency` (and a workspace's `max_in_flight_per_backend`) is per
process, as the connections are; each worker shares its own slots by the same rule over the one
shared queue, so the split each worker makes is the split of their sum.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from msgbatch.backends.base import Backend
from msgbatch.backends.router import Router
from msgbatch.fairness import SHARED, Holdings
from msgbatch.models import Job

__all__ = ["SHARED", "BackendSlots"]


class BackendSlots:
    def __init__(self, router: Router, concurrency: int) -> None:
        self.router = router
        self.concurrency = concurrency
        self.by_pool: dict[str, int] = {}
        # Per request, as little as will do (this runs for every request): its pool and batch.
        self._of: dict[int, tuple[str, int]] = {}  # job id -> (pool, batch)
        self._by_batch: dict[tuple[str, int], int] = {}
        self._workspace_of: dict[int, str] = {}  # batch -> its workspace
        self._pools: dict[str, str] = {}  # model -> pool
        self._limited: dict[str, Backend] = {b.name: b for b in router.backends if b.max_concurrency is not None}
        self._dry: dict[str, float] = {}  # pool -> monotonic time until which it is not asked
        # (pool, workspace) -> slots granted per unit of weight: ties between whole slots (fairness.py)
        self.served: dict[tuple[str, str], float] = {}

    @property
    def held(self) -> Holdings:
        """What this process holds, per pool and workspace and per pool and batch (for a claim)."""
        holdings = Holdings()
        for (pool, seq), n in self._by_batch.items():
            holdings.add(pool, self._workspace_of.get(seq, ""), seq, n)
        if len(self._workspace_of) > 4 * len(self._by_batch) + 1000:  # batches no longer held
            held = {seq for _, seq in self._by_batch}
            self._workspace_of = {seq: ws for seq, ws in self._workspace_of.items() if seq in held}
        return holdings

    def pool_of(self, model: str) -> str:
        pool = self._pools.get(model)
        if pool is None:
            backend = self.router.route(model) if model else None
            pool = backend.name if backend is not None and backend.name in self._limited else SHARED
            if len(self._pools) < 10_000:
                self._pools[model] = pool
        return pool

    def _bounds(self, pool: str) -> tuple[int, int]:
        """(most to hold, least worth a claim) for a pool."""
        if pool == SHARED:
            return self.concurrency, max(1, self.concurrency // 4)
        backend = self._limited[pool]
        limit = backend.concurrency_limit or backend.max_concurrency or 1
        ahead = max(1, limit // 4)
        return limit + ahead, max(1, ahead // 2)

    def wanted(self, *, busy: int, queue_empty: bool, most: int) -> dict[str, int]:
        """Free slots per pool worth claiming now. `busy`: slots taken besides the requests held
        (results not written yet); `most`: the largest claim for one pool."""
        total_free = self.concurrency - len(self._of) - busy
        if total_free <= 0:
            return {}
        now = time.monotonic()
        wanted = {}
        for pool in (*self._limited, SHARED):
            if self._dry.get(pool, 0.0) > now:
                continue
            cap, step = self._bounds(pool)
            held = self.by_pool.get(pool, 0)
            free = min(cap - held, total_free, most)
            idle = held == 0 or (pool == SHARED and queue_empty)
            if free >= step or (free > 0 and idle):
                wanted[pool] = free
        return wanted

    def held_ids(self) -> Iterable[int]:
        """The requests held: claimed, and not done."""
        return self._of.keys()

    def claimed(self, jobs: list[Job], asked: dict[str, int], dry_until: float) -> None:
        """Count the jobs a claim brought; a pool that got less than it asked is dry until then."""
        # A claim's jobs come in runs of one batch and model: one key (and pool) per run.
        of = self._of
        keys: Counter[tuple[str, int]] = Counter()
        model, batch, key = "", -1, ("", -1)
        for job in jobs:
            if job.id in of:
                continue  # already held: its lease lapsed and this process claimed it again
            if job.batch != batch or job.model != model:
                model, batch = job.model, job.batch
                key = (self.pool_of(model), batch)
                self._workspace_of[batch] = job.workspace
            of[job.id] = key
            keys[key] += 1
        got: Counter[str] = Counter()
        by_batch = self._by_batch
        for key, n in keys.items():
            by_batch[key] = by_batch.get(key, 0) + n
            got[key[0]] += n
        for pool, n in got.items():
            self.by_pool[pool] = self.by_pool.get(pool, 0) + n
        for pool, n in asked.items():
            if got[pool] < n:
                self._dry[pool] = dry_until

    def done(self, job_id: int) -> None:
        """A held request finished (or goes back to the store): its slot is free. A dry pool may
        be asked again: what its workspaces hold changed, and with it what a cap allows them."""
        key = self._of.pop(job_id, None)  # (pool, batch): also the key of _by_batch
        if key is None:
            return
        self.by_pool[key[0]] -= 1
        left = self._by_batch[key] - 1
        if left:
            self._by_batch[key] = left
        else:
            del self._by_batch[key]
        if self._dry:
            self._dry.pop(key[0], None)

    def wet(self) -> None:
        """New work was announced: every pool may find some."""
        self._dry.clear()

    def dry_for(self) -> float | None:
        """Seconds until the first dry pool may be asked again (None: none is dry)."""
        if not self._dry:
            return None
        return max(0.0, min(self._dry.values()) - time.monotonic())

    def clear(self) -> None:
        for job_id in list(self._of):
            self.done(job_id)
        self._dry.clear()
