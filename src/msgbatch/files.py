"""Uploaded files (the OpenAI Files API's `purpose: batch` inputs): their rules, above the store.

A file belongs to the workspace of the key that uploaded it; others get 404, as for batches. Its
content is stored in the database in chunks of up to 1 MiB (`file_chunks`), written in the one
durable transaction that makes the file exist, so a file is there whole or not at all; the
chunks are read from the spooled upload as they are written, never held in memory together. A
file expires (OpenAI's default for batch files: 30 days after its upload, or its
`expires_after`): the lifecycle deletes it then. Deleting a file does not touch the batches made
from it: a batch copies its requests when it is created.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import IO

import msgspec

from msgbatch.clock import now_us
from msgbatch.errors import NotFoundError
from msgbatch.ids import new_file_id
from msgbatch.store.base import Row, Step, Store

__all__ = ["CHUNK", "DEFAULT_EXPIRY", "FileManager", "StoredFile"]

log = logging.getLogger("msgbatch.files")

CHUNK = 1 << 20
DEFAULT_EXPIRY = 30 * 86400  # seconds: OpenAI's, for purpose=batch files
_READ_CHUNKS = 8  # chunks per read of a file's content


class StoredFile(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    id: str
    workspace: str
    purpose: str
    filename: str
    bytes: int
    created_at: int  # microseconds since the epoch
    expires_at: int | None


def _file(row: Row) -> StoredFile:
    seq, file_id, workspace, purpose, filename, size, created_at, expires_at = row
    return StoredFile(
        seq=seq,
        id=file_id,
        workspace=workspace,
        purpose=purpose,
        filename=filename,
        bytes=size,
        created_at=created_at,
        expires_at=expires_at,
    )


def not_found(file_id: str) -> NotFoundError:
    return NotFoundError(f"No such File object: {file_id}", param="id")


class FileManager:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(
        self, workspace: str, purpose: str, filename: str, source: IO[bytes], size: int, expires_in: int | None
    ) -> StoredFile:
        """Store the `size` bytes of `source` (a spooled upload) as a new file of the workspace."""
        file_id = new_file_id()
        now = now_us()
        expires_at = now + expires_in * 1_000_000 if expires_in is not None else None

        def chunks() -> Iterator[tuple[str, int, bytes]]:
            # Read as the store writes them: one chunk in memory at a time.
            source.seek(0)
            n = 0
            while data := source.read(CHUNK):
                yield file_id, n, data
                n += 1

        row = {
            "id": file_id,
            "workspace": workspace,
            "purpose": purpose,
            "filename": filename,
            "bytes": size,
            "created_at": now,
            "expires_at": expires_at,
        }
        (inserted, _) = await self.store.run(
            Step("insert_file", row), Step("insert_file_chunks", rows=chunks()), durable=True
        )
        log.info("file.created id=%s workspace=%s bytes=%d", file_id, workspace, size)
        return StoredFile(seq=inserted[0][0], **row)  # type: ignore[arg-type]

    async def find(self, file_id: str) -> StoredFile | None:
        rows = await self.store.read("get_file", {"id": file_id})
        return _file(rows[0]) if rows else None

    async def get(self, workspace: str, file_id: str) -> StoredFile:
        found = await self.find(file_id)
        if found is None or found.workspace != workspace:
            raise not_found(file_id)
        return found

    async def content(self, file: StoredFile) -> AsyncIterator[bytes]:
        """The file's content in chunks, a few read at a time."""
        n = 0
        while True:
            rows = await self.store.read("file_chunks", {"file_id": file.id, "n": n, "limit": _READ_CHUNKS})
            for _, data in rows:
                yield bytes(data)
            if len(rows) < _READ_CHUNKS:
                return
            n = rows[-1][0] + 1

    async def read(self, file: StoredFile) -> bytearray:
        """The whole content in one buffer (a batch's requests are views of it)."""
        buffer = bytearray(file.bytes)
        at = 0
        async for chunk in self.content(file):
            buffer[at : at + len(chunk)] = chunk
            at += len(chunk)
        del buffer[at:]  # a file deleted while it was read
        return buffer

    async def list_files(
        self, workspace: str, *, purpose: str | None, limit: int, cursor: tuple[int, str] | None, ascending: bool
    ) -> list[StoredFile]:
        """Up to `limit` files after the cursor (created_at, id) in the order asked."""
        if cursor is None:
            cursor = (-1, "") if ascending else (1 << 62, "~")
        rows = await self.store.read(
            "list_files_asc" if ascending else "list_files",
            {"workspace": workspace, "purpose": purpose, "created_at": cursor[0], "id": cursor[1], "limit": limit},
        )
        return [_file(row) for row in rows]

    async def delete(self, workspace: str, file_id: str) -> None:
        await self.get(workspace, file_id)
        (gone,) = await self.store.run(Step("delete_file", {"id": file_id}))
        if not gone:
            raise not_found(file_id)
        log.info("file.deleted id=%s", file_id)

    async def expire_due(self, now: int) -> list[str]:
        expired: list[str] = []
        for (file_id,) in await self.store.read("expired_files", {"now": now}):
            (gone,) = await self.store.run(Step("delete_file", {"id": file_id}))
            expired += [row[0] for row in gone]
        return expired
