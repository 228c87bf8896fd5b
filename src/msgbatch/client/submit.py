"""Reading a requests file and splitting it into create bodies, with constant memory.

The file is JSONL: one `{"custom_id": ..., "params": {...}}` object a line, or bare params
(`{"model": ..., "messages": [...]}`), which get the custom_id `line-N` (N: the line number).
Blank lines are skipped.

Two passes over the file. The first checks every line (JSON, custom_id, duplicates, size) and
plans the split; nothing is sent if any line is bad, so a typo on line 90,000 never leaves two
batches submitted and a third missing. The second pass writes each planned batch's body to a
spooled temporary file and hands it over to be streamed to the server. Params travel as the
exact bytes they had in the file.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

MIB = 1024 * 1024
# The API's limits per batch (both the hosted API and msgbatch's defaults).
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * MIB

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_OPEN = b'{"requests":['
_CLOSE = b"]}"
_MAX_PROBLEMS = 10
_SPOOL_IN_MEMORY = 16 * MIB

_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_string = msgspec.json.Decoder(str)


class LineError(ValueError):
    """One line of the input is unusable; the message says why."""


class InputError(Exception):
    """The input file cannot be submitted; `problems` are (line number, message) pairs."""

    def __init__(self, path: str, problems: list[tuple[int, str]], more: int = 0) -> None:
        self.path = path
        self.problems = problems
        self.more = more
        lines = [f"{path}: line {n}: {message}" for n, message in problems]
        if more:
            lines.append(f"{path}: ... and {more} more bad line{'s' if more > 1 else ''}")
        if not problems and not more:
            lines.append(f"{path}: no requests in the file")
        super().__init__("\n".join(lines))


def parse_line(raw: bytes, lineno: int) -> tuple[str, bytes]:
    """One input line -> (custom_id, the request as it goes into the create body)."""
    try:
        obj = _object.decode(raw)
    except msgspec.ValidationError:
        raise LineError('expected a JSON object: {"custom_id": ..., "params": {...}}, or bare params') from None
    except msgspec.DecodeError as exc:
        raise LineError(f"not valid JSON ({exc})") from None
    if "params" in obj:
        if "custom_id" not in obj:
            raise LineError('missing custom_id: a line with "params" needs its "custom_id"')
        extra = sorted(set(obj) - {"custom_id", "params"})
        if extra:
            raise LineError(f'unexpected key "{extra[0]}": a request has only "custom_id" and "params"')
        try:
            custom_id = _string.decode(obj["custom_id"])
        except msgspec.ValidationError:
            raise LineError("custom_id must be a string") from None
        if CUSTOM_ID.fullmatch(custom_id) is None:
            raise LineError(f"custom_id {custom_id!r} must match ^[a-zA-Z0-9_-]{{1,64}}$")
        params = bytes(obj["params"])
        if not params.startswith(b"{"):
            raise LineError("params must be a JSON object")
    elif "custom_id" in obj:
        raise LineError('has a custom_id but no "params"')
    elif "requests" in obj:
        raise LineError('this is a whole create body ({"requests": [...]}); put one request per line instead')
    else:
        custom_id = f"line-{lineno}"
        params = raw.strip()
    return custom_id, b'{"custom_id":"' + custom_id.encode() + b'","params":' + params + b"}"


@dataclass
class PlannedBatch:
    requests: int = 0
    size: int = len(_OPEN) + len(_CLOSE)  # bytes of the create body
    first_line: int = 0
    last_line: int = 0


@dataclass
class Plan:
    path: str
    # Members the create body carries after "requests" (msgbatch's options: `,"metadata":{...}`).
    options: bytes = b""
    batches: list[PlannedBatch] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(b.requests for b in self.batches)

    @property
    def close(self) -> bytes:
        return b"]" + self.options + b"}"


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for lineno, raw in enumerate(source, 1):
        if raw.strip():
            yield lineno, raw


def plan(path: str, *, max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES, options: bytes = b"") -> Plan:
    """Check every line and decide where each batch starts; raises InputError naming bad lines.
    `options` are more members of every create body (`,"metadata":{...}`)."""
    problems: list[tuple[int, str]] = []
    more = 0
    seen: dict[str, int] = {}
    result = Plan(path, options)
    empty = len(_OPEN) + len(result.close)
    current = PlannedBatch(size=empty)
    with open(path, "rb") as source:
        for lineno, raw in _lines(source):
            try:
                custom_id, item = parse_line(raw, lineno)
                first = seen.setdefault(custom_id, lineno)
                if first != lineno:
                    raise LineError(f"duplicate custom_id {custom_id!r} (first on line {first})")
                alone = empty + len(item)
                if alone > max_bytes:
                    raise LineError(f"this request alone is {alone:,} bytes, over the per-batch limit of {max_bytes:,}")
            except LineError as exc:
                if len(problems) < _MAX_PROBLEMS:
                    problems.append((lineno, str(exc)))
                else:
                    more += 1
                continue
            added = len(item) + (1 if current.requests else 0)
            if current.requests and (current.requests >= max_requests or current.size + added > max_bytes):
                result.batches.append(current)
                current = PlannedBatch(size=empty)
                added = len(item)
            if not current.requests:
                current.first_line = lineno
            current.requests += 1
            current.size += added
            current.last_line = lineno
    if current.requests:
        result.batches.append(current)
    if problems or more or not result.batches:
        raise InputError(path, problems, more)
    return result


def bodies(the_plan: Plan) -> Iterator[tuple[PlannedBatch, IO[bytes]]]:
    """Each planned batch's create body, in a spooled temporary file positioned at its start."""
    planned = iter(the_plan.batches)
    batch = next(planned, None)
    spool: IO[bytes] | None = None
    count = 0
    with open(the_plan.path, "rb") as source:
        for lineno, raw in _lines(source):
            if batch is None:
                break
            try:
                _, item = parse_line(raw, lineno)
            except LineError as exc:  # the file changed since it was checked
                raise InputError(the_plan.path, [(lineno, str(exc))]) from None
            if spool is None:
                spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
                spool.write(_OPEN)
            else:
                spool.write(b",")
            spool.write(item)
            count += 1
            if count == batch.requests:
                spool.write(the_plan.close)
                if spool.tell() != batch.size:
                    raise InputError(the_plan.path, [(lineno, "the file changed while it was being submitted")])
                spool.seek(0)
                try:
                    yield batch, spool
                finally:
                    spool.close()
                spool, count = None, 0
                batch = next(planned, None)
    if batch is not None:
        raise InputError(the_plan.path, [(0, "the file changed while it was being submitted")])


def chunks(spool: IO[bytes], size: int = MIB) -> Iterator[bytes]:
    spool.seek(0)
    while chunk := spool.read(size):
        yield chunk


def stdin_to_file() -> str:
    """`-` as the input: keep stdin in a temporary file, since the file is read twice."""
    with tempfile.NamedTemporaryFile(prefix="msgbatch-stdin-", suffix=".jsonl", delete=False) as out:
        shutil.copyfileobj(sys.stdin.buffer, out, MIB)
        return out.name


def is_readable(path: str) -> str | None:
    p = Path(path)
    if not p.exists():
        return f"{path}: no such file"
    if p.is_dir():
        return f"{path}: is a directory"
    return None
