"""`MockBackend(handler)`: a backend made of one function, for tests (as httpx's MockTransport).

    backend = MockBackend(lambda params, context: simulate(params)[0])

The handler gets each request's params and CallContext and returns a Message (or an awaitable
of one), or raises a `MsgbatchError`. `calls` records what it was given.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from msgbatch.backends.base import CallContext
from msgbatch.backends.retry import RetryPolicy

Handler = Callable[[dict[str, Any], CallContext], dict[str, Any] | Awaitable[dict[str, Any]]]


class MockBackend:
    def __init__(
        self,
        handler: Handler,
        *,
        name: str = "mock",
        retry: RetryPolicy | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        self.handler = handler
        self.name = name
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self.calls: list[tuple[dict[str, Any], CallContext]] = []
        self.closed = False

    @property
    def concurrency_limit(self) -> int | None:
        return self.max_concurrency

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        self.calls.append((params, context))
        answer = self.handler(params, context)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def aclose(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"MockBackend(name={self.name!r})"
