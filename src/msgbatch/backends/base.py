"""The backend interface: async methods that answer one request each, in the API it came in.

`create_message` turns Messages params into a Message; `create_chat_completion`,
`create_completion` and `create_embedding` answer the OpenAI Batch API's three endpoints (an
`openai` backend natively, the others by translating to and from the Messages API, or, for
embeddings, by refusing). A backend raises the error tree's classes (`msgbatch.errors`) for
failures: the class says the error type, the instance whether running the request again may
succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from msgbatch.backends.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a backend is told about a request besides its params: the batch's request headers."""

    betas: tuple[str, ...] = ()
    anthropic_version: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """Anything that can answer a Messages API request.

    `params` is the request's params object as the client sent it (already decoded). Returns a
    Message as a JSON-ready dict (`id`, `type`, `role`, `model`, `content`, `stop_reason`,
    `stop_sequence`, `usage`). Raises a `MsgbatchError` for failures.

    `retry` is how the dispatcher retries this backend's retryable failures; `max_concurrency`
    is how many requests it runs at once at most (None: no limit of its own), and
    `concurrency_limit` how many it runs at once now (an adaptive limit moves below the maximum).
    """

    name: str
    retry: RetryPolicy

    @property
    def max_concurrency(self) -> int | None: ...

    @property
    def concurrency_limit(self) -> int | None: ...

    async def create_message(self, params: dict[str, Any], context: CallContext) -> dict[str, Any]: ...

    async def create_chat_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        """A `/v1/chat/completions` request body as the client wrote it -> a ChatCompletion."""
        ...

    async def create_completion(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        """A `/v1/completions` request body -> a text Completion."""
        ...

    async def create_embedding(self, body: dict[str, Any], context: CallContext) -> dict[str, Any]:
        """A `/v1/embeddings` request body -> a CreateEmbeddingResponse; a backend that serves no
        embeddings raises an InvalidRequestError saying so."""
        ...

    async def aclose(self) -> None: ...


class RequestCanceled(Exception):
    """Raised by a backend that queues requests (the limiter) when it drops one whose batch was
    canceled while it waited: the request never reached the upstream and ends `canceled`."""


def _never() -> bool:
    return False


# Set by the dispatcher around each call: a callable that turns true once the request's batch is
# canceled. Backends that hold requests back before sending them check it when they let one go.
request_canceled: ContextVar[Callable[[], bool]] = ContextVar("msgbatch_request_canceled", default=_never)
