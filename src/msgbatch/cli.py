"""The `msgbatch` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from msgbatch import __version__
from msgbatch.click_types import Duration
from msgbatch.client.commands import register as register_client_commands
from msgbatch.config import DEFAULT_PORT, ConfigError, Settings, load_settings

T = TypeVar("T")


class BadConfig(click.ClickException):
    """A setting cannot be used: the message names its source and key; exit 2, before any port
    is bound or any database opened."""

    exit_code = 2


def _settings(config: str | None, **flags: object) -> Settings:
    try:
        return load_settings(config, env=None, **flags)
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None


def _shown(database: str) -> str:
    """A database setting fit for a log line: a URL loses its credentials."""
    return database if "://" not in database else database.split("@")[-1]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


# Options that `serve` and `worker` share.
_simulate_latency_option = click.option(
    "--simulate-latency",
    type=Duration(),
    default=None,
    help="Default latency of the simulator backend per request (e.g. 0.5, 2s).  [default: 0]",
)
_config_option = click.option("--config", "config", default=None, help="A TOML configuration file (see the README).")
_concurrency_option = click.option(
    "--concurrency", type=int, default=None, help="Requests run at once by this process.  [default: 256]"
)
_retention_option = click.option(
    "--retention", type=Duration(), default=None, help="How long results are kept.  [default: 29d]"
)
_upstream_option = click.option(
    "--upstream",
    default=None,
    metavar="TYPE=URL",
    help="Run every model on one upstream: anthropic=http://127.0.0.1:8000 (POST /v1/messages) or "
    "openai=http://127.0.0.1:8000/v1 (POST /v1/chat/completions). Its key: MSGBATCH_UPSTREAM_API_KEY; "
    "its concurrency: --concurrency.",
)
_strict_batch_params_option = click.option(
    "--strict-batch-params",
    is_flag=True,
    default=None,
    help="Refuse (as errored results) what the hosted API refuses inside a batch, under each batch's "
    "anthropic-version: sampling parameters from 2026-10-21 on, fast mode, threads, thinking budgets "
    "below 1024, ... (MSGBATCH_STRICT_BATCH_PARAMS).  [default: off]",
)
_log_level_option = click.option(
    "--log-level", default="info", show_default=True, help="debug, info, warning or error."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="msgbatch")
def main() -> None:
    """msgbatch: a self-hosted, drop-in Message Batches API.

    Point the official `anthropic` SDK at `msgbatch serve` with `base_url` and any API key, and
    `client.messages.batches.*` runs every request of a batch on a backend of yours (or on the
    built-in simulator).
    """


@main.command()
@click.option("--host", default=None, help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help=f"Port to listen on.  [default: {DEFAULT_PORT}]")
@click.option(
    "--database",
    default=None,
    help="SQLite file path, or a postgresql:// URL.  [default: msgbatch.db]",
)
@_simulate_latency_option
@_config_option
@click.option("--public-url", default=None, help="Base of results_url, when behind a proxy that hides it.")
@click.option(
    "--forwarded-allow-ips",
    default=None,
    metavar="IPS",
    help="Comma-separated addresses or networks (or *) of the proxies whose X-Forwarded-Host/-Proto/-Prefix "
    "are believed.  [default: 127.0.0.1,::1]",
)
@click.option(
    "--allowed-hosts",
    default=None,
    metavar="HOSTS",
    help="Comma-separated host names (*.domain, or *) this server answers as; other Host headers get 400.  "
    "[default: any]",
)
@_concurrency_option
@click.option("--expiry", type=Duration(), default=None, help="How long a batch may run.  [default: 24h]")
@_retention_option
@click.option("--no-worker", is_flag=True, default=False, help="Serve the API only; run no requests here.")
@_log_level_option
@_upstream_option
@_strict_batch_params_option
def serve(
    host: str | None,
    port: int | None,
    database: str | None,
    simulate_latency: float | None,
    config: str | None,
    public_url: str | None,
    forwarded_allow_ips: str | None,
    allowed_hosts: str | None,
    concurrency: int | None,
    expiry: float | None,
    retention: float | None,
    no_worker: bool,
    log_level: str,
    upstream: str | None,
    strict_batch_params: bool | None,
) -> None:
    """Run the API server (and, unless --no-worker, the dispatcher) in this process.

    Every flag also reads an environment variable: MSGBATCH_HOST, MSGBATCH_PORT,
    MSGBATCH_DATABASE, MSGBATCH_SIMULATE_LATENCY, MSGBATCH_CONFIG, MSGBATCH_PUBLIC_URL, ...
    API keys: MSGBATCH_API_KEYS="key1=workspace-a,key2=workspace-b", or [workspaces] in the
    config file. With no keys configured, ANY non-empty key is accepted.
    """
    import uvicorn

    from msgbatch.api.app import MsgBatchServer
    from msgbatch.api.http_server import uvicorn_options

    _setup_logging(log_level)
    settings = _settings(
        config,
        host=host,
        port=port,
        database=database,
        simulate_latency=simulate_latency,
        upstream=upstream,
        public_url=public_url,
        forwarded_allow_ips=_comma_list(forwarded_allow_ips),
        allowed_hosts=_comma_list(allowed_hosts),
        concurrency=concurrency,
        expiry=expiry,
        retention=retention,
        worker=False if no_worker else None,
        strict_batch_params=strict_batch_params,
    )
    log = logging.getLogger("msgbatch")
    if settings.open_auth:
        log.warning(
            "NO API KEYS CONFIGURED: any non-empty API key is accepted and every client shares one "
            "workspace. Set MSGBATCH_API_KEYS or [workspaces] in the config file before exposing this server."
        )
    try:
        server = MsgBatchServer(settings)
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None
    log.info(
        "msgbatch %s listening on http://%s:%d database=%s worker=%s",
        __version__,
        settings.host,
        settings.port,
        _shown(settings.database),
        settings.worker,
    )
    uvicorn.run(server.app, **uvicorn_options(settings))


def _comma_list(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (as uvicorn does), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@main.command()
@click.option(
    "--database",
    default=None,
    help="A postgresql:// URL (or a SQLite file path, for one machine).  [default: msgbatch.db]",
)
@_simulate_latency_option
@_config_option
@_concurrency_option
@click.option(
    "--lease",
    type=Duration(),
    default=None,
    help="How long a claimed request stays this worker's without a renewal (renewed every third of it).  "
    "[default: 60s]",
)
@click.option(
    "--grace",
    type=Duration(),
    default=None,
    help="On SIGTERM/SIGINT, how long running requests may take to finish before they are handed back.  [default: 10s]",
)
@_retention_option
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve GET /metrics, /health and /ready on this port (MSGBATCH_METRICS_PORT).  [default: none]",
)
@click.option("--metrics-host", default=None, help="Address of the --metrics-port server.  [default: 127.0.0.1]")
@_log_level_option
@_upstream_option
@_strict_batch_params_option
def worker(
    database: str | None,
    simulate_latency: float | None,
    config: str | None,
    concurrency: int | None,
    lease: float | None,
    grace: float | None,
    retention: float | None,
    metrics_port: int | None,
    metrics_host: str | None,
    log_level: str,
    upstream: str | None,
    strict_batch_params: bool | None,
) -> None:
    """Run requests, with no HTTP API: the worker of the scale-out shape.

    Start any number of workers (on any machines) and any number of `msgbatch serve --no-worker`
    API servers against one PostgreSQL database. Workers claim requests under a lease and renew it
    while they run; on SIGTERM or SIGINT a worker stops claiming, lets running requests finish
    within --grace and hands the rest back. A worker that dies loses nothing: its leases run out
    and other workers take the requests over. Expiry, retention and lease reaping run in every
    process. With --metrics-port, Prometheus scrapes it at /metrics. Flags also read MSGBATCH_*
    environment variables (MSGBATCH_DATABASE, MSGBATCH_LEASE, ...).
    """
    from msgbatch.engine.worker import Worker

    _setup_logging(log_level)
    settings = _settings(
        config,
        database=database,
        simulate_latency=simulate_latency,
        upstream=upstream,
        concurrency=concurrency,
        lease=lease,
        grace=grace,
        retention=retention,
        strict_batch_params=strict_batch_params,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    logging.getLogger("msgbatch").info(
        "msgbatch %s worker database=%s concurrency=%d", __version__, _shown(settings.database), settings.concurrency
    )
    try:
        process = Worker(settings)
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None
    _run(process.run())


@main.command()
@click.option("--database", default=None, help="SQLite file path, or a postgresql:// URL.  [default: msgbatch.db]")
@click.option("--config", "config", default=None, help="A TOML configuration file (see the README).")
def migrate(database: str | None, config: str | None) -> None:
    """Create or upgrade the database schema, then exit.

    `serve` and `worker` do the same on start (several at once is safe: PostgreSQL migrations run
    under an advisory lock); run this first to upgrade a database before rolling out new processes.
    """
    from msgbatch.store import open_store

    _setup_logging("info")
    settings = _settings(config, database=database)

    async def run() -> None:
        store = open_store(settings.database)
        await store.open()
        await store.close()

    _run(run())
    click.echo(f"msgbatch {__version__}: schema of {_shown(settings.database)} is up to date")


register_client_commands(main)

if __name__ == "__main__":
    main()
