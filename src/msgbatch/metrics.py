"""What this process is doing, for operators: Prometheus metrics and per-batch backend timing.

A `Metrics` object belongs to one process (`msgbatch serve`, or `msgbatch worker` with
`--metrics-port`), with a registry of its own (`prometheus_client.CollectorRegistry`, not the
library's global one, so that tests may run several servers in one process); the dispatcher, the
manager, the API handlers and the backends' limiters feed it, `GET /metrics` renders it.

Counters and histograms are per process and start at zero with it, as Prometheus expects; sum them
across processes. Two gauges describe the shared database rather than the process
(`msgbatch_batches`, `msgbatch_requests_waiting`): every process reports the same values, so take
their `max`, not their sum.

The dispatcher's per-request instruments (requests by result and backend, backend latency, tokens)
are counted in plain dicts and handed to the library at each scrape by a collector of this module
(`_DispatchCounts`); everything else uses the library's instruments. Measured on this machine
(`python -m timeit`, 2 vCPU): the library's `inc()` on a label child looked up once costs 0.25 µs
(1.4 µs with the labels looked up on each call) and a histogram `observe()` 0.66 µs, against
0.05 to 0.15 µs for a dict increment; a succeeded request touches six of them. In the end-to-end run
(instant simulator, in process) the library's instruments took 0.5 s of 4.7 s of the event loop's
time (cProfile), about 10%: enough to matter on the hot path.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from msgbatch import __version__
from msgbatch.ids import OPENAI_BATCH_PREFIX
from msgbatch.models import ERRORED, NO_TOKENS, RESULT_NAMES, SUCCEEDED, Batch, Job, Outcome

log = logging.getLogger("msgbatch.requests")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation")
# Model names come from clients: past this many in one process, the rest count as "other".
MAX_MODEL_LABELS = 200
# The shared gauges read the database at most this often, however often they are scraped.
SHARED_GAUGES_EVERY = 1.0

# The `_created` series of every counter would double what a scrape carries, for nothing here.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _shown(custom_id: str) -> str:
    """A custom_id fit for a log line: an OpenAI batch's is free-form, so one that could break
    the line (spaces, quotes, control characters) is shown JSON-quoted."""
    if custom_id.isascii() and custom_id.isprintable() and " " not in custom_id and '"' not in custom_id:
        return custom_id
    return msgspec.json.encode(custom_id).decode()


@dataclass(slots=True)
class BackendTiming:
    """Time one batch spent on one backend (every call, retries included)."""

    first_call: float  # perf_counter() when the first call started
    last_call: float = 0.0  # ... and when the last one ended
    calls: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0


@dataclass
class BatchTiming:
    first_call_at: float  # wall clock, seconds since the epoch
    last_call_at: float
    backends: dict[str, BackendTiming]


class _DispatchCounts:
    """The per-request counts, in plain dicts (see the module docstring), as metric families."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], int] = {}  # (result, backend)
        self.retries: dict[tuple[str, str], int] = {}  # (backend, error type)
        self.errors: dict[tuple[str, str], int] = {}  # (backend, error type)
        self.tokens: dict[tuple[str, str], list[int]] = {}  # (backend, model) -> TOKEN_KINDS
        # backend -> a count per bucket (not cumulative, +Inf last), then the sum of the values
        self.latency: dict[str, list[float]] = {}

    def observe(self, backend: str, seconds: float) -> None:
        series = self.latency.get(backend)
        if series is None:
            series = self.latency[backend] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        series[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "msgbatch_requests",
            "Requests finished by this process, by result type and backend "
            '(backend="none": finished before reaching one: invalid params, unknown model, canceled, expired, '
            "and those the store finished in bulk: canceled while waiting, expired by the sweep).",
            labels=("result", "backend"),
        )
        for key, n in sorted(self.results.items()):
            requests.add_metric(key, n)
        yield requests
        for name, help_text, values in (
            ("msgbatch_retries", "Backend calls that failed with a retryable error and were queued to run again.",
             self.retries),
            ("msgbatch_backend_errors",
             "Backend calls that failed, by error type (timeout: the batch's expiry cut the call short).", self.errors),
        ):  # fmt: skip
            family = CounterMetricFamily(name, help_text, labels=("backend", "error_type"))
            for key, n in sorted(values.items()):
                family.add_metric(key, n)
            yield family
        tokens = CounterMetricFamily(
            "msgbatch_tokens",
            "Tokens of the succeeded requests of this process, by backend, model and kind "
            "(input, output, cache_read, cache_creation).",
            labels=("backend", "model", "kind"),
        )
        for (backend, model), counts in sorted(self.tokens.items()):
            for kind, n in zip(TOKEN_KINDS, counts, strict=True):
                tokens.add_metric((backend, model, kind), n)
        yield tokens
        latency = HistogramMetricFamily(
            "msgbatch_backend_request_duration_seconds",
            "Time of each backend call, successful or not.",
            labels=("backend",),
        )
        for backend, series in sorted(self.latency.items()):
            running = 0.0
            buckets = []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), series, strict=False):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            latency.add_metric((backend,), buckets, series[-1])
        yield latency


class Metrics:
    """The instruments of one process."""

    def __init__(self, *, max_batches: int = 2000) -> None:
        self.started_at = time.time()
        self.max_batches = max_batches
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.counts = _DispatchCounts()
        r.register(self.counts)  # type: ignore[arg-type]
        self.concurrency_limit = Gauge(
            "msgbatch_backend_concurrency_limit",
            "Requests this process may run at once on a backend (the current adaptive limit, where there is one).",
            ("backend",),
            registry=r,
        )
        # `api`: messages (the Message Batches API) or openai (the OpenAI Batch API).
        self.batches_created = Counter(
            "msgbatch_batches_created", "Batches accepted by this process, by API.", ("api",), registry=r
        )
        self.requests_accepted = Counter(
            "msgbatch_requests_accepted",
            "Requests in the batches accepted by this process, by API.",
            ("api",),
            registry=r,
        )
        self.create_bytes = Counter(
            "msgbatch_batch_create_bytes",
            "Bytes of the create bodies of the batches accepted, by API.",
            ("api",),
            registry=r,
        )
        self.results_bytes = Counter(
            "msgbatch_results_bytes",
            "Bytes of results (JSONL: results, and OpenAI output and error files) streamed to clients.",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "msgbatch_webhook_deliveries",
            "Webhook delivery attempts by this process, by event and outcome (delivered; failed: to be retried; "
            "refused: the address policy forbids it; gave_up: no more retries).",
            ("event", "outcome"),
            registry=r,
        )
        self.webhook_latency = Histogram(
            "msgbatch_webhook_delivery_duration_seconds",
            "Time of each webhook delivery attempt.",
            ("event",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.idempotent_replays = Counter(
            "msgbatch_idempotent_replays",
            "Create (or retry) calls answered with the batch an earlier call with the same Idempotency-Key made.",
            registry=r,
        )
        self.files_uploaded = Counter("msgbatch_files_uploaded", "Files uploaded (OpenAI Files API).", registry=r)
        self.file_bytes = Counter("msgbatch_file_upload_bytes", "Bytes of the files uploaded.", registry=r)
        self._in_flight: Callable[[], float] = lambda: 0
        self._queued: Callable[[], float] = lambda: 0
        self._unwritten: Callable[[], float] = lambda: 0
        Gauge(
            "msgbatch_requests_in_flight", "Requests running on a backend in this process now.", registry=r
        ).set_function(lambda: self._in_flight())
        Gauge(
            "msgbatch_dispatcher_queue_depth",
            "Requests this process has claimed (leased) and not started yet.",
            registry=r,
        ).set_function(lambda: self._queued())
        Gauge(
            "msgbatch_dispatcher_unwritten_results",
            "Finished requests whose results are waiting to be written to the store.",
            registry=r,
        ).set_function(lambda: self._unwritten())
        Gauge(
            "msgbatch_process_start_time_seconds",
            "When this process started, in seconds since the epoch.",
            registry=r,
        ).set(self.started_at)
        Gauge("msgbatch_build_info", "The running msgbatch version.", ("version",), registry=r).labels(__version__).set(
            1
        )
        self.batches = Gauge(
            "msgbatch_batches",
            "Batches in the database by processing status (the same in every process: take the max).",
            ("status",),
            registry=r,
        )
        self.waiting = Gauge(
            "msgbatch_requests_waiting",
            "Requests of batches in progress not running anywhere yet (retries included), by the backend "
            "their model routes to in this process's configuration (the same in every process: take the max).",
            ("backend",),
            registry=r,
        )
        self.before_render = []
        self._shared: Callable[[], Awaitable[tuple[dict[str, int], dict[str, int]]]] | None = None
        self._shared_at = 0.0
        self._batch_ids: OrderedDict[int, str] = OrderedDict()
        self._timings: OrderedDict[int, dict[str, BackendTiming]] = OrderedDict()

    # -- feeding -----------------------------------------------------------------------------

    # Called at each scrape, for values owned elsewhere (adaptive backend limits).
    before_render: list[Callable[[], None]]

    def watch_dispatcher(
        self, *, in_flight: Callable[[], float], queued: Callable[[], float], unwritten: Callable[[], float]
    ) -> None:
        self._in_flight, self._queued, self._unwritten = in_flight, queued, unwritten

    def watch_store(self, read: Callable[[], Awaitable[tuple[dict[str, int], dict[str, int]]]]) -> None:
        """Where the shared gauges come from: batches by status, requests waiting by backend."""
        self._shared = read

    def set_backend_limit(self, backend: str, limit: float) -> None:
        """The concurrency a backend may use now; adaptive limiters call this whenever it changes."""
        self.concurrency_limit.labels(backend).set(limit)

    def batch_created(self, batch: Batch, body_bytes: int) -> None:
        api = "openai" if batch.id.startswith(OPENAI_BATCH_PREFIX) else "messages"
        self.batches_created.labels(api).inc()
        self.requests_accepted.labels(api).inc(batch.total)
        self.create_bytes.labels(api).inc(body_bytes)
        self.remember_batch(batch)

    def webhook_delivery(self, event: str, outcome: str, seconds: float) -> None:
        self.webhook_deliveries.labels(event, outcome).inc()
        if outcome in ("delivered", "failed"):
            self.webhook_latency.labels(event).observe(seconds)

    def file_uploaded(self, size: int) -> None:
        self.files_uploaded.inc()
        self.file_bytes.inc(size)

    def remember_batch(self, batch: Batch) -> None:
        """Map the batch's internal key to its id, for log lines written where only the key is known."""
        self._batch_ids[batch.seq] = batch.id
        while len(self._batch_ids) > self.max_batches:
            self._batch_ids.popitem(last=False)

    def batch_id(self, seq: int) -> str:
        return self._batch_ids.get(seq) or f"seq:{seq}"

    def backend_call(self, job: Job, backend: str, started: float, status: str) -> None:
        """A backend call ended (`status` is "ok" or the error type); `started` is a perf_counter().

        On the dispatcher's hot path: a few dict look-ups, nothing more.
        """
        now = time.perf_counter()
        elapsed = now - started
        self.counts.observe(backend, elapsed)
        per_batch = self._timings.get(job.batch)
        if per_batch is None:
            per_batch = self._timings[job.batch] = {}
            while len(self._timings) > self.max_batches:
                self._timings.popitem(last=False)
        timing = per_batch.get(backend)
        if timing is None:
            timing = per_batch[backend] = BackendTiming(first_call=started)
        timing.last_call = now
        timing.calls += 1
        timing.total_seconds += elapsed
        if elapsed > timing.max_seconds:
            timing.max_seconds = elapsed
        if status != "ok":
            timing.errors += 1
            errors = self.counts.errors
            errors[backend, status] = errors.get((backend, status), 0) + 1

    def _count_result(self, result: str, backend: str, n: int = 1) -> None:
        results = self.counts.results
        results[result, backend] = results.get((result, backend), 0) + n

    def finished(self, job: Job, outcome: Outcome) -> None:
        """The dispatcher is done with a job: a result, or a retry to come."""
        backend = outcome.backend or "none"
        if outcome.result is None:
            retries = self.counts.retries
            key = (backend, outcome.error_type or "unknown")
            retries[key] = retries.get(key, 0) + 1
            return
        results = self.counts.results
        key = (RESULT_NAMES[outcome.result], backend)
        results[key] = results.get(key, 0) + 1
        if outcome.result == SUCCEEDED and outcome.tokens != NO_TOKENS:
            self._count_tokens(backend, job.model, outcome.tokens)
        elif outcome.result == ERRORED:
            # Never the params or the error message: either may quote the prompt.
            log.info(
                "request.errored batch=%s custom_id=%s type=%s backend=%s attempts=%d",
                self.batch_id(job.batch),
                _shown(job.custom_id),
                outcome.error_type or "unknown",
                backend,
                job.attempts,
            )

    def _count_tokens(self, backend: str, model: str, tokens: tuple[int, int, int, int]) -> None:
        per_model = self.counts.tokens
        counts = per_model.get((backend, model))
        if counts is None:
            if len(per_model) >= MAX_MODEL_LABELS:
                model = "other"
            counts = per_model.setdefault((backend, model), [0, 0, 0, 0])
        counts[0] += tokens[0]
        counts[1] += tokens[1]
        counts[2] += tokens[2]
        counts[3] += tokens[3]

    def finished_in_bulk(self, result: int, count: int) -> None:
        """Requests the store finished without a dispatcher: canceled while waiting, expired."""
        self._count_result(RESULT_NAMES[result], "none", count)

    # -- reading -----------------------------------------------------------------------------

    def batch_timing(self, seq: int) -> BatchTiming | None:
        per_batch = self._timings.get(seq)
        if not per_batch:
            return None
        wall = time.time() - time.perf_counter()  # perf_counter() -> seconds since the epoch
        return BatchTiming(
            first_call_at=wall + min(t.first_call for t in per_batch.values()),
            last_call_at=wall + max(t.last_call for t in per_batch.values()),
            backends=dict(per_batch),
        )

    async def refresh(self) -> None:
        """Bring the shared gauges up to date (at most once a second; a failure keeps the last)."""
        if self._shared is None or time.monotonic() - self._shared_at < SHARED_GAUGES_EVERY:
            return
        self._shared_at = time.monotonic()
        try:
            statuses, waiting = await self._shared()
        except Exception:
            log.warning("metrics.refresh_failed", exc_info=True)
            return
        for status, n in statuses.items():
            self.batches.labels(status).set(n)
        self.waiting.clear()
        for backend, n in waiting.items():
            self.waiting.labels(backend).set(n)

    def render(self) -> bytes:
        for refresh in self.before_render:
            refresh()
        return generate_latest(self.registry)
