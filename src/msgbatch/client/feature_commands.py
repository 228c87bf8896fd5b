"""Client commands for msgbatch's features beyond the hosted API: `retry`, and `webhooks list|redeliver`."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import click
import msgspec

from msgbatch.click_types import Duration
from msgbatch.client.commands import (
    EXIT_CODES,
    RESULT_TYPES,
    CLIError,
    _client,
    _errors,
    _not_succeeded,
    _open_output,
    _print_json,
    _wait,
    connection_options,
    json_option,
)
from msgbatch.client.http import EXIT_FAILED_REQUESTS, EXIT_USAGE, BatchesClient
from msgbatch.client.tables import batch_details, table, when


class _Head(msgspec.Struct):
    custom_id: str


_head = msgspec.json.Decoder(_Head)


def _types(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    for name in names:
        if name not in RESULT_TYPES:
            raise CLIError(f"--only: {name!r} is not a result type ({', '.join(RESULT_TYPES)})", EXIT_USAGE)
    return names


def merge_results(client: BatchesClient, parent_id: str, child_id: str, output: str) -> int:
    """One line per custom_id of the parent: the child's result where the child ran it again, the
    parent's own line everywhere else."""
    child_ids: set[str] = set()
    written = 0
    with _open_output(output) as out:
        for line in client.results(child_id):
            child_ids.add(_head.decode(line).custom_id)
            out.write(line + b"\n")
            written += 1
        for line in client.results(parent_id):
            if _head.decode(line).custom_id not in child_ids:
                out.write(line + b"\n")
                written += 1
    return written


@click.command(epilog=EXIT_CODES)
@click.argument("batch_id")
@click.option(
    "--only",
    metavar="TYPES",
    default="errored,expired",
    show_default=True,
    help="The result types to run again, comma-separated (errored, expired, canceled, succeeded).",
)
@click.option("--error-types", metavar="TYPES", help="Of the errored lines, only these error types (comma-separated).")
@click.option("--wait", is_flag=True, help="Wait for the new batch to end, with a progress bar.")
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    help="Once it ended, write one line per custom_id of the first batch: the new batch's result where it ran "
    "the line again, the first batch's own line elsewhere ('-' is stdout). Implies --wait.",
)
@click.option("--poll-interval", type=Duration(), default=2.0, show_default=True, help="Seconds between status checks.")
@click.option("--timeout", type=Duration(), default=None, help="Stop waiting after this long (exit 4).")
@click.option("--fail-on-errors", is_flag=True, help="Exit 3 if a request of the new batch did not succeed.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output on stderr.")
@json_option
@connection_options
def retry(
    batch_id: str,
    only: str,
    error_types: str | None,
    wait: bool,
    output: str | None,
    poll_interval: float,
    timeout: float | None,
    fail_on_errors: bool,
    quiet: bool,
    as_json: bool,
    base_url: str,
    api_key: str | None,
) -> None:
    """Run an ended batch's failed lines again, as a new batch linked to it (msgbatch).

    The new batch has the same custom_ids, params, betas and version as those lines; it says
    `retry_of` BATCH_ID, and BATCH_ID says `retried_by` it.
    """
    if output == "-" and as_json:
        raise click.UsageError("--output - and --json would both write to stdout; pick one")
    with _errors(), _client(base_url, api_key) as client:
        child = client.retry(
            batch_id,
            result_types=_types(only),
            error_types=[t.strip() for t in error_types.split(",") if t.strip()] if error_types else None,
            idempotency_key=f"msgbatch-cli-{uuid.uuid4()}",
        )
        if not quiet:
            total = sum(child["request_counts"].values())
            click.echo(f"created {child['id']}: {total:,} requests (retry of {batch_id})", err=True)
        if wait or output or fail_on_errors:
            [child] = _wait(client, [child["id"]], quiet=quiet, poll_interval=poll_interval, timeout=timeout)
            if output:
                written = merge_results(client, batch_id, child["id"], output)
                if output != "-" and not quiet:
                    click.echo(f"wrote {written:,} results to {output}", err=True)
    if as_json:
        _print_json(child)
    elif output != "-":
        click.echo(batch_details(child))
    if fail_on_errors and (bad := _not_succeeded([child])):
        raise CLIError(f"{bad:,} request{'s' if bad > 1 else ''} did not succeed", EXIT_FAILED_REQUESTS)


@click.group()
def webhooks() -> None:
    """The workspace's webhook deliveries (msgbatch): list them, send one again."""


def _delivery_rows(data: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(d.get("id")),
            str(d.get("event")),
            str(d.get("batch_id")),
            str(d.get("status")),
            str(d.get("attempts")),
            str(d.get("last_status_code") or d.get("last_error") or "-")[:60],
            when(d.get("created_at")),
        ]
        for d in data
    ]


@webhooks.command("list", epilog=EXIT_CODES)
@click.option("--batch", "batch_id", metavar="BATCH_ID", help="Only the deliveries of this batch.")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), help="Only those in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@json_option
@connection_options
def list_deliveries(
    batch_id: str | None, status: str | None, limit: int, as_json: bool, base_url: str, api_key: str | None
) -> None:
    """List webhook deliveries, newest first: event, batch, status, attempts, the last error."""
    with _errors(), _client(base_url, api_key) as client:
        page = client.deliveries(limit=limit, batch_id=batch_id, status=status)
    if as_json:
        _print_json(page)
        return
    if not page.get("data"):
        click.echo("no webhook deliveries", err=True)
        return
    headers = ["ID", "EVENT", "BATCH", "STATUS", "ATTEMPTS", "LAST ANSWER", "CREATED"]
    click.echo(table(headers, _delivery_rows(page["data"]), right=(4,)))
    if page.get("has_more"):
        click.echo(f"(more: --limit {min(1000, limit * 2)})", err=True)


@webhooks.command("redeliver", epilog=EXIT_CODES)
@click.argument("delivery_id")
@json_option
@connection_options
def redeliver(delivery_id: str, as_json: bool, base_url: str, api_key: str | None) -> None:
    """Send a delivery again now (with a fresh 24 h of retries), whatever its state."""
    with _errors(), _client(base_url, api_key) as client:
        delivery = client.redeliver(delivery_id)
    if as_json:
        _print_json(delivery)
    else:
        click.echo(f"{delivery['id']} is due again ({delivery['event']} of {delivery['batch_id']})", file=sys.stderr)
