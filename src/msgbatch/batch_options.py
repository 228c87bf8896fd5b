"""The options of a batch beyond the hosted API, and what a create call's body may say of them.

    "metadata":    {"team": "search"}                              up to 16 string pairs
    "fail_fast":   {"min_results": 100, "max_error_rate": 0.5}      cancel (hard) when too many fail
    "webhook_url": "https://hooks.example.com/batches"              under an allowed prefix
    "priority":    "high"                                          within its workspace (msgbatch.fairness)

A batch that uses none of them is stored, and shown, exactly as the hosted API's would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msgbatch.config import Settings
from msgbatch.errors import InvalidRequestError
from msgbatch.models import NORMAL, PRIORITY_CODES
from msgbatch.webhooks import check_webhook_url

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


@dataclass(frozen=True, slots=True)
class FailFast:
    """Cancel the batch once `min_results` results are in and more than `max_error_rate` of them
    errored (requests still to run)."""

    min_results: int
    max_error_rate: float


@dataclass(frozen=True, slots=True)
class BatchOptions:
    metadata: dict[str, str] | None = None
    fail_fast: FailFast | None = None
    webhook_url: str | None = None
    retry_of: str | None = None
    priority: int = NORMAL  # stored with the batch row itself

    @property
    def stored_apart(self) -> bool:
        """Whether the batch row needs the options step (metadata goes in with the batch itself)."""
        return self.fail_fast is not None or self.webhook_url is not None or self.retry_of is not None


def check_metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidRequestError("metadata: Input should be a valid dictionary")
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(
            f"metadata: Dictionary should have at most {MAX_METADATA_PAIRS} items after validation, not {len(value)}"
        )
    for key, item in value.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            raise InvalidRequestError(
                f"metadata: keys should have at least 1 and at most {MAX_METADATA_KEY} characters, not {len(key)}"
            )
        if not isinstance(item, str):
            raise InvalidRequestError(f"metadata.{key}: Input should be a valid string")
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidRequestError(f"metadata.{key}: String should have at most {MAX_METADATA_VALUE} characters")
    return value


def check_fail_fast(value: object) -> FailFast:
    if not isinstance(value, dict):
        raise InvalidRequestError("fail_fast: Input should be a valid dictionary")
    unknown = sorted(set(value) - {"min_results", "max_error_rate"})
    if unknown:
        raise InvalidRequestError(f"fail_fast.{unknown[0]}: Extra inputs are not permitted")
    if "min_results" not in value:
        raise InvalidRequestError("fail_fast.min_results: Field required")
    if "max_error_rate" not in value:
        raise InvalidRequestError("fail_fast.max_error_rate: Field required")
    count, rate = value["min_results"], value["max_error_rate"]
    if not isinstance(count, int) or isinstance(count, bool):
        raise InvalidRequestError("fail_fast.min_results: Input should be a valid integer")
    if count < 1:
        raise InvalidRequestError("fail_fast.min_results: Input should be greater than or equal to 1")
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        raise InvalidRequestError("fail_fast.max_error_rate: Input should be a valid number")
    if not 0 <= rate <= 1:
        raise InvalidRequestError(
            "fail_fast.max_error_rate: Input should be greater than or equal to 0 and less than or equal to 1"
        )
    return FailFast(count, float(rate))


def check_priority(value: object) -> int:
    if not isinstance(value, str) or value not in PRIORITY_CODES:
        raise InvalidRequestError("priority: Input should be 'high', 'normal' or 'low'")
    return PRIORITY_CODES[value]


def options_of(
    settings: Settings,
    *,
    metadata: Any = None,
    fail_fast: Any = None,
    webhook_url: Any = None,
    priority: Any = None,
) -> BatchOptions:
    """A create body's options, checked (None: not given)."""
    return BatchOptions(
        metadata=check_metadata(metadata) if metadata is not None else None,
        fail_fast=check_fail_fast(fail_fast) if fail_fast is not None else None,
        webhook_url=check_webhook_url(webhook_url, settings) if webhook_url is not None else None,
        priority=check_priority(priority) if priority is not None else NORMAL,
    )
