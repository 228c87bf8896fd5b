"""One error tree for the whole server: the API's answers and the backends' failures alike.

    MsgbatchError                     the root: a type, an HTTP status, a message, retryable or not
    ├── InvalidRequestError           400 invalid_request_error
    │   ├── MethodNotAllowedError     405 invalid_request_error   (HTTP only)
    │   ├── ConflictError             409 invalid_request_error   (HTTP only)
    │   └── UnsupportedMediaTypeError 415 invalid_request_error   (HTTP only: a Content-Encoding we cannot decode)
    ├── AuthenticationError           401 authentication_error
    ├── BillingError                  402 billing_error
    ├── PermissionDeniedError         403 permission_error
    ├── NotFoundError                 404 not_found_error
    ├── RequestTimeoutError           408 timeout_error           (HTTP only: the client sent too slowly)
    ├── RequestTooLargeError          413 request_too_large       (HTTP only; invalid_request_error in a result)
    │   ├── URITooLongError           414 request_too_large       (HTTP only)
    │   └── HeadersTooLargeError      431 request_too_large       (HTTP only)
    ├── RateLimitError                429 rate_limit_error        retryable
    ├── InternalServerError           500 api_error               retryable
    │   └── UpstreamUnreachableError  500 api_error               a backend refused the connection
    ├── ServiceUnavailableError       503 overloaded_error        retryable
    ├── GatewayTimeoutError           504 timeout_error           retryable
    └── OverloadedError               529 overloaded_error        retryable

The API answers any of them with its status and the one error body of the route's dialect
(`error_body` for the Message Batches API, `openai_error_body` and `openai_status` for the OpenAI
Batch API's routes, which also carry the error's `param` and `code`); a backend raises them, and
the dispatcher turns one into an `errored` result (with `result_type`) or, when `retryable`, into
a retry. `error_for_type` is the one table from an error type to its class, used wherever a type
arrives as a string (an upstream's error body, a simulator directive).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = [
    "RESULT_ERROR_TYPES",
    "STATUS_BY_TYPE",
    "AuthenticationError",
    "BillingError",
    "ConflictError",
    "GatewayTimeoutError",
    "HeadersTooLargeError",
    "InternalServerError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "MsgbatchError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "URITooLongError",
    "UnsupportedMediaTypeError",
    "UpstreamUnreachableError",
    "error_body",
    "error_for_type",
    "openai_error_body",
    "openai_error_type",
    "openai_status",
]


class MsgbatchError(Exception):
    """A failure with an API error type.

    `retryable` says whether running the same request again may succeed (the class's default
    unless the raiser knows better, as an upstream's `x-should-retry` does); `retry_after` is a
    hint in seconds; `upstream_status` is the HTTP status an upstream answered, when one did;
    `headers` go out with an HTTP answer. `param` and `code` are what the OpenAI dialect's error
    body says besides the message (the parameter at fault, a machine-readable code); the Message
    Batches API's body has no place for them.
    """

    type: ClassVar[str] = "api_error"
    status: ClassVar[int] = 500
    retryable_by_default: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retryable = self.retryable_by_default if retryable is None else retryable
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        self.headers = headers or {}

    @property
    def result_type(self) -> str:
        """The type to write inside an `errored` result (only the SDK's ErrorObject types)."""
        return self.type if self.type in RESULT_ERROR_TYPES else "invalid_request_error"

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class InvalidRequestError(MsgbatchError):
    type = "invalid_request_error"
    status = 400


class MethodNotAllowedError(InvalidRequestError):
    status = 405


class ConflictError(InvalidRequestError):
    status = 409


class UnsupportedMediaTypeError(InvalidRequestError):
    status = 415


class AuthenticationError(MsgbatchError):
    type = "authentication_error"
    status = 401


class BillingError(MsgbatchError):
    type = "billing_error"
    status = 402


class PermissionDeniedError(MsgbatchError):
    type = "permission_error"
    status = 403


class NotFoundError(MsgbatchError):
    type = "not_found_error"
    status = 404


class RequestTimeoutError(MsgbatchError):
    type = "timeout_error"
    status = 408


class RequestTooLargeError(MsgbatchError):
    type = "request_too_large"
    status = 413


class URITooLongError(RequestTooLargeError):
    status = 414


class HeadersTooLargeError(RequestTooLargeError):
    status = 431


class RateLimitError(MsgbatchError):
    type = "rate_limit_error"
    status = 429
    retryable_by_default = True


class InternalServerError(MsgbatchError):
    type = "api_error"
    status = 500
    retryable_by_default = True


class UpstreamUnreachableError(InternalServerError):
    """No connection to a backend's upstream could be opened: it is down, not failing."""


class ServiceUnavailableError(MsgbatchError):
    type = "overloaded_error"
    status = 503
    retryable_by_default = True


class GatewayTimeoutError(MsgbatchError):
    type = "timeout_error"
    status = 504
    retryable_by_default = True


class OverloadedError(MsgbatchError):
    type = "overloaded_error"
    status = 529
    retryable_by_default = True


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

# One class per error type: the one each type maps to when it arrives as a string.
_CLASS_BY_TYPE: dict[str, type[MsgbatchError]] = {
    cls.type: cls
    for cls in (
        InvalidRequestError,
        AuthenticationError,
        BillingError,
        PermissionDeniedError,
        NotFoundError,
        RequestTooLargeError,
        RateLimitError,
        InternalServerError,
        GatewayTimeoutError,
        OverloadedError,
    )
}
STATUS_BY_TYPE: dict[str, int] = {name: cls.status for name, cls in _CLASS_BY_TYPE.items()}


def error_for_type(
    error_type: str,
    message: str,
    *,
    retryable: bool | None = None,
    retry_after: float | None = None,
    upstream_status: int | None = None,
) -> MsgbatchError:
    """The error of that type (an unknown type is an `api_error`)."""
    cls = _CLASS_BY_TYPE.get(error_type, InternalServerError)
    return cls(message, retryable=retryable, retry_after=retry_after, upstream_status=upstream_status)


def error_body(error_type: str, message: str, request_id: str | None) -> bytes:
    """The one rendering of an error body, used by every endpoint and inside results."""
    return msgspec.json.encode(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}
    )


# The OpenAI dialect names some errors differently and has no 529: (its type, its status).
_OPENAI_ERRORS: dict[str, tuple[str, int | None]] = {
    "authentication_error": ("invalid_request_error", None),
    "permission_error": ("invalid_request_error", None),
    "not_found_error": ("invalid_request_error", None),
    "request_too_large": ("invalid_request_error", None),
    "billing_error": ("insufficient_quota", 429),
    "rate_limit_error": ("rate_limit_exceeded", None),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", 503),
    "timeout_error": ("server_error", None),
}


def openai_error_type(error_type: str) -> str:
    """The OpenAI API's name for an error type of this tree."""
    return _OPENAI_ERRORS.get(error_type, (error_type, None))[0]


def openai_status(error_type: str, status: int) -> int:
    """The status the OpenAI API answers for an error of this type (it has no 529)."""
    return _OPENAI_ERRORS.get(error_type, (error_type, None))[1] or status


def openai_error_body(error_type: str, message: str, param: str | None = None, code: str | None = None) -> bytes:
    """The OpenAI API's error body, `{"error": {"message", "type", "param", "code"}}`: the answer of
    the OpenAI dialect's routes, and the body of a failed request in an OpenAI batch's error file."""
    return msgspec.json.encode(
        {"error": {"message": message, "type": openai_error_type(error_type), "param": param, "code": code}}
    )
