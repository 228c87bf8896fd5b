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

Beyond the hosted API (each invisible to a batch that does not use it):
- **options**: metadata, a fail-fast policy and a webhook_url are kept with the batch.
- **idempotency**: a create (or retry) with an Idempotency-Key writes the key in its own
  transaction; the same key again within 24 h (per workspace) gives back that batch when the body
  is the same, and is refused (409) when it is not. Two at once: one commits, the other fails on
  the key and gives back the first's batch.
- **retry**: an ended batch's lines of the result (and error) types asked become a new batch with
  the same custom_ids, params, betas, headers, metadata, fail-fast policy and webhook_url,
  `retry_of` the parent; the parent's `retried_by` names it, in the same transaction.
- **hard cancel**: a cancel with `abort_running` marks the batch so that every process stops its
  running requests (they end `canceled`); a canceling batch can be upgraded to it.
- **fail-fast**: judged on the counts in the transaction that writes results (whichever process
  writes them): too many errored, and the batch is canceled as a hard cancel (`fail_fast`).
- **webhook events**: every transaction that cancels or ends a batch writes its events to the
  outbox (msgbatch.webhooks) before it commits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from msgbatch.batch_options import BatchOptions, FailFast, check_metadata, options_of
from msgbatch.clock import now_us, rfc3339
from msgbatch.config import Settings
from msgbatch.envelope import parse_create
from msgbatch.errors import ConflictError, InvalidRequestError, NotFoundError
from msgbatch.ids import MESSAGE_BATCH_PREFIX, new_batch_id
from msgbatch.models import (
    CANCELING,
    ENDED,
    ERRORED,
    IN_PROGRESS,
    RESULT_CODES,
    STATUS_NAMES,
    Batch,
    Job,
    Outcome,
)
from msgbatch.store.base import Row, Step, Store, batch_from_row
from msgbatch.webhooks import WebhookOutbox, announce_step

log = logging.getLogger("msgbatch.batches")

NO_RESULTS = "Message Batch ID has no available results."
NOT_FOUND = "Message Batch ID not found."
RESULTS_PAGE = 2000
# Above every id of a prefix (prefix + base62): the upper cursor of a first list page.
_TOP = "~"
# Later than any lease: at the start of a single-process store, every lease it finds is stale.
_FOREVER = 1 << 62
IDEMPOTENCY_KEY_LIFETIME = 24 * 3600 * 1_000_000
MAX_IDEMPOTENCY_KEY = 255
_SWEEP_EVERY = 60.0  # seconds between sweeps of expired idempotency keys and old deliveries


def _settle(seqs: Sequence[int] | None, now: int) -> list[Step]:
    """Waiting requests of batches being canceled become `canceled`; idle ones end."""
    return [
        Step("settle_canceling", {"seqs": list(seqs) if seqs is not None else None}),
        Step("end_idle_canceling", {"now": now}),
    ]


def _ids(rows: list[Row]) -> list[str]:
    return [row[0] for row in rows]


def _new_requests(requests: Sequence[Any]) -> Callable[[int], Step]:
    """The step that inserts new requests, from id `first` on."""
    return lambda first: Step(
        "insert_requests", rows=[(first + i, r.custom_id, r.params) for i, r in enumerate(requests)]
    )


@dataclass(frozen=True, slots=True)
class _Key:
    """An Idempotency-Key as the store keeps it: its workspace, and a hash of the call it came with."""

    workspace: str
    key: str
    fingerprint: str


def check_idempotency_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in value):
        raise InvalidRequestError(f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return value


async def _fingerprint(scope: str, body: bytes | bytearray | memoryview) -> str:
    digest = hashlib.sha256(scope.encode() + b"\n")
    if len(body) > 1 << 20:
        await asyncio.to_thread(digest.update, body)  # hashlib lets go of the GIL: the loop runs on
    else:
        digest.update(body)
    return digest.hexdigest()


class _ErrorObject(msgspec.Struct):
    type: str = ""


class _ErrorBody(msgspec.Struct):
    error: _ErrorObject | None = None


class _Result(msgspec.Struct):
    error: _ErrorBody | None = None


class _Line(msgspec.Struct):
    result: _Result


_line_decoder = msgspec.json.Decoder(_Line)


def _error_type(line: bytes) -> str:
    """The error type of an `errored` results line (`result.error.error.type`)."""
    try:
        error = _line_decoder.decode(line).result.error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""
    return error.error.type if error is not None and error.error is not None else ""


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
        self.on_announced: list[Callable[[], None]] = []  # webhook events were written
        self._last_served = 0  # fairness: the seq of the batch a claim served last
        self.outbox = WebhookOutbox(store, settings)
        self._next_sweep = 0.0

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
        batch, _ = await self.create_once(workspace, body, betas, headers, metadata=metadata)
        return batch

    async def create_once(
        self,
        workspace: str,
        body: bytes | bytearray | memoryview,
        betas: str,
        headers: dict[str, str] | None = None,
        *,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Batch, bool]:
        """Create a batch. With an `idempotency_key`: the batch that key created in the last 24 h,
        and True, when it came with the same body (a different body: ConflictError)."""
        key = None
        if idempotency_key is not None:
            key = _Key(workspace, check_idempotency_key(idempotency_key), await _fingerprint("create", body))
            if (earlier := await self._replay(key)) is not None:
                return earlier, True
        call = parse_create(body, self.settings.max_requests)
        options = options_of(
            self.settings,
            metadata=call.metadata if call.metadata is not None else metadata,
            fail_fast=call.fail_fast,
            webhook_url=call.webhook_url,
        )
        requests = call.requests
        return await self._insert(
            workspace, len(requests), betas, headers, options, _new_requests(requests), size=len(body), key=key
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
        options = BatchOptions(metadata=metadata or None)
        batch, _ = await self._insert(
            workspace, len(requests), betas, headers, options, _new_requests(requests), size=size,
            batch_id=batch_id, also=also,
        )  # fmt: skip
        return batch

    async def _insert(
        self,
        workspace: str,
        total: int,
        betas: str,
        headers: dict[str, str] | str | None,
        options: BatchOptions,
        requests: Callable[[int], Step],
        *,
        size: int = 0,
        key: _Key | None = None,
        parent: Batch | None = None,
        batch_id: str | None = None,
        also: Sequence[Step] = (),
    ) -> tuple[Batch, bool]:
        """Store a new batch: its row, its requests (`requests(first id)`: new ones, or a retry's
        copies), its queue, in one durable transaction, with its idempotency key, its options and
        its parent's link when it has them. `headers` come as a dict, or already encoded (a
        retry: the parent's). `also`: another dialect's steps, after the batch row."""
        now = now_us()
        if not isinstance(headers, str):
            headers = msgspec.json.encode(headers or {}).decode()
        (reserved,) = await self.store.run(Step("reserve_request_ids", {"n": total}))
        first = reserved[0][0] - total + 1
        fail_fast = options.fail_fast
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
            headers=headers,
            metadata=msgspec.json.encode(options.metadata or {}).decode(),
            retry_of=options.retry_of,
            fail_fast_min_results=fail_fast.min_results if fail_fast else None,
            fail_fast_max_error_rate=fail_fast.max_error_rate if fail_fast else None,
            webhook_url=options.webhook_url,
        )
        steps = []
        if key is not None:  # first: a concurrent create with the same key stops here
            steps.append(
                Step(
                    "claim_idempotency_key",
                    {
                        "workspace": key.workspace,
                        "key": key.key,
                        "fingerprint": key.fingerprint,
                        "batch_id": batch.id,
                        "now": now,
                        "cutoff": now - IDEMPOTENCY_KEY_LIFETIME,
                    },
                )
            )
        inserted_at = len(steps)
        steps += [
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
            requests(first),
            Step("insert_jobs", {"batch_id": batch.id, "first": first, "stop": first + total}),
        ]
        if options.stored_apart:
            steps.append(
                Step(
                    "set_batch_options",
                    {
                        "id": batch.id,
                        "retry_of": batch.retry_of,
                        "fail_fast_min_results": batch.fail_fast_min_results,
                        "fail_fast_max_error_rate": batch.fail_fast_max_error_rate,
                        "webhook_url": batch.webhook_url,
                    },
                )
            )
        if parent is not None:
            steps.append(Step("set_retried_by", {"seq": parent.seq, "child": batch.id}))
        steps.append(Step("notify", {"payload": "work"}))
        try:
            found = await self.store.run(*steps, durable=True)
        except Exception:
            if key is None:
                raise
            # Did a call with the same key commit first? Then this one is that call again.
            try:
                earlier = await self._replay(key)
            except ConflictError:
                raise
            except Exception:
                earlier = None
            if earlier is None:
                raise
            return earlier, True
        batch = msgspec.structs.replace(batch, seq=found[inserted_at][0][0])
        if parent is None:
            log.info("batch.created id=%s workspace=%s requests=%d bytes=%d", batch.id, workspace, total, size)
        else:
            log.info("batch.created id=%s workspace=%s requests=%d retry_of=%s", batch.id, workspace, total, parent.id)
        for callback in self.on_created:
            callback(batch)
        return batch, False

    async def _replay(self, key: _Key) -> Batch | None:
        """The batch an Idempotency-Key made in the last 24 h, if it made one."""
        cutoff = now_us() - IDEMPOTENCY_KEY_LIFETIME
        rows = await self.store.read(
            "find_idempotency_key", {"workspace": key.workspace, "key": key.key, "cutoff": cutoff}
        )
        if not rows:
            return None
        fingerprint, batch_id = rows[0]
        if fingerprint != key.fingerprint:
            raise ConflictError(
                f"Idempotency-Key {key.key!r} was already used for a different request (it created batch "
                f"{batch_id}); a new request needs a new key."
            )
        batch = await self.find(batch_id)
        if batch is None:
            raise ConflictError(f"Idempotency-Key {key.key!r} created batch {batch_id}, which has since been deleted.")
        log.info("batch.replayed id=%s workspace=%s", batch.id, key.workspace)
        return batch

    # -- retry -------------------------------------------------------------------------------

    async def retry(
        self,
        workspace: str,
        batch_id: str,
        *,
        result_types: Sequence[str] | None = None,
        error_types: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Batch, bool]:
        """A new batch running again the lines of an ended batch whose result type is one of
        `result_types` (default: errored and expired) and, for errored ones, whose error type is
        one of `error_types` (default: any); and whether an Idempotency-Key gave back an earlier one."""
        types = list(result_types) if result_types is not None else ["errored", "expired"]
        if not types:
            raise InvalidRequestError("result_types: List should have at least 1 item after validation, not 0")
        for name in types:
            if name not in RESULT_CODES:
                raise InvalidRequestError(f"result_types: Input should be one of {', '.join(RESULT_CODES)}")
        if error_types is not None and not all(isinstance(t, str) and t for t in error_types):
            raise InvalidRequestError("error_types: Input should be a list of error types")
        parent = await self.get(workspace, batch_id)
        key = None
        if idempotency_key is not None:
            selection = msgspec.json.encode([sorted(set(types)), sorted(set(error_types)) if error_types else None])
            key = _Key(
                workspace, check_idempotency_key(idempotency_key), await _fingerprint(f"retry {batch_id}", selection)
            )
            if (earlier := await self._replay(key)) is not None:
                return earlier, True
        if parent.status != ENDED:
            raise InvalidRequestError(
                f"Batch {batch_id} has not ended yet: only an ended batch's lines can be retried."
            )
        if parent.archived_at is not None:
            raise InvalidRequestError(f"Batch {batch_id} is archived: its results are no longer kept.")
        ids = await self._lines_to_retry(parent, {RESULT_CODES[t] for t in types}, error_types)
        if not ids:
            which = " or ".join(sorted(set(types)))
            if error_types:
                which += f" (errors of type {' or '.join(error_types)})"
            raise InvalidRequestError(f"No result of batch {batch_id} is {which}: there is nothing to retry.")
        fail_fast = None
        if parent.fail_fast_min_results is not None and parent.fail_fast_max_error_rate is not None:
            fail_fast = FailFast(parent.fail_fast_min_results, parent.fail_fast_max_error_rate)
        options = BatchOptions(
            metadata=check_metadata(msgspec.json.decode(parent.metadata)) or None,
            fail_fast=fail_fast,
            webhook_url=parent.webhook_url,
            retry_of=parent.id,
        )
        return await self._insert(
            workspace, len(ids), parent.betas, parent.headers, options,
            lambda first: Step("copy_requests", {"ids": ids, "first": first}), key=key, parent=parent,
        )  # fmt: skip

    async def _lines_to_retry(self, batch: Batch, codes: set[int], error_types: Sequence[str] | None) -> list[int]:
        """The request ids of the batch's results of those types (errored: of those error types)."""
        wanted = set(error_types) if error_types else None
        ids: list[int] = []
        for code in sorted(codes):
            cursor, stop = batch.first_request, batch.stop_request
            while cursor < stop:
                rows = await self.store.read(
                    "results_page", {"cursor": cursor, "stop": stop, "type": code, "limit": RESULTS_PAGE}
                )
                for rid, line in rows:
                    if code != ERRORED or wanted is None or _error_type(line) in wanted:
                        ids.append(rid)
                if len(rows) < RESULTS_PAGE:
                    break
                cursor = rows[-1][0] + 1
        ids.sort()
        return ids

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
        metadata: dict[str, str] | None = None,
    ) -> tuple[list[Batch], bool]:
        """Newest first; the bool says whether more lie beyond in the direction asked. With
        `metadata`, only the batches whose metadata holds every one of those pairs."""
        if after_id is not None and before_id is not None:
            raise InvalidRequestError("Cannot specify both `before_id` and `after_id`.")
        if not 1 <= limit <= 1000:
            raise InvalidRequestError(
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
            )
        matching = "_matching" if metadata else ""
        filters = {"metadata": msgspec.json.encode(metadata).decode()} if metadata else {}
        if before_id is not None:
            rows = await self.store.read(
                f"list_batches{matching}_before",
                {"workspace": workspace, "lower": max(before_id, prefix), "limit": limit + 1, **filters},
            )
            return [batch_from_row(r) for r in reversed(rows[:limit])], len(rows) > limit
        rows = await self.store.read(
            f"list_batches{matching}",
            # The cursor is kept within the prefix: an API lists only its own batches.
            {
                "workspace": workspace,
                "lower": prefix,
                "upper": min(after_id or _TOP, prefix + _TOP),
                "limit": limit + 1,
                **filters,
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

    async def cancel(
        self, workspace: str, batch_id: str, *, abort_running: bool = False, prefix: str = MESSAGE_BATCH_PREFIX
    ) -> Batch:
        """Cancel a batch; with `abort_running`, its running requests are stopped too (a hard
        cancel; a batch already canceling is upgraded to it)."""
        batch = await self.get(workspace, batch_id, prefix=prefix)
        if batch.status == ENDED:
            raise InvalidRequestError(f"Batch {batch_id} has already ended and cannot be canceled.")
        signal = f"abort:{batch.seq}" if abort_running else f"cancel:{batch.seq}"
        if batch.status == IN_PROGRESS:
            now = now_us()
            steps = [Step("mark_canceling", {"seq": batch.seq, "now": now})]
            if abort_running:
                steps.append(Step("mark_abort_running", {"seq": batch.seq}))
            found = await self.store.run(
                *steps,
                *_settle([batch.seq], now),
                announce_step(self.settings, now),
                Step("notify", {"payload": signal}),
            )
            batch = await self.get(workspace, batch_id, prefix=prefix)
            log.info(
                "batch.canceling id=%s canceled=%d still_running=%d abort_running=%s",
                batch.id,
                batch.canceled,
                batch.processing,
                str(batch.abort_running).lower(),
            )
            if batch.status == ENDED:
                log.info("batch.ended id=%s reason=canceled", batch.id)
            self._announced(found[-2])
        elif batch.status == CANCELING and abort_running and not batch.abort_running:
            await self.store.run(Step("mark_abort_running", {"seq": batch.seq}), Step("notify", {"payload": signal}))
            batch = await self.get(workspace, batch_id, prefix=prefix)
            log.info("batch.canceling id=%s abort_running=true still_running=%d", batch.id, batch.processing)
        else:
            return batch
        for callback in self.on_canceled:
            callback(batch)
        return batch

    async def aborting(self, seqs: Sequence[int]) -> list[int]:
        """Of these batches, those whose running requests are to be stopped (a hard cancel)."""
        if not seqs:
            return []
        return [row[0] for row in await self.store.read("aborting_batches", {"seqs": list(seqs)})]

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
            # Fail-fast is judged here, on the counts just written, by whichever process wrote them.
            steps += [Step("fail_fast", {"seqs": seqs, "now": now}), Step("settle_canceling", {"seqs": seqs})]
        if retries:
            # A retry goes back to the queue; in a batch being canceled it is canceled instead.
            steps.append(Step("requeue_jobs", {"owner": owner}, rows=retries))
            steps += _settle(seqs, now)
        steps += [Step("end_idle_batches", {"seqs": seqs, "now": now}), announce_step(self.settings, now)]
        found = await self.store.run(*steps)
        at = {step.name: i for i, step in enumerate(steps)}
        ended = _ids(found[at["end_idle_batches"]])
        if retries:
            ended += _ids(found[at["end_idle_canceling"]])
        self._announced(found[-1])
        if finished and found[at["fail_fast"]]:
            await self._failed_fast(found[at["fail_fast"]])
        return ended

    async def _failed_fast(self, rows: list[Row]) -> None:
        """Batches whose fail-fast policy just canceled them: every process stops their requests."""
        for seq, batch_id in rows:
            log.info("batch.canceling id=%s reason=fail_fast abort_running=true", batch_id)
            await self.store.run(Step("notify", {"payload": f"abort:{seq}"}))
            batch = await self.find(batch_id)
            if batch is not None:
                for callback in self.on_canceled:
                    callback(batch)

    async def renew(self, owner: str, job_ids: Sequence[int], until: int) -> None:
        """Extend the leases the caller holds: only those it names (a claim whose answer never
        reached it must lapse and be reaped)."""
        if job_ids:
            await self.store.run(Step("renew_leases", {"owner": owner, "ids": list(job_ids), "until": until}))

    async def release(self, owner: str, job_ids: Sequence[int]) -> int:
        """Hand leased, unstarted requests back to the queue (a worker stopping)."""
        if not job_ids:
            return 0
        now = now_us()
        released, *_, announced = await self.store.run(
            Step("release_jobs", {"owner": owner, "ids": sorted(job_ids)}),
            *_settle(None, now),
            announce_step(self.settings, now),
        )
        self._announced(announced)
        await self._announce_work(released)
        return len(released)

    async def reap(self, now: int, *, every_lease: bool = False) -> int:
        """Requests whose lease ran out (their worker died) go back to the queue; with
        `every_lease`, every leased request does."""
        cutoff = _FOREVER if every_lease else now
        reaped, *_, announced = await self.store.run(
            Step("reap_leases", {"now": cutoff}), *_settle(None, now), announce_step(self.settings, now)
        )
        self._announced(announced)
        await self._announce_work(reaped)
        return len(reaped)

    async def recover(self) -> int:
        """At start: on a single-process store every lease belongs to a process that is gone; on
        a shared one, only the leases that ran out do."""
        return await self.reap(now_us(), every_lease=self.store.single_process)

    async def _announce_work(self, requeued: list[Row]) -> None:
        if requeued:
            await self.store.run(Step("notify", {"payload": "work"}))

    def _announced(self, rows: list[Row]) -> None:
        """Webhook events were written for these batches: wake this process's delivery."""
        if rows:
            for callback in self.on_announced:
                callback()

    async def announce_pending(self, now: int) -> int:
        """Write the webhook events of any transition that has none yet (a safety net: every
        transition here writes its own)."""
        (rows,) = await self.store.run(announce_step(self.settings, now))
        self._announced(rows)
        return len(rows)

    async def sweep(self, now: int) -> None:
        """At most once a minute: forget expired idempotency keys, and webhook deliveries done
        longer ago than the retention."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + _SWEEP_EVERY
        await self.store.run(Step("forget_idempotency_keys", {"cutoff": now - IDEMPOTENCY_KEY_LIFETIME}))
        await self.outbox.forget(now - int(self.settings.retention_seconds * 1_000_000))

    async def queue_summary(self, now: int) -> tuple[int, int, int | None]:
        """Waiting requests of batches in progress: claimable now, in all, and when the next is due."""
        rows = await self.store.read("queue_summary", {"now": now})
        claimable, waiting, next_due = rows[0]
        return int(claimable or 0), int(waiting or 0), next_due

    async def expire_due(self, now: int) -> list[str]:
        ended: list[str] = []
        for (seq,) in await self.store.read("due_batches", {"now": now}):
            rows, announced = await self.store.run(
                Step("expire_batch", {"seq": seq, "now": now}), announce_step(self.settings, now)
            )
            ended += _ids(rows)
            self._announced(announced)
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
            **BatchManager.render_options(batch),
        }

    @staticmethod
    def render_options(batch: Batch) -> dict[str, Any]:
        """The keys a batch object gains for the features it uses; none for a batch that uses none,
        which looks exactly as the hosted API's would."""
        shown: dict[str, Any] = {}
        if batch.metadata != "{}":
            shown["metadata"] = msgspec.json.decode(batch.metadata)
        if batch.fail_fast_min_results is not None:
            shown["fail_fast"] = {
                "min_results": batch.fail_fast_min_results,
                "max_error_rate": batch.fail_fast_max_error_rate,
            }
        if batch.webhook_url is not None:
            shown["webhook_url"] = batch.webhook_url
        if batch.retry_of is not None:
            shown["retry_of"] = batch.retry_of
        if batch.retried_by is not None:
            shown["retried_by"] = batch.retried_by
        if batch.cancel_reason is not None:
            shown["cancel_reason"] = batch.cancel_reason
        return shown
