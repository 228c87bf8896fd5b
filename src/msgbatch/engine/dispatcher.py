"""The dispatcher: claim requests under a lease, run them on their backend, record outcomes in groups.

start()      listen for wake-ups; start the side loops (claim, flush, renew, expiry) under a
             supervisor, and `concurrency` runners that take claimed requests from a queue
claim loop   leases requests while a backend has free slots (engine/slots.py), shared fairly across
             workspaces and batches by the manager's rule (msgbatch/fairness.py)
runner       one request at a time: check, route, call the backend, make its outcome (what a
             request is -- Messages params or an OpenAI endpoint's body -- is its endpoint's:
             msgbatch/endpoints.py)
flush loop   writes outcomes in groups (one transaction per few hundred), conditional on the lease
renew loop   extends the leases of exactly the requests this process holds
expiry loop  stops a request still running when its batch expires
abort loop   stops the requests running for a batch canceled with abort_running (hard cancel,
             fail-fast), should this process have missed the wake-up that says so
stop(grace)  stops claiming, lets running requests finish within `grace`, hands back the rest
run_burst()  runs until nothing is claimable, running or unwritten, then stops (tests, tools)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec

from msgbatch.backends.base import CallContext, RequestCanceled, request_canceled
from msgbatch.backends.router import Router
from msgbatch.clock import now_us
from msgbatch.config import Settings
from msgbatch.endpoints import ENDPOINTS
from msgbatch.engine.jobqueue import JobQueue
from msgbatch.engine.slots import BackendSlots
from msgbatch.engine.supervisor import Supervisor
from msgbatch.errors import MsgbatchError, ServiceUnavailableError
from msgbatch.fairness import Slots
from msgbatch.manager import BatchManager
from msgbatch.metrics import Metrics
from msgbatch.models import CANCELED, ERRORED, EXPIRED, SUCCEEDED, Batch, Job, Outcome
from msgbatch.results import canceled_line, expired_line

log = logging.getLogger("msgbatch.dispatcher")

_decode = msgspec.json.decode
_MAX_CONTEXTS = 10_000


class Dispatcher:
    def __init__(
        self,
        manager: BatchManager,
        router: Router,
        *,
        concurrency: int = 256,
        lease_seconds: float = 60.0,
        poll_interval: float = 0.5,
        owner: str | None = None,
        flush_interval: float = 0.005,
        flush_max: int = 1000,
        claim_max: int = 1000,
        metrics: Metrics | None = None,
        strict_batch_params: bool = False,
    ) -> None:
        self.manager = manager
        self.strict_batch_params = strict_batch_params
        self.router = router
        self.concurrency = concurrency
        self.lease_us = int(lease_seconds * 1_000_000)
        self.poll_interval = poll_interval
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.flush_interval = flush_interval
        self.flush_max = flush_max
        self.claim_max = claim_max
        self.metrics = metrics or Metrics()
        self.supervisor = Supervisor(self.owner)

        self._slots = BackendSlots(router, concurrency)
        self._queue = JobQueue(spawn=self._spawn_runner)
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._expiring: set[int] = set()
        self._aborting: set[int] = set()  # running requests stopped by a hard cancel
        self._done: list[Outcome] = []
        self._writing: list[Outcome] = []  # outcomes the store is taking now
        self._canceled: set[int] = set()
        self._contexts: dict[int, CallContext] = {}
        self._wake = asyncio.Event()  # maybe something to claim
        self._slot = asyncio.Event()  # a slot freed, or outcomes written
        self._flush_now = asyncio.Event()
        self._flushed = asyncio.Event()  # outcomes waiting to be written
        self._changed = asyncio.Event()  # anything moved (set only while something watches)
        self._watchers = 0
        self._stopping = False
        self._runners: list[asyncio.Task[None]] = []
        self.metrics.watch_dispatcher(
            in_flight=lambda: len(self._running), queued=self._queue.__len__, unwritten=lambda: len(self._done)
        )
        self.metrics.before_render.append(self._report_limits)

    @classmethod
    def from_settings(
        cls, manager: BatchManager, router: Router, settings: Settings, *, metrics: Metrics | None = None
    ) -> Dispatcher:
        """The dispatcher of `serve` and of `worker` alike."""
        return cls(
            manager,
            router,
            # Enough slots for every backend's own limit, so a freed backend slot is refilled at once.
            concurrency=router.dispatch_concurrency(settings.concurrency),
            lease_seconds=settings.lease_seconds,
            poll_interval=settings.poll_interval,
            metrics=metrics,
            strict_batch_params=settings.strict_batch_params,
        )

    def _report_limits(self) -> None:
        for backend in self.router.backends:
            limit = backend.concurrency_limit
            self.metrics.set_backend_limit(backend.name, limit if limit is not None else self.concurrency)

    # -- signals -----------------------------------------------------------------------------

    def wake(self, _batch: Batch | None = None) -> None:
        self._wake.set()
        self._slot.set()

    def batch_canceled(self, batch: Batch) -> None:
        self._canceled.add(batch.seq)
        if batch.abort_running:
            self.abort(batch.seq)

    def on_notice(self, payload: str) -> None:
        """A wake-up from another process: `work`, `cancel:SEQ` or `abort:SEQ` (a hard cancel)."""
        kind, _, seq = payload.partition(":")
        if kind in ("cancel", "abort") and seq.isdigit():
            self._canceled.add(int(seq))
            if kind == "abort":
                self.abort(int(seq))
        else:
            self.wake()

    def abort(self, seq: int) -> None:
        """Stop this batch's running requests: their upstream calls are cut (the connection
        closed), and they end `canceled`."""
        self._canceled.add(seq)
        for job_id, (job, task) in list(self._running.items()):
            if job.batch == seq and job_id not in self._aborting and job_id not in self._expiring:
                self._aborting.add(job_id)
                task.cancel()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        await self.manager.store.listen(self.on_notice)
        for name, loop in (
            ("claim", self._claim_loop),
            ("flush", self._flush_loop),
            ("renew", self._renew_loop),
            ("expiry", self._expiry_loop),
            ("abort", self._abort_loop),
        ):
            self.supervisor.start(name, loop)
        self._runners = []  # made as work comes: `_spawn_runner`
        log.info("dispatcher.started owner=%s concurrency=%d", self.owner, self.concurrency)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let running requests finish within `grace`, hand the rest back."""
        self._stopping = True
        self._wake.set()
        self._slot.set()
        unstarted = [job.id for job in self._queue.take_all()]
        if self._running:
            # The queue is empty now: the runners finish what they run, and take nothing new.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._until(lambda: not self._running)
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners = []
        self._queue.reset()
        abandoned = list(self._running)
        self._running.clear()
        await self.supervisor.stop()
        with contextlib.suppress(Exception):
            await self._flush()
        with contextlib.suppress(Exception):
            await self.manager.release(self.owner, unstarted + abandoned)
        self._slots.clear()
        log.info("dispatcher.stopped owner=%s released=%d unfinished=%d", self.owner, len(unstarted), len(abandoned))

    async def run_burst(self, timeout: float = 60.0) -> None:
        """Run until nothing is claimable, running or unwritten (waiting out retries that come due
        meanwhile), then stop. Tests use it instead of sleeping."""
        await self.start()
        try:
            async with asyncio.timeout(timeout):
                await self._until_drained()
        finally:
            await self.stop(grace=0)

    async def _until_drained(self) -> None:
        while True:
            await self._until(self._quiet)
            claimable, waiting, next_due = await self.manager.queue_summary(now_us())
            if not claimable and not waiting:
                if self._quiet():
                    return
                continue
            if not claimable and next_due is not None:
                await asyncio.sleep(min(max(0.0, (next_due - now_us()) / 1e6), self.poll_interval))
            self.wake()
            self._changed.clear()
            with self._watching(), contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._changed.wait()

    def _quiet(self) -> bool:
        return not (self._running or self._queue or self._done)

    async def _until(self, condition: Any) -> None:
        with self._watching():
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    @contextlib.contextmanager
    def _watching(self) -> Iterator[None]:
        """While something waits on `_changed`: the hot paths set it only then."""
        self._watchers += 1
        try:
            yield
        finally:
            self._watchers -= 1

    def _held(self) -> list[int]:
        """Every request leased to this process: queued, running, or its outcome not written yet."""
        held = set(self._slots.held_ids())
        held.update(o.job for o in self._done)
        held.update(o.job for o in self._writing)
        return sorted(held)

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until nothing is claimed, queued or waiting to be written (tests, benchmarks)."""
        async with asyncio.timeout(timeout):
            await self._until(self._quiet)

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        slots = self._slots
        while not self._stopping:
            if self._wake.is_set():
                self._wake.clear()
                slots.wet()
            # Outcomes the store has not taken yet count against the slots beyond one flush's
            # worth: when writes stall, stop leasing more work than can be recorded.
            unwritten = max(0, len(self._done) - self.flush_max)
            wanted = slots.wanted(busy=unwritten, queue_empty=not self._queue, most=self.claim_max)
            if not wanted:
                self._slot.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(slots.dry_for()):
                        await self._slot.wait()
                continue
            now = now_us()
            try:
                jobs = await self.manager.claim(
                    self.owner, Slots(wanted, slots.pool_of, slots.held, slots.served), now, now + self.lease_us
                )
            except ServiceUnavailableError:  # the database is away; the store said so once
                await asyncio.sleep(self.poll_interval)
                continue
            except Exception:
                log.exception("dispatcher.claim_failed owner=%s", self.owner)
                await asyncio.sleep(self.poll_interval)
                continue
            slots.claimed(jobs, wanted, dry_until=time.monotonic() + self.poll_interval)
            self._queue.put(jobs)
            if jobs and self._watchers:
                self._changed.set()

    # -- running -----------------------------------------------------------------------------

    def _spawn_runner(self) -> bool:
        if self._stopping or len(self._runners) >= self.concurrency:
            return False
        self._runners.append(asyncio.create_task(self._runner(), name=f"msgbatch-runner-{len(self._runners)}"))
        return True

    async def _runner(self) -> None:
        queue = self._queue
        task = asyncio.current_task()
        assert task is not None
        # A backend that holds requests back (the limiter) drops them once their batch is canceled.
        # Set once per runner, not per request: a context variable's set costs a copy of the context.
        batch_of_job = [0]
        request_canceled.set(lambda: batch_of_job[0] in self._canceled)
        job = await queue.get(first=True)
        while True:
            batch_of_job[0] = job.batch
            self._running[job.id] = (job, task)
            if self._watchers:
                self._changed.set()
            try:
                outcome = await self._run(job)
            except asyncio.CancelledError:
                if self._stopping or (job.id not in self._expiring and job.id not in self._aborting):
                    raise
                task.uncancel()
                if job.id in self._expiring:
                    # The expiry watcher stopped this request: its batch's time is up.
                    outcome = Outcome(job.id, job.batch, EXPIRED, expired_line(job.custom_id))
                else:  # a hard cancel stopped it
                    outcome = Outcome(job.id, job.batch, CANCELED, canceled_line(job.custom_id))
                self._expiring.discard(job.id)
                self._aborting.discard(job.id)
            except Exception as exc:  # a bug must cost one request, not the runner
                log.exception("dispatcher.run_failed request=%d", job.id)
                outcome = self._errored(job, "api_error", str(exc))
            self.metrics.finished(job, outcome)
            self._slots.done(job.id)
            self._done.append(outcome)
            # pop: a lapsed lease may have brought the same request back to this process meanwhile
            self._running.pop(job.id, None)
            if len(self._done) >= self.flush_max:
                self._flush_now.set()
            self._flushed.set()
            self._slot.set()
            if self._watchers:
                self._changed.set()
            job = await queue.get()

    def _context(self, job: Job) -> CallContext:
        context = self._contexts.get(job.batch)
        if context is None:
            headers: dict[str, str] = _decode(job.headers) if job.headers and job.headers != "{}" else {}
            version = headers.pop("anthropic-version", None)
            context = CallContext(
                betas=tuple(job.betas.split(",")) if job.betas else (), anthropic_version=version, extra_headers=headers
            )
            if len(self._contexts) >= _MAX_CONTEXTS:
                self._contexts.clear()
            self._contexts[job.batch] = context
        return context

    async def _run(self, job: Job) -> Outcome:
        now = now_us()
        if job.batch in self._canceled:
            return Outcome(job.id, job.batch, CANCELED, canceled_line(job.custom_id))
        if now >= job.expires_at:
            return Outcome(job.id, job.batch, EXPIRED, expired_line(job.custom_id))
        try:
            params = _decode(job.params)
        except (msgspec.DecodeError, RecursionError) as exc:
            return self._errored(job, "invalid_request_error", f"params: {exc}")
        context = self._context(job)
        endpoint = ENDPOINTS[job.endpoint]
        problem = endpoint.check(params, self.strict_batch_params, context.anthropic_version)
        if problem is not None:
            return self._errored(job, "invalid_request_error", problem)
        model = params["model"]
        backend = self.router.route(model)
        if backend is None:
            return self._errored(job, "not_found_error", f"model: {model}")
        started = time.perf_counter()
        try:
            answer = await endpoint.call(backend, params, context)
        except RequestCanceled:
            return Outcome(job.id, job.batch, CANCELED, canceled_line(job.custom_id))
        except MsgbatchError as exc:
            self.metrics.backend_call(job, backend.name, started, exc.type)
            retry = backend.retry
            if exc.retryable and job.attempts < retry.max_attempts:
                not_before = now_us() + int(retry.delay(job.attempts, exc.retry_after) * 1_000_000)
                # A retry due past the expiry waits for it instead, and ends `expired`, not `errored`.
                return Outcome(
                    job.id,
                    job.batch,
                    None,
                    not_before=min(not_before, job.expires_at),
                    error_type=exc.type,
                    backend=backend.name,
                )
            return self._errored(job, exc.result_type, exc.message, exc.upstream_status or exc.status, backend.name)
        self.metrics.backend_call(job, backend.name, started, "ok")
        line = endpoint.succeeded_line(job, answer)
        return Outcome(job.id, job.batch, SUCCEEDED, line, tokens=endpoint.tokens(answer), backend=backend.name)

    @staticmethod
    def _errored(job: Job, error_type: str, message: str, status: int | None = None, backend: str = "") -> Outcome:
        line = ENDPOINTS[job.endpoint].errored_line(job, error_type, message, status)
        return Outcome(job.id, job.batch, ERRORED, line, error_type=error_type, backend=backend)

    # -- writing -----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            self._flushed.clear()
            if not self._done:
                await self._flushed.wait()
            # Let completions gather for a moment: one transaction per group, not per result.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._flush_now.wait()
            self._flush_now.clear()
            try:
                await self._flush()
            except ServiceUnavailableError:  # kept, and written once the database is back
                await asyncio.sleep(self.poll_interval)
            except Exception:
                log.exception("dispatcher.flush_failed owner=%s", self.owner)
                await asyncio.sleep(self.poll_interval)

    async def _flush(self) -> None:
        if not self._done:
            return
        outcomes, self._done = self._done, []
        if len({o.job for o in outcomes}) < len(outcomes):
            # A request ran twice here (its lease lapsed and this process claimed it again): one
            # outcome per request, or the results' primary key would refuse the whole group.
            outcomes = list({o.job: o for o in reversed(outcomes)}.values())
        self._writing = outcomes
        try:
            ended = await self.manager.complete(self.owner, outcomes, now_us())
        except BaseException:
            self._done[:0] = outcomes  # keep them for the next try; leases still hold
            raise
        finally:
            self._writing = []
        self._slot.set()  # written outcomes no longer hold back claiming
        if self._watchers:
            self._changed.set()
        for batch_id in ended:
            await self._log_ended(batch_id)

    async def _log_ended(self, batch_id: str) -> None:
        batch = None
        with contextlib.suppress(Exception):
            batch = await self.manager.find(batch_id)
        if batch is None:
            log.info("batch.ended id=%s", batch_id)
            return
        log.info(
            "batch.ended id=%s reason=%s succeeded=%d errored=%d canceled=%d expired=%d",
            batch_id,
            batch.end_reason,
            batch.succeeded,
            batch.errored,
            batch.canceled,
            batch.expired,
        )

    async def _expiry_loop(self) -> None:
        """Nothing runs past its batch's expiry: by then the request is `expired` whatever happens.

        One watcher instead of a timeout around every request: that cost 5% of the dispatch time.
        """
        while True:
            await asyncio.sleep(min(self.poll_interval, 0.5))
            now = now_us()
            for job_id, (job, task) in list(self._running.items()):
                if now >= job.expires_at and job_id not in self._expiring:
                    self._expiring.add(job_id)
                    task.cancel()

    async def _abort_loop(self) -> None:
        """Where processes share the store, a hard cancel reaches the others by a wake-up that a
        lost connection can miss: look every second at the batches of the requests running here."""
        if self.manager.store.single_process:
            return  # the manager's callbacks reach this dispatcher directly
        while True:
            await asyncio.sleep(max(self.poll_interval, 1.0))
            running = {job.batch for job_id, (job, _) in self._running.items() if job_id not in self._aborting}
            try:
                aborting = await self.manager.aborting(sorted(running))
            except ServiceUnavailableError:
                continue  # the database is away; the store said so once
            for seq in aborting:
                self.abort(seq)

    async def _renew_loop(self) -> None:
        interval = self.lease_us / 1_000_000 / 3
        while True:
            await asyncio.sleep(interval)
            held = self._held()
            if held:
                try:
                    await self.manager.renew(self.owner, held, now_us() + self.lease_us)
                except ServiceUnavailableError:
                    pass  # the next renewal comes within a third of the lease
                except Exception:
                    log.exception("dispatcher.renew_failed owner=%s", self.owner)
