"""The OpenAI Batch API's rules, above the one engine: its batches are the engine's batches.

An OpenAI batch is a batch like any other (the same tables, queue, dispatcher, fairness,
workspaces, lifecycle and leases: `BatchManager`), created from an uploaded file and seen through
this module. Its id starts with `batch_`, so the Message Batches API never sees it (nor this API a
Message Batch), and its own columns (endpoint, input file, completion window, output expiry,
validation errors) are written in the transaction that creates it.

- **create** checks the call (OpenAI's `missing_required_parameter` / `invalid_value` 400s), finds
  the input file in the caller's workspace (404 otherwise), and checks every line of it
  (`batch_input.py`): a file with a bad line makes a `failed` batch with no requests; a good one
  makes each line a request (custom_id, and the line's `body` as params).
- **status**, derived from the engine's: `in_progress`, `cancelling`, then `completed`,
  `cancelled` or `expired` by how it ended (`Batch.end_reason`), or `failed` (validation).
  Validation happens within the create call, so `validating` is never seen; the output files
  exist as soon as it ends, so neither is `finalizing` (its time is the end's).
- **request_counts**: `completed` its succeeded requests, `failed` every other finished one.
- **output and error files** are not stored: `file-<batch id>-output` and `file-<batch id>-error`
  are the batch's results lines of succeeded and of other requests, streamed from the results
  table (results.py owns the lines), listed among the workspace's files (purpose
  `batch_output`) from its end until they expire, are deleted or the batch is archived.
- **usage**: the token counts the engine adds up as results are written.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from msgbatch.batch_input import check_input
from msgbatch.clock import now_us
from msgbatch.endpoints import OPENAI_ENDPOINTS
from msgbatch.errors import InvalidRequestError, NotFoundError
from msgbatch.files import FileManager, StoredFile, not_found
from msgbatch.ids import OPENAI_BATCH_PREFIX, new_batch_id
from msgbatch.manager import RESULTS_PAGE, BatchManager
from msgbatch.models import CANCELED, ENDED, EXPIRED, IN_PROGRESS, Batch
from msgbatch.results import openai_bulk_line
from msgbatch.store.base import BATCH_COLUMNS, Row, Step, batch_from_row

__all__ = ["ERRORS", "OUTPUT", "OpenAIBatch", "OpenAIBatches", "OutputFile", "invalid_value", "missing_parameter"]

log = logging.getLogger("msgbatch.openai")

OUTPUT, ERRORS = "output", "error"
_DELETED_BIT = {OUTPUT: 1, ERRORS: 2}
COMPLETION_WINDOWS = ("24h",)
MAX_METADATA = 16
MIN_EXPIRY, MAX_EXPIRY = 3600, 2_592_000  # seconds, an expires_after's bounds
_STATUS_BY_END = {"completed": "completed", "canceled": "cancelled", "expired": "expired"}
_FILE_PREFIX = "file-" + OPENAI_BATCH_PREFIX


def _s(us: int | None) -> int | None:
    return us // 1_000_000 if us is not None else None


def missing_parameter(name: str) -> InvalidRequestError:
    return InvalidRequestError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def invalid_value(name: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=name, code="invalid_value")


def expires_after(value: object, name: str) -> int | None:
    """The seconds of an `expires_after` / `output_expires_after` object, checked."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise invalid_value(name, f"Invalid '{name}': expected an object with anchor 'created_at' and seconds.")
    seconds = value.get("seconds")
    if isinstance(seconds, float) and seconds.is_integer():  # 7200.0 is an integer to JSON
        seconds = int(seconds)
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not MIN_EXPIRY <= seconds <= MAX_EXPIRY:
        raise invalid_value(
            f"{name}.seconds", f"Invalid '{name}.seconds': must be between {MIN_EXPIRY} and {MAX_EXPIRY}."
        )
    return seconds


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_value("metadata", "Invalid 'metadata': expected an object of string keys and values.")
    if len(value) > MAX_METADATA:
        raise invalid_value("metadata", f"Invalid 'metadata': at most {MAX_METADATA} pairs, got {len(value)}.")
    for key, item in value.items():
        if len(key) > 64:
            raise invalid_value("metadata", f"Invalid 'metadata': key {key[:20]!r}... is longer than 64 characters.")
        if not isinstance(item, str) or len(item) > 512:
            raise invalid_value("metadata", f"Invalid 'metadata.{key}': expected a string of at most 512 characters.")
    return value


class OpenAIBatch(msgspec.Struct, frozen=True, kw_only=True):
    """An OpenAI batch: the engine's batch and its own columns."""

    batch: Batch
    endpoint: str
    input_file_id: str | None
    completion_window: str | None
    output_expires_after: int | None
    errors: str | None  # JSON: the validation errors of a failed batch
    files_deleted: int
    output_bytes: int | None
    error_bytes: int | None

    @property
    def status(self) -> str:
        if self.errors is not None:
            return "failed"
        if self.batch.status == IN_PROGRESS:
            return "in_progress"
        if self.batch.status != ENDED:
            return "cancelling"
        return _STATUS_BY_END[self.batch.end_reason or "completed"]

    def lines(self, kind: str) -> int:
        """How many lines the output (or error) file has, or will have."""
        b = self.batch
        return b.succeeded if kind == OUTPUT else b.errored + b.canceled + b.expired

    def has_file(self, kind: str) -> bool:
        """Whether the batch has that file at all (its id is shown): ended with lines for it."""
        return self.batch.status == ENDED and self.errors is None and self.lines(kind) > 0


def _openai_batch(row: Row) -> OpenAIBatch:
    return OpenAIBatch(
        batch=batch_from_row(row),
        endpoint=row[BATCH_COLUMNS],
        input_file_id=row[BATCH_COLUMNS + 1],
        completion_window=row[BATCH_COLUMNS + 2],
        output_expires_after=row[BATCH_COLUMNS + 3],
        errors=row[BATCH_COLUMNS + 4],
        files_deleted=row[BATCH_COLUMNS + 5],
        output_bytes=row[BATCH_COLUMNS + 6],
        error_bytes=row[BATCH_COLUMNS + 7],
    )


class OutputFile(msgspec.Struct, frozen=True):
    """An OpenAI batch's output or error file: its results lines, not stored as a file."""

    owner: OpenAIBatch
    kind: str  # OUTPUT or ERRORS

    @property
    def id(self) -> str:
        return output_file_id(self.owner.batch.id, self.kind)

    @property
    def created_at(self) -> int:
        return self.owner.batch.ended_at or self.owner.batch.created_at


def output_file_id(batch_id: str, kind: str) -> str:
    return f"file-{batch_id}-{kind}"


def _parse_output_file_id(file_id: str) -> tuple[str, str] | None:
    if not file_id.startswith(_FILE_PREFIX):
        return None
    batch_id, _, kind = file_id[len("file-") :].rpartition("-")
    return (batch_id, kind) if kind in _DELETED_BIT else None


# A file of the files list: an upload, or a batch's output file.
AnyFile = StoredFile | OutputFile


class OpenAIBatches:
    def __init__(self, manager: BatchManager, files: FileManager | None = None) -> None:
        self.manager = manager
        self.store = manager.store
        self.settings = manager.settings
        self.files = files or FileManager(manager.store)

    # -- batches -----------------------------------------------------------------------------

    async def create(self, workspace: str, body: bytes | bytearray) -> OpenAIBatch:
        try:
            asked = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(asked, dict):
            raise InvalidRequestError("The request body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if asked.get(name) is None:
                raise missing_parameter(name)
        endpoint = asked["endpoint"]
        if not isinstance(endpoint, str) or endpoint not in OPENAI_ENDPOINTS:
            supported = ", ".join(f"'{e}'" for e in OPENAI_ENDPOINTS)
            raise invalid_value(
                "endpoint", f"Invalid value: {str(endpoint)[:60]!r}. Supported values are: {supported}."
            )
        window = asked["completion_window"]
        if not isinstance(window, str) or window not in COMPLETION_WINDOWS:
            raise invalid_value(
                "completion_window", f"Invalid value: {str(window)[:60]!r}. Supported values are: '24h'."
            )
        metadata = _metadata(asked.get("metadata"))
        output_expiry = expires_after(asked.get("output_expires_after"), "output_expires_after")
        input_file_id = asked["input_file_id"]
        if not isinstance(input_file_id, str):
            raise InvalidRequestError(
                "Invalid type for 'input_file_id': expected a string.", param="input_file_id", code="invalid_type"
            )
        if _parse_output_file_id(input_file_id) is not None:
            await self.output_file(workspace, input_file_id)  # 404 unless it is the workspace's
            raise invalid_value("input_file_id", "Invalid 'input_file_id': the file's purpose must be 'batch'.")
        try:
            source = await self.files.get(workspace, input_file_id)
        except NotFoundError:
            raise NotFoundError(f"No such File object: {input_file_id}", param="input_file_id") from None
        content = await self.files.read(source)
        max_lines = min(self.settings.max_file_lines, self.settings.max_requests)
        requests, errors = check_input(content, endpoint, max_lines)
        columns = {
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": window,
            "output_expires_after": output_expiry,
            "errors": msgspec.json.encode(errors).decode() if errors else None,
        }
        batch_id = new_batch_id(OPENAI_BATCH_PREFIX)
        await self.manager.create_batch(
            workspace,
            [] if errors else requests,
            size=len(content),
            metadata=metadata,
            batch_id=batch_id,
            also=[Step("set_openai_batch", {"id": batch_id, **columns})],
        )
        if errors:
            log.info("batch.failed id=%s workspace=%s bad_lines=%d", batch_id, workspace, len(errors))
        return await self.get(workspace, batch_id)

    async def find(self, batch_id: str) -> OpenAIBatch | None:
        if not batch_id.startswith(OPENAI_BATCH_PREFIX):
            return None
        rows = await self.store.read("get_openai_batch", {"id": batch_id})
        return _openai_batch(rows[0]) if rows else None

    async def get(self, workspace: str, batch_id: str) -> OpenAIBatch:
        found = await self.find(batch_id)
        if found is None or found.batch.workspace != workspace:
            raise NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id")
        return found

    async def list_batches(self, workspace: str, *, limit: int, after: str | None) -> tuple[list[OpenAIBatch], bool]:
        """Newest first; the bool says whether more lie beyond."""
        if not 1 <= limit <= 100:
            raise invalid_value("limit", "Invalid 'limit': must be between 1 and 100.")
        rows = await self.store.read(
            "list_openai_batches",
            {
                "workspace": workspace,
                "lower": OPENAI_BATCH_PREFIX,
                "upper": min(after or "~", OPENAI_BATCH_PREFIX + "~"),  # this API's batches only
                "limit": limit + 1,
            },
        )
        return [_openai_batch(row) for row in rows[:limit]], len(rows) > limit

    async def cancel(self, workspace: str, batch_id: str) -> OpenAIBatch:
        found = await self.get(workspace, batch_id)
        if found.status not in ("in_progress", "cancelling"):
            raise InvalidRequestError(f"Cannot cancel a batch with status '{found.status}'.")
        await self.manager.cancel(workspace, batch_id, prefix=OPENAI_BATCH_PREFIX)
        return await self.get(workspace, batch_id)

    # -- output and error files --------------------------------------------------------------

    def output_expires_at(self, owner: OpenAIBatch) -> int | None:
        """When a batch's output files go: at its archiving, or earlier as its create call asked."""
        b = owner.batch
        archived = b.created_at + int(self.settings.retention_seconds * 1_000_000)
        if owner.output_expires_after is None or b.ended_at is None:
            return archived
        return min(archived, b.ended_at + owner.output_expires_after * 1_000_000)

    def _available(self, owner: OpenAIBatch, kind: str, now: int) -> bool:
        expires = self.output_expires_at(owner)
        return (
            owner.has_file(kind)
            and owner.batch.archived_at is None
            and not owner.files_deleted & _DELETED_BIT[kind]
            and (expires is None or expires > now)
        )

    async def output_file(self, workspace: str, file_id: str) -> OutputFile:
        """A batch's output or error file, while it is there."""
        parsed = _parse_output_file_id(file_id)
        owner = await self.find(parsed[0]) if parsed else None
        if parsed is None or owner is None or owner.batch.workspace != workspace:
            raise not_found(file_id)
        if not self._available(owner, parsed[1], now_us()):
            raise not_found(file_id)
        return OutputFile(owner, parsed[1])

    async def output_lines(self, file: OutputFile) -> AsyncIterator[list[bytes]]:
        """The file's lines in pages, in request order, from the stored results lines."""
        b = file.owner.batch
        cursor, stop = b.first_request, b.stop_request
        succeeded = file.kind == OUTPUT
        while cursor < stop:
            rows = await self.store.read(
                "openai_results_page",
                {"cursor": cursor, "stop": stop, "succeeded": succeeded, "limit": RESULTS_PAGE},
            )
            if not rows:
                return
            yield [
                openai_bulk_line(rid, kind, bytes(line)) if kind in (CANCELED, EXPIRED) else bytes(line)
                for rid, kind, line in rows
            ]
            if len(rows) < RESULTS_PAGE:
                return
            cursor = rows[-1][0] + 1

    async def output_size(self, file: OutputFile) -> int:
        """The file's size in bytes: measured once (it no longer changes), then kept."""
        owner = file.owner
        known = owner.output_bytes if file.kind == OUTPUT else owner.error_bytes
        if known is not None:
            return known
        size = 0
        async for lines in self.output_lines(file):
            size += sum(len(line) + 1 for line in lines)
        key = "output_bytes" if file.kind == OUTPUT else "error_bytes"
        await self.store.run(
            Step(
                "set_openai_file_sizes", {"seq": owner.batch.seq, "output_bytes": None, "error_bytes": None, key: size}
            )
        )
        return size

    async def delete_output(self, file: OutputFile) -> None:
        await self.store.run(
            Step(
                "delete_openai_output",
                {"seq": file.owner.batch.seq, "succeeded": file.kind == OUTPUT, "bit": _DELETED_BIT[file.kind]},
            )
        )
        log.info("file.deleted id=%s", file.id)

    # -- the files of a workspace ------------------------------------------------------------

    async def get_file(self, workspace: str, file_id: str) -> AnyFile:
        if _parse_output_file_id(file_id) is not None:
            return await self.output_file(workspace, file_id)
        return await self.files.get(workspace, file_id)

    async def delete_file(self, workspace: str, file_id: str) -> None:
        if _parse_output_file_id(file_id) is not None:
            await self.delete_output(await self.output_file(workspace, file_id))
        else:
            await self.files.delete(workspace, file_id)

    async def list_files(
        self, workspace: str, *, purpose: str | None, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[AnyFile], bool]:
        """Uploads and output files, by (created_at, id) in the order asked, from after `after`."""
        if not 1 <= limit <= 10_000:
            raise invalid_value("limit", "Invalid 'limit': must be between 1 and 10000.")
        cursor: tuple[int, str] | None = None
        if after:
            start = await self.get_file(workspace, after)
            cursor = (start.created_at, start.id)
        found: list[AnyFile] = []
        if purpose in (None, "batch"):
            found += await self.files.list_files(
                workspace, purpose=purpose, limit=limit + 1, cursor=cursor, ascending=ascending
            )
        if purpose in (None, "batch_output"):
            found += await self._output_files(workspace, limit + 1, cursor, ascending)
        found.sort(key=lambda f: (f.created_at, f.id), reverse=not ascending)
        return found[:limit], len(found) > limit

    async def _output_files(
        self, workspace: str, limit: int, cursor: tuple[int, str] | None, ascending: bool
    ) -> list[OutputFile]:
        """Up to `limit` output files after the cursor, from the batches in the order they ended."""
        now = now_us()
        name = "list_openai_outputs_asc" if ascending else "list_openai_outputs"
        # Keyset over (ended_at, batch id). Every batch that ended at the cursor's time is read
        # (a batch's two files share its end time), and its files at or before the cursor dropped.
        if ascending:
            at, batch_id = (cursor[0] if cursor else -1), ""
        else:
            at, batch_id = (cursor[0] if cursor else 1 << 62), "~"
        out: list[OutputFile] = []
        while len(out) < limit:
            rows = await self.store.read(name, {"workspace": workspace, "at": at, "batch_id": batch_id, "limit": limit})
            for row in rows:
                owner = _openai_batch(row)
                for kind in (OUTPUT, ERRORS):
                    file = OutputFile(owner, kind)
                    key = (file.created_at, file.id)
                    if cursor is not None and (key <= cursor if ascending else key >= cursor):
                        continue
                    if self._available(owner, kind, now):
                        out.append(file)
            if len(rows) < limit:
                break
            at, batch_id = rows[-1][6], rows[-1][1]  # ended_at, id
        return out

    # -- rendering ---------------------------------------------------------------------------

    def render(self, found: OpenAIBatch) -> dict[str, Any]:
        """The OpenAI Batch object."""
        b = found.batch
        status = found.status
        ended = _s(b.ended_at)
        errors = msgspec.json.decode(found.errors) if found.errors is not None else None
        metadata = msgspec.json.decode(b.metadata) if b.metadata and b.metadata != "{}" else None
        input_tokens = b.input_tokens + b.cache_read_input_tokens + b.cache_creation_input_tokens
        return {
            "id": b.id,
            "object": "batch",
            "endpoint": found.endpoint,
            "model": None,
            "errors": {"object": "list", "data": errors} if errors is not None else None,
            "input_file_id": found.input_file_id,
            "completion_window": found.completion_window,
            "status": status,
            "output_file_id": output_file_id(b.id, OUTPUT) if found.has_file(OUTPUT) else None,
            "error_file_id": output_file_id(b.id, ERRORS) if found.has_file(ERRORS) else None,
            "created_at": _s(b.created_at),
            "in_progress_at": _s(b.created_at) if status != "failed" else None,
            "expires_at": _s(b.expires_at),
            "finalizing_at": ended if status == "completed" else None,
            "completed_at": ended if status == "completed" else None,
            "failed_at": ended if status == "failed" else None,
            "expired_at": ended if status == "expired" else None,
            "cancelling_at": _s(b.cancel_initiated_at),
            "cancelled_at": ended if status == "cancelled" else None,
            "request_counts": {
                "total": b.total,
                "completed": b.succeeded,
                "failed": b.errored + b.canceled + b.expired,
            },
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": b.cache_read_input_tokens},
                "output_tokens": b.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + b.output_tokens,
            },
            "metadata": metadata,
        }

    async def render_file(self, file: AnyFile) -> dict[str, Any]:
        """The OpenAI File object."""
        if isinstance(file, OutputFile):
            expires = self.output_expires_at(file.owner)
            return {
                "id": file.id,
                "object": "file",
                "bytes": await self.output_size(file),
                "created_at": _s(file.created_at),
                "filename": f"{file.owner.batch.id}_{file.kind}.jsonl",
                "purpose": "batch_output",
                "status": "processed",
                "expires_at": _s(expires),
                "status_details": None,
            }
        return {
            "id": file.id,
            "object": "file",
            "bytes": file.bytes,
            "created_at": _s(file.created_at),
            "filename": file.filename,
            "purpose": file.purpose,
            "status": "processed",
            "expires_at": _s(file.expires_at),
            "status_details": None,
        }
