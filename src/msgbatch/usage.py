"""What the store counted as results were written, read back for people: token usage per
workspace, model and hour (and its cost, with a price table), a batch's outcomes by model, backend
and error type, its throughput over time, and a workspace's open work.

Everything here is read from tables that move in the transactions that write results
(`finish_jobs`, and `settle_canceling` / `expire_batch` for requests finished in bulk), so the
figures add up to the batches' own counts; nothing is counted in a process's memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgbatch.clock import now_us, rfc3339
from msgbatch.config import Settings
from msgbatch.models import ERRORED, RESULT_NAMES, STATUS_NAMES, Batch
from msgbatch.store.base import Row, Store

__all__ = ["TOKEN_KINDS", "Tokens", "UsageReader"]

TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
GROUPS = ("model", "hour", "day")
HOUR, DAY = 3600, 86400
# A throughput chart has at most about this many points, however long the batch ran.
CHART_POINTS = 120


@dataclass
class Tokens:
    """Requests and token counts, with their cost where the model has a price."""

    succeeded: int = 0
    errored: int = 0
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # in TOKEN_KINDS order
    cost: float | None = None

    def add(self, succeeded: int, errored: int, counts: Sequence[int], cost: float | None) -> None:
        self.succeeded += succeeded
        self.errored += errored
        self.counts = [a + int(b) for a, b in zip(self.counts, counts, strict=True)]
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost

    def render(self) -> dict[str, Any]:
        return {
            "succeeded": self.succeeded,
            "errored": self.errored,
            **dict(zip(TOKEN_KINDS, self.counts, strict=True)),
            "cost": None if self.cost is None else round(self.cost, 6),
        }


def _most_first(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


class UsageReader:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def cost(self, model: str, counts: Sequence[int]) -> float | None:
        price = self.settings.price_for(model)
        return None if price is None else price.cost(*(int(c) for c in counts))

    # -- a workspace's usage over time -------------------------------------------------------

    async def usage(self, workspace: str, since: int, until: int, group_by: Iterable[str]) -> dict[str, Any]:
        """Usage in the hours from `since` to `until` (unix seconds; the hour holding `since` on),
        summed per the groups asked (`model`, and `hour` or `day`)."""
        groups = list(group_by)
        rows = await self.store.read(
            "usage_of_workspace", {"workspace": workspace, "since": since - since % HOUR, "until": until}
        )
        buckets: dict[tuple[Any, ...], Tokens] = {}
        total = Tokens()
        for hour, model, succeeded, errored, *counts in rows:
            cost = self.cost(model, counts)
            key: list[Any] = []
            if "model" in groups:
                key.append(model)
            if "hour" in groups:
                key.append(hour)
            elif "day" in groups:
                key.append(hour - hour % DAY)
            buckets.setdefault(tuple(key), Tokens()).add(succeeded, errored, counts, cost)
            total.add(succeeded, errored, counts, cost)
        data = []
        for group, tokens in sorted(buckets.items()):
            entry: dict[str, Any] = {}
            values = list(group)
            if "model" in groups:
                entry["model"] = values.pop(0)
            if "hour" in groups or "day" in groups:
                entry["start"] = rfc3339(values.pop(0) * 1_000_000)
            data.append(entry | tokens.render())
        return {
            "type": "usage",
            "workspace": workspace,
            "since": rfc3339(since * 1_000_000),
            "until": rfc3339(until * 1_000_000),
            "group_by": groups,
            "data": data,
            "total": total.render(),
        }

    # -- one batch -------------------------------------------------------------------------

    async def breakdown(self, batch: Batch) -> dict[str, Any]:
        """The batch's requests by model and backend (rows that add up to its counts), its
        errors by type, and its tokens and cost per model."""
        models = {key: (name, total) for _, key, name, total in await self._models(batch.seq)}
        rows = await self.store.read("outcomes_of_batch", {"seq": batch.seq})
        counts: dict[tuple[str, str], dict[str, int]] = {}
        finished_of: dict[int, int] = {}
        errors: dict[str, int] = {}
        tokens: dict[str, Tokens] = {}
        for name, key, backend, result, error_type, requests, *used in rows:
            model = name if name is not None else ""
            row = counts.setdefault((model, backend), dict.fromkeys(("processing", *RESULT_NAMES), 0))
            row[RESULT_NAMES[result]] += requests
            finished_of[key] = finished_of.get(key, 0) + requests
            if result == ERRORED:
                errors[error_type] = errors.get(error_type, 0) + requests
            if any(used) or result < 2:
                succeeded, errored = (requests, 0) if result == 0 else (0, requests if result == 1 else 0)
                tokens.setdefault(model, Tokens()).add(succeeded, errored, used, None)
        if models:
            # Not finished: the rest of each model's requests, on no backend yet.
            for key, (name, total) in models.items():
                waiting = total - finished_of.get(key, 0)
                if waiting:
                    row = counts.setdefault((name, ""), dict.fromkeys(("processing", *RESULT_NAMES), 0))
                    row["processing"] += waiting
        else:
            # A batch made before outcomes were recorded: what they do not explain.
            rest = {
                "processing": batch.processing,
                "succeeded": batch.succeeded,
                "errored": batch.errored,
                "canceled": batch.canceled,
                "expired": batch.expired,
            }
            for row in counts.values():
                for kind in rest:
                    rest[kind] -= row[kind]
            if any(rest.values()):
                counts[("", "")] = rest
        by_model = []
        total_cost: float | None = None
        for model, spent in sorted(tokens.items()):
            spent.cost = self.cost(model, spent.counts)
            if spent.cost is not None:
                total_cost = (total_cost or 0.0) + spent.cost
            by_model.append({"model": model} | spent.render())
        return {
            "requests": [
                {"model": model, "backend": backend or None} | row for (model, backend), row in sorted(counts.items())
            ],
            "errors": [{"type": t, "count": n} for t, n in sorted(errors.items(), key=_most_first)],
            "tokens": by_model,
            "usage": dict(
                zip(
                    TOKEN_KINDS,
                    (
                        batch.input_tokens,
                        batch.output_tokens,
                        batch.cache_read_input_tokens,
                        batch.cache_creation_input_tokens,
                    ),
                    strict=True,
                )
            ),
            "cost": None if total_cost is None else round(total_cost, 6),
        }

    async def throughput(self, batch: Batch) -> dict[str, Any]:
        """Requests whose results a dispatcher wrote, per interval from the batch's start: at
        most about `CHART_POINTS` intervals of whole seconds."""
        end = batch.ended_at or now_us()
        seconds = max(1, (end - batch.created_at) // 1_000_000 + 1)
        step = max(1, math.ceil(seconds / CHART_POINTS))
        rows = await self.store.read("throughput_of_batch", {"seq": batch.seq, "step": step})
        return {
            "step_seconds": step,
            "start": batch.created_at // 1_000_000,
            "points": [[int(at), int(n)] for at, n in rows],
        }

    async def _models(self, seq: int) -> list[Row]:
        return await self.store.read("models_of_batches", {"seqs": [seq]})

    # -- open work ---------------------------------------------------------------------------

    async def open_work(self, route: Callable[[str], str | None]) -> list[dict[str, Any]]:
        """Requests of batches not ended, per workspace, model and backend (`route`): running now
        (leased, on any worker) and waiting (in the store, retries included)."""
        leased = {(batch, key): n for batch, key, n in await self.store.read("leased_by_batch_model")}
        per: dict[tuple[str, str, str], list[int]] = {}
        for seq, workspace, key, model, total, finished in await self.store.read("open_batches_by_model"):
            running = leased.get((seq, key), 0)
            waiting = max(0, total - finished - running)
            if not running and not waiting:
                continue
            backend = route(model) or ""
            counts = per.setdefault((workspace, model, backend), [0, 0])
            counts[0] += running
            counts[1] += waiting
        return [
            {"workspace": ws, "model": model, "backend": backend or None, "running": r, "waiting": w}
            for (ws, model, backend), (r, w) in sorted(per.items())
        ]

    async def gauges(self, route: Callable[[str], str | None]) -> tuple[dict[str, int], dict[str, int]]:
        """For /metrics: batches by status name, and requests waiting by backend ("none": no backend)."""
        statuses = dict.fromkeys(STATUS_NAMES, 0)
        for status, n in await self.store.read("batches_by_status"):
            statuses[STATUS_NAMES[status]] = int(n)
        waiting: dict[str, int] = {}
        for row in await self.open_work(route):
            backend = row["backend"] or "none"
            waiting[backend] = waiting.get(backend, 0) + row["waiting"]
        return statuses, waiting

    async def workspace(self, workspace: str, route: Callable[[str], str | None]) -> dict[str, Any]:
        """A workspace's limits, its open work, and its usage of the last 24 hours."""
        limits = self.settings.limits_for(workspace)
        (batches, queued), *_ = await self.store.read("open_work_of_workspace", {"workspace": workspace})
        work = [
            {k: v for k, v in row.items() if k != "workspace"}
            for row in await self.open_work(route)
            if row["workspace"] == workspace
        ]
        now = now_us() // 1_000_000
        return {
            "type": "workspace",
            "workspace": workspace,
            "limits": {
                "max_queued_requests": limits.max_queued_requests,
                "max_batches_in_progress": limits.max_batches_in_progress,
                "max_in_flight_per_backend": limits.max_in_flight_per_backend,
                "weight": limits.weight,
            },
            "batches_in_progress": int(batches),
            "queued_requests": int(queued),
            "work": work,
            "usage_24h": await self.usage(workspace, now - DAY, now + 1, ["model"]),
        }
