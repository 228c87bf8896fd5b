"""Waiting for batches to end, with a live progress bar per batch.

On a terminal the bars redraw in place (done/total, succeeded/errored, rate, ETA). Anywhere
else (a log file, CI) a plain line is printed per batch when it moves, at most every few
seconds, and when it ends.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from msgbatch.client.http import EXIT_API, EXIT_TIMEOUT, BatchesClient, ClientError

COUNT_KEYS = ("processing", "succeeded", "errored", "canceled", "expired")
_RATE_WINDOW = 30.0  # seconds of history behind the rate and the ETA
_PLAIN_EVERY = 5.0  # seconds between plain lines for a batch that moves
_MAX_POLL_FAILURES = 5


# A batch of the OpenAI Batch API (`"object": "batch"`) is shown in the same terms: its completed
# requests as succeeded, its failed ones (errored, cancelled or expired) as errored.
OPENAI_FINAL = frozenset({"completed", "failed", "cancelled", "expired"})


def status_of(batch: dict[str, Any]) -> str:
    """A Message Batch's processing_status, or an OpenAI batch's status."""
    return str(batch.get("processing_status") or batch.get("status") or "?")


def is_ended(batch: dict[str, Any]) -> bool:
    return batch.get("processing_status") == "ended" or batch.get("status") in OPENAI_FINAL


def counts_of(batch: dict[str, Any]) -> dict[str, int]:
    counts = batch.get("request_counts") or {}
    if batch.get("object") == "batch":
        total, completed, failed = (int(counts.get(key, 0)) for key in ("total", "completed", "failed"))
        processing = max(0, total - completed - failed)
        return {"processing": processing, "succeeded": completed, "errored": failed, "canceled": 0, "expired": 0}
    return {key: int(counts.get(key, 0)) for key in COUNT_KEYS}


def done_total(batch: dict[str, Any]) -> tuple[int, int]:
    c = counts_of(batch)
    total = sum(c.values())
    return total - c["processing"], total


def fmt_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Tracked:
    """One batch being watched: its last state and enough history for a rate."""

    batch: dict[str, Any]
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    last_plain: float = 0.0
    last_plain_done: int = -1
    last_plain_status: str = ""

    @property
    def id(self) -> str:
        return str(self.batch["id"])

    @property
    def ended(self) -> bool:
        return is_ended(self.batch)

    def observe(self, batch: dict[str, Any], now: float) -> None:
        self.batch = batch
        done, _ = done_total(batch)
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > _RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self) -> float | None:
        done, total = done_total(self.batch)
        rate = self.rate()
        if self.ended or not rate or rate <= 0:
            return None
        return (total - done) / rate


class Display:
    def __init__(self, stream: TextIO, *, live: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.fill, self.empty = ("█", "░") if encoding == "utf8" else ("#", "-")
        self._drawn = 0

    def _bar(self, done: int, total: int, width: int) -> str:
        filled = int(width * done / total) if total else 0
        return self.fill * filled + self.empty * (width - filled)

    def line(self, t: Tracked, *, bar: bool) -> str:
        c = counts_of(t.batch)
        done, total = done_total(t.batch)
        pct = 100.0 * done / total if total else 0.0
        status = status_of(t.batch)
        parts = [t.id]
        if bar:
            parts.append(f"[{self._bar(done, total, 24)}]")
        parts.append(f"{done:,}/{total:,} ({pct:.1f}%)")
        parts.append(f"{c['succeeded']:,} succeeded, {c['errored']:,} errored")
        if c["canceled"]:
            parts.append(f"{c['canceled']:,} canceled")
        if c["expired"]:
            parts.append(f"{c['expired']:,} expired")
        rate, eta = t.rate(), t.eta()
        if not t.ended and rate is not None:
            parts.append(f"{rate:,.0f}/s" if rate >= 10 else f"{rate:.1f}/s")
        if eta is not None:
            parts.append(f"ETA {fmt_duration(eta)}")
        if status != "in_progress":
            parts.append(status.replace("_", " "))
        return "  ".join(parts) if bar else f"{parts[0]}: " + ", ".join(parts[1:])

    def update(self, tracked: Sequence[Tracked], now: float) -> None:
        if self.live:
            self._redraw(tracked)
            return
        for t in tracked:
            done, _ = done_total(t.batch)
            status = status_of(t.batch)
            changed = status != t.last_plain_status or (
                done != t.last_plain_done and now - t.last_plain >= _PLAIN_EVERY
            )
            if changed:
                self.stream.write(self.line(t, bar=False) + "\n")
                t.last_plain, t.last_plain_done, t.last_plain_status = now, done, status
        self.stream.flush()

    def _redraw(self, tracked: Sequence[Tracked]) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        lines = [self.line(t, bar=True)[:width] for t in tracked]
        if len(tracked) > 1:
            done = sum(done_total(t.batch)[0] for t in tracked)
            total = sum(done_total(t.batch)[1] for t in tracked)
            lines.append(
                f"all {len(tracked)} batches: {done:,}/{total:,} ({100.0 * done / max(total, 1):.1f}%)"[:width]
            )
        out = f"\x1b[{self._drawn}F" if self._drawn else ""
        out += "".join(f"\x1b[2K{line}\n" for line in lines)
        self.stream.write(out)
        self.stream.flush()
        self._drawn = len(lines)

    def message(self, text: str) -> None:
        """A line above the bars (the bars are redrawn below it on the next update)."""
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
        self.stream.write(text + "\n")
        self.stream.flush()


class QuietDisplay(Display):
    """Shows nothing (--quiet)."""

    def __init__(self) -> None:
        self.live = False
        self._drawn = 0

    def update(self, tracked: Sequence[Tracked], now: float) -> None:
        return None

    def message(self, text: str) -> None:
        return None


def wait_for(
    client: BatchesClient,
    batch_ids: Sequence[str],
    *,
    display: Display,
    poll_interval: float,
    timeout: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Poll every batch until all have ended; returns their final state, in the order given.
    `on_update` sees each batch as it is fetched (`watch --follow` prints its new results)."""
    start = clock()
    tracked: list[Tracked] = []
    for batch_id in batch_ids:
        t = Tracked(client.retrieve(batch_id))
        t.observe(t.batch, clock())
        tracked.append(t)
        if on_update is not None:
            on_update(t.batch)
    failures = 0
    while True:
        display.update(tracked, clock())
        if all(t.ended for t in tracked):
            return [t.batch for t in tracked]
        if timeout is not None and clock() - start >= timeout:
            unfinished = ", ".join(t.id for t in tracked if not t.ended)
            raise ClientError(
                f"timed out after {fmt_duration(timeout)}; still running: {unfinished}", exit_code=EXIT_TIMEOUT
            )
        sleep(poll_interval)
        for t in tracked:
            if t.ended:
                continue
            try:
                t.observe(client.retrieve(t.id), clock())
                failures = 0
                if on_update is not None:
                    on_update(t.batch)
            except ClientError as exc:
                # A long wait outlives a restart of the server or a network blip: keep going a while.
                failures += 1
                if failures >= _MAX_POLL_FAILURES or exc.exit_code != EXIT_API or _is_final(exc):
                    raise
                display.message(f"warning: {exc.message} (retrying)")


def _is_final(exc: ClientError) -> bool:
    status = getattr(exc, "status", None)
    return status is not None and status < 500 and status not in (408, 409, 429)
