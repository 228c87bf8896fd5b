"""The client commands of `msgbatch`: submit, batches list|get|cancel|delete, results, watch, usage."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import click
import msgspec

from msgbatch.click_types import Duration
from msgbatch.client.http import (
    DEFAULT_BASE_URL,
    EXIT_FAILED_REQUESTS,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    BatchesClient,
    ClientError,
)
from msgbatch.client.openai_http import OpenAIBatchesClient
from msgbatch.client.openai_submit import MAX_BYTES as OPENAI_MAX_BYTES
from msgbatch.client.openai_submit import MAX_REQUESTS as OPENAI_MAX_REQUESTS
from msgbatch.client.openai_submit import bodies as openai_bodies
from msgbatch.client.openai_submit import is_openai_file
from msgbatch.client.openai_submit import plan as openai_plan
from msgbatch.client.options import ResultsFollower, create_options, metadata_option
from msgbatch.client.progress import Display, QuietDisplay, counts_of, done_total, wait_for
from msgbatch.client.submit import (
    MAX_BYTES,
    MAX_REQUESTS,
    InputError,
    bodies,
    chunks,
    is_readable,
    plan,
    stdin_to_file,
)
from msgbatch.client.tables import batch_details, batches_table, result_summary, table

F = TypeVar("F", bound=Callable[..., Any])

RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")

EXIT_CODES = """\b
Exit codes:
  0    success
  1    the API answered an error, or the server could not be reached
  2    bad flags or arguments, or a bad input file (the message names the line)
  3    --fail-on-errors: some request errored, expired or was canceled
  4    --timeout passed before the batches ended (they keep running)
  5    results --custom-id: no result has that custom_id
  130  interrupted (Ctrl-C); submitted batches keep running on the server

\b
Connection: --base-url / ANTHROPIC_BASE_URL (default http://127.0.0.1:8787, a local
`msgbatch serve`; https://api.anthropic.com for the hosted API) and --api-key / ANTHROPIC_API_KEY.
"""


class CLIError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click exits with it


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Every expected failure becomes a one-line message and its exit code."""
    try:
        yield
    except ClientError as exc:
        raise CLIError(exc.message, exc.exit_code) from None
    except InputError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted; batches already submitted keep running on the server", err=True)
        sys.exit(130)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|k|m|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
}  # fmt: skip


class SizeType(click.ParamType[int]):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"expected a size such as 256MiB, 100MB or 1000000, got {value!r}", param, ctx)
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower() if m.group(2) else None])
        if size < 1:
            self.fail("must be positive", param, ctx)
        return size


def connection_options(f: F) -> F:
    f = click.option(
        "--api-key",
        envvar="ANTHROPIC_API_KEY",
        show_envvar=True,
        help="API key, sent as x-api-key.",
    )(f)
    f = click.option(
        "--base-url",
        envvar="ANTHROPIC_BASE_URL",
        show_envvar=True,
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="The server: msgbatch, or https://api.anthropic.com.",
    )(f)
    return f


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of tables.")(f)


def _client(base_url: str, api_key: str | None, betas: tuple[str, ...] = (), *, openai: bool = False) -> BatchesClient:
    """A client of the Message Batches API, or with `openai` of the OpenAI Batch API."""
    if not api_key:
        raise click.UsageError("no API key: pass --api-key or set ANTHROPIC_API_KEY")
    if openai:
        return OpenAIBatchesClient(base_url, api_key)
    return BatchesClient(base_url, api_key, betas=betas)


def _create(client: BatchesClient, planned: Any, spool: IO[bytes]) -> dict[str, Any]:
    """One planned batch: a create call, or for OpenAI batch lines an upload and a create."""
    if isinstance(client, OpenAIBatchesClient):
        uploaded = client.upload(functools.partial(chunks, spool), planned.size, "batch_input.jsonl")
        return client.create_batch(str(uploaded["id"]), planned.url)
    key = f"msgbatch-cli-{uuid.uuid4()}"  # one per body: a resend cannot make a second batch
    return client.create(functools.partial(chunks, spool), planned.size, idempotency_key=key)


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _not_succeeded(batches: list[dict[str, Any]]) -> int:
    return sum(counts_of(b)[k] for b in batches for k in ("errored", "canceled", "expired"))


def _wait(
    client: BatchesClient, ids: list[str], *, quiet: bool, poll_interval: float, timeout: float | None
) -> list[dict[str, Any]]:
    display = QuietDisplay() if quiet else Display(sys.stderr)
    return wait_for(client, ids, display=display, poll_interval=poll_interval, timeout=timeout)


@contextlib.contextmanager
def _open_output(path: str) -> Iterator[IO[bytes]]:
    """`-` is stdout; a file is written beside itself and renamed once complete."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    part = f"{path}.part"
    try:
        with open(part, "wb") as out:
            yield out
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def _download(client: BatchesClient, batches: list[dict[str, Any]], output: str) -> int:
    written = 0
    with _open_output(output) as out:
        for b in batches:
            n = 0
            for line in client.results(b["id"]):
                out.write(line + b"\n")
                n += 1
            _, total = done_total(b)
            if n != total:
                click.echo(f"warning: {b['id']} has {total:,} requests but returned {n:,} results", err=True)
            written += n
    return written


# -- submit --------------------------------------------------------------------------------------


@click.command(epilog=EXIT_CODES)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--wait", is_flag=True, help="Wait for the batches to end, with a progress bar per batch.")
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    help="Write every result (JSONL, one line per request) to FILE once all batches ended; '-' is stdout. "
    "Implies --wait.",
)
@click.option(
    "--max-requests",
    type=click.IntRange(1, MAX_REQUESTS),
    default=MAX_REQUESTS,
    show_default=True,
    help="Requests per batch at most (the file is split into as many batches as needed).",
)
@click.option(
    "--max-bytes",
    type=SizeType(),
    default=MAX_BYTES,
    show_default="256MiB",
    help="Bytes per create body at most (256MiB, 100MB, ...).",
)
@click.option("--beta", "betas", multiple=True, metavar="NAME", help="An anthropic-beta value (repeatable).")
@click.option("--poll-interval", type=Duration(), default=2.0, show_default=True, help="Seconds between status checks.")
@click.option("--timeout", type=Duration(), default=None, help="Stop waiting after this long (exit 4).")
@click.option(
    "--fail-on-errors", is_flag=True, help="Exit 3 if any request errored, expired or was canceled. Implies --wait."
)
@click.option("--dry-run", is_flag=True, help="Check the file and show how it would be split; send nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output on stderr.")
@metadata_option("Metadata of every batch made (msgbatch; repeatable).")
@click.option(
    "--fail-fast",
    metavar="MIN_RESULTS:MAX_ERROR_RATE",
    help="msgbatch: cancel a batch (and stop its running requests) once MIN_RESULTS results are in and more "
    "than MAX_ERROR_RATE of them errored, e.g. 100:0.5.",
)
@click.option("--webhook-url", metavar="URL", help="msgbatch: a signed webhook to this URL when each batch ends.")
@json_option
@connection_options
def submit(
    file: str,
    wait: bool,
    output: str | None,
    max_requests: int,
    max_bytes: int,
    betas: tuple[str, ...],
    poll_interval: float,
    timeout: float | None,
    fail_on_errors: bool,
    dry_run: bool,
    quiet: bool,
    metadata: dict[str, str],
    fail_fast: str | None,
    webhook_url: str | None,
    as_json: bool,
    base_url: str,
    api_key: str | None,
) -> None:
    """Submit a JSONL file of requests as one or more batches.

    FILE has one request a line: {"custom_id": "...", "params": {...}}, or bare params
    ({"model": ..., "max_tokens": ..., "messages": [...]}), which get the custom_id line-N. A file of
    OpenAI batch lines ({"custom_id", "method", "url", "body"}: OpenAI's or vLLM's run-batch) goes
    to the OpenAI Batch API instead (uploaded, one batch per url and at most 50,000 lines / 200 MiB
    each), and its results are written in that format (the output then the error file's lines).
    '-' reads standard input. Every line is checked before anything is sent; a file larger than
    one batch allows (--max-requests, --max-bytes) becomes several batches. The file is streamed,
    never loaded whole. Each create carries an Idempotency-Key of its own: sent again after a
    timeout (to msgbatch, which honours it), it cannot make a second batch.
    """
    if output == "-" and as_json:
        raise click.UsageError("--output - and --json would both write to stdout; pick one")
    options = create_options(metadata, fail_fast, webhook_url)
    from_stdin = file == "-"
    if not from_stdin and (problem := is_readable(file)):
        raise CLIError(problem, EXIT_USAGE)
    path = stdin_to_file() if from_stdin else file
    openai_format = is_openai_file(path)
    client = None if dry_run else _client(base_url, api_key, betas, openai=openai_format)
    say: Callable[[str], None] = (lambda _text: None) if quiet else (lambda text: click.echo(text, err=True))
    created: list[dict[str, Any]] = []
    try:
        with _errors():
            the_plan: Any
            if openai_format:
                if options:
                    raise CLIError("--metadata, --fail-fast and --webhook-url are for Message Batches", EXIT_USAGE)
                max_requests, max_bytes = min(max_requests, OPENAI_MAX_REQUESTS), min(max_bytes, OPENAI_MAX_BYTES)
                the_plan = openai_plan(path, max_requests=max_requests, max_bytes=max_bytes)
            else:
                the_plan = plan(path, max_requests=max_requests, max_bytes=max_bytes, options=options)
            n = len(the_plan.batches)
            say(
                f"{file}: {the_plan.requests:,} requests -> {n} batch{'es' if n > 1 else ''} "
                f"(at most {max_requests:,} requests and {max_bytes:,} bytes each)"
            )
            if client is None:
                rows = [
                    [str(i), f"{b.first_line}-{b.last_line}", f"{b.requests:,}", f"{b.size:,}"]
                    for i, b in enumerate(the_plan.batches, 1)
                ]
                if as_json:
                    _print_json({"requests": the_plan.requests, "batches": [b.__dict__ for b in the_plan.batches]})
                else:
                    click.echo(table(["BATCH", "LINES", "REQUESTS", "BYTES"], rows, right=(0, 2, 3)))
                return
            planned_bodies: Iterator[tuple[Any, IO[bytes]]] = (
                openai_bodies(the_plan) if openai_format else bodies(the_plan)
            )
            with client:
                for i, (planned, spool) in enumerate(planned_bodies, 1):
                    try:
                        batch = _create(client, planned, spool)
                    except ClientError as exc:
                        done = ", ".join(b["id"] for b in created)
                        lines = f"lines {planned.first_line}-{planned.last_line}"
                        exc.message = f"creating batch {i} of {n} ({lines}) failed: {exc.message}"
                        if created:
                            exc.message += f"\nalready created, and running: {done}"
                        raise
                    created.append(batch)
                    say(
                        f"created {batch['id']}: {planned.requests:,} requests "
                        f"(lines {planned.first_line}-{planned.last_line}, {planned.size:,} bytes)"
                    )
                final = created
                if wait or output or fail_on_errors:
                    final = _wait(
                        client,
                        [b["id"] for b in created],
                        quiet=quiet,
                        poll_interval=poll_interval,
                        timeout=timeout,
                    )
                    if output:
                        written = _download(client, final, output)
                        if output != "-":
                            say(f"wrote {written:,} results to {output}")
    finally:
        if from_stdin:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if as_json:
        _print_json({"batches": final, "output": output})
    elif output != "-":
        click.echo(batches_table(final))
    if fail_on_errors and (bad := _not_succeeded(final)):
        raise CLIError(f"{bad:,} request{'s' if bad > 1 else ''} did not succeed", EXIT_FAILED_REQUESTS)


# -- watch ---------------------------------------------------------------------------------------


@click.command(epilog=EXIT_CODES)
@click.argument("batch_ids", nargs=-1, required=True, metavar="BATCH_ID...")
@click.option("--poll-interval", type=Duration(), default=2.0, show_default=True, help="Seconds between status checks.")
@click.option("--timeout", type=Duration(), default=None, help="Stop waiting after this long (exit 4).")
@click.option("--fail-on-errors", is_flag=True, help="Exit 3 if any request errored, expired or was canceled.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="msgbatch: print each result (JSONL, to stdout) as it lands, while the batch runs; progress and the "
    "final counts go to stderr.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output on stderr.")
@json_option
@connection_options
def watch(
    batch_ids: tuple[str, ...],
    poll_interval: float,
    timeout: float | None,
    fail_on_errors: bool,
    follow: bool,
    quiet: bool,
    as_json: bool,
    base_url: str,
    api_key: str | None,
) -> None:
    """Show live progress of batches until they end, then their final counts (Message Batches, or
    OpenAI batches: batch_...)."""
    openai = all(batch_id.startswith("batch_") for batch_id in batch_ids)
    if not openai and any(batch_id.startswith("batch_") for batch_id in batch_ids):
        raise click.UsageError("watch Message Batches (msgbatch_...) or OpenAI batches (batch_...), not both at once")
    if follow and as_json:
        raise click.UsageError("--follow prints the results as JSONL; --json has nothing to add")
    if follow and openai:
        raise click.UsageError("--follow is for Message Batches (msgbatch_...)")
    with _errors(), _client(base_url, api_key, openai=openai) as client:
        if follow:
            display = QuietDisplay() if quiet else Display(sys.stderr, live=False)
            final = wait_for(
                client, list(batch_ids), display=display, poll_interval=poll_interval, timeout=timeout,
                on_update=ResultsFollower(client, sys.stdout.buffer),
            )  # fmt: skip
        else:
            final = _wait(client, list(batch_ids), quiet=quiet, poll_interval=poll_interval, timeout=timeout)
    if as_json:
        _print_json(final if len(final) > 1 else final[0])
    else:
        click.echo(batches_table(final), err=follow)
    if fail_on_errors and (bad := _not_succeeded(final)):
        raise CLIError(f"{bad:,} request{'s' if bad > 1 else ''} did not succeed", EXIT_FAILED_REQUESTS)


# -- results -------------------------------------------------------------------------------------


@click.command(epilog=EXIT_CODES)
@click.argument("batch_id")
@click.option("--only", type=click.Choice(RESULT_TYPES), help="Only results of this type.")
@click.option("--custom-id", help="Only the result with this custom_id.")
@click.option("--output", "-o", metavar="FILE", help="Write the results (JSONL) to FILE.")
@click.option("--partial", is_flag=True, help="msgbatch: the results written so far of a batch still running.")
@json_option
@connection_options
def results(
    batch_id: str,
    only: str | None,
    custom_id: str | None,
    output: str | None,
    partial: bool,
    as_json: bool,
    base_url: str,
    api_key: str | None,
) -> None:
    """Show or save the results of an ended batch (with --partial, of a running one so far).

    A table by default (custom_id, result type, a one-line summary); --json prints the results
    lines themselves (JSONL, as the API returns them), --output saves them to a file.
    """
    with _errors(), _client(base_url, api_key) as client:
        batch = client.retrieve(batch_id)
        if batch.get("processing_status") != "ended" and not partial:
            done, total = done_total(batch)
            raise CLIError(
                f"{batch_id} has not ended yet ({batch.get('processing_status')}, {done:,}/{total:,} done); "
                f"wait for it with: msgbatch watch {batch_id}, or see what is done with --partial"
            )
        lines = client.results(batch_id, result_type=only, custom_id=custom_id, partial=partial)
        count = 0
        if output or as_json:
            with _open_output(output or "-") as out:
                for line in lines:
                    out.write(line + b"\n")
                    count += 1
            if output and output != "-":
                click.echo(f"wrote {count:,} results to {output}", err=True)
        else:
            rows: list[list[str]] = []
            for line in lines:
                count += 1
                value = msgspec.json.decode(line)
                rows.append([str(value.get("custom_id")), str(value["result"].get("type")), result_summary(value)])
                if len(rows) == 1000:
                    click.echo(table(["CUSTOM_ID", "RESULT", "DETAILS"], rows))
                    rows = []
            if rows:
                click.echo(table(["CUSTOM_ID", "RESULT", "DETAILS"], rows))
    if count == 0:
        if custom_id:
            raise CLIError(f"no result with custom_id {custom_id!r} in {batch_id}", EXIT_NOT_FOUND)
        click.echo(f"no {only + ' ' if only else ''}results in {batch_id}", err=True)


# -- batches list|get|cancel|delete --------------------------------------------------------------


@click.group()
def batches() -> None:
    """List, inspect, cancel and delete batches."""


@batches.command("list", epilog=EXIT_CODES)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@click.option("--all", "all_", is_flag=True, help="Every batch of the workspace (pages through them; ignores --limit).")
@metadata_option("Only the batches with this metadata (msgbatch; repeatable: all must match).")
@json_option
@connection_options
def list_(limit: int, all_: bool, metadata: dict[str, str], as_json: bool, base_url: str, api_key: str | None) -> None:
    """List the workspace's batches, newest first."""
    with _errors(), _client(base_url, api_key) as client:
        if all_:
            data = list(client.iter_batches(1000, metadata or None))
            page: dict[str, Any] = {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        else:
            page = client.list(limit, metadata=metadata or None)
    if as_json:
        _print_json(page)
        return
    if not page.get("data"):
        click.echo("no batches", err=True)
        return
    click.echo(batches_table(page["data"]))
    if page.get("has_more"):
        click.echo(f"(more: --limit {min(1000, limit * 2)} or --all)", err=True)


@batches.command("get", epilog=EXIT_CODES)
@click.argument("batch_id")
@json_option
@connection_options
def get(batch_id: str, as_json: bool, base_url: str, api_key: str | None) -> None:
    """Show one batch."""
    with _errors(), _client(base_url, api_key) as client:
        batch = client.retrieve(batch_id)
    _print_json(batch) if as_json else click.echo(batch_details(batch))


@batches.command("cancel", epilog=EXIT_CODES)
@click.argument("batch_id")
@click.option(
    "--abort-running/--let-running-finish",
    default=None,
    help="msgbatch: also stop the requests running now (their upstream calls are cut; they end canceled), "
    "or let them finish as the hosted API does.  [default: the server's abort_running_on_cancel]",
)
@json_option
@connection_options
def cancel(batch_id: str, abort_running: bool | None, as_json: bool, base_url: str, api_key: str | None) -> None:
    """Cancel a batch: requests not started yet will not run."""
    with _errors(), _client(base_url, api_key) as client:
        batch = client.cancel(batch_id, abort_running=abort_running)
    _print_json(batch) if as_json else click.echo(batch_details(batch))


@batches.command("delete", epilog=EXIT_CODES)
@click.argument("batch_id")
@json_option
@connection_options
def delete(batch_id: str, as_json: bool, base_url: str, api_key: str | None) -> None:
    """Delete an ended batch and its results."""
    with _errors(), _client(base_url, api_key) as client:
        answer = client.delete(batch_id)
    _print_json(answer) if as_json else click.echo(f"deleted {answer.get('id', batch_id)}")


# -- usage ---------------------------------------------------------------------------------------

_USAGE_COLUMNS = (
    ("succeeded", "SUCCEEDED"),
    ("errored", "ERRORED"),
    ("input_tokens", "INPUT"),
    ("output_tokens", "OUTPUT"),
    ("cache_read_input_tokens", "CACHE READ"),
    ("cache_creation_input_tokens", "CACHE WRITE"),
)


def _usage_cells(row: dict[str, Any]) -> list[str]:
    cost = row.get("cost")
    return [f"{row.get(key, 0):,}" for key, _ in _USAGE_COLUMNS] + ["-" if cost is None else f"{cost:,.4f}"]


@click.command(epilog=EXIT_CODES)
@click.option(
    "--since", help="From this time: RFC 3339 (2026-11-01T00:00:00Z), a date, or unix seconds.  [30 days ago]"
)
@click.option("--until", help="Up to this time (same forms).  [now]")
@click.option(
    "--group-by",
    "group_by",
    multiple=True,
    type=click.Choice(["model", "hour", "day"]),
    help="Split by model, and/or per hour or day (repeatable).",
)
@json_option
@connection_options
def usage(
    since: str | None, until: str | None, group_by: tuple[str, ...], as_json: bool, base_url: str, api_key: str | None
) -> None:
    """Token usage of the key's workspace (msgbatch servers only): requests succeeded and errored,
    input, output and cache tokens, and their cost where the server has a price for the model."""
    with _errors(), _client(base_url, api_key) as client:
        answer = client.usage(since, until, group_by)
    if as_json:
        _print_json(answer)
        return
    keys = [name for name in ("model", "start") if any(name in row for row in answer.get("data", []))]
    headers = [key.upper() for key in keys] + [title for _, title in _USAGE_COLUMNS] + ["COST"]
    rows = [[str(row.get(key, "")) for key in keys] + _usage_cells(row) for row in answer.get("data", [])]
    total = _usage_cells(answer.get("total", {}))
    rows.append(["total", *[""] * (len(keys) - 1), *total] if keys else total)
    click.echo(f"workspace {answer.get('workspace')}: {answer.get('since')} to {answer.get('until')}", err=True)
    click.echo(table(headers, rows, right=tuple(range(len(keys), len(headers)))))


def register(group: click.Group) -> None:
    """Add the client commands to the `msgbatch` command group."""
    from msgbatch.client.feature_commands import retry, webhooks

    for command in (submit, batches, results, watch, retry, webhooks, usage):
        group.add_command(command)
