"""BatchManager: every batch rule lives here — envelope validation, transitions, visibility."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from msgbatch.clock import now_us, rfc3339
from msgbatch.config import Settings
from msgbatch.envelope import parse_create_body
from msgbatch.errors import InvalidRequestError, NotFoundError
from msgbatch.ids import new_batch_id
from msgbatch.models import ENDED, IN_PROGRESS, STATUS_NAMES, Batch
from msgbatch.store.base import Store

log = logging.getLogger("msgbatch.batches")

NO_RESULTS = "Message Batch ID has no available results."
NOT_FOUND = "Message Batch ID not found."


class BatchManager:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        # Callbacks the engine registers: new work to claim, a batch that stopped taking work.
        self.on_created: list[Callable[[Batch], None]] = []
        self.on_canceled: list[Callable[[Batch], None]] = []

    # -- create ------------------------------------------------------------------------------

    async def create(self, workspace: str, body: bytes | bytearray | memoryview, betas: str) -> Batch:
        requests = parse_create_body(body, self.settings.max_requests)
        now = now_us()
        draft = Batch(
            seq=0,
            id=new_batch_id(),
            workspace=workspace,
            status=IN_PROGRESS,
            created_at=now,
            expires_at=now + int(self.settings.expiry_seconds * 1_000_000),
            total=len(requests),
            processing=len(requests),
            first_request=0,
            betas=betas,
        )
        batch = await self.store.create_batch(draft, [(r.custom_id, r.params) for r in requests])
        log.info(
            "batch.created id=%s workspace=%s requests=%d bytes=%d",
            batch.id,
            workspace,
            batch.total,
            len(body),
        )
        for callback in self.on_created:
            callback(batch)
        return batch

    # -- read --------------------------------------------------------------------------------

    async def get(self, workspace: str, batch_id: str) -> Batch:
        batch = await self.store.get_batch(batch_id)
        if batch is None or batch.workspace != workspace:
            raise NotFoundError(NOT_FOUND)
        return batch

    async def list_batches(
        self, workspace: str, *, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool]:
        if after_id is not None and before_id is not None:
            raise InvalidRequestError("Cannot specify both `before_id` and `after_id`.")
        if not 1 <= limit <= 1000:
            raise InvalidRequestError(
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
            )
        return await self.store.list_batches(workspace, limit, after_id=after_id, before_id=before_id)

    # -- transitions -------------------------------------------------------------------------

    async def cancel(self, workspace: str, batch_id: str) -> Batch:
        batch = await self.get(workspace, batch_id)
        if batch.status == ENDED:
            raise InvalidRequestError(f"Batch {batch_id} has already ended and cannot be canceled.")
        if batch.status == IN_PROGRESS:
            await self.store.cancel_batch(batch.seq, now_us())
            batch = await self.get(workspace, batch_id)
            log.info(
                "batch.canceling id=%s canceled=%d still_running=%d",
                batch.id,
                batch.canceled,
                batch.processing,
            )
            if batch.status == ENDED:
                log.info("batch.ended id=%s reason=canceled", batch.id)
            for callback in self.on_canceled:
                callback(batch)
        return batch

    async def delete(self, workspace: str, batch_id: str) -> Batch:
        batch = await self.get(workspace, batch_id)
        if batch.status != ENDED:
            raise InvalidRequestError("In progress batches cannot be deleted. Consider canceling the batch instead.")
        await self.store.delete_batch(batch.seq)
        log.info("batch.deleted id=%s", batch.id)
        return batch

    async def results(
        self, workspace: str, batch_id: str, *, result_type: int | None = None, custom_id: str | None = None
    ) -> AsyncIterator[list[bytes]]:
        batch = await self.get(workspace, batch_id)
        if batch.status != ENDED or batch.archived_at is not None:
            raise NotFoundError(NO_RESULTS)
        return self.store.iter_results(batch, result_type=result_type, custom_id=custom_id)

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
