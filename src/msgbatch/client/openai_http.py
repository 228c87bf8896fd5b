"""The CLI's client for the OpenAI Batch API (`/v1/files`, `/v1/batches`) of msgbatch, or of any
server that speaks it: the same transport, retries and errors as `BatchesClient`, with the key
sent as `Authorization: Bearer`, and files uploaded as a multipart body streamed from disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from msgbatch.client.http import BatchesClient, ClientError

__all__ = ["OpenAIBatchesClient"]

# A create answers at once (its file is checked within the call): only busy answers are retried.
_RETRY_CREATE_STATUSES = frozenset({429, 503})


class OpenAIBatchesClient(BatchesClient):
    def __init__(self, base_url: str, api_key: str, **kwargs: Any) -> None:
        super().__init__(base_url, api_key, **kwargs)
        self._http.headers["authorization"] = f"Bearer {api_key}"

    def upload(self, chunks: Callable[[], Iterator[bytes]], size: int, filename: str) -> dict[str, Any]:
        """Upload `size` bytes (from `chunks()`, called again if the call is retried) as a
        `purpose=batch` file; returns the File object."""
        boundary = "msgbatch-" + os.urandom(12).hex()
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            yield from chunks()
            yield tail

        return self._json(
            "POST",
            "/v1/files",
            body=body,
            size=len(head) + size + len(tail),
            content_type=f"multipart/form-data; boundary={boundary}",
            retry_statuses=_RETRY_CREATE_STATUSES,
            timeout=600.0,
        )

    def create_batch(self, input_file_id: str, endpoint: str) -> dict[str, Any]:
        body = msgspec.json.encode({"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": "24h"})
        return self._json(
            "POST", "/v1/batches", body=lambda: iter([body]), size=len(body), retry_statuses=_RETRY_CREATE_STATUSES
        )

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/batches/{quote(batch_id, safe='')}")

    def cancel(self, batch_id: str, *, abort_running: bool | None = None) -> dict[str, Any]:
        if abort_running:
            raise ClientError("a hard cancel (--abort-running) is for Message Batches (msgbatch_...)")
        return self._json("POST", f"/v1/batches/{quote(batch_id, safe='')}/cancel")

    def results(
        self, batch_id: str, *, result_type: str | None = None, custom_id: str | None = None, partial: bool = False
    ) -> Iterator[bytes]:
        """The lines of an ended batch's output file, then of its error file (without newlines)."""
        if partial:
            raise ClientError("partial results (--partial) are for Message Batches (msgbatch_...)")
        batch = self.retrieve(batch_id)
        for key in ("output_file_id", "error_file_id"):
            if batch.get(key):
                yield from self.file_lines(str(batch[key]))

    def file_lines(self, file_id: str) -> Iterator[bytes]:
        response = self._send("GET", f"/v1/files/{quote(file_id, safe='')}/content", stream=True)
        try:
            pending = b""
            for chunk in response.iter_bytes():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line for line in lines if line.strip())
            if pending.strip():
                yield pending
        except httpx.HTTPError as exc:
            raise ClientError(f"reading file {file_id} failed: {type(exc).__name__}: {exc}") from None
        finally:
            response.close()
