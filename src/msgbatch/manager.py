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
- **fairness**: a claim spreads over every batch that has work, starting after the batch served
  last, so a small batch is never stuck behind a big one.
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
from msgbatch.config import Settings
from msgbatch.envelope import parse_create_body
from msgbatch.errors import InvalidRequestError, NotFoundError
from msgbatch.ids import MESSAGE_BATCH_PREFIX, new_batch_id
from msgbatch.models import ENDED, IN_PROGRESS, STATUS_NAMES, Batch, Job, Outcome
from msgbatch.store.base import Row, Step, Store, batch_from_row

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
        self._last_served = 0  # fairness: the seq of the batch a claim served last

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
        requests = parse_create_body(body, self.settings.max_requests)
        return await self.create_batch(
            workspace, requests, size=len(body), betas=betas, headers=headers, metadata=metadata
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
    ) -> Batch:
        """A batch of requests whose envelope was checked; `also` are steps of the same transaction
        (another dialect's own columns), run after the batch row is inserted."""
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
        )
        inserted, *_ = await self.store.run(
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
                },
            ),
            *also,
            Step("insert_requests", rows=[(first + i, r.custom_id, r.params) for i, r in enumerate(requests)]),
            Step("insert_jobs", {"batch_id": batch.id, "first": first, "stop": first + total}),
            Step("notify", {"payload": "work"}),
            durable=True,
        )
        batch = msgspec.structs.replace(batch, seq=inserted[0][0])
        log.info("batch.created id=%s workspace=%s requests=%d bytes=%d", batch.id, workspace, total, size)
        for callback in self.on_created:
            callback(batch)
        return batch

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
    ) -> tuple[list[Batch], bool]:
        """Newest first; the bool says whether more lie beyond in the direction asked."""
        if after_id is not None and before_id is not None:
            raise InvalidRequestError("Cannot specify both `before_id` and `after_id`.")
        if not 1 <= limit <= 1000:
            raise InvalidRequestError(
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
            )
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
            await self.store.run(
                Step("mark_canceling", {"seq": batch.seq, "now": now}),
                *_settle([batch.seq], now),
                Step("notify", {"payload": f"cancel:{batch.seq}"}),
            )
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
        await self.store.run(Step("delete_batch", {"seq": batch.seq}))
        log.info("batch.deleted id=%s", batch.id)
        return batch

    # -- the queue: what the dispatcher calls ------------------------------------------------

    async def claim(self, owner: str, limit: int, now: int, until: int) -> list[Job]:
        """Lease up to `limit` claimable requests, spread fairly over the batches that have some."""
        active = await self.store.read("active_batches")
        if not active or limit < 1:
            return []
        # Start after the batch served last, so every batch gets its turn however many there are.
        pivot = next((i for i, b in enumerate(active) if b[0] > self._last_served), 0)
        order = active[pivot:] + active[:pivot]
        info = {b[0]: b for b in active}
        jobs: list[Job] = []
        remaining = limit
        while remaining > 0 and order:
            # An equal share each, the first ones in the rotation taking the remainder.
            base, extra = divmod(remaining, len(order))
            plan = [(b[0], b[1], b[1] + b[2], base + (i < extra)) for i, b in enumerate(order)]
            asked = [p for p in plan if p[3] > 0]
            (rows,) = await self.store.run(Step("claim_jobs", {"owner": owner, "until": until, "now": now}, rows=asked))
            taken: dict[int, int] = {}
            for rid, seq, attempts, custom_id, params in rows:
                _, _, _, betas, headers, expires_at, endpoint = info[seq]
                jobs.append(Job(rid, seq, custom_id, params, betas, headers, expires_at, attempts, endpoint))
                taken[seq] = taken.get(seq, 0) + 1
            remaining -= len(rows)
            if rows:
                self._last_served = [p[0] for p in asked if p[0] in taken][-1]
            # A batch that filled its share may have more, and one not asked this time has its turn
            # next; the others are drained for now. Each round claims something or drops batches.
            order = [info[p[0]] for p in plan if p[3] == 0 or taken.get(p[0], 0) >= p[3]]
        return jobs

    async def complete(self, owner: str, outcomes: Sequence[Outcome], now: int) -> list[str]:
        """Record the outcomes of requests still leased to `owner`; the ids of the batches that
        ended with them."""
        if not outcomes:
            return []
        seqs = sorted({o.batch for o in outcomes})
        finished = [(o.job, o.result, o.line, *o.tokens) for o in outcomes if o.result is not None]
        retries = [(o.job, o.not_before) for o in outcomes if o.result is None]
        steps = [Step("lock_batches", {"seqs": seqs})]
        if finished:
            steps.append(Step("finish_jobs", {"owner": owner}, rows=finished))
        if retries:
            # A retry goes back to the queue; in a batch being canceled it is canceled instead.
            steps.append(Step("requeue_jobs", {"owner": owner}, rows=retries))
            steps += _settle(seqs, now)
        steps.append(Step("end_idle_batches", {"seqs": seqs, "now": now}))
        found = await self.store.run(*steps)
        ended = _ids(found[-1])
        if retries:
            ended += _ids(found[-2])  # end_idle_canceling
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
        released, *_ = await self.store.run(
            Step("release_jobs", {"owner": owner, "ids": sorted(job_ids)}), *_settle(None, now_us())
        )
        await self._announce_work(released)
        return len(released)

    async def reap(self, now: int, *, every_lease: bool = False) -> int:
        """Requests whose lease ran out (their worker died) go back to the queue; with
        `every_lease`, every leased request does."""
        cutoff = _FOREVER if every_lease else now
        reaped, *_ = await self.store.run(Step("reap_leases", {"now": cutoff}), *_settle(None, now))
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
        }
