"""Fair shares: how the free backend slots of one claim are split among the work waiting for them.

The rule, applied at each claim (when slots have freed, not before) to what the claiming process
already holds:

1. **Per pool.** A pool is a backend with a concurrency limit of its own (by its name), or
   `SHARED`: every backend without one, and requests no backend will take (invalid params, unknown
   models), which end at once. A request's pool follows from its model (read at create).
2. **Across workspaces, by weight.** Each next slot of a pool goes to the workspace with the fewest
   requests held on that pool per unit of `weight` (`[limits.<workspace>] weight`, default 1):
   weighted max-min fairness. With weights 3 and 1 and both busy, the pool runs 3:1. A workspace
   never holds more than its `max_in_flight_per_backend` on one pool.
3. **Within a workspace, by priority, then equally.** A workspace's share goes to its batches of
   the most urgent priority that have work (`high`, then `normal`, then `low`), the one holding
   fewest first; less urgent batches get what those cannot take.
4. **Within a batch**, equally across its models that route to the pool.

Whole slots cannot always split by the weights (5 slots at 3:1 are 4:1 or 3:2): workspaces that
hold equally per unit of weight are told apart by the slots each was given so far per unit of
weight (`Slots.served`, kept by the dispatcher; a workspace that comes back starts level with the
least served), so that over time the grants, and the requests finished, follow the weights.
Other ties go in rotation order (the caller starts it after the batch it served last), so every
batch gets its turn however many there are. `plan` decides one round; the manager asks the store for
what it decided, and batches that had less than their share drop out of the next round, which
shares what is left among the others.

Holdings are one process's: each worker applies the rule to its own slots over the one shared
queue, so the split holds for each worker, and therefore for their sum.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

__all__ = [
    "SHARED",
    "Holdings",
    "Lane",
    "Slots",
    "forget_idle",
    "interleaved",
    "plan",
    "record_grant",
    "water_fill",
]

SHARED = "*"

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Lane:
    """The requests of one batch that name one model: what a claim asks the store for."""

    seq: int
    workspace: str
    priority: int  # models.HIGH (0) first
    model_key: int
    pool: str


@dataclass
class Holdings:
    """Requests a process holds (claimed and not finished), per pool and workspace, and per pool
    and batch."""

    by_workspace: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_batch: Counter[tuple[str, int]] = field(default_factory=Counter)

    def add(self, pool: str, workspace: str, seq: int, n: int = 1) -> None:
        _bump(self.by_workspace, (pool, workspace), n)
        _bump(self.by_batch, (pool, seq), n)

    def copy(self) -> Holdings:
        return Holdings(Counter(self.by_workspace), Counter(self.by_batch))


def _bump(counter: Counter[K], key: K, n: int) -> None:
    counter[key] += n
    if counter[key] <= 0:
        del counter[key]  # no key left behind for every batch that ever ran


def _shared(_model: str) -> str:
    return SHARED


@dataclass
class Slots:
    """What a dispatcher asks one claim for: `free` slots per pool, the pool of each model, and
    what it holds now. `Slots({SHARED: n})` is n requests, fairly shared, with no backend limits."""

    free: dict[str, int]
    pool_of: Callable[[str], str] = _shared
    held: Holdings = field(default_factory=Holdings)
    # (pool, workspace) -> slots given so far per unit of weight; the claim adds what it grants.
    served: dict[tuple[str, str], float] = field(default_factory=dict)


def served_level(served: Mapping[tuple[str, str], float], pool: str) -> float:
    """Where a workspace new to a pool starts: level with the least served there."""
    return min((value for (p, _), value in served.items() if p == pool), default=0.0)


def record_grant(served: dict[tuple[str, str], float], pool: str, workspace: str, n: int, weight: float) -> None:
    key = (pool, workspace)
    if key not in served:
        served[key] = served_level(served, pool)
    served[key] += n / weight


def forget_idle(served: dict[tuple[str, str], float], pool: str, busy: set[str]) -> None:
    """Workspaces with no work left for a pool leave its record (they come back level)."""
    for key in [key for key in served if key[0] == pool and key[1] not in busy]:
        del served[key]


def water_fill(
    slots: int, claimants: Sequence[tuple[K, int, float, int | None]], served: Sequence[float] = ()
) -> dict[K, int]:
    """Give `slots` one at a time, each to the claimant (key, held, weight, room) with the fewest
    held per unit of weight; `room` (None: no limit) caps what one may get. Ties go to the one
    `served` least so far (per unit of weight), then to the earlier."""
    given: dict[K, int] = {}
    if slots <= 0:
        return given
    if len(claimants) == 1:
        key, _, _, room = claimants[0]
        n = slots if room is None else min(slots, room)
        if n > 0:
            given[key] = n
        return given
    past = list(served) or [0.0] * len(claimants)
    heap = [
        (held / weight, past[i], i, held, weight, room)
        for i, (_, held, weight, room) in enumerate(claimants)
        if room is None or room > 0
    ]
    heapq.heapify(heap)
    while slots and heap:
        _, before, i, held, weight, room = heapq.heappop(heap)
        key = claimants[i][0]
        given[key] = given.get(key, 0) + 1
        slots -= 1
        held += 1
        if room is not None:
            room -= 1
            if room == 0:
                continue
        heapq.heappush(heap, (held / weight, before + 1 / weight, i, held, weight, room))
    return given


J = TypeVar("J", bound="_HasWorkspace")


class _HasWorkspace(Protocol):
    @property
    def workspace(self) -> str: ...


def interleaved(jobs: list[J], weight: Callable[[str], float]) -> list[J]:
    """A claim's requests in the order they should start: the workspaces' in turn by weight (a, a,
    a, b, a, a, a, b for 3:1), each in its own order. Backends start requests first come, first
    served: claimed workspace by workspace, a workspace's last requests would wait the longest,
    and its share of what runs would fall below its share of what is held."""
    if not jobs or all(job.workspace == jobs[0].workspace for job in jobs):
        return jobs
    seen: dict[str, int] = {}
    weights: dict[str, float] = {}
    keyed = []
    for index, job in enumerate(jobs):
        workspace = job.workspace
        n = seen.get(workspace, 0)
        seen[workspace] = n + 1
        if workspace not in weights:
            weights[workspace] = weight(workspace)
        keyed.append(((n + 0.5) / weights[workspace], index, job))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [job for _, _, job in keyed]


def _grouped(lanes: Sequence[Lane], key: Callable[[Lane], K]) -> dict[K, list[Lane]]:
    groups: dict[K, list[Lane]] = {}
    for lane in lanes:
        groups.setdefault(key(lane), []).append(lane)
    return groups


def plan(
    free: Mapping[str, int],
    lanes: Sequence[Lane],
    held: Holdings,
    weight: Callable[[str], float],
    room: Callable[[str], int | None],
    served: Mapping[tuple[str, str], float] | None = None,
) -> dict[Lane, int]:
    """How many requests to ask of each lane this round (see the module docstring). `lanes` are in
    rotation order; `room(workspace)` is its `max_in_flight_per_backend` (None: no cap)."""
    takes: dict[Lane, int] = {}
    for pool, pool_lanes in _grouped(lanes, lambda lane: lane.pool).items():
        slots = free.get(pool, 0)
        if slots <= 0:
            continue
        by_workspace = _grouped(pool_lanes, lambda lane: lane.workspace)
        claimants = []
        for workspace in by_workspace:
            had = held.by_workspace[pool, workspace]
            cap = room(workspace)
            claimants.append((workspace, had, weight(workspace), None if cap is None else max(0, cap - had)))
        record = served or {}
        start = served_level(record, pool)
        ranks = [record.get((pool, workspace), start) for workspace in by_workspace]
        for workspace, share in water_fill(slots, claimants, ranks).items():
            mine = by_workspace[workspace]
            urgent = min(lane.priority for lane in mine)
            by_batch = _grouped([lane for lane in mine if lane.priority == urgent], lambda lane: lane.seq)
            batches = [(seq, held.by_batch[pool, seq], 1.0, None) for seq in by_batch]
            for seq, n in water_fill(share, batches).items():
                models = by_batch[seq]
                base, extra = divmod(n, len(models))
                for i, lane in enumerate(models):
                    if base + (i < extra):
                        takes[lane] = base + (i < extra)
    return takes
