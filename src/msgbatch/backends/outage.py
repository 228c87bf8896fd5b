"""Riding out an upstream outage: a backend that wraps another and pauses it while it is down.

A model server that restarts (vLLM takes 75-105 s) refuses connections meanwhile. Retrying each
request on its own would spend its whole attempt budget in seconds and fail it for good, while
nothing tells the backend's other requests to wait. Instead:

- the first refused connection (or `timeouts_to_trip` timeouts in a row with no answer between)
  marks the backend down, logged once at WARNING with what fails and since when;
- while it is down, its requests wait here, and one of them at a time is sent as a probe, with
  exponential backoff between probes (`probe_delay` up to `max_probe_delay`);
- the first HTTP answer of any kind (an error status is an answer: the server is up) marks it up
  again, logged once at INFO, and every waiting request goes; a connection cut mid-answer says
  neither.

A refused connection spends no attempt: the request waits as long as its batch lives (the
dispatcher's expiry watcher ends it `expired`; a canceled batch's waiting requests are dropped).
A call that timed out still spends its attempt (the request itself may be what is slow), so one
that always times out runs out of its budget as before, while the others wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from msgbatch.backends.base import Backend, CallContext, RequestCanceled, request_canceled
from msgbatch.errors import GatewayTimeoutError, MsgbatchError, UpstreamUnreachableError

__all__ = ["OutageGuard"]

log = logging.getLogger("msgbatch.backends")


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class OutageGuard:
    def __init__(
        self,
        inner: Backend,
        *,
        timeouts_to_trip: int = 3,
        probe_delay: float = 0.5,
        max_probe_delay: float = 2.0,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.retry = inner.retry
        self.timeouts_to_trip = timeouts_to_trip
        self.probe_delay = probe_delay
        self.max_probe_delay = max_probe_delay
        self.down_since: float | None = None  # wall clock
        self._reason = ""
        self._timeouts = 0
        self._delay = probe_delay
        self._next_probe = 0.0  # loop time
        self._up = asyncio.Event()
        self._up.set()
        self._probing = asyncio.Lock()

    @property
    def max_concurrency(self) -> int | None:
        return self.inner.max_concurrency

    @property
    def concurrency_limit(self) -> int | None:
        return self.inner.concurrency_limit

    @property
    def available(self) -> bool:
        return self.down_since is None

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._guarded(lambda: self.inner.create_message(params, context))

    async def create_chat_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._guarded(lambda: self.inner.create_chat_completion(body, context))

    async def create_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._guarded(lambda: self.inner.create_completion(body, context))

    async def create_embedding(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._guarded(lambda: self.inner.create_embedding(body, context))

    async def _guarded(self, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """One call of the inner backend, whatever endpoint it answers, waiting out an outage."""
        while True:
            probe = False
            if self.down_since is not None:
                probe = await self._wait_for_turn()
            try:
                answer = await call()
            except UpstreamUnreachableError as exc:
                self._trip(exc.message)
                if probe:
                    self._probe_failed()
                continue  # wait for the upstream, without spending an attempt
            except GatewayTimeoutError as exc:
                if exc.upstream_status is None:
                    # Timed out here: the call may be the slow one, so it spends its attempt; the
                    # backend is paused once calls time out `timeouts_to_trip` times in a row.
                    self._timeouts += 1
                    if self._timeouts >= self.timeouts_to_trip:
                        self._trip(f"{self._timeouts} calls in a row timed out")
                    if probe:
                        self._probe_failed()
                else:
                    self._recovered()
                raise
            except MsgbatchError as exc:
                if exc.upstream_status is not None:
                    self._recovered()  # an HTTP answer, even an error, means the server is there
                # A connection cut mid-answer (the server going down as it answered) says neither.
                raise
            finally:
                if probe:
                    self._probing.release()
            self._recovered()
            return answer

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- internals ---------------------------------------------------------------------------

    def _trip(self, reason: str) -> None:
        if self.down_since is not None:
            return
        self.down_since = time.time()
        self._reason = reason
        self._delay = self.probe_delay
        self._next_probe = asyncio.get_running_loop().time() + self._delay
        self._up.clear()
        log.warning(
            "backend.down name=%s reason=%r since=%s: its requests wait, one probe at a time",
            self.name,
            reason,
            _iso(self.down_since),
        )

    async def _wait_for_turn(self) -> bool:
        """Until the backend is up again (False), or it is this request's turn to probe it (True:
        the probe lock is held, and the caller releases it)."""
        loop = asyncio.get_running_loop()
        while self.down_since is not None:
            if request_canceled.get()():
                raise RequestCanceled()
            wait = self._next_probe - loop.time()
            if wait <= 0 and not self._probing.locked():
                await self._probing.acquire()
                if self.down_since is not None:
                    return True
                self._probing.release()
                break
            up = asyncio.ensure_future(self._up.wait())
            try:
                await asyncio.wait({up}, timeout=max(wait, 0.05))
            finally:
                up.cancel()
        if request_canceled.get()():
            raise RequestCanceled()
        return False

    def _probe_failed(self) -> None:
        self._delay = min(self._delay * 2, self.max_probe_delay)
        self._next_probe = asyncio.get_running_loop().time() + self._delay

    def _recovered(self) -> None:
        self._timeouts = 0
        if self.down_since is None:
            return
        log.info("backend.up name=%s down_for=%.1fs (was: %s)", self.name, time.time() - self.down_since, self._reason)
        self.down_since = None
        self._up.set()

    def __repr__(self) -> str:
        return f"OutageGuard({self.inner!r})"
