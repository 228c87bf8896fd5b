"""`MockBackend(handler)`: a backend made of one function, for tests (as httpx's MockTransport).

    backend = MockBackend(lambda params, context: simulate(params)[0])

The handler gets each request's params and CallContext and returns a Message (or an awaitable
of one), or raises a `MsgbatchError`. `calls` records what it was given.

The OpenAI endpoints go through the handler too, translated as for an `anthropic` backend
(`backends/chat_messages.py`), unless a handler of their own is given (`chat=`, `completion=`,
`embedding=`: the request body in, the endpoint's answer out, as an `openai` backend's upstream
would). Without `embedding=`, embeddings are refused as by a backend that serves none.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from msgbatch.backends.base import CallContext
from msgbatch.backends.chat_messages import chat_via_messages, completion_via_messages, no_embeddings
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
        chat: Handler | None = None,
        completion: Handler | None = None,
        embedding: Handler | None = None,
    ) -> None:
        self.handler = handler
        self.name = name
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self.chat = chat
        self.completion = completion
        self.embedding = embedding
        self.calls: list[tuple[dict[str, Any], CallContext]] = []
        self.closed = False

    @property
    def concurrency_limit(self) -> int | None:
        return self.max_concurrency

    async def _call(self, handler: Handler, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        self.calls.append((params, context))
        answer = handler(params, context)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]:
        return await self._call(self.handler, params, context)

    async def create_chat_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        if self.chat is not None:
            return await self._call(self.chat, body, context)
        return await chat_via_messages(self.create_message, body, context)

    async def create_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        if self.completion is not None:
            return await self._call(self.completion, body, context)
        return await completion_via_messages(self.create_message, body, context)

    async def create_embedding(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        if self.embedding is None:
            raise no_embeddings(self.name, "mock")
        return await self._call(self.embedding, body, context)

    async def aclose(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"MockBackend(name={self.name!r})"
