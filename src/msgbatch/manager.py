"""BatchManager: every batch rule, once, above the store.

The store runs named statements (`store/sql/<dialect>.sql`); which statements make up a
transition, in which transaction, is decided here and nowhere else:

- **create**: reserve a block of request ids, then the batch, its requests and its queue in one
  durable transaction, and a wake-up for other processes.
- **cancel**: mark the batch `canceling`; its waiting requests become `canceled` at once; it ends
  when nothing of it runs any more. Requests already running may finish.
- **settle**: a request that goes back to the queue (released by a stopping worker, reaped when
  its lease ran out, recovered at start, or a retry) of a batch being canceled is never claimed
  again: in the same transaction it becomes `canceled`, and the batch ends if nothing else runs.
- **complete**: results are written only for requests still leased to the caller, and the counts
  move in the same transaction; a retry goes back to the queue (and is settled, above).
- **expiry**: a batch past `expires_at` ends; every unfinished request becomes `expired`.
- **retention**: an ended batch older than the retention keeps its row and loses its requests
  and results (`archived_at`).
- **quotas**: a create that would take its workspace past `max_queued_requests` or
  `max_batches_in_progress` is refused (429) by a check in the transaction that inserts it.
- **fairness**: a claim fills each backend's free slots by the rule of `msgbatch.fairness`
  (workspaces by weight, then batches by priority and equally, starting after the batch served
  last), so a small batch is never stuck behind a big one, nor a team behind another's.
- **paging**: lists page by id (ids sort by creation); results stream in keyset pages.
- **dialects**: a batch's id prefix says which API it belongs to (`msgbatch_` the Message Batches
  API, `batch_` the OpenAI Batch API, whose own rules are in `msgbatch.openai_batches`); each API
  finds, lists and cancels only its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import msgspec

from msgbatch.clock import now_us, rfc3339
from msgbatch.config import Limits, Settings
from msgbatch.envelope import models_of, parse_create
from msgbatch.errors import InvalidRequestError, NotFoundError, RateLimitError
from msgbatch.fairness import SHARED as SHARED_POOL
from msgbatch.fairness import Lane, Slots, forget_idle, interleaved, plan, record_grant
from msgbatch.ids import MESSAGE_BATCH_PREFIX, new_batch_id
from msgbatch.models import (
    CANCELED,
    ENDED,
    EXPIRED,
    IN_PROGRESS,
    NORMAL,
    PRIORITY_NAMES,
    STATUS_NAMES,
    Batch,
    Job,
    Outcome,
)
from msgbatch.store.base import Refused, Row, Step, Store, batch_from_row

log = logging.getLogger("msgbatch.batches")

NO_RESULTS = "Message Batch ID has no available results."
NOT_FOUND = "Message Batch ID not found."
RESULTS_PAGE = 2000
# Above every id of a prefix (prefix + base62): the upper cursor of a first list page.
_TOP = "~"
# Later than any lease: at the start of a single-process store, every lease it finds is stale.
_FOREVER = 1 << 62


def _settle(seqs: Sequence[int] | None, now: int) -> list[Step]:
    """Waiting requests of batches being canceled become `canceled`; idle ones end."""
    return [
        Step("settle_canceling", {"seqs": list(seqs) if seqs is not None else None}),
        Step("end_idle_canceling", {"now": now}),
    ]


def _ids(rows: list[Row]) -> list[str]:
    return [row[0] for row in rows]


def _count(rows: list[Row]) -> int:
    """What settle_canceling returns: how many it canceled (one row, or one per batch)."""
    return sum(int(row[-1] or 0) for row in rows)


_QUOTAS = {
    "max_queued_requests": "{value:,} requests not yet finished; it has {now:,}, and this batch adds {total:,}",
    "max_batches_in_progress": "{value:,} batches in progress; it has {now:,}",
}


class NewRequest(Protocol):
    """A request of a batch being created: its custom_id and its params as the bytes they came as."""

    @property
    def custom_id(self) -> str: ...

    @property
    def params(self) -> Any: ...  # bytes, or a buffer of them (msgspec.Raw, memoryview)


class BatchManager:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        # Callbacks the engine registers: new work to claim, a batch that stopped taking work.
        self.on_created: list[Callable[[Batch], None]] = []
        self.on_canceled: list[Callable[[Batch], None]] = []
        # Requests the store finished in bulk (canceled waiting, expired): (result type, how many).
        self.on_finished_in_bulk: list[Callable[[int, int], None]] = []
        self._last_served = 0  # fairness: the seq of the batch a claim served last
        self._models: dict[int, list[tuple[int, str]]] = {}  # seq -> its (model key, model): immutable
        self._limits_of: dict[str, Limits] = {}  # workspace -> its limits (the settings never change)

    # -- create ------------------------------------------------------------------------------

    async def create(
        self,
        workspace: str,
        body: bytes | bytearray | memoryview,
        betas: str,
        headers: dict[str, str] | None = None,
        *,
        metadata: dict[str, str] | None = None,
    ) -> Batch:
        parsed = parse_create(body, self.settings.max_requests)
        return await self.create_batch(
            workspace,
            parsed.requests,
            size=len(body),
            betas=betas,
            headers=headers,
            metadata=metadata,
            priority=parsed.priority,
        )

    async def create_batch(
        self,
        workspace: str,
        requests: Sequence[NewRequest],
        *,
        size: int = 0,
        betas: str = "",
        headers: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        batch_id: str | None = None,
        also: Sequence[Step] = (),
        priority: int = NORMAL,
    ) -> Batch:
        """A batch of requests whose envelope was checked; `also` are steps of the same transaction
        (another dialect's own columns), run after the batch row is inserted. The workspace's
        quotas are checked in that transaction; each request's model is read for routing."""
        models = models_of(requests)
        now = now_us()
        total = len(requests)
        (reserved,) = await self.store.run(Step("reserve_request_ids", {"n": total}))
        first = reserved[0][0] - total + 1
        batch = Batch(
            seq=0,
            id=batch_id or new_batch_id(),
            workspace=workspace,
            status=IN_PROGRESS,
            created_at=now,
            expires_at=now + int(self.settings.expiry_seconds * 1_000_000),
            total=total,
            processing=total,
            first_request=first,
            betas=betas,
            headers=msgspec.json.encode(headers or {}).decode(),
            metadata=msgspec.json.encode(metadata or {}).decode(),
            priority=priority,
        )
        checks = self._quota_checks(workspace, total)
        found = await self._insert_checked(
            workspace,
            total,
            *checks,
            Step(
                "insert_batch",
                {
                    "id": batch.id,
                    "workspace": workspace,
                    "created_at": batch.created_at,
                    "expires_at": batch.expires_at,
                    "total": total,
                    "first_request": first,
                    "betas": betas,
                    "headers": batch.headers,
                    "metadata": batch.metadata,
                    "priority": batch.priority,
                },
            ),
            *also,
            Step("insert_requests", rows=[(first + i, r.custom_id, r.params) for i, r in enumerate(requests)]),
            Step("insert_jobs", {"batch_id": batch.id, "first": first, "stop": first + total}),
            *self._model_steps(batch.id, first, models),
            Step("notify", {"payload": "work"}),
        )
        batch = msgspec.structs.replace(batch, seq=found[len(checks)][0][0])
        log.info("batch.created id=%s workspace=%s requests=%d bytes=%d", batch.id, workspace, total, size)
        for callback in self.on_created:
            callback(batch)
        return batch

    def _quota_checks(self, workspace: str, total: int) -> list[Step]:
        limits = self._limits(workspace)
        if limits.max_queued_requests is None and limits.max_batches_in_progress is None:
            return []
        quotas = {
            "workspace": workspace,
            "total": total,
            "max_queued_requests": limits.max_queued_requests,
            "max_batches_in_progress": limits.max_batches_in_progress,
        }
        return [Step("lock_workspace", {"workspace": workspace}), Step("check_quotas", quotas)]

    async def _insert_checked(self, workspace: str, total: int, *steps: Step) -> list[list[Row]]:
        """The create transaction; a quota it would exceed refuses it, and nothing is stored."""
        try:
            return await self.store.run(*steps, durable=True)
        except Refused as refused:
            exceeded = [
                f"{quota}: workspace {workspace} may have at most "
                + _QUOTAS[quota].format(value=int(value), now=int(now), total=total)
                for quota, value, now in refused.rows
            ]
            log.info("batch.refused workspace=%s quotas=%s", workspace, ",".join(row[0] for row in refused.rows))
            raise RateLimitError(
                "; ".join(exceeded) + ".",
                # The SDKs retry a 429 at once by default; a quota frees up as batches finish.
                headers={"x-should-retry": "false"},
            ) from None

    @staticmethod
    def _model_steps(batch_id: str, first: int, models: Any) -> list[Step]:
        """Each request's model, by key: the batch's models, and (with several) the jobs' keys."""
        keyed = [(key, name, models.totals[key]) for key, name in enumerate(models.names)]
        steps = [Step("insert_batch_models", {"batch_id": batch_id}, rows=keyed)]
        runs = [(first + start, first + stop, key) for start, stop, key in models.runs if key]
        if runs:
            steps.append(Step("set_job_models", rows=runs))
        return steps

    # -- read --------------------------------------------------------------------------------

    async def find(self, batch_id: str) -> Batch | None:
        rows = await self.store.read("get_batch", {"id": batch_id})
        return batch_from_row(rows[0]) if rows else None

    async def get(self, workspace: str, batch_id: str, *, prefix: str = MESSAGE_BATCH_PREFIX) -> Batch:
        """The batch, if it is the workspace's and of the API whose ids start with `prefix`."""
        batch = await self.find(batch_id) if batch_id.startswith(prefix) else None
        if batch is None or batch.workspace != workspace:
            raise NotFoundError(NOT_FOUND)
        return batch

    async def list_batches(
        self,
        workspace: str,
        *,
        limit: int,
        after_id: str | None,
        before_id: str | None,
        prefix: str = MESSAGE_BATCH_PREFIX,
        status: int | None = None,
        metadata: tuple[str, str] | None = None,
    ) -> tuple[list[Batch], bool]:
        """Newest first; the bool says whether more lie beyond in the direction asked. `status`
        and `metadata` (key, value) keep only the batches that match."""
        if after_id is not None and before_id is not None:
            raise InvalidRequestError("Cannot specify both `before_id` and `after_id`.")
        if not 1 <= limit <= 1000:
            raise InvalidRequestError(
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
            )
        if status is not None or metadata is not None:
            key, value = metadata or (None, None)
            where = {"workspace": workspace, "limit": limit + 1, "status": status, "meta_key": key, "meta_value": value}
            if before_id is not None:
                lower, upper = max(before_id, prefix), prefix + _TOP
                rows = await self.store.read("list_batches_where_before", {**where, "lower": lower, "upper": upper})
                return [batch_from_row(r) for r in reversed(rows[:limit])], len(rows) > limit
            upper = min(after_id or _TOP, prefix + _TOP)
            rows = await self.store.read("list_batches_where", {**where, "lower": prefix, "upper": upper})
            return [batch_from_row(r) for r in rows[:limit]], len(rows) > limit
        if before_id is not None:
            rows = await self.store.read(
                "list_batches_before", {"workspace": workspace, "lower": max(before_id, prefix), "limit": limit + 1}
            )
            return [batch_from_row(r) for r in reversed(rows[:limit])], len(rows) > limit
        rows = await self.store.read(
            "list_batches",
            # The cursor is kept within the prefix: an API lists only its own batches.
            {
                "workspace": workspace,
                "lower": prefix,
                "upper": min(after_id or _TOP, prefix + _TOP),
                "limit": limit + 1,
            },
        )
        return [batch_from_row(r) for r in rows[:limit]], len(rows) > limit

    async def results(
        self,
        workspace: str,
        batch_id: str,
        *,
        result_type: int | None = None,
        custom_id: str | None = None,
        partial: bool = False,
    ) -> AsyncIterator[list[bytes]]:
        """The batch's results lines in pages, read with constant memory; with `partial`, those
        written so far of a batch still running."""
        batch = await self.get(workspace, batch_id)
        if (batch.status != ENDED and not partial) or batch.archived_at is not None:
            raise NotFoundError(NO_RESULTS)
        if custom_id is not None:
            return self._result_of(batch, custom_id, result_type)
        return self._result_pages(batch, result_type)

    async def result_page(
        self,
        workspace: str,
        batch_id: str,
        *,
        after: int,
        limit: int,
        result_type: int | None = None,
        custom_id: str | None = None,
    ) -> tuple[list[bytes], int | None]:
        """Up to `limit` results lines written so far, from the request at position `after` in the
        batch on; and the position to ask for next (None: no more yet)."""
        batch = await self.get(workspace, batch_id)
        if batch.archived_at is not None:
            raise NotFoundError(NO_RESULTS)
        if custom_id is not None:
            return [line async for page in self._result_of(batch, custom_id, result_type) for line in page], None
        rows = await self.store.read(
            "results_page",
            {
                "cursor": batch.first_request + max(0, after),
                "stop": batch.stop_request,
                "type": result_type,
                "limit": limit + 1,
            },
        )
        more = rows[limit][0] - batch.first_request if len(rows) > limit else None
        return [row[1] for row in rows[:limit]], more

    async def _result_of(self, batch: Batch, custom_id: str, result_type: int | None) -> AsyncIterator[list[bytes]]:
        rows = await self.store.read(
            "result_of",
            {"first": batch.first_request, "stop": batch.stop_request, "custom_id": custom_id, "type": result_type},
        )
        if rows:
            yield [row[0] for row in rows]

    async def _result_pages(self, batch: Batch, result_type: int | None) -> AsyncIterator[list[bytes]]:
        # Keyset pages, each its own short query: a slow reader holds no connection or snapshot.
        cursor, stop = batch.first_request, batch.stop_request
        while cursor < stop:
            rows = await self.store.read(
                "results_page", {"cursor": cursor, "stop": stop, "type": result_type, "limit": RESULTS_PAGE}
            )
            if not rows:
                return
            yield [row[1] for row in rows]
            if len(rows) < RESULTS_PAGE:
                return
            cursor = rows[-1][0] + 1

    # -- transitions -------------------------------------------------------------------------

    async def cancel(self, workspace: str, batch_id: str, *, prefix: str = MESSAGE_BATCH_PREFIX) -> Batch:
        batch = await self.get(workspace, batch_id, prefix=prefix)
        if batch.status == ENDED:
            raise InvalidRequestError(f"Batch {batch_id} has already ended and cannot be canceled.")
        if batch.status == IN_PROGRESS:
            now = now_us()
            found = await self.store.run(
                Step("mark_canceling", {"seq": batch.seq, "now": now}),
                *_settle([batch.seq], now),
                Step("notify", {"payload": f"cancel:{batch.seq}"}),
            )
            self._finished_in_bulk(CANCELED, _count(found[1]))
            batch = await self.get(workspace, batch_id, prefix=prefix)
            log.info("batch.canceling id=%s canceled=%d still_running=%d", batch.id, batch.canceled, batch.processing)
            if batch.status == ENDED:
                log.info("batch.ended id=%s reason=canceled", batch.id)
            for callback in self.on_canceled:
                callback(batch)
        return batch

    async def delete(self, workspace: str, batch_id: str) -> Batch:
        batch = await self.get(workspace, batch_id)
        if batch.status != ENDED:
            raise InvalidRequestError("In progress batches cannot be deleted. Consider canceling the batch instead.")
        await self.store.run(Step("delete_batch", {"seq": batch.seq}), Step("forget_batch", {"seq": batch.seq}))
        self._models.pop(batch.seq, None)
        log.info("batch.deleted id=%s", batch.id)
        return batch

    # -- the queue: what the dispatcher calls ------------------------------------------------

    async def claim(self, owner: str, slots: int | Slots, now: int, until: int) -> list[Job]:
        """Lease claimable requests: `slots` free per pool (an int: that many, with no backend
        limits), shared by the rule of `msgbatch.fairness`."""
        if isinstance(slots, int):
            slots = Slots({SHARED_POOL: slots})
        free = {pool: n for pool, n in slots.free.items() if n > 0}
        if not free:
            return []
        active = await self.store.read("active_batches")
        if not active:
            return []
        models = await self._models_of([row[0] for row in active])
        info = {row[0]: row for row in active}
        # Start after the batch served last, so every batch gets its turn however many there are.
        pivot = next((i for i, b in enumerate(active) if b[0] > self._last_served), 0)
        lanes = [
            Lane(row[0], row[7], row[8], key, slots.pool_of(model))
            for row in active[pivot:] + active[:pivot]
            for key, model in models[row[0]]
        ]
        names = {seq: dict(keyed) for seq, keyed in models.items()}
        for pool in free:
            forget_idle(slots.served, pool, {lane.workspace for lane in lanes if lane.pool == pool})
        held = slots.held.copy()
        jobs: list[Job] = []
        while lanes:
            takes = plan(free, lanes, held, self._weight, self._room, slots.served)
            if not takes:
                break
            asked = list(takes.items())
            rows = [
                (lane.seq, info[lane.seq][1], info[lane.seq][1] + info[lane.seq][2], lane.model_key, n)
                for lane, n in asked
            ]
            (found,) = await self.store.run(Step("claim_jobs", {"owner": owner, "until": until, "now": now}, rows=rows))
            taken: dict[tuple[int, int], int] = {}
            for rid, seq, attempts, custom_id, params, key in found:
                _, _, _, betas, headers, expires_at, endpoint, workspace, _ = info[seq]
                model = names[seq].get(key, "")
                jobs.append(
                    Job(rid, seq, custom_id, params, betas, headers, expires_at, attempts, endpoint, workspace, model)
                )
                taken[seq, key] = taken.get((seq, key), 0) + 1
            drained = set()
            for lane, n in asked:
                got = taken.get((lane.seq, lane.model_key), 0)
                free[lane.pool] -= got
                held.add(lane.pool, lane.workspace, lane.seq, got)
                if got:
                    record_grant(slots.served, lane.pool, lane.workspace, got, self._weight(lane.workspace))
                if got < n:
                    drained.add(lane)
                if got:
                    self._last_served = lane.seq
            # A lane that filled its share may have more; one that did not is drained for now.
            lanes = [lane for lane in lanes if lane not in drained and free.get(lane.pool, 0) > 0]
        return interleaved(jobs, self._weight)

    async def _models_of(self, seqs: list[int]) -> dict[int, list[tuple[int, str]]]:
        """Each batch's (model key, model): read once per batch (they never change)."""
        missing = [seq for seq in seqs if seq not in self._models]
        if missing:
            found: dict[int, list[tuple[int, str]]] = {seq: [] for seq in missing}
            for seq, key, model, _ in await self.store.read("models_of_batches", {"seqs": missing}):
                found[seq].append((key, model))
            for seq, keyed in found.items():
                # A batch made before models were recorded: its jobs all have key 0.
                self._models[seq] = keyed or [(0, "")]
        if len(self._models) > 4 * len(seqs) + 100:
            self._models = {seq: self._models[seq] for seq in seqs}
        return {seq: self._models[seq] for seq in seqs}

    def _limits(self, workspace: str) -> Limits:
        limits = self._limits_of.get(workspace)
        if limits is None:
            if len(self._limits_of) > 10_000:
                self._limits_of.clear()
            limits = self._limits_of[workspace] = self.settings.limits_for(workspace)
        return limits

    def _weight(self, workspace: str) -> float:
        return self._limits(workspace).weight

    def _room(self, workspace: str) -> int | None:
        return self._limits(workspace).max_in_flight_per_backend

    def _finished_in_bulk(self, result: int, count: int) -> None:
        if count:
            for callback in self.on_finished_in_bulk:
                callback(result, count)

    async def complete(self, owner: str, outcomes: Sequence[Outcome], now: int) -> list[str]:
        """Record the outcomes of requests still leased to `owner`; the ids of the batches that
        ended with them."""
        if not outcomes:
            return []
        seqs = sorted({o.batch for o in outcomes})
        finished = [
            (o.job, o.result, o.line, *o.tokens, o.backend, o.error_type or "")
            for o in outcomes
            if o.result is not None
        ]
        retries = [(o.job, o.not_before) for o in outcomes if o.result is None]
        steps = [Step("lock_batches", {"seqs": seqs})]
        if finished:
            # Usage is counted by the hour, throughput by the second (unix seconds).
            at = {"owner": owner, "hour": now // 3_600_000_000 * 3600, "second": now // 1_000_000}
            steps.append(Step("finish_jobs", at, rows=finished))
        if retries:
            # A retry goes back to the queue; in a batch being canceled it is canceled instead.
            steps.append(Step("requeue_jobs", {"owner": owner}, rows=retries))
            steps += _settle(seqs, now)
        steps.append(Step("end_idle_batches", {"seqs": seqs, "now": now}))
        found = await self.store.run(*steps)
        ended = _ids(found[-1])
        if retries:
            ended += _ids(found[-2])  # end_idle_canceling
            self._finished_in_bulk(CANCELED, _count(found[-3]))  # settle_canceling
        return ended

    async def renew(self, owner: str, job_ids: Sequence[int], until: int) -> None:
        """Extend the leases the caller holds: only those it names (a claim whose answer never
        reached it must lapse and be reaped)."""
        if job_ids:
            await self.store.run(Step("renew_leases", {"owner": owner, "ids": list(job_ids), "until": until}))

    async def release(self, owner: str, job_ids: Sequence[int]) -> int:
        """Hand leased, unstarted requests back to the queue (a worker stopping)."""
        if not job_ids:
            return 0
        released, settled, _ = await self.store.run(
            Step("release_jobs", {"owner": owner, "ids": sorted(job_ids)}), *_settle(None, now_us())
        )
        self._finished_in_bulk(CANCELED, _count(settled))
        await self._announce_work(released)
        return len(released)

    async def reap(self, now: int, *, every_lease: bool = False) -> int:
        """Requests whose lease ran out (their worker died) go back to the queue; with
        `every_lease`, every leased request does."""
        cutoff = _FOREVER if every_lease else now
        reaped, settled, _ = await self.store.run(Step("reap_leases", {"now": cutoff}), *_settle(None, now))
        self._finished_in_bulk(CANCELED, _count(settled))
        await self._announce_work(reaped)
        return len(reaped)

    async def recover(self) -> int:
        """At start: on a single-process store every lease belongs to a process that is gone; on
        a shared one, only the leases that ran out do."""
        return await self.reap(now_us(), every_lease=self.store.single_process)

    async def _announce_work(self, requeued: list[Row]) -> None:
        if requeued:
            await self.store.run(Step("notify", {"payload": "work"}))

    async def queue_summary(self, now: int) -> tuple[int, int, int | None]:
        """Waiting requests of batches in progress: claimable now, in all, and when the next is due."""
        rows = await self.store.read("queue_summary", {"now": now})
        claimable, waiting, next_due = rows[0]
        return int(claimable or 0), int(waiting or 0), next_due

    async def expire_due(self, now: int) -> list[str]:
        ended: list[str] = []
        for (seq,) in await self.store.read("due_batches", {"now": now}):
            (rows,) = await self.store.run(Step("expire_batch", {"seq": seq, "now": now}))
            ended += _ids(rows)
            self._finished_in_bulk(EXPIRED, sum(int(row[1]) for row in rows))
        return ended

    async def archive_due(self, now: int) -> list[str]:
        cutoff = now - int(self.settings.retention_seconds * 1_000_000)
        archived: list[str] = []
        for (seq,) in await self.store.read("archivable_batches", {"cutoff": cutoff}):
            (rows,) = await self.store.run(Step("archive_batch", {"seq": seq, "now": now}))
            archived += _ids(rows)
        return archived

    # -- rendering ---------------------------------------------------------------------------

    @staticmethod
    def render(batch: Batch, base_url: str) -> dict[str, Any]:
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": STATUS_NAMES[batch.status],
            "request_counts": {
                "processing": batch.processing,
                "succeeded": batch.succeeded,
                "errored": batch.errored,
                "canceled": batch.canceled,
                "expired": batch.expired,
            },
            "created_at": rfc3339(batch.created_at),
            "expires_at": rfc3339(batch.expires_at),
            "ended_at": rfc3339(batch.ended_at),
            "cancel_initiated_at": rfc3339(batch.cancel_initiated_at),
            "archived_at": rfc3339(batch.archived_at),
            "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if batch.status == ENDED else None,
            # msgbatch's own keys (the SDK's models keep keys they do not know).
            "priority": PRIORITY_NAMES[batch.priority],
            "usage": {
                "input_tokens": batch.input_tokens,
                "output_tokens": batch.output_tokens,
                "cache_read_input_tokens": batch.cache_read_input_tokens,
                "cache_creation_input_tokens": batch.cache_creation_input_tokens,
            },
        }
