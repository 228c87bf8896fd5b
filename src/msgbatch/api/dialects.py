"""Which API a route belongs to, and so the error body its answers have: the one choice of renderer.

| routes | body |
|---|---|
| `/v1/files…`, `/v1/batches…` (OpenAI's) | `{"error": {"message", "type", "param", "code"}}` (503 for a 529) |
| the rest (Message Batches, probes, dashboard) | `{"type": "error", "error": {"type", "message"}, "request_id"}` |
"""

from __future__ import annotations

from msgbatch.errors import error_body, openai_error_body, openai_status

__all__ = ["OPENAI_ROUTES", "is_openai_route", "render_error"]

OPENAI_ROUTES = ("/v1/files", "/v1/batches")


def is_openai_route(path: str) -> bool:
    return any(path == root or path.startswith(root + "/") for root in OPENAI_ROUTES)


def render_error(
    path: str,
    error_type: str,
    message: str,
    status: int,
    request_id: str | None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> tuple[bytes, int]:
    """The error body and status for an error answered on `path`."""
    if is_openai_route(path):
        return openai_error_body(error_type, message, param, code), openai_status(error_type, status)
    return error_body(error_type, message, request_id), status
