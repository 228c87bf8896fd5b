"""Human-readable output: aligned tables, batches, one-line summaries of results."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from msgbatch.client.progress import counts_of, done_total, status_of


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns in `right` are right-aligned (numbers)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def fmt(row: Sequence[str]) -> str:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(headers), *(fmt(r) for r in rows)])


def when(value: object) -> str:
    """An RFC 3339 time (or, from the OpenAI Batch API, seconds since the epoch) as local time,
    with how long ago (or ahead) it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        at = datetime.fromtimestamp(value, UTC)
    elif not isinstance(value, str) or not value:
        return "-"
    else:
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    seconds = (at - datetime.now(UTC)).total_seconds()
    span = abs(seconds)
    if span < 60:
        ago = f"{span:.0f}s"
    elif span < 3600:
        ago = f"{span / 60:.0f}m"
    elif span < 86400:
        ago = f"{span / 3600:.1f}h"
    else:
        ago = f"{span / 86400:.1f}d"
    relative = f"in {ago}" if seconds > 0 else f"{ago} ago"
    return f"{at.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({relative})"


def progress_cell(batch: dict[str, Any]) -> str:
    done, total = done_total(batch)
    return f"{done:,}/{total:,}"


def batches_table(batches: Sequence[dict[str, Any]]) -> str:
    """One batch a row; a METADATA column when some batch has metadata (msgbatch)."""
    tagged = any(b.get("metadata") for b in batches)
    rows = []
    for b in batches:
        c = counts_of(b)
        rows.append(
            [
                str(b.get("id", "")),
                status_of(b),
                progress_cell(b),
                f"{c['succeeded']:,}",
                f"{c['errored']:,}",
                f"{c['canceled']:,}",
                f"{c['expired']:,}",
                when(b.get("created_at")),
                *([",".join(f"{k}={v}" for k, v in (b.get("metadata") or {}).items())] if tagged else []),
            ]
        )
    return table(
        ["ID", "STATUS", "DONE", "SUCCEEDED", "ERRORED", "CANCELED", "EXPIRED", "CREATED", *(["METADATA"] * tagged)],
        rows,
        right=(2, 3, 4, 5, 6),
    )


def batch_details(batch: dict[str, Any]) -> str:
    c = counts_of(batch)
    done, total = done_total(batch)
    pct = 100.0 * done / total if total else 0.0
    rows = [
        ("id", str(batch.get("id", ""))),
        ("processing_status", str(batch.get("processing_status", ""))),
        ("requests", f"{total:,} ({done:,} done, {pct:.1f}%)"),
        *((f"  {key}", f"{c[key]:,}") for key in ("processing", "succeeded", "errored", "canceled", "expired")),
        ("created_at", when(batch.get("created_at"))),
        ("cancel_initiated_at", when(batch.get("cancel_initiated_at"))),
        ("ended_at", when(batch.get("ended_at"))),
        ("expires_at", when(batch.get("expires_at"))),
        ("archived_at", when(batch.get("archived_at"))),
        ("results_url", str(batch.get("results_url") or "-")),
    ]
    # msgbatch's options, where the batch uses them
    if batch.get("metadata"):
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in batch["metadata"].items())))
    if batch.get("fail_fast"):
        policy = batch["fail_fast"]
        rows.append(("fail_fast", f"{policy.get('min_results')} results, {policy.get('max_error_rate')} error rate"))
    for key in ("cancel_reason", "retry_of", "retried_by", "webhook_url"):
        if batch.get(key):
            rows.append((key, str(batch[key])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def result_summary(line: dict[str, Any], width: int = 100) -> str:
    """What a results line says, in one line."""
    result = line.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        parts = []
        for block in message.get("content") or []:
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            else:
                parts.append(f"[{block.get('type')}{' ' + block['name'] if block.get('name') else ''}]")
        text = " ".join(parts).replace("\n", " ")
        usage = message.get("usage") or {}
        tail = (
            f" [{message.get('stop_reason')}, {usage.get('input_tokens', 0)}->{usage.get('output_tokens', 0)} tokens]"
        )
        room = max(10, width - len(tail))
        return (text if len(text) <= room else text[: room - 3] + "...") + tail
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or {}
        return f"{error.get('type')}: {error.get('message')}"
    if kind == "canceled":
        return "not run: the batch was canceled"
    if kind == "expired":
        return "not run before the batch expired"
    return ""
