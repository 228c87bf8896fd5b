#!/usr/bin/env python
"""Core benchmarks of msgbatch, against real `msgbatch serve` subprocesses over HTTP.

    .venv/bin/python bench/bench_core.py            # full run: 100,000-request batches (~2-3 min)
    .venv/bin/python bench/bench_core.py --quick    # smoke run: 2,000 requests, small bodies (seconds)
    .venv/bin/python bench/bench_core.py --profile 10   # + py-spy on the server during an extra e2e run

What is measured (all on this machine, client and server sharing its CPUs):

1. Create: POST /v1/messages/batches with a pre-encoded 100,000-request body of ~50 MB and of
   ~256 MB (just under the 256 MiB limit), on a fresh `serve --no-worker` per size, so nothing
   competes with the create. Time from sending the request to receiving the response; the
   server's peak RSS is its VmHWM (/proc/PID/status) after the creates of that size.
2. End-to-end: on a server WITH its dispatcher (`--simulate-latency 0`, an instant simulator),
   create a 100,000-request batch and time from the create response until a retrieve (polled
   every 50 ms) says `processing_status == "ended"`.
3. Results: stream GET results_url of that batch, counting bytes and lines (must be 100,000).
4. Retrieve under load: create a second 100,000-request batch and, while it runs, issue
   sequential GET retrieve calls over one keep-alive connection (until it ends, or
   --retrieve-calls calls); report p50/p99 of the calls answered while it was in progress.

MB means 10^6 bytes, MiB 2^20. Numbers on a shared 2-core machine are noisy (±20% or more):
the load average before and after the run is printed so that a noisy run can be spotted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from msgbatch.testing import ServerDidNotAnswer, free_port, wait_until_answers

MODEL = "claude-sonnet-4-5-20250929"
API_KEY = "bench"
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
MIB = 1024 * 1024
MAX_BODY = 256 * MIB  # the server's default max_body_bytes

# Targets from the issue.
TARGET_CREATE_50MB_S = 1.5
TARGET_E2E_RPS = 15_000
TARGET_RESULTS_MBPS = 100
TARGET_RETRIEVE_P99_MS = 20


class BenchError(RuntimeError):
    pass


# -- servers ---------------------------------------------------------------------------------

_SERVERS: list[Server] = []


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the bench process dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Server:
    """One `python -m msgbatch serve` subprocess with its own database in the work directory."""

    def __init__(self, workdir: Path, name: str, *, worker: bool, concurrency: int | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.database = workdir / f"{name}.db"
        self.log_path = workdir / f"{name}.log"
        self.cmd = [
            sys.executable, "-m", "msgbatch", "serve",
            "--port", str(self.port),
            "--database", str(self.database),
            "--simulate-latency", "0",
        ]  # fmt: skip
        if concurrency is not None:
            self.cmd += ["--concurrency", str(concurrency)]
        if not worker:
            self.cmd.append("--no-worker")
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Server:
        # Settings from the caller's environment (MSGBATCH_API_KEYS, ...) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBATCH_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        _SERVERS.append(self)
        try:
            wait_until_answers(f"{self.base_url}/health", process=self.proc, timeout=timeout)
        except ServerDidNotAnswer as exc:
            self.stop()
            raise BenchError(f"server {self.name} did not start ({exc}):\n{self.log_tail()}") from None
        return self

    def proc_status_kib(self, key: str) -> int:
        """A kB value of /proc/PID/status (VmRSS, VmHWM, ...)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise BenchError(f"{key} not in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self in _SERVERS:
            _SERVERS.remove(self)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server_log_on_error(srv: Server) -> Iterator[None]:
    """A failure (an HTTP error, a timeout) carries the end of the server's log."""
    try:
        yield
    except (BenchError, httpx.HTTPError) as exc:
        raise BenchError(f"{exc}\n--- {srv.name} server log (last lines) ---\n{srv.log_tail()}") from exc


def stop_all_servers() -> None:
    for srv in list(_SERVERS):
        with contextlib.suppress(Exception):
            srv.stop()


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# -- request bodies --------------------------------------------------------------------------

_WORDS = (
    "the", "batch", "of", "requests", "model", "answer", "question", "summary", "describe", "data",
    "system", "value", "context", "please", "explain", "detail", "report", "table", "result", "and",
    "with", "for", "each", "every", "item", "list", "below", "above", "text", "document", "review",
    "analysis", "customer", "order", "invoice", "product", "feature", "release", "version", "note",
)  # fmt: skip


def filler_text(length: int, seed: int = 7) -> bytes:
    """`length` bytes of plain ASCII words: nothing that JSON would need to escape."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(_WORDS)
        parts.append(word)
        size += len(word) + 1
    text = " ".join(parts)[:length].rstrip()
    return text.ljust(length, ".").encode()


def build_body(n: int, target_bytes: int) -> bytes:
    """A create body of `n` realistic requests, at most `target_bytes` long (a long user text
    per request makes up the size)."""
    head, tail, sep = b'{"requests":[', b"]}", b","
    prefix = (
        b'{"custom_id":"req-%06d","params":{"model":"' + MODEL.encode() + b'","max_tokens":1024,'
        b'"messages":[{"role":"user","content":"Request %d. Please summarize the following text. '
    )
    suffix = b'"}]}}'
    prefixes = [prefix % (i, i) for i in range(n)]
    fixed = len(head) + len(tail) + (n - 1) * len(sep) + sum(map(len, prefixes)) + n * len(suffix)
    per_request = (target_bytes - fixed) // n
    if per_request < 1:
        raise BenchError(f"{target_bytes:,} bytes is too small for {n:,} requests")
    filler = filler_text(per_request)
    parts: list[bytes] = [head]
    for i, p in enumerate(prefixes):
        if i:
            parts.append(sep)
        parts += (p, filler, suffix)
    parts.append(tail)
    body = b"".join(parts)
    assert len(body) <= target_bytes
    return body


# -- HTTP helpers ----------------------------------------------------------------------------


def new_client(timeout: float) -> httpx.Client:
    return httpx.Client(
        headers=HEADERS,
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_keepalive_connections=4),
    )


UPLOAD_CHUNK = 1024 * 1024

# httpx's sync transport (httpcore) writes a request body with `buffer = buffer[sent:]` after
# every socket send, copying the rest of a `bytes` body each time: a 256 MB body handed over as
# one `bytes` costs the *client* seconds of memcpy (quadratic), which would be charged to the
# server here. So by default the pre-encoded body goes out as 1 MiB memoryview slices, with an
# explicit Content-Length (no chunked encoding); --whole-body-upload restores the naive way.
WHOLE_BODY_UPLOAD = False


def _slices(body: bytes) -> Iterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(view), UPLOAD_CHUNK):
        yield view[start : start + UPLOAD_CHUNK]  # type: ignore[misc]


def create_batch(client: httpx.Client, base_url: str, body: bytes) -> tuple[dict[str, Any], float]:
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    t0 = time.perf_counter()
    content = body if WHOLE_BODY_UPLOAD else _slices(body)
    r = client.post(f"{base_url}/v1/messages/batches", content=content, headers=headers)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise BenchError(f"create failed: HTTP {r.status_code}: {r.text[:500]}")
    batch: dict[str, Any] = r.json()
    return batch, elapsed


def retrieve(client: httpx.Client, base_url: str, batch_id: str) -> dict[str, Any]:
    r = client.get(f"{base_url}/v1/messages/batches/{batch_id}")
    if r.status_code != 200:
        raise BenchError(f"retrieve failed: HTTP {r.status_code}: {r.text[:500]}")
    batch: dict[str, Any] = r.json()
    return batch


def wait_ended(
    client: httpx.Client, base_url: str, batch_id: str, timeout: float, poll: float = 0.05
) -> tuple[dict[str, Any], float]:
    """Poll retrieve every `poll` seconds; the batch and the perf_counter() it was seen ended."""
    deadline = time.monotonic() + timeout
    while True:
        batch = retrieve(client, base_url, batch_id)
        if batch["processing_status"] == "ended":
            return batch, time.perf_counter()
        if time.monotonic() > deadline:
            raise BenchError(f"batch {batch_id} did not end within {timeout:.0f} s: {batch}")
        time.sleep(poll)


def download_results(client: httpx.Client, url: str) -> tuple[int, int, float, bytes]:
    """Stream the results: (bytes, lines, seconds, first line)."""
    nbytes = lines = 0
    first = b""
    t0 = time.perf_counter()
    with client.stream("GET", url) as r:
        if r.status_code != 200:
            r.read()
            raise BenchError(f"results failed: HTTP {r.status_code}: {r.text[:500]}")
        for chunk in r.iter_raw():
            if not first:
                first = chunk[: chunk.find(b"\n")] if b"\n" in chunk else chunk
            nbytes += len(chunk)
            lines += chunk.count(b"\n")
    return nbytes, lines, time.perf_counter() - t0, first


def parse_ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# -- the phases ------------------------------------------------------------------------------


@dataclass
class CreateResult:
    label: str
    n: int
    body_bytes: int
    times: list[float]
    rss_idle_kib: int
    rss_peak_kib: int
    cpu_seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Results:
    mode: str
    n: int
    concurrency: int
    creates: list[CreateResult] = field(default_factory=list)
    e2e_seconds: float = 0.0
    e2e_server_seconds: float = 0.0
    e2e_create_seconds: float = 0.0
    e2e_counts: dict[str, int] = field(default_factory=dict)
    e2e_cpu_seconds: float = 0.0
    results_bytes: int = 0
    results_lines: int = 0
    results_times: list[float] = field(default_factory=list)
    idle_latencies_ms: list[float] = field(default_factory=list)
    load_latencies_ms: list[float] = field(default_factory=list)
    load_calls_total: int = 0
    load_batch_seconds: float = 0.0
    profile: str = ""
    notes: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def phase_create(workdir: Path, label: str, n: int, target_bytes: int, runs: int, timeout: float) -> CreateResult:
    log(f"create {label}: building a {n:,}-request body of ~{target_bytes / 1e6:.1f} MB")
    body = build_body(n, target_bytes)
    warmup = build_body(1, 600)
    with (
        Server(workdir, f"create-{label}", worker=False).start() as srv,
        new_client(timeout) as client,
        server_log_on_error(srv),
    ):
        create_batch(client, srv.base_url, warmup)  # connection and code paths warm
        rss_idle = srv.proc_status_kib("VmRSS")
        times, cpu = [], []
        for i in range(runs):
            cpu0 = srv.cpu_seconds()
            batch, elapsed = create_batch(client, srv.base_url, body)
            cpu.append(srv.cpu_seconds() - cpu0)
            if batch["request_counts"]["processing"] != n:
                raise BenchError(f"create {label}: unexpected counts {batch['request_counts']}")
            times.append(elapsed)
            log(f"create {label}: run {i + 1}/{runs}: {elapsed:.3f} s")
        peak = srv.proc_status_kib("VmHWM")
    return CreateResult(label, n, len(body), times, rss_idle, peak, cpu)


def summarize_profile(raw_path: Path, top: int = 15) -> str:
    """Collapsed stacks from `py-spy record --format raw --threads` -> thread / self / inclusive tables."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack and samples.isdigit():
            stacks.append((stack.split(";"), int(samples)))
    total = sum(c for _, c in stacks)
    if not total:
        return "py-spy collected no samples"
    threads: Counter[str] = Counter()
    leaf: Counter[tuple[str, str]] = Counter()
    functions: Counter[tuple[str, str]] = Counter()
    for frames, count in stacks:
        thread = ""
        if frames and frames[0].startswith(("thread", "process")):
            # `thread (8904): msgbatch-sqlite-writer_0` -> `msgbatch-sqlite-writer_0`
            thread = frames[0].rpartition(": ")[2] or frames[0]
            frames = frames[1:]
        threads[thread or "(all)"] += count
        if frames:
            leaf[(thread, frames[-1])] += count
        # `func (path/file.py:123)` -> `func (path/file.py)`: a function counts once per stack.
        for name in {f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in frames}:
            if "msgbatch/" in name and "<module>" not in name and not name.startswith("serve "):
                functions[(thread, name)] += count

    def pct(count: int) -> str:
        return f"{100 * count / total:.1f}"

    lines = [f"py-spy: {total:,} samples of non-idle threads (100 Hz per thread)", ""]
    lines += ["| thread | samples | % |", "|---|---:|---:|"]
    lines += [f"| {t} | {c} | {pct(c)} |" for t, c in threads.most_common()]
    lines += ["", "Top frames by self time (the line a sample was in):", ""]
    lines += ["| thread | % | frame |", "|---|---:|---|"]
    lines += [f"| {t} | {pct(c)} | `{f}` |" for (t, f), c in leaf.most_common(top)]
    lines += ["", "Top msgbatch functions by inclusive time:", ""]
    lines += ["| thread | % | function |", "|---|---:|---|"]
    lines += [f"| {t} | {pct(c)} | `{f}` |" for (t, f), c in functions.most_common(top)]
    return "\n".join(lines)


def find_py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def phase_server(workdir: Path, res: Results, body: bytes, n: int, args: argparse.Namespace, timeout: float) -> None:
    srv = Server(workdir, "e2e", worker=True, concurrency=args.concurrency).start()
    with srv, new_client(timeout) as client, server_log_on_error(srv):
        base = srv.base_url
        # 2. end to end
        log(f"e2e: creating a {n:,}-request batch ({len(body) / 1e6:.1f} MB) on a server with its worker")
        batch, res.e2e_create_seconds = create_batch(client, base, body)
        t0, cpu0 = time.perf_counter(), srv.cpu_seconds()
        batch, t_end = wait_ended(client, base, batch["id"], timeout)
        res.e2e_seconds = t_end - t0
        res.e2e_cpu_seconds = srv.cpu_seconds() - cpu0
        res.e2e_server_seconds = parse_ts(batch["ended_at"]) - parse_ts(batch["created_at"])
        res.e2e_counts = batch["request_counts"]
        log(f"e2e: ended after {res.e2e_seconds:.2f} s: {res.e2e_counts}")
        if res.e2e_counts["succeeded"] != n:
            res.notes.append(f"e2e: not every request succeeded: {res.e2e_counts}")

        # 3. results
        for i in range(args.results_runs):
            nbytes, lines, elapsed, first = download_results(client, batch["results_url"])
            res.results_bytes, res.results_lines = nbytes, lines
            res.results_times.append(elapsed)
            log(f"results: run {i + 1}/{args.results_runs}: {nbytes / 1e6:.1f} MB, {lines:,} lines, "
                f"{elapsed:.3f} s")  # fmt: skip
            if i == 0:
                try:
                    kind = json.loads(first)["result"]["type"]
                except (ValueError, KeyError, TypeError):
                    kind = None
                if kind != "succeeded":
                    res.notes.append(f"results: first line is not a success: {first[:200]!r}")
        if res.results_lines != n:
            res.notes.append(f"results: {res.results_lines:,} lines, expected {n:,}")

        # reference: retrieve latency with nothing running
        for _ in range(args.idle_calls):
            t = time.perf_counter()
            retrieve(client, base, batch["id"])
            res.idle_latencies_ms.append((time.perf_counter() - t) * 1000)

        # 4. retrieve under load
        log(f"retrieve: creating a second {n:,}-request batch, polling it back to back")
        batch2, _ = create_batch(client, base, body)
        t0 = time.perf_counter()
        ended = False
        while res.load_calls_total < args.retrieve_calls:
            t = time.perf_counter()
            b = retrieve(client, base, batch2["id"])
            elapsed_ms = (time.perf_counter() - t) * 1000
            res.load_calls_total += 1
            if b["processing_status"] == "in_progress":
                res.load_latencies_ms.append(elapsed_ms)
            else:
                ended = b["processing_status"] == "ended"
                break
        if not ended:
            _, t_end = wait_ended(client, base, batch2["id"], timeout)
        else:
            t_end = time.perf_counter()
        res.load_batch_seconds = t_end - t0
        log(f"retrieve: {len(res.load_latencies_ms):,} calls during processing; "
            f"batch ended after {res.load_batch_seconds:.2f} s")  # fmt: skip

        # optional: where the server spends its time during an e2e run
        if args.profile > 0:
            res.profile = profile_e2e(workdir, srv, client, body, args.profile, timeout)


def profile_e2e(workdir: Path, srv: Server, client: httpx.Client, body: bytes, seconds: float, timeout: float) -> str:
    py_spy = find_py_spy()
    if py_spy is None:
        return "py-spy is not installed (pip install py-spy): no profile"
    raw = workdir / "profile.txt"
    log(f"profile: third batch, py-spy on pid {srv.pid} for {seconds:g} s")
    batch, _ = create_batch(client, srv.base_url, body)
    cmd = [
        py_spy, "record", "--pid", str(srv.pid), "--duration", str(math.ceil(seconds)),
        "--rate", "100", "--format", "raw", "--output", str(raw), "--threads", "--nonblocking",
    ]  # fmt: skip
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    try:
        t0, cpu0 = time.perf_counter(), srv.cpu_seconds()
        _, t_end = wait_ended(client, srv.base_url, batch["id"], timeout)
        cores = (srv.cpu_seconds() - cpu0) / (t_end - t0)
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not raw.exists():
        return f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}"
    head = (
        f"Profiled batch: {batch['request_counts']['processing']:,} requests, ended {t_end - t0:.2f} s after its "
        f"create response (under the profiler; server busy {cores:.2f} cores).\n"
    )
    return head + summarize_profile(raw)


# -- report ----------------------------------------------------------------------------------


def machine_line() -> str:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in open("/proc/meminfo"):  # noqa: SIM115
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / MIB:.0f} GiB RAM"
                break
    try:
        from importlib.metadata import version

        versions = f"msgbatch {version('msgbatch')}, httpx {version('httpx')}, uvicorn {version('uvicorn')}"
    except Exception:
        versions = ""
    return (
        f"nproc {os.cpu_count()} ({cpu}){mem}; Python {platform.python_version()}; "
        f"SQLite {sqlite3.sqlite_version}; {platform.system()} {platform.release()}; {versions}"
    )


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def fmt_mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def status(ok: bool, quick: bool) -> str:
    if quick:
        return "n/a (quick)"
    return "met" if ok else "**missed**"


def report(res: Results, quick: bool, load_start: str) -> str:
    n = res.n
    rows: list[tuple[str, str, str, str]] = []
    for c in res.creates:
        runs = "/".join(f"{t:.2f}" for t in c.times)
        how = f"median of {len(c.times)}" if len(c.times) > 1 else "1 run"
        mb = c.body_bytes / 1e6
        size = f"{mb:.1f} MB" if c.label == "small" else f"{mb:.1f} MB ({c.body_bytes / MIB:.1f} MiB)"
        target, ok = ("", True)
        if c.label == "small":
            target, ok = (f"≤ {TARGET_CREATE_50MB_S} s (100k / 50 MB)", c.median <= TARGET_CREATE_50MB_S)
        rows.append(
            (
                f"Create, {c.n:,} requests, {size} body ({how}, `--no-worker`)",
                f"{c.median:.2f} s ({mb / c.median:,.0f} MB/s; runs {runs} s; "
                f"server CPU {statistics.median(c.cpu_seconds):.2f} s per create)",
                target or "—",
                status(ok, quick) if target else "",
            )
        )
        rows.append(
            (
                f"Server peak RSS (VmHWM) over those {size} creates",
                f"{fmt_mib(c.rss_peak_kib)} ({c.rss_peak_kib * 1024 / c.body_bytes:.1f}x body; "
                f"idle {fmt_mib(c.rss_idle_kib)})",
                "—",
                "",
            )
        )
    rps = n / res.e2e_seconds if res.e2e_seconds else 0.0
    rows.append(
        (
            f"End-to-end, {n:,} requests, instant simulator, concurrency {res.concurrency}",
            f"{rps:,.0f} req/s ({res.e2e_seconds:.2f} s create response → ended, server busy "
            f"{res.e2e_cpu_seconds / res.e2e_seconds if res.e2e_seconds else 0:.2f} cores; "
            f"server created_at→ended_at {res.e2e_server_seconds:.2f} s; create {res.e2e_create_seconds:.2f} s)",
            f"≥ {TARGET_E2E_RPS:,} req/s",
            status(rps >= TARGET_E2E_RPS, quick),
        )
    )
    mbps = res.results_bytes / 1e6 / statistics.median(res.results_times) if res.results_times else 0.0
    how = f"median of {len(res.results_times)}"
    rows.append(
        (
            "Results download (GET results_url, streamed)",
            f"{mbps:,.0f} MB/s ({res.results_bytes / 1e6:.1f} MB, {res.results_lines:,} lines, {how})",
            f"≥ {TARGET_RESULTS_MBPS} MB/s",
            status(mbps >= TARGET_RESULTS_MBPS and res.results_lines == n, quick),
        )
    )
    lat = res.load_latencies_ms
    if lat:
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        rows.append(
            (
                f"Retrieve latency while a {n:,}-request batch runs (sequential, keep-alive)",
                f"p50 {p50:.1f} ms / p99 {p99:.1f} ms (max {max(lat):.1f} ms; {len(lat):,} calls "
                f"during processing, {res.load_calls_total:,} made)",
                f"p99 ≤ {TARGET_RETRIEVE_P99_MS} ms",
                status(p99 <= TARGET_RETRIEVE_P99_MS, quick),
            )
        )
    else:
        rows.append(
            (
                f"Retrieve latency while a {n:,}-request batch runs",
                "no call was answered while the batch was in progress",
                f"p99 ≤ {TARGET_RETRIEVE_P99_MS} ms",
                status(False, quick),
            )
        )
    if res.idle_latencies_ms:
        idle = res.idle_latencies_ms
        rows.append(
            (
                "Retrieve latency, idle server (reference)",
                f"p50 {percentile(idle, 50):.1f} ms / p99 {percentile(idle, 99):.1f} ms ({len(idle):,} calls)",
                "—",
                "",
            )
        )
    rows.append(
        (
            "End-to-end of that second batch, polled back to back (reference)",
            f"{n / res.load_batch_seconds:,.0f} req/s ({res.load_batch_seconds:.2f} s)"
            if res.load_batch_seconds
            else "—",
            "—",
            "",
        )
    )

    out = [
        f"## msgbatch core benchmark ({res.mode})",
        "",
        f"Machine: {machine_line()}",
        f"Load average at start: {load_start}; at end: {loadavg()}. "
        "Client (httpx) and server share the machine; MB = 10^6 bytes. Create bodies are pre-encoded and "
        + ("handed to httpx as one bytes object." if WHOLE_BODY_UPLOAD else "sent as 1 MiB slices (Content-Length)."),
        "",
        "| Measurement | Result | Target | |",
        "|---|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if res.notes:
        out += ["", "Problems:"] + [f"- {note}" for note in res.notes]
    if res.profile:
        out += ["", "### Server profile during an end-to-end run", "", res.profile]
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke run (2,000 requests, small bodies)")
    p.add_argument("--requests", type=int, help="requests per batch [100,000; quick: 2,000]")
    p.add_argument("--small-mb", type=float, help="size of the small create body in MB [50; quick: 1]")
    p.add_argument("--big-mb", type=float, help="size of the big create body in MB [just under 256 MiB; quick: 4]")
    p.add_argument("--runs-small", type=int, help="creates of the small body (0 skips it) [3; quick: 1]")
    p.add_argument("--runs-big", type=int, help="creates of the big body (0 skips it) [2; quick: 1]")
    p.add_argument("--results-runs", type=int, help="downloads of the results [3; quick: 1]")
    p.add_argument("--concurrency", type=int, default=256, help="server --concurrency for phases 2-4")
    p.add_argument("--retrieve-calls", type=int, help="at most this many retrieve calls under load [2,000; quick: 500]")
    p.add_argument("--idle-calls", type=int, default=200, help="retrieve calls on an idle server (reference)")
    p.add_argument(
        "--profile", type=float, default=0, metavar="SECONDS",
        help="run py-spy on the server for SECONDS during an extra end-to-end batch and print the top frames",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, help="seconds any one HTTP call or batch may take [600; quick: 120]")
    p.add_argument(
        "--whole-body-upload",
        action="store_true",
        help="hand httpx the create body as one bytes object (slow on the client side for big bodies)",
    )
    p.add_argument("--json", type=Path, help="also write the raw numbers to this JSON file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the work directory (databases, server logs)")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {
        "requests": 2_000 if q else 100_000,
        "small_mb": 1.0 if q else 50.0,
        "big_mb": 4.0 if q else (MAX_BODY - 256 * 1024) / 1e6,
        "runs_small": 1 if q else 3,
        "runs_big": 1 if q else 2,
        "results_runs": 1 if q else 3,
        "retrieve_calls": 500 if q else 2_000,
        "timeout": 120.0 if q else 600.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.big_mb * 1e6 > MAX_BODY:
        p.error(f"--big-mb: the server refuses bodies over {MAX_BODY / 1e6:.1f} MB")
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="msgbatch-bench-"))
    try:
        yield path
    finally:
        stop_all_servers()
        if keep:
            log(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    global WHOLE_BODY_UPLOAD
    args = parse_args(argv)
    WHOLE_BODY_UPLOAD = args.whole_body_upload
    signal.signal(signal.SIGTERM, _on_sigterm)
    n = args.requests
    load_start = loadavg()
    res = Results(mode="quick" if args.quick else "full", n=n, concurrency=args.concurrency)
    try:
        with workdir(args.keep_tmp) as tmp:
            # 1. create, fresh --no-worker server per size
            if args.runs_small > 0:
                small = int(args.small_mb * 1e6)
                res.creates.append(phase_create(tmp, "small", n, small, args.runs_small, args.timeout))
            if args.runs_big > 0:
                res.creates.append(phase_create(tmp, "big", n, int(args.big_mb * 1e6), args.runs_big, args.timeout))
            # 2-4 on one server with its dispatcher
            body = build_body(n, int(args.small_mb * 1e6))
            phase_server(tmp, res, body, n, args, args.timeout)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all_servers()
    print(report(res, args.quick, load_start), flush=True)
    if args.json:
        data = {
            "mode": res.mode,
            "machine": machine_line(),
            "requests": n,
            "creates": [
                {
                    "label": c.label,
                    "body_bytes": c.body_bytes,
                    "seconds": c.times,
                    "median_s": c.median,
                    "rss_peak_kib": c.rss_peak_kib,
                    "rss_idle_kib": c.rss_idle_kib,
                    "server_cpu_seconds": c.cpu_seconds,
                }
                for c in res.creates
            ],
            "e2e_seconds": res.e2e_seconds,
            "e2e_req_per_s": n / res.e2e_seconds if res.e2e_seconds else None,
            "e2e_counts": res.e2e_counts,
            "e2e_server_cpu_seconds": res.e2e_cpu_seconds,
            "results_bytes": res.results_bytes,
            "results_lines": res.results_lines,
            "results_seconds": res.results_times,
            "retrieve_load_ms": res.load_latencies_ms,
            "retrieve_idle_ms": res.idle_latencies_ms,
            "notes": res.notes,
        }
        args.json.write_text(json.dumps(data, indent=1))
    return 1 if res.notes else 0


if __name__ == "__main__":
    sys.exit(main())
