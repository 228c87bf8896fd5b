"""The storage interface. Each operation is one transaction; the rules live in the manager."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec

from msgbatch.models import Batch, Job, Outcome

# The batches table's columns, in the order `batch_from_row` reads them (same in every dialect).
BATCH_COLUMNS = (
    "seq, id, workspace, status, created_at, expires_at, ended_at, cancel_initiated_at, archived_at, "
    "total, processing, succeeded, errored, canceled, expired, first_request, betas"
)


def batch_from_row(row: Sequence[Any]) -> Batch:
    return Batch(
        seq=row[0],
        id=row[1],
        workspace=row[2],
        status=row[3],
        created_at=row[4],
        expires_at=row[5],
        ended_at=row[6],
        cancel_initiated_at=row[7],
        archived_at=row[8],
        total=row[9],
        processing=row[10],
        succeeded=row[11],
        errored=row[12],
        canceled=row[13],
        expired=row[14],
        first_request=row[15],
        betas=row[16],
    )


class Store(Protocol):
    # Whether one process owns the database (SQLite): then leases held at start-up are stale.
    single_process: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def create_batch(self, batch: Batch, requests: Sequence[tuple[str, msgspec.Raw | bytes]]) -> Batch:
        """Store a batch and its requests atomically; returns it with `seq` and `first_request` set."""
        ...

    async def get_batch(self, batch_id: str) -> Batch | None: ...

    async def list_batches(
        self, workspace: str, limit: int, *, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool]:
        """Newest first; the bool says whether more lie beyond in the direction asked."""
        ...

    async def cancel_batch(self, seq: int, now: int) -> None:
        """Mark canceling, turn every not-yet-running request into a `canceled` result, end if idle."""
        ...

    async def delete_batch(self, seq: int) -> None: ...

    def iter_results(
        self, batch: Batch, *, result_type: int | None = None, custom_id: str | None = None
    ) -> AsyncIterator[list[bytes]]:
        """The batch's results lines in pages, read with constant memory."""
        ...

    async def claim(self, owner: str, limit: int, now: int, lease_until: int) -> list[Job]:
        """Lease up to `limit` pending requests, spread fairly over the batches that have some."""
        ...

    async def complete(self, owner: str, outcomes: Sequence[Outcome], now: int) -> tuple[int, list[str]]:
        """Record outcomes of jobs still leased by `owner`: how many were accepted, and the ids of
        the batches that ended with them."""
        ...

    async def renew_leases(self, owner: str, lease_until: int) -> None: ...

    async def release(self, owner: str, job_ids: Sequence[int]) -> None:
        """Hand leased jobs back to the queue (shutdown)."""
        ...

    async def recover(self) -> int:
        """On start of a single-process store: requeue every leased job (its owner is gone).

        A store shared by several processes must not do that (the leases may belong to live
        workers): there it only reaps leases that have run out."""
        ...

    async def listen(self, on_work: Callable[[], None], on_canceled: Callable[[int], None]) -> None:
        """Until `close()`, call `on_work()` when another process queued work (a new batch, released
        or reaped requests) and `on_canceled(seq)` when it canceled a batch. Returns at once; a
        single-process store has nothing to listen to (the manager calls back in process)."""
        ...

    async def reap_leases(self, now: int) -> int: ...

    async def expire_due(self, now: int) -> list[str]:
        """End batches past `expires_at`: their unfinished requests become `expired`."""
        ...

    async def archive_due(self, created_before: int, now: int) -> list[str]:
        """Archive ended batches created before the cutoff: drop their requests and results."""
        ...


RESULTS_PAGE = 2000


async def keyset_pages(
    fetch: Callable[[int, int], Awaitable[Sequence[tuple[int, bytes]]]], start: int, end: int
) -> AsyncIterator[list[bytes]]:
    """Results lines with ids in [start, end), a page at a time, in id order.

    `fetch(cursor, limit)` returns up to `limit` (id, line) rows with cursor <= id < end. Each
    page is its own short query, so a slow reader holds no connection or snapshot open.
    """
    cursor = start
    while cursor < end:
        rows = await fetch(cursor, RESULTS_PAGE)
        if not rows:
            return
        yield [r[1] for r in rows]
        if len(rows) < RESULTS_PAGE:
            return
        cursor = rows[-1][0] + 1
