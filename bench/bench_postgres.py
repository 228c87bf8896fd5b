"""End-to-end throughput of the scale-out shape on PostgreSQL.

One `msgbatch serve --no-worker` API server and 1, 2, 4 `msgbatch worker` processes (instant
simulator) on a fresh database each time. For each shape: the time to create a batch of
`--requests` requests over HTTP (the POST, client side), and the throughput from the batch's
`created_at` to its `ended_at` (as the server recorded them).

    python bench/bench_postgres.py                      # 100,000 requests; 1, 2 and 4 workers
    python bench/bench_postgres.py --workers 2 --repeat 3
    MSGBATCH_BENCH_POSTGRES=postgresql://user@host:5432/postgres python bench/bench_postgres.py

The server named by MSGBATCH_BENCH_POSTGRES (default: postgres@127.0.0.1:5432, database `test`)
must let the user create and drop databases.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import msgspec

from msgbatch.testing import ScratchDatabase, free_port, wait_until_answers

ADMIN_URL = os.environ.get("MSGBATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
HEADERS = {"x-api-key": "bench", "content-type": "application/json"}


def body(n: int) -> bytes:
    return msgspec.json.encode(
        {
            "requests": [
                {
                    "custom_id": f"req-{i:06d}",
                    "params": {
                        "model": "claude-sonnet-4-5-20250929",
                        "max_tokens": 256,
                        "messages": [{"role": "user", "content": f"Summarise item {i} of the benchmark in a line."}],
                    },
                }
                for i in range(n)
            ]
        }
    )


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {text!r} (exit status {proc.poll()})")
        time.sleep(0.05)


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([sys.executable, "-m", "msgbatch", *args], stdout=out, stderr=subprocess.STDOUT)


def run_once(workers: int, requests: int, payload: bytes, logs: Path) -> tuple[float, float]:
    with ScratchDatabase(ADMIN_URL) as db:
        subprocess.run(
            [sys.executable, "-m", "msgbatch", "migrate", "--database", db.url], check=True, capture_output=True
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs = [start(["serve", "--no-worker", "--port", str(port), "--database", db.url], logs / "serve.log")]
        try:
            procs += [start(["worker", "--database", db.url], logs / f"worker-{i}.log") for i in range(workers)]
            wait_until_answers(f"{url}/health", process=procs[0])
            # Every worker started (connected, LISTENing), and its start-up CPU spent before the clock runs.
            for i in range(workers):
                wait_for_line(logs / f"worker-{i}.log", "worker.started", procs[1 + i])
            time.sleep(0.5)
            with httpx.Client(base_url=url, headers=HEADERS, timeout=120) as client:
                t0 = time.perf_counter()
                response = client.post("/v1/messages/batches", content=payload)
                create_s = time.perf_counter() - t0
                response.raise_for_status()
                batch = response.json()
                while batch["processing_status"] != "ended":
                    time.sleep(0.05)
                    batch = client.get(f"/v1/messages/batches/{batch['id']}").json()
            counts = batch["request_counts"]
            assert counts["succeeded"] == requests, counts
            elapsed = parse_time(batch["ended_at"]) - parse_time(batch["created_at"])
            return create_s, requests / elapsed
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=1, help="runs per shape; the median is shown")
    args = parser.parse_args()
    payload = body(args.requests)
    print(f"{args.requests:,} requests ({len(payload) / 1e6:.1f} MB body), instant simulator, {os.cpu_count()} cores")
    print(f"{'workers':>7}  {'create (s)':>10}  {'requests/s':>10}")
    with tempfile.TemporaryDirectory(prefix="msgbatch-bench-") as tmp:
        for workers in args.workers:
            runs = [run_once(workers, args.requests, payload, Path(tmp)) for _ in range(args.repeat)]
            create_s = statistics.median(r[0] for r in runs)
            rate = statistics.median(r[1] for r in runs)
            print(f"{workers:>7}  {create_s:>10.2f}  {rate:>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
