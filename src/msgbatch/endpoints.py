"""What a request is, by the endpoint of its batch: how the dispatcher checks it, which backend
call answers it, and the results lines and token counts its outcomes make.

| endpoint | the request | answered by | its lines |
|---|---|---|---|
| `""` (a Message Batch) | Messages params, checked as the API does | `create_message` | `{"custom_id", "result"}` |
| `/v1/chat/completions` | a chat completion body as written | `create_chat_completion` | OpenAI output / error file |
| `/v1/completions` | a text completion body | `create_completion` | the same |
| `/v1/embeddings` | an embeddings body | `create_embedding` | the same |

Everything else about running a request (routing by `model`, retries, limits, cancel, expiry)
is the same for all of them: that is the dispatcher's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from msgbatch.backends.base import Backend, CallContext
from msgbatch.errors import STATUS_BY_TYPE, openai_status
from msgbatch.models import Job
from msgbatch.results import (
    chat_tokens,
    embedding_tokens,
    errored_line,
    openai_errored_line,
    openai_succeeded_line,
    succeeded_line,
    tokens_of,
)
from msgbatch.validation import validate_params

__all__ = ["ENDPOINTS", "OPENAI_ENDPOINTS", "Endpoint"]

Answer = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    # The first problem with a request's params (decoded), or None; `strict` and `version` are
    # the Messages API's strict mode and the batch's anthropic-version.
    check: Callable[[dict[str, Any], bool, str | None], str | None]
    call: Callable[[Backend, dict[str, Any], CallContext], Awaitable[Answer]]
    succeeded_line: Callable[[Job, Answer], bytes]
    # (job, error type, message, HTTP status of the failure)
    errored_line: Callable[[Job, str, str, int | None], bytes]
    tokens: Callable[[Answer], tuple[int, int, int, int]]


def _check_openai(body: dict[str, Any], strict: bool, version: str | None) -> str | None:
    # The rest of the body is the backend's to judge: an `openai` upstream's own checks, or the
    # translation's (backends/chat_messages.py).
    model = body.get("model")
    return None if isinstance(model, str) and model else "you must provide a model parameter"


def _openai_errored(job: Job, error_type: str, message: str, status: int | None) -> bytes:
    status = openai_status(error_type, status or STATUS_BY_TYPE.get(error_type, 500))
    return openai_errored_line(job.id, job.custom_id, error_type, message, status)


def _openai_succeeded(job: Job, answer: Answer) -> bytes:
    return openai_succeeded_line(job.id, job.custom_id, answer)


MESSAGES = Endpoint(
    check=validate_params,
    call=lambda backend, params, context: backend.create_message(params, context),
    succeeded_line=lambda job, message: succeeded_line(job.custom_id, message),
    errored_line=lambda job, error_type, message, status: errored_line(job.custom_id, error_type, message),
    tokens=tokens_of,
)

# The endpoints an OpenAI batch may target.
OPENAI_ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(
        check=_check_openai,
        call=lambda backend, body, context: backend.create_chat_completion(body, context),
        succeeded_line=_openai_succeeded,
        errored_line=_openai_errored,
        tokens=chat_tokens,
    ),
    "/v1/completions": Endpoint(
        check=_check_openai,
        call=lambda backend, body, context: backend.create_completion(body, context),
        succeeded_line=_openai_succeeded,
        errored_line=_openai_errored,
        tokens=chat_tokens,
    ),
    "/v1/embeddings": Endpoint(
        check=_check_openai,
        call=lambda backend, body, context: backend.create_embedding(body, context),
        succeeded_line=_openai_succeeded,
        errored_line=_openai_errored,
        tokens=embedding_tokens,
    ),
}

ENDPOINTS: dict[str, Endpoint] = {"": MESSAGES, **OPENAI_ENDPOINTS}
