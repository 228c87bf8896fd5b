"""Submitting an OpenAI batch file: `{"custom_id", "method", "url", "body"}` lines, as OpenAI's
Batch API and vLLM's `run-batch` take them, with constant memory.

The file's first request line tells its format (`is_openai_file`). As for Message Batches, every
line is checked first (JSON, custom_id, duplicates across the whole file, the url one msgbatch
runs) and nothing is sent if any is bad. Lines go to batches by their `url` (a vLLM file may mix
endpoints; an OpenAI batch has one), each at most `max_requests` lines and `max_bytes` bytes. For
each batch its lines, as they are in the file, are spooled to a temporary file, uploaded
(`purpose=batch`) and a batch is created from it. Results come back in the same format: the
lines of each batch's output file, then of its error file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import msgspec

from msgbatch.batch_input import check_line
from msgbatch.client.submit import MIB, InputError, _lines

__all__ = ["ENDPOINTS", "MAX_BYTES", "MAX_REQUESTS", "OpenAIPlan", "bodies", "is_openai_file", "plan"]

# OpenAI's limits per batch input file (and msgbatch's defaults for them).
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * MIB
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_MAX_PROBLEMS = 10
_SPOOL_IN_MEMORY = 16 * MIB


class _Head(msgspec.Struct):
    url: object = None
    body: object = None


def is_openai_file(path: str) -> bool:
    """Whether the file's first request line is an OpenAI batch line (it has `url` and `body`)."""
    with open(path, "rb") as source:
        for _, raw in _lines(source):
            try:
                head = msgspec.json.decode(raw, type=_Head)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return False
            return head.url is not None and head.body is not None
    return False


@dataclass
class PlannedFile:
    url: str
    requests: int = 0
    size: int = 0  # bytes of the file uploaded
    first_line: int = 0
    last_line: int = 0


@dataclass
class OpenAIPlan:
    path: str
    batches: list[PlannedFile] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(b.requests for b in self.batches)


def _url(raw: bytes) -> str:
    return str(msgspec.json.decode(raw, type=_Head).url)


def plan(path: str, *, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES) -> OpenAIPlan:
    """Check every line and decide the batches; raises InputError naming bad lines."""
    problems: list[tuple[int, str]] = []
    more = 0
    seen: set[str] = set()
    first_seen: dict[str, int] = {}
    current: dict[str, PlannedFile] = {}
    result = OpenAIPlan(path)
    with open(path, "rb") as source:
        for lineno, raw in _lines(source):
            problem: str | None = None
            found = check_line(raw, lineno, None, seen)
            if isinstance(found, dict):
                problem = str(found["message"])
                if found["code"] == "duplicate_custom_id":
                    cid = msgspec.json.decode(raw, type=dict[str, object]).get("custom_id")
                    problem = f"duplicate custom_id {cid!r} (first on line {first_seen[str(cid)]})"
            else:
                first_seen[found.custom_id] = lineno
                url = _url(raw)
                if url not in ENDPOINTS:
                    problem = f"url {url!r}: msgbatch runs {', '.join(ENDPOINTS)}"
                elif len(raw) > max_bytes:
                    problem = f"this request alone is {len(raw):,} bytes, over the per-batch limit of {max_bytes:,}"
            if problem is not None:
                if len(problems) < _MAX_PROBLEMS:
                    problems.append((lineno, problem))
                else:
                    more += 1
                continue
            batch = current.get(url)
            size = len(raw) if raw.endswith(b"\n") else len(raw) + 1
            if batch is not None and (batch.requests >= max_requests or batch.size + size > max_bytes):
                batch = None
            if batch is None:
                batch = current[url] = PlannedFile(url, first_line=lineno)
                result.batches.append(batch)
            batch.requests += 1
            batch.size += size
            batch.last_line = lineno
    if problems or more or not result.batches:
        raise InputError(path, problems, more)
    return result


def bodies(the_plan: OpenAIPlan) -> Iterator[tuple[PlannedFile, IO[bytes]]]:
    """Each planned batch's input file, in a spooled temporary file positioned at its start."""
    by_url: dict[str, list[PlannedFile]] = {}
    for planned in the_plan.batches:
        by_url.setdefault(planned.url, []).append(planned)
    for url, batches in by_url.items():
        # One pass over the file per endpoint (a file seldom has more than one).
        pending = iter(batches)
        batch = next(pending, None)
        spool: IO[bytes] | None = None
        count = 0
        with open(the_plan.path, "rb") as source:
            for lineno, raw in _lines(source):
                if batch is None:
                    break
                if _url(raw) != url:
                    continue
                if spool is None:
                    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
                spool.write(raw if raw.endswith(b"\n") else raw + b"\n")
                count += 1
                if count == batch.requests:
                    if spool.tell() != batch.size:
                        raise InputError(the_plan.path, [(lineno, "the file changed while it was being submitted")])
                    spool.seek(0)
                    try:
                        yield batch, spool
                    finally:
                        spool.close()
                    spool, count = None, 0
                    batch = next(pending, None)
        if batch is not None:
            raise InputError(the_plan.path, [(0, "the file changed while it was being submitted")])
