"""What this process is doing, for operators: Prometheus metrics and per-batch backend timing.

The exposition format is written by hand (counters, gauges and histograms are all this server
needs; `prometheus_client` would bring a global registry that tests sharing a process would have
to work around). A `Metrics` object belongs to one `MsgBatchServer`; the dispatcher, the API
handlers and the per-backend limiters feed it, `GET /metrics` renders it.

Everything here is in memory and per process: counters start at zero when the process starts,
as Prometheus expects of counters.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left as _bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import msgspec

from msgbatch import __version__
from msgbatch.ids import OPENAI_BATCH_PREFIX
from msgbatch.models import ERRORED, RESULT_NAMES, Batch, Job, Outcome

log = logging.getLogger("msgbatch.requests")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _shown(custom_id: str) -> str:
    """A custom_id fit for a log line: an OpenAI batch's is free-form, so one that could break
    the line (spaces, quotes, control characters) is shown JSON-quoted."""
    if custom_id.isascii() and custom_id.isprintable() and " " not in custom_id and '"' not in custom_id:
        return custom_id
    return msgspec.json.encode(custom_id).decode()


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)

    def _key(self, values: Sequence[str]) -> Labels:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: expected labels {self.labels}, got {tuple(values)}")
        return tuple(values)

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self.samples()

    def samples(self) -> Iterator[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {} if self.labels else {(): 0.0}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        else:
            values[self._key(labels)] = amount

    def get(self, *labels: str) -> float:
        return self.values.get(tuple(labels), 0.0)

    def samples(self) -> Iterator[str]:
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_label_text(self.labels, key)} {_number(value)}"


class Gauge(_Metric):
    """A value set by its owner, or read from `source` at each scrape."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        source: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {}
        self.source = source

    def set(self, value: float, *labels: str) -> None:
        self.values[self._key(labels)] = float(value)

    def samples(self) -> Iterator[str]:
        if self.source is not None:
            yield f"{self.name} {_number(float(self.source()))}"
            return
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_label_text(self.labels, key)} {_number(value)}"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.bounds = tuple(sorted(buckets))
        # Per label set: one count per bucket (not cumulative; +Inf last), then sum and count.
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[self._key(labels)] = ([0] * (len(self.bounds) + 1), [0.0, 0.0])
        series[0][_bisect_left(self.bounds, value)] += 1
        totals = series[1]
        totals[0] += value
        totals[1] += 1

    def count(self, *labels: str) -> int:
        series = self.series.get(tuple(labels))
        return int(series[1][1]) if series else 0

    def samples(self) -> Iterator[str]:
        for key, (counts, (total, count)) in sorted(self.series.items()):
            running = 0
            for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
                running += n
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_label_text(self.labels, key, le)} {running}"
            yield f"{self.name}_sum{_label_text(self.labels, key)} {_number(total)}"
            yield f"{self.name}_count{_label_text(self.labels, key)} {_number(count)}"


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


class Metrics:
    """The instruments of one server process."""

    def __init__(self, *, max_batches: int = 2000) -> None:
        self.started_at = time.time()
        self.max_batches = max_batches
        self.before_render = []
        self.results = Counter(
            "msgbatch_requests_total",
            "Requests finished by this process's dispatcher, by result type and backend "
            '(backend="none": finished before reaching one: invalid params, unknown model, canceled, expired).',
            ("result", "backend"),
        )
        self.retries = Counter(
            "msgbatch_retries_total",
            "Backend calls that failed with a retryable error and were queued to run again.",
            ("backend", "error_type"),
        )
        self.backend_latency = Histogram(
            "msgbatch_backend_request_duration_seconds",
            "Time of each backend call, successful or not.",
            ("backend",),
        )
        self.backend_errors = Counter(
            "msgbatch_backend_errors_total",
            "Backend calls that failed, by error type (timeout: the batch's expiry cut the call short).",
            ("backend", "error_type"),
        )
        self.concurrency_limit = Gauge(
            "msgbatch_backend_concurrency_limit",
            "Requests this process may run at once on a backend (the current adaptive limit, where there is one).",
            ("backend",),
        )
        # `api`: messages (the Message Batches API) or openai (the OpenAI Batch API).
        self.batches_created = Counter(
            "msgbatch_batches_created_total", "Batches accepted by this process, by API.", ("api",)
        )
        self.requests_accepted = Counter(
            "msgbatch_requests_accepted_total", "Requests in the batches accepted by this process, by API.", ("api",)
        )
        self.create_bytes = Counter(
            "msgbatch_batch_create_bytes_total", "Bytes of the create bodies of the batches accepted, by API.", ("api",)
        )
        self.webhook_deliveries = Counter(
            "msgbatch_webhook_deliveries_total",
            "Webhook delivery attempts by this process, by event and outcome (delivered; failed: to be retried; "
            "refused: the address policy forbids it; gave_up: no more retries).",
            ("event", "outcome"),
        )
        self.webhook_latency = Histogram(
            "msgbatch_webhook_delivery_duration_seconds", "Time of each webhook delivery attempt.", ("event",)
        )
        self.idempotent_replays = Counter(
            "msgbatch_idempotent_replays_total",
            "Create (or retry) calls answered with the batch an earlier call with the same Idempotency-Key made.",
        )
        self.results_bytes = Counter(
            "msgbatch_results_bytes_total",
            "Bytes of results (JSONL: results, and OpenAI output and error files) streamed to clients.",
        )
        self.files_uploaded = Counter("msgbatch_files_uploaded_total", "Files uploaded (OpenAI Files API).")
        self.file_bytes = Counter("msgbatch_file_upload_bytes_total", "Bytes of the files uploaded.")
        self._in_flight: Callable[[], float] = lambda: 0
        self._queued: Callable[[], float] = lambda: 0
        self._unwritten: Callable[[], float] = lambda: 0
        self.in_flight = Gauge(
            "msgbatch_requests_in_flight",
            "Requests running on a backend in this process now.",
            source=lambda: self._in_flight(),
        )
        self.queue_depth = Gauge(
            "msgbatch_dispatcher_queue_depth",
            "Requests this process has claimed (leased) and not started yet.",
            source=lambda: self._queued(),
        )
        self.unwritten = Gauge(
            "msgbatch_dispatcher_unwritten_results",
            "Finished requests whose results are waiting to be written to the store.",
            source=lambda: self._unwritten(),
        )
        self.uptime = Gauge(
            "msgbatch_process_start_time_seconds",
            "When this process started, in seconds since the epoch.",
            source=lambda: self.started_at,
        )
        self.info = Gauge("msgbatch_build_info", "The running msgbatch version.", ("version",))
        self.info.set(1, __version__)
        self._all: list[_Metric] = [
            self.info,
            self.uptime,
            self.batches_created,
            self.requests_accepted,
            self.create_bytes,
            self.results_bytes,
            self.idempotent_replays,
            self.webhook_deliveries,
            self.webhook_latency,
            self.files_uploaded,
            self.file_bytes,
            self.results,
            self.retries,
            self.backend_errors,
            self.backend_latency,
            self.in_flight,
            self.queue_depth,
            self.unwritten,
            self.concurrency_limit,
        ]
        # Per-job note from the backend call to the outcome: (backend, "ok" or error type).
        self._calls: dict[int, tuple[str, str]] = {}
        self._batch_ids: OrderedDict[int, str] = OrderedDict()
        self._timings: OrderedDict[int, dict[str, BackendTiming]] = OrderedDict()

    # -- feeding -----------------------------------------------------------------------------

    # Called at each scrape, for values owned elsewhere (adaptive backend limits).
    before_render: list[Callable[[], None]]

    def watch_dispatcher(
        self, *, in_flight: Callable[[], float], queued: Callable[[], float], unwritten: Callable[[], float]
    ) -> None:
        self._in_flight, self._queued, self._unwritten = in_flight, queued, unwritten

    def set_backend_limit(self, backend: str, limit: float) -> None:
        """The concurrency a backend may use now; adaptive limiters call this whenever it changes."""
        self.concurrency_limit.set(limit, backend)

    def batch_created(self, batch: Batch, body_bytes: int) -> None:
        api = "openai" if batch.id.startswith(OPENAI_BATCH_PREFIX) else "messages"
        self.batches_created.inc(api)
        self.requests_accepted.inc(api, amount=batch.total)
        self.create_bytes.inc(api, amount=body_bytes)
        self.remember_batch(batch)

    def webhook_delivery(self, event: str, outcome: str, seconds: float) -> None:
        self.webhook_deliveries.inc(event, outcome)
        if outcome in ("delivered", "failed"):
            self.webhook_latency.observe(seconds, event)

    def file_uploaded(self, size: int) -> None:
        self.files_uploaded.inc()
        self.file_bytes.inc(amount=size)

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
        self.backend_latency.observe(elapsed, backend)
        self._calls[job.id] = (backend, status)
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
            self.backend_errors.inc(backend, status)

    def finished(self, job: Job, outcome: Outcome) -> None:
        """The dispatcher is done with a job: a result, or a retry to come."""
        backend, status = self._calls.pop(job.id, ("none", ""))
        if outcome.result is None:
            self.retries.inc(backend, status or "unknown")
            return
        self.results.inc(RESULT_NAMES[outcome.result], backend)
        if outcome.result == ERRORED:
            # Never the params or the error message: either may quote the prompt.
            log.info(
                "request.errored batch=%s custom_id=%s type=%s backend=%s attempts=%d",
                self.batch_id(job.batch),
                _shown(job.custom_id),
                outcome.error_type or "unknown",
                backend,
                job.attempts,
            )

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

    def render(self) -> bytes:
        for refresh in self.before_render:
            refresh()
        lines: list[str] = []
        for metric in self._all:
            lines.extend(metric.lines())
        return ("\n".join(lines) + "\n").encode()
