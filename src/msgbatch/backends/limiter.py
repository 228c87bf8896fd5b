"""Adaptive concurrency: a backend that wraps another and keeps at most `limit` requests in flight.

The limit starts at the configured maximum. When the upstream signals overload (429, 503, 529,
a 504 or a timeout) it is cut multiplicatively — once per generation of requests, so a burst of
failures from requests that were all sent under the old limit counts once — and every success
grows it additively (+1 per `limit` successes, about one step per round trip) back up to the
maximum. A small server is neither hammered nor left idle; a big one runs at the configured
limit. An overload answer with a `retry-after` also holds back every request of this backend
until then (at most `max_pause` seconds; the failed request itself waits in the store). Requests
beyond the limit wait here, first come first served; one whose batch was canceled while it
waited is dropped before it is sent (`RequestCanceled`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from msgbatch.backends.base import Backend, CallContext, RequestCanceled, request_canceled
from msgbatch.backends.http import is_overload
from msgbatch.backends.retry import RetryPolicy
from msgbatch.errors import MsgbatchError
from msgbatch.turns import wait_turn

__all__ = ["AdaptiveLimiter"]

log = logging.getLogger("msgbatch.backends")


class AdaptiveLimiter:
    def __init__(
        self,
        inner: Backend,
        max_limit: int,
        *,
        min_limit: int = 1,
        backoff: float = 0.7,
        adaptive: bool = True,
        retry: RetryPolicy | None = None,
        max_pause: float = 60.0,
    ) -> None:
        if max_limit < 1 or not 1 <= min_limit <= max_limit:
            raise ValueError("limits must satisfy 1 <= min_limit <= max_limit")
        if not 0 < backoff < 1:
            raise ValueError("backoff must be between 0 and 1")
        self.inner = inner
        self.name = inner.name
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.backoff = backoff
        self.adaptive = adaptive
        self.retry = retry or inner.retry
        self.max_pause = max_pause
        self.paused_until = 0.0  # loop time before which nothing is sent
        self.in_flight = 0
        self._limit = float(max_limit)
        self._epoch = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    # -- what metrics read -------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return max(self.min_limit, int(self._limit))

    @property
    def concurrency_limit(self) -> int:
        return self.limit

    @property
    def max_concurrency(self) -> int:
        return self.max_limit

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    # -- the Backend interface ---------------------------------------------------------------

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._limited(lambda: self.inner.create_message(params, context))

    async def create_chat_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._limited(lambda: self.inner.create_chat_completion(body, context))

    async def create_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._limited(lambda: self.inner.create_completion(body, context))

    async def create_embedding(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._limited(lambda: self.inner.create_embedding(body, context))

    async def _limited(self, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run one call of the inner backend within the limit, whatever endpoint it answers."""
        await self._acquire()
        try:
            loop = asyncio.get_running_loop()
            pause = self.paused_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            if request_canceled.get()():
                raise RequestCanceled()
            epoch = self._epoch
            try:
                message = await call()
            except MsgbatchError as exc:
                if is_overload(exc):
                    if exc.retry_after:
                        until = loop.time() + min(exc.retry_after, self.max_pause)
                        self.paused_until = max(self.paused_until, until)
                    if self.adaptive:
                        self._overloaded(epoch, exc)
                raise
            if self.adaptive and self._limit < self.max_limit:
                self._limit = min(float(self.max_limit), self._limit + 1.0 / self._limit)
                self._grant()
            return message
        finally:
            self._release()

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- internals ---------------------------------------------------------------------------

    def _overloaded(self, epoch: int, exc: MsgbatchError) -> None:
        if epoch != self._epoch:
            return  # sent before the last cut: that cut already answered this overload
        before = self.limit
        self._limit = max(float(self.min_limit), self._limit * self.backoff)
        self._epoch += 1
        if self.limit != before:
            log.info("backend.limit name=%s limit=%d was=%d reason=%s", self.name, self.limit, before, exc.type)

    async def _acquire(self) -> None:
        if not self._waiters and self.in_flight < self.limit:
            self.in_flight += 1
            return
        await wait_turn(self._waiters, self._release)

    def _release(self) -> None:
        """A slot given back (a call ended, or a waiter granted one was cancelled): to the next."""
        self.in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.limit:
            waiter = waiters.popleft()
            if waiter.done():
                continue
            self.in_flight += 1
            waiter.set_result(None)

    def __repr__(self) -> str:
        return f"AdaptiveLimiter({self.inner!r}, limit={self.limit}/{self.max_limit})"
