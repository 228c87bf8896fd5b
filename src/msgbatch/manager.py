"""BatchManager: every batch rule lives here — envelope validation, transitions, visibility."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from msgbatch.clock import now_us, rfc3339
from msgbatch.config import Settings
from msgbatch.errors import InvalidRequestError, NotFoundError
from msgbatch.ids import new_batch_id
from msgbatch.models import ENDED, IN_PROGRESS, STATUS_NAMES, Batch
from msgbatch.store.base import Store

log = logging.getLogger("msgbatch.batches")

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
NO_RESULTS = "Message Batch ID has no available results."
NOT_FOUND = "Message Batch ID not found."


class _Request(msgspec.Struct, gc=False):
    custom_id: str
    params: msgspec.Raw


class _CreateBody(msgspec.Struct, gc=False):
    requests: list[_Request]


_decoder = msgspec.json.Decoder(_CreateBody)
_MSGSPEC_PATH = re.compile(r"`\$((?:\.[A-Za-z_]\w*|\[\d+\])*)`")
_TYPE_WORDS = {
    "str": "a valid string",
    "object": "a valid dictionary",
    "array": "a valid list",
    "int": "a valid integer",
}


def _api_path(msgspec_path: str) -> str:
    parts = re.findall(r"\.([A-Za-z_]\w*)|\[(\d+)\]", msgspec_path)
    return ".".join(name or index for name, index in parts)


def _translate(exc: msgspec.ValidationError) -> str:
    """msgspec's messages, in the API's `field.path: problem` style."""
    text = str(exc)
    m = re.match(r"Object missing required field `(\w+)`(?: - at `\$(.*)`)?", text)
    if m:
        prefix = _api_path(m.group(2) or "")
        return f"{prefix + '.' if prefix else ''}{m.group(1)}: Field required"
    m = re.match(r"Expected `(\w+)`, got `(\w+)`(?: - at `\$(.*)`)?", text)
    if m:
        return f"{_api_path(m.group(3) or '') or 'body'}: Input should be {_TYPE_WORDS.get(m.group(1), m.group(1))}"
    return text


def parse_create_body(body: bytes | bytearray | memoryview, max_requests: int) -> list[_Request]:
    """Check the envelope of a create call; params stay as the raw bytes they came as."""
    # The cyclic GC would walk 100k fresh objects several times during a big parse; it can't
    # find cycles here anyway.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            parsed = _decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise InvalidRequestError(_translate(exc)) from None
        except msgspec.DecodeError as exc:
            raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    finally:
        if gc_was_enabled:
            gc.enable()
    requests = parsed.requests
    if not requests:
        raise InvalidRequestError("requests: List should have at least 1 item after validation, not 0")
    if len(requests) > max_requests:
        raise InvalidRequestError(
            f"requests: List should have at most {max_requests:,} items after validation, not {len(requests):,}"
        )
    seen: set[str] = set()
    fullmatch = CUSTOM_ID.fullmatch
    for i, req in enumerate(requests):
        cid = req.custom_id
        if fullmatch(cid) is None:
            raise InvalidRequestError(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if cid in seen:
            raise InvalidRequestError(
                f"requests: custom_id's must be unique within a batch. Duplicate custom_id found: {cid}"
            )
        seen.add(cid)
        if memoryview(req.params)[0] != 0x7B:  # "{"
            raise InvalidRequestError(f"requests.{i}.params: Input should be a valid dictionary")
    return requests


def parse_betas(values: list[str]) -> str:
    """`anthropic-beta` may be comma separated and/or repeated; keep each value once, in order."""
    betas: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item and item not in betas:
                betas.append(item)
    return ",".join(betas)


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
