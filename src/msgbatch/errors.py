"""One error tree for the whole server: each class knows its HTTP status and API error type."""

from __future__ import annotations

from typing import ClassVar

import msgspec

# The error types allowed *inside* an `errored` result (the SDK's ErrorObject union).
RESULT_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "timeout_error",
        "api_error",
        "overloaded_error",
    }
)

STATUS_BY_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class APIError(Exception):
    """An error answered to an API client in the canonical error envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(APIError):
    status = 401
    type = "authentication_error"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"


class NotFound(APIError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"


class RequestTooLarge(APIError):
    status = 413
    type = "request_too_large"


class Overloaded(APIError):
    status = 529
    type = "overloaded_error"


class InternalError(APIError):
    status = 500
    type = "api_error"


def error_body(error_type: str, message: str, request_id: str | None) -> bytes:
    """The one rendering of an error body, used by every endpoint and inside results."""
    return msgspec.json.encode(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}
    )
