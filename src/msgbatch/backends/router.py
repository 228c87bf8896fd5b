"""Which backend serves a model: the first route whose pattern matches, else the default."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from msgbatch.backends.base import Backend


@dataclass(frozen=True)
class Route:
    pattern: str  # shell-style: `claude-*`, `llama-3.1-8b`, `*`
    backend: Backend


class Router:
    def __init__(self, routes: Sequence[Route], default: Backend | None) -> None:
        self.routes = list(routes)
        self.default = default
        self._cache: dict[str, Backend | None] = {}

    def route(self, model: str) -> Backend | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = next((r.backend for r in self.routes if fnmatch.fnmatchcase(model, r.pattern)), self.default)
        if len(self._cache) < 10_000:
            self._cache[model] = found
        return found

    @property
    def backends(self) -> list[Backend]:
        seen: list[Backend] = []
        for backend in [r.backend for r in self.routes] + ([self.default] if self.default else []):
            if all(b is not backend for b in seen):
                seen.append(backend)
        return seen

    @property
    def capacity(self) -> int:
        """Requests the backends can have in flight at once (those that declare a limit)."""
        return sum(backend.max_concurrency or 0 for backend in self.backends)

    def dispatch_concurrency(self, configured: int) -> int:
        """How many requests a dispatcher should hold: at least `configured`, and twice what the
        backends can run, so that a freed backend slot is refilled at once from requests already
        claimed (waiting in the backend's limiter) rather than after a round trip to the store.
        (The dispatcher claims more once a quarter of its slots are free: with twice the
        capacity, that happens while half of it is still waiting.)"""
        return max(configured, 2 * self.capacity)

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()
