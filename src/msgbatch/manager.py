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
from msgbatch.config import Limits, Settings
from msgbatch.envelope import Models, models_of, parse_create
from msgbatch.errors import ConflictError, InvalidRequestError, NotFoundError, RateLimitError
from msgbatch.fairness import SHARED as SHARED_POOL
from msgbatch.fairness import Lane, Slots, forget_idle, interleaved, plan, record_grant
from msgbatch.ids import MESSAGE_BATCH_PREFIX, new_batch_id
from msgbatch.models import (
    CANCELED,
    CANCELING,
    ENDED,
    ERRORED,
    EXPIRED,
    IN_PROGRESS,
    NORMAL,
    PRIORITY_NAMES,
    RESULT_CODES,
    STATUS_NAMES,
    Batch,
    Job,
    Outcome,
)
from msgbatch.store.base import Refused, Row, Step, Store, batch_from_row
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


def _count(rows: list[Row]) -> int:
    """What settle_canceling returns: how many it canceled (one row, or one per batch)."""
    return sum(int(row[-1] or 0) for row in rows)


TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_QUOTAS = {
    "max_queued_requests": "{value:,} requests not yet finished; it has {now:,}, and this batch adds {total:,}",
    "max_batches_in_progress": "{value:,} batches in progress; it has {now:,}",
}


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
        # Requests the store finished in bulk (canceled waiting, expired): (result type, how many).
        self.on_finished_in_bulk: list[Callable[[int, int], None]] = []
        self._last_served = 0  # fairness: the seq of the batch a claim served last
        self._fail_fast: set[int] = set()  # batches in progress with a fail-fast policy (from the last claim)
        self._models: dict[int, list[tuple[int, str]]] = {}  # seq -> its (model key, model): immutable
        self._limits_of: dict[str, Limits] = {}  # workspace -> its limits (the settings never change)
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
            priority=call.priority,
        )
        requests = call.requests
        return await self._insert(
            workspace, len(requests), betas, headers, options, _new_requests(requests), models_of(requests),
            size=len(body), key=key,
        )  # fmt: skip

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
            workspace, len(requests), betas, headers, options, _new_requests(requests), models_of(requests),
            size=size, batch_id=batch_id, also=also,
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
        models: Models,
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
        retry: the parent's). `also`: another dialect's steps, after the batch row. The
        workspace's quotas are checked in that transaction (429, nothing stored); `models` are
        its requests' models, by which they are routed and claimed."""
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
            priority=options.priority,
        )
        steps = self._quota_checks(workspace, total)
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
                    "priority": batch.priority,
                },
            ),
            *also,
            requests(first),
            Step("insert_jobs", {"batch_id": batch.id, "first": first, "stop": first + total}),
            *self._model_steps(batch.id, first, models),
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
        except Refused as refused:
            raise self._over_quota(workspace, total, refused.rows) from None
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

    @staticmethod
    def _over_quota(workspace: str, total: int, rows: list[Row]) -> RateLimitError:
        """The answer to a create that check_quotas refused: nothing was stored."""
        exceeded = [
            f"{quota}: workspace {workspace} may have at most "
            + _QUOTAS[quota].format(value=int(value), now=int(now), total=total)
            for quota, value, now in rows
        ]
        log.info("batch.refused workspace=%s quotas=%s", workspace, ",".join(row[0] for row in rows))
        return RateLimitError(
            "; ".join(exceeded) + ".",
            # The SDKs retry a 429 at once by default; a quota frees up as batches finish.
            headers={"x-should-retry": "false"},
        )

    @staticmethod
    def _model_steps(batch_id: str, first: int, models: Models) -> list[Step]:
        """Each request's model, by key: the batch's models, and (with several) the jobs' keys."""
        keyed = [(key, name, models.totals[key]) for key, name in enumerate(models.names)]
        steps = [Step("insert_batch_models", {"batch_id": batch_id}, rows=keyed)]
        runs = [(first + start, first + stop, key) for start, stop, key in models.runs if key]
        if runs:
            steps.append(Step("set_job_models", rows=runs))
        return steps

    async def _models_like(self, parent: Batch, total: int) -> Models:
        """A retry's requests' models: its parent's one model; when the parent's requests named
        several, unknown (their requests are claimed outside any backend's own limit)."""
        names = [model for _, _, model, _ in await self.store.read("models_of_batches", {"seqs": [parent.seq]})]
        name = names[0] if len(names) == 1 else ""
        return Models([name], [total], [(0, total, 0)])

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
            priority=parent.priority,
        )
        return await self._insert(
            workspace, len(ids), parent.betas, parent.headers, options,
            lambda first: Step("copy_requests", {"ids": ids, "first": first}),
            await self._models_like(parent, len(ids)), key=key, parent=parent,
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
        status: int | None = None,
    ) -> tuple[list[Batch], bool]:
        """Newest first; the bool says whether more lie beyond in the direction asked. With
        `metadata`, only the batches whose metadata holds every one of those pairs; with
        `status`, only those of that status."""
        if after_id is not None and before_id is not None:
            raise InvalidRequestError("Cannot specify both `before_id` and `after_id`.")
        if not 1 <= limit <= 1000:
            raise InvalidRequestError(
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
            )
        matching = "_matching" if metadata or status is not None else ""
        filters = {"metadata": msgspec.json.encode(metadata or {}).decode(), "status": status} if matching else {}
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
            self._finished_in_bulk(CANCELED, _count(found[len(steps)]))
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
        # The requests this process completes are ones it claimed: it knows their batches' policy.
        self._fail_fast = {row[0] for row in active if row[9]}
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
        # What every job of a batch shares: betas, headers, expiry, endpoint, workspace.
        shared = {row[0]: row[3:8] for row in active}
        workspaces = set()
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
                betas, headers, expires_at, endpoint, workspace = shared[seq]
                jobs.append(
                    Job(
                        rid,
                        seq,
                        custom_id,
                        params,
                        betas,
                        headers,
                        expires_at,
                        attempts,
                        endpoint,
                        workspace,
                        names[seq].get(key, ""),
                    )
                )
                taken[seq, key] = taken.get((seq, key), 0) + 1
            drained = set()
            for lane, n in asked:
                workspaces.add(lane.workspace)
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
        return interleaved(jobs, self._weight) if len(workspaces) > 1 else jobs

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
            when = {"owner": owner, "hour": now // 3_600_000_000 * 3600, "second": now // 1_000_000}
            steps.append(Step("finish_jobs", when, rows=finished))
            if self._fail_fast.intersection(seqs):
                # Fail-fast is judged here, on the counts just written, by whichever process wrote them.
                steps += [Step("fail_fast", {"seqs": seqs, "now": now}), Step("settle_canceling", {"seqs": seqs})]
        if retries:
            # A retry goes back to the queue; in a batch being canceled it is canceled instead.
            steps.append(Step("requeue_jobs", {"owner": owner}, rows=retries))
            steps += _settle(seqs, now)
        steps += [Step("end_idle_batches", {"seqs": seqs, "now": now}), announce_step(self.settings, now)]
        found = await self.store.run(*steps)
        at = {step.name: i for i, step in enumerate(steps)}
        settled = [found[i] for i, step in enumerate(steps) if step.name == "settle_canceling"]
        self._finished_in_bulk(CANCELED, sum(_count(rows) for rows in settled))
        ended = _ids(found[at["end_idle_batches"]])
        if retries:
            ended += _ids(found[at["end_idle_canceling"]])
        self._announced(found[-1])
        if "fail_fast" in at and found[at["fail_fast"]]:
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
        released, settled, *_, announced = await self.store.run(
            Step("release_jobs", {"owner": owner, "ids": sorted(job_ids)}),
            *_settle(None, now),
            announce_step(self.settings, now),
        )
        self._finished_in_bulk(CANCELED, _count(settled))
        self._announced(announced)
        await self._announce_work(released)
        return len(released)

    async def reap(self, now: int, *, every_lease: bool = False) -> int:
        """Requests whose lease ran out (their worker died) go back to the queue; with
        `every_lease`, every leased request does."""
        cutoff = _FOREVER if every_lease else now
        reaped, settled, *_, announced = await self.store.run(
            Step("reap_leases", {"now": cutoff}), *_settle(None, now), announce_step(self.settings, now)
        )
        self._finished_in_bulk(CANCELED, _count(settled))
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
            self._finished_in_bulk(EXPIRED, sum(int(row[1]) for row in rows))
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
        if batch.priority != NORMAL:
            shown["priority"] = PRIORITY_NAMES[batch.priority]
        tokens = (
            batch.input_tokens,
            batch.output_tokens,
            batch.cache_read_input_tokens,
            batch.cache_creation_input_tokens,
        )
        if any(tokens):  # its succeeded requests' tokens so far, once there are some
            shown["usage"] = dict(zip(TOKEN_FIELDS, tokens, strict=True))
        return shown
