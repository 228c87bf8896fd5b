"""The records that pass between the store, the manager and the dispatcher."""

from __future__ import annotations

import msgspec

# processing_status, as stored
IN_PROGRESS, CANCELING, ENDED = 0, 1, 2
STATUS_NAMES = ("in_progress", "canceling", "ended")

NO_TOKENS = (0, 0, 0, 0)

# a batch's priority within its workspace, as stored: claims serve the lowest number first
HIGH, NORMAL, LOW = 0, 1, 2
PRIORITY_NAMES = ("high", "normal", "low")
PRIORITY_CODES = {name: code for code, name in enumerate(PRIORITY_NAMES)}

# result types, as stored
SUCCEEDED, ERRORED, CANCELED, EXPIRED = 0, 1, 2, 3
RESULT_NAMES = ("succeeded", "errored", "canceled", "expired")
RESULT_CODES = {name: code for code, name in enumerate(RESULT_NAMES)}


class Batch(msgspec.Struct, kw_only=True):
    seq: int  # internal key; never shown
    id: str
    workspace: str
    status: int
    created_at: int  # microseconds since the epoch
    expires_at: int
    ended_at: int | None = None
    cancel_initiated_at: int | None = None
    archived_at: int | None = None
    total: int
    processing: int
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0
    first_request: int  # request rows are [first_request, first_request + total)
    betas: str = ""  # comma-separated anthropic-beta values
    headers: str = "{}"  # JSON object: the other request headers every request of the batch carries
    metadata: str = "{}"  # JSON object of string pairs the client attached to the batch
    # Token usage of the batch's succeeded requests so far.
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    # Features beyond the hosted API (shown on the batch object only when used).
    retry_of: str | None = None  # the batch whose failed lines this one runs again
    retried_by: str | None = None  # the latest batch that runs this one's failed lines again
    cancel_reason: str | None = None  # "fail_fast" when the batch's fail-fast policy canceled it
    abort_running: bool = False  # canceled with its running requests stopped too (a hard cancel)
    fail_fast_min_results: int | None = None
    fail_fast_max_error_rate: float | None = None
    webhook_url: str | None = None
    priority: int = NORMAL

    @property
    def stop_request(self) -> int:
        """One past the batch's last request id."""
        return self.first_request + self.total

    @property
    def end_reason(self) -> str | None:
        """Why an ended batch ended: `canceled`, `expired` (its expiry finished it) or `completed`."""
        if self.status != ENDED:
            return None
        if self.cancel_initiated_at is not None:
            return "canceled"
        if self.expired and (self.ended_at or 0) >= self.expires_at:
            return "expired"
        return "completed"


class Job(msgspec.Struct, gc=False):
    """A claimed request, ready to run."""

    id: int
    batch: int
    custom_id: str
    params: bytes
    betas: str
    headers: str
    expires_at: int
    attempts: int
    # What kind of request it is: "" a Messages request, else the OpenAI endpoint of its batch.
    endpoint: str = ""
    workspace: str = ""
    model: str = ""  # the params' `model` as read at create ('' if none): what routes it


class Outcome(msgspec.Struct, gc=False):
    """What became of a claimed job.

    With `result` set, the job is finished and `line` is its whole results line (`error_type`
    says which error an `errored` one carries). With `result` None, the job goes back to the
    queue, to be claimed again no sooner than `not_before` (a retry).
    """

    job: int
    batch: int
    result: int | None
    line: bytes = b""
    not_before: int = 0
    error_type: str | None = None
    # A succeeded Message's usage: input, output, cache read and cache creation tokens.
    tokens: tuple[int, int, int, int] = NO_TOKENS
    backend: str = ""  # the backend that ran it ('' if it never reached one)
