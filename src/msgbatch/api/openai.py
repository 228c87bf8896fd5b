"""The OpenAI Batch API's endpoints: `/v1/files` and `/v1/batches`, thin over `OpenAIBatches`.

Auth is `Authorization: Bearer KEY` (or `x-api-key`), the same keys and workspaces as the
Message Batches API. Errors answer in this dialect's body, `{"error": {"message", "type",
"param", "code"}}` (the app's one error renderer picks it by route: `api/dialects.py`).

An upload (`POST /v1/files`, multipart) is parsed by Starlette's multipart parser, which spools
the file part to a temporary file on disk past 1 MiB; the request body is counted as it arrives
and refused past the limit (`max_file_bytes`, at most `max_body_bytes`), then the spooled file is
stored chunk by chunk in one transaction (`files.py`). Nothing of a refused upload is kept. As for
a create body, each wait for the next piece of an upload is bounded by `body_timeout`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from msgbatch.api.auth import api_key_of, workspace_of
from msgbatch.api.body import body_pieces, create_body
from msgbatch.config import Settings
from msgbatch.errors import AuthenticationError, InvalidRequestError
from msgbatch.files import DEFAULT_EXPIRY
from msgbatch.openai_batches import OpenAIBatches, OutputFile, expires_after, invalid_value, missing_parameter

JSON = "application/json"
_CREATE_LIMIT = 1 << 20  # a create call's JSON body
_ENVELOPE = 64 * 1024  # room for the multipart envelope around the file
_FIELDS_LIMIT = 64 * 1024  # each non-file field of an upload
PURPOSES = ("batch",)  # what msgbatch stores files for


def _service(request: Request) -> OpenAIBatches:
    service: OpenAIBatches = request.app.state.openai
    return service


def _json(value: object) -> Response:
    return Response(msgspec.json.encode(value), media_type=JSON)


def _workspace(request: Request) -> str:
    if not api_key_of(request):
        raise AuthenticationError(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    try:
        return workspace_of(request, request.app.state.settings)
    except AuthenticationError:
        raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key") from None


_INTEGER = re.compile(r"-?[0-9]{1,18}", re.ASCII)


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):  # int() would also take " 5", "1_0" and other digits
        raise InvalidRequestError(f"Invalid '{name}': expected an integer.", param=name, code="invalid_type")
    return int(value)


def _page(data: list[dict[str, Any]], more: bool) -> Response:
    return _json(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


# -- /v1/files -----------------------------------------------------------------------------------


def _too_large(limit: int) -> InvalidRequestError:
    # OpenAI's answer to an upload over the batch purpose's limit: a 400 with this message.
    return InvalidRequestError(f"File is too large. The maximum is {limit:,} bytes.", param="file")


async def _form(request: Request, settings: Settings, limit: int) -> Any:
    """The upload's form, its file part spooled to disk; the body is refused past the limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("Upload a file as multipart/form-data, with the fields 'file' and 'purpose'.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _ENVELOPE:
        raise _too_large(limit)

    async def counted() -> AsyncGenerator[bytes, None]:
        received = 0
        async for chunk in body_pieces(request, settings):
            received += len(chunk)
            if received > limit + _ENVELOPE:
                raise _too_large(limit)
            yield chunk

    parser = MultiPartParser(request.headers, counted(), max_files=1, max_fields=16, max_part_size=_FIELDS_LIMIT)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequestError(f"The upload is not valid multipart/form-data: {exc.message}") from None


def _upload_expiry(form: Any) -> int:
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return DEFAULT_EXPIRY
    try:
        value = int(seconds) if isinstance(seconds, str) else seconds
    except ValueError:
        value = seconds
    found = expires_after({"anchor": anchor, "seconds": value}, "expires_after")
    assert found is not None
    return found


async def upload(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    settings = service.settings
    limit = min(settings.max_file_bytes, settings.max_body_bytes)
    form = await _form(request, settings, limit)
    try:
        purpose = form.get("purpose")
        if purpose is None:
            raise missing_parameter("purpose")
        if purpose not in PURPOSES:
            message = f"Invalid value for 'purpose': {str(purpose)[:40]!r}. msgbatch keeps files for batches: 'batch'."
            raise invalid_value("purpose", message)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise missing_parameter("file")
        filename = upload.filename or "upload"
        if not filename.lower().endswith(".jsonl"):
            raise InvalidRequestError("Invalid file format for Batch API. Must be .jsonl", param="file")
        size = upload.size or 0
        if size > limit:
            raise _too_large(limit)
        stored = await service.files.create(workspace, purpose, filename, upload.file, size, _upload_expiry(form))
    finally:
        await form.close()
    request.app.state.metrics.file_uploaded(stored.bytes)
    return _json(await service.render_file(stored))


async def list_files(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_value(
            "order", f"Invalid value for 'order': {order[:20]!r}. Supported values are: 'asc' and 'desc'."
        )
    files, more = await service.list_files(
        workspace,
        purpose=request.query_params.get("purpose") or None,
        limit=_int_param(request, "limit", 10_000),
        after=request.query_params.get("after") or None,
        ascending=order == "asc",
    )
    return _page([await service.render_file(f) for f in files], more)


async def retrieve_file(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    found = await service.get_file(workspace, request.path_params["file_id"])
    return _json(await service.render_file(found))


async def delete_file(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    file_id = request.path_params["file_id"]
    await service.delete_file(workspace, file_id)
    return _json({"id": file_id, "object": "file", "deleted": True})


async def file_content(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    found = await service.get_file(workspace, request.path_params["file_id"])
    counted = request.app.state.metrics.results_bytes

    async def body() -> AsyncIterator[bytes]:
        if isinstance(found, OutputFile):
            # One chunk per page of lines: a chunk per line caps any server near 95k lines/s.
            async for lines in service.output_lines(found):
                chunk = b"\n".join(lines) + b"\n"
                counted.inc(amount=len(chunk))
                yield chunk
        else:
            async for chunk in service.files.content(found):
                yield chunk

    return StreamingResponse(body(), media_type="application/octet-stream")


# -- /v1/batches ---------------------------------------------------------------------------------


async def create_batch(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    settings = msgspec.structs.replace(service.settings, max_body_bytes=_CREATE_LIMIT)
    async with create_body(request, settings, request.app.state.create_budget) as body:
        found = await service.create(workspace, body)
        size = len(body)
    request.app.state.metrics.batch_created(found.batch, size)
    return _json(service.render(found))


async def list_batches(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    batches, more = await service.list_batches(
        workspace, limit=_int_param(request, "limit", 20), after=request.query_params.get("after") or None
    )
    return _page([service.render(b) for b in batches], more)


async def retrieve_batch(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    return _json(service.render(await service.get(workspace, request.path_params["batch_id"])))


async def cancel_batch(request: Request) -> Response:
    service = _service(request)
    workspace = _workspace(request)
    return _json(service.render(await service.cancel(workspace, request.path_params["batch_id"])))


routes = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
