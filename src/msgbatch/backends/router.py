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
        """How many requests a dispatcher may hold at once (its runners): at least `configured`,
        and twice what the backends can run, more than enough for each backend's limit and the
        quarter more it claims ahead so that a freed slot is refilled at once (engine/slots.py
        holds each backend to that; `configured` bounds the backends without a limit)."""
        return max(configured, 2 * self.capacity)

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()
