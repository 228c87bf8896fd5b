"""What the client commands need for msgbatch's features beyond the hosted API: the create body's
options (`--metadata`, `--fail-fast`, `--webhook-url`), the `--metadata KEY=VALUE` option, and
following a running batch's results as they land (`watch --follow`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, TypeVar

import click
import msgspec

from msgbatch.client.http import BatchesClient
from msgbatch.client.progress import done_total

F = TypeVar("F", bound=Callable[..., Any])


def _pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", ctx, param)
        pairs[key] = item
    return pairs


def metadata_option(help_text: str) -> Callable[[F], F]:
    return click.option("--metadata", "-m", metavar="KEY=VALUE", multiple=True, callback=_pairs, help=help_text)


def create_options(metadata: dict[str, str], fail_fast: str | None, webhook_url: str | None) -> bytes:
    """The members a create body carries after "requests" for these options (b"" for none);
    the server checks them."""
    members: dict[str, Any] = {}
    if metadata:
        members["metadata"] = metadata
    if fail_fast:
        count, sep, rate = fail_fast.partition(":")
        try:
            members["fail_fast"] = {"min_results": int(count), "max_error_rate": float(rate)}
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(
                f"expected MIN_RESULTS:MAX_ERROR_RATE such as 100:0.5, got {fail_fast!r}", param_hint="--fail-fast"
            )
    if webhook_url:
        members["webhook_url"] = webhook_url
    if not members:
        return b""
    return b"," + msgspec.json.encode(members)[1:-1]


class _Head(msgspec.Struct):
    custom_id: str


_head = msgspec.json.Decoder(_Head)


class ResultsFollower:
    """Called with each state of a batch being watched: writes the results lines not written
    yet (those of a running batch, with `?partial=true`), once each, as JSONL."""

    def __init__(self, client: BatchesClient, out: IO[bytes]) -> None:
        self.client = client
        self.out = out
        self.written: set[tuple[str, str]] = set()
        self.done: dict[str, int] = {}

    def __call__(self, batch: dict[str, Any]) -> None:
        batch_id = str(batch["id"])
        done, _ = done_total(batch)
        ended = batch.get("processing_status") == "ended"
        if done == self.done.get(batch_id) and not ended:
            return  # nothing new
        self.done[batch_id] = done
        for line in self.client.results(batch_id, partial=not ended):
            try:
                key = (batch_id, _head.decode(line).custom_id)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if key not in self.written:
                self.written.add(key)
                self.out.write(line + b"\n")
        self.out.flush()
