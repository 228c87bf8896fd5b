"""The dispatcher: claim requests under a lease, run them on their backend, record outcomes in groups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from msgbatch.backends.base import CallContext, RequestCanceled, request_canceled
from msgbatch.backends.router import Router
from msgbatch.clock import now_us
from msgbatch.config import Settings
from msgbatch.errors import RESULT_ERROR_TYPES, MsgbatchError, error_body
from msgbatch.ids import new_request_id
from msgbatch.metrics import Metrics
from msgbatch.models import CANCELED, ERRORED, EXPIRED, SUCCEEDED, Batch, Job, Outcome
from msgbatch.store.base import Store
from msgbatch.validation import validate_params

log = logging.getLogger("msgbatch.dispatcher")

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def result_line(custom_id: str, result: bytes) -> bytes:
    # custom_id matched ^[a-zA-Z0-9_-]{1,64}$ at create: no escaping needed.
    return b'{"custom_id":"' + custom_id.encode() + b'","result":' + result + b"}"


def succeeded_line(custom_id: str, message: dict[str, Any]) -> bytes:
    return result_line(custom_id, b'{"type":"succeeded","message":' + _encode(message) + b"}")


def errored_line(custom_id: str, error_type: str, message: str) -> bytes:
    if error_type not in RESULT_ERROR_TYPES:
        # An HTTP-only type (request_too_large) would fail the SDK's validation of the line.
        error_type = "invalid_request_error" if error_type == "request_too_large" else "api_error"
    envelope = error_body(error_type, message, new_request_id())
    # The spec documents' examples read `result.error.message`; the SDK's ErrorResponse keeps the
    # message one level down but allows extra keys, so repeating it there makes both spellings work.
    envelope = envelope[:-1] + b',"message":' + _encode(message) + b"}"
    return result_line(custom_id, b'{"type":"errored","error":' + envelope + b"}")


_CANCELED = b'{"type":"canceled"}'
_EXPIRED = b'{"type":"expired"}'


class Dispatcher:
    def __init__(
        self,
        store: Store,
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
        self.store = store
        self.strict_batch_params = strict_batch_params
        self.router = router
        self.concurrency = concurrency
        self.lease_us = int(lease_seconds * 1_000_000)
        self.poll_interval = poll_interval
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.flush_interval = flush_interval
        self.flush_max = flush_max
        self.claim_max = claim_max
        self.on_ended: list[Callable[[list[str]], None]] = []

        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._expiring: set[int] = set()
        self._done: list[Outcome] = []
        self._canceled: set[int] = set()
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._flushed = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self.metrics = metrics or Metrics()
        self.metrics.watch_dispatcher(
            in_flight=lambda: len(self._running), queued=self._queue.qsize, unwritten=lambda: len(self._done)
        )
        self.metrics.before_render.append(self._report_limits)

    @classmethod
    def from_settings(
        cls, store: Store, router: Router, settings: Settings, *, metrics: Metrics | None = None
    ) -> Dispatcher:
        """The dispatcher of `serve` and of `worker` alike."""
        return cls(
            store,
            router,
            # Enough slots for every backend's own limit, so a freed backend slot is refilled at once.
            concurrency=router.dispatch_concurrency(settings.concurrency),
            lease_seconds=settings.lease_seconds,
            poll_interval=settings.poll_interval,
            metrics=metrics,
            strict_batch_params=settings.strict_batch_params,
        )

    def _report_limits(self) -> None:
        # An adaptive limiter knows its current limit; a plain backend runs up to the dispatcher's.
        for backend in self.router.backends:
            limit = backend.concurrency_limit
            self.metrics.set_backend_limit(backend.name, limit if limit is not None else self.concurrency)

    # -- signals from the manager ------------------------------------------------------------

    def wake(self, _batch: Batch | None = None) -> None:
        self._wake.set()

    def batch_canceled(self, batch: Batch) -> None:
        self._canceled.add(batch.seq)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # New work and cancels from other processes (PostgreSQL); a no-op for a single-process store.
        await self.store.listen(self.wake, self._canceled.add)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="msgbatch-claim"),
            asyncio.create_task(self._flush_loop(), name="msgbatch-flush"),
            asyncio.create_task(self._renew_loop(), name="msgbatch-renew"),
            asyncio.create_task(self._expiry_loop(), name="msgbatch-expiry"),
        ]
        self._workers = [
            asyncio.create_task(self._worker(), name=f"msgbatch-worker-{i}") for i in range(self.concurrency)
        ]
        log.info("dispatcher.started owner=%s concurrency=%d", self.owner, self.concurrency)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let running requests finish within `grace`, hand the rest back."""
        self._stopping = True
        self._wake.set()
        self._slot.set()
        unstarted = []
        while not self._queue.empty():
            unstarted.append(self._queue.get_nowait().id)
        if self._running:
            deadline = asyncio.get_running_loop().time() + grace
            while self._running and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        abandoned = list(self._running)
        self._running.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._flush()
        with contextlib.suppress(Exception):
            if unstarted or abandoned:
                await self.store.release(self.owner, unstarted + abandoned)
        log.info(
            "dispatcher.stopped owner=%s released=%d unfinished=%d",
            self.owner,
            len(unstarted),
            len(abandoned),
        )

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until no work is claimed, queued or waiting to be written (tests, benchmarks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running or not self._queue.empty() or self._done:
            if loop.time() > deadline:
                raise TimeoutError("dispatcher did not drain")
            await asyncio.sleep(0.01)

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        low_water = max(1, self.concurrency // 4)
        while not self._stopping:
            # Outcomes the store has not taken yet count against the slots beyond one flush's
            # worth: when writes stall, stop leasing more work than can be recorded.
            unwritten = max(0, len(self._done) - self.flush_max)
            free = self.concurrency - len(self._running) - self._queue.qsize() - unwritten
            if free < low_water and not (free > 0 and self._queue.empty()):
                self._slot.clear()
                await self._slot.wait()
                continue
            self._wake.clear()
            now = now_us()
            try:
                jobs = await self.store.claim(self.owner, min(free, self.claim_max), now, now + self.lease_us)
            except Exception:
                log.exception("dispatcher.claim_failed owner=%s", self.owner)
                await asyncio.sleep(self.poll_interval)
                continue
            for job in jobs:
                self._queue.put_nowait(job)
            if not jobs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    # -- running -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        queue = self._queue
        task = asyncio.current_task()
        assert task is not None
        while True:
            job = await queue.get()
            self._running[job.id] = (job, task)
            try:
                outcome = await self._run(job)
            except asyncio.CancelledError:
                if self._stopping or job.id not in self._expiring:
                    raise
                # The expiry watcher stopped this request: its batch's time is up.
                self._expiring.discard(job.id)
                task.uncancel()
                outcome = Outcome(job.id, job.batch, EXPIRED, result_line(job.custom_id, _EXPIRED))
            except Exception as exc:  # a bug must cost one request, not the worker
                log.exception("dispatcher.run_failed request=%d", job.id)
                outcome = Outcome(job.id, job.batch, ERRORED, errored_line(job.custom_id, "api_error", str(exc)))
            self.metrics.finished(job, outcome)
            self._done.append(outcome)
            # pop: a lapsed lease may have brought the same request back to this process meanwhile
            self._running.pop(job.id, None)
            if len(self._done) >= self.flush_max:
                self._flush_now.set()
            self._flushed.set()
            self._slot.set()

    async def _run(self, job: Job) -> Outcome:
        now = now_us()
        if job.batch in self._canceled:
            return Outcome(job.id, job.batch, CANCELED, result_line(job.custom_id, _CANCELED))
        if now >= job.expires_at:
            return Outcome(job.id, job.batch, EXPIRED, result_line(job.custom_id, _EXPIRED))
        try:
            params = _decode(job.params)
        except (msgspec.DecodeError, RecursionError) as exc:
            return self._errored(job, "invalid_request_error", f"params: {exc}")
        context = CallContext(betas=tuple(job.betas.split(",")) if job.betas else ())
        problem = validate_params(params, strict=self.strict_batch_params, version=context.anthropic_version)
        if problem is not None:
            return self._errored(job, "invalid_request_error", problem)
        model = params["model"]
        backend = self.router.route(model)
        if backend is None:
            return self._errored(job, "not_found_error", f"model: {model}")
        # A backend that holds requests back (the limiter) drops them once their batch is canceled.
        request_canceled.set(lambda: job.batch in self._canceled)
        name, started = backend.name, time.perf_counter()
        try:
            message = await backend.create_message(params, context)
        except RequestCanceled:
            return Outcome(job.id, job.batch, CANCELED, result_line(job.custom_id, _CANCELED))
        except MsgbatchError as exc:
            self.metrics.backend_call(job, name, started, exc.type)
            retry = backend.retry
            if exc.retryable and job.attempts < retry.max_attempts:
                not_before = now_us() + int(retry.delay(job.attempts, exc.retry_after) * 1_000_000)
                # A retry due past the expiry waits for it instead, and ends `expired`, not `errored`.
                return Outcome(job.id, job.batch, None, not_before=min(not_before, job.expires_at))
            return self._errored(job, exc.result_type, exc.message)
        self.metrics.backend_call(job, name, started, "ok")
        return Outcome(job.id, job.batch, SUCCEEDED, succeeded_line(job.custom_id, message))

    @staticmethod
    def _errored(job: Job, error_type: str, message: str) -> Outcome:
        return Outcome(job.id, job.batch, ERRORED, errored_line(job.custom_id, error_type, message))

    # -- writing -----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            self._flushed.clear()
            if not self._done:
                await self._flushed.wait()
            # Let completions gather for a moment: one transaction per group, not per result.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.flush_interval)
            self._flush_now.clear()
            try:
                await self._flush()
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
        try:
            _, ended = await self.store.complete(self.owner, outcomes, now_us())
        except BaseException:
            self._done[:0] = outcomes  # keep them for the next try; leases still hold
            raise
        self._slot.set()  # written outcomes no longer hold back claiming
        if ended:
            for callback in self.on_ended:
                callback(ended)
        for batch_id in ended:
            await self._log_ended(batch_id)

    async def _log_ended(self, batch_id: str) -> None:
        batch = None
        with contextlib.suppress(Exception):
            batch = await self.store.get_batch(batch_id)
        if batch is None:
            log.info("batch.ended id=%s", batch_id)
            return
        if batch.cancel_initiated_at is not None:
            reason = "canceled"
        elif batch.expired and (batch.ended_at or 0) >= batch.expires_at:
            reason = "expired"
        else:
            reason = "completed"
        log.info(
            "batch.ended id=%s reason=%s succeeded=%d errored=%d canceled=%d expired=%d",
            batch_id,
            reason,
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

    async def _renew_loop(self) -> None:
        interval = self.lease_us / 1_000_000 / 3
        while True:
            await asyncio.sleep(interval)
            if self._running or self._queue.qsize() or self._done:
                try:
                    await self.store.renew_leases(self.owner, now_us() + self.lease_us)
                except Exception:
                    log.exception("dispatcher.renew_failed owner=%s", self.owner)
