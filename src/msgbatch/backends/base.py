"""The backend interface: one async method that turns Messages params into a Message."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol


class BackendError(Exception):
    """A request failed at the backend.

    `error_type` is one of the API error types allowed inside an `errored` result.
    `retryable` says whether running the same request again may succeed; `retry_after`
    is the upstream's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class Backend(Protocol):
    """Anything that can answer a Messages API request.

    `params` is the request's params object as the client sent it (already decoded),
    `betas` the batch's `anthropic-beta` values. Returns a Message as a JSON-ready dict
    (`id`, `type`, `role`, `model`, `content`, `stop_reason`, `stop_sequence`, `usage`).
    Raises `BackendError` for failures.
    """

    name: str

    async def create_message(self, params: dict[str, Any], betas: list[str]) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class RequestCanceled(Exception):
    """Raised by a backend that queues requests (the limiter) when it drops one whose batch was
    canceled while it waited: the request never reached the upstream and ends `canceled`."""


def _never() -> bool:
    return False


# Set by the dispatcher around each call: a callable that turns true once the request's batch is
# canceled. Backends that hold requests back before sending them check it when they let one go.
request_canceled: ContextVar[Callable[[], bool]] = ContextVar("msgbatch_request_canceled", default=_never)
