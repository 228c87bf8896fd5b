"""How a backend's retryable failures are retried: exponential backoff with full jitter."""

from __future__ import annotations

import random


class RetryPolicy:
    """Exponential backoff with full jitter, never below the upstream's `retry-after`."""

    def __init__(self, max_attempts: int = 6, base: float = 0.5, cap: float = 60.0) -> None:
        self.max_attempts = max_attempts
        self.base = base
        self.cap = cap

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)

    def __repr__(self) -> str:
        return f"RetryPolicy(max_attempts={self.max_attempts}, base={self.base:g}, cap={self.cap:g})"
