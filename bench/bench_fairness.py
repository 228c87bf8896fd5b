"""Fair shares of one backend between teams, measured.

Two workspaces with weights 3 and 1 each submit a 20,000-request batch to one backend: the fake
upstream (`tests/fake_upstream.py`, its own process) answering after 0.1 s, with `concurrency = 64`
in total. While both have work, the completed requests should split 3:1 (±10%); a 10-request batch
of a third workspace, submitted during that run, should end within 2 s.

    python bench/bench_fairness.py                        # SQLite: one msgbatch serve
    python bench/bench_fairness.py --postgres --workers 2 # PostgreSQL: serve --no-worker + 2 workers
    python bench/bench_fairness.py --requests 5000        # shorter

With several workers the backend's `concurrency` is split among them (64 / workers each): a
backend's concurrency is per process (as its connections are), and each worker shares its own
slots by the weights. The split is measured from the batches' counts, polled every half second:
over the whole time both batches had work, and per 5-second window (min and max).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from msgbatch.testing import ScratchDatabase, free_port, wait_until_answers

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("MSGBATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
KEYS = {"team-a": "key-a", "team-b": "key-b", "team-c": "key-c"}
WINDOW = 5.0


def body(prefix: str, n: int) -> bytes:
    requests = [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": "bench-model",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"{prefix} {i}"}],
            },
        }
        for i in range(n)
    ]
    return json.dumps({"requests": requests}).encode()


def config(upstream: str, concurrency: int) -> str:
    keys = "\n".join(f'{team} = ["{key}"]' for team, key in KEYS.items())
    return f"""
[workspaces]
{keys}

[limits.team-a]
weight = 3
[limits.team-b]
weight = 1

[[backends]]
name = "gpu"
type = "anthropic"
url = "{upstream}"
concurrency = {concurrency}
"""


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def done(batch: dict[str, Any]) -> int:
    counts = batch["request_counts"]
    return int(counts["succeeded"] + counts["errored"] + counts["canceled"] + counts["expired"])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        upstream_port = free_port()
        procs: list[subprocess.Popen[bytes]] = []
        stack.callback(stop, procs)
        procs.append(
            start(
                [
                    str(ROOT / "tests" / "fake_upstream.py"),
                    "--port",
                    str(upstream_port),
                    "--latency",
                    str(args.latency),
                ],
                work / "upstream.log",
            )
        )
        wait_until_answers(f"http://127.0.0.1:{upstream_port}/v1/messages", process=procs[0], status=None)
        per_worker = args.concurrency // (args.workers if args.postgres else 1)
        (work / "msgbatch.toml").write_text(config(f"http://127.0.0.1:{upstream_port}", per_worker))
        port = free_port()
        common = ["--config", str(work / "msgbatch.toml"), "--log-level", "warning"]
        if args.postgres:
            database = stack.enter_context(ScratchDatabase(ADMIN_URL)).url
            subprocess.run([sys.executable, "-m", "msgbatch", "migrate", "--database", database], check=True)
            serve = ["-m", "msgbatch", "serve", "--no-worker", "--port", str(port), "--database", database, *common]
            procs.append(start(serve, work / "serve.log"))
            for i in range(args.workers):
                worker = ["-m", "msgbatch", "worker", "--database", database, *common]
                procs.append(start(worker, work / f"worker-{i}.log"))
        else:
            serve = ["-m", "msgbatch", "serve", "--port", str(port), "--database", str(work / "bench.db"), *common]
            procs.append(start(serve, work / "serve.log"))
        base = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{base}/health", process=procs[-1] if not args.postgres else procs[1])
        time.sleep(1.0)  # workers connect and LISTEN

        clients = {
            team: httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=120) for team, key in KEYS.items()
        }
        for client in clients.values():
            stack.callback(client.close)

        def create(team: str, payload: bytes) -> str:
            response = clients[team].post("/v1/messages/batches", content=payload)
            response.raise_for_status()
            return str(response.json()["id"])

        payload_a, payload_b = body("a", args.requests), body("b", args.requests)
        ids = {"team-a": create("team-a", payload_a), "team-b": create("team-b", payload_b)}
        t0 = time.monotonic()
        samples: list[tuple[float, int, int]] = []
        newcomer: dict[str, Any] = {}
        while True:
            a = clients["team-a"].get(f"/v1/messages/batches/{ids['team-a']}").json()
            b = clients["team-b"].get(f"/v1/messages/batches/{ids['team-b']}").json()
            now = time.monotonic() - t0
            samples.append((now, done(a), done(b)))
            if not newcomer and now >= args.newcomer_after:
                submitted = time.monotonic()
                newcomer["id"] = create("team-c", body("c", 10))
                while True:
                    c = clients["team-c"].get(f"/v1/messages/batches/{newcomer['id']}").json()
                    if c["processing_status"] == "ended":
                        break
                    time.sleep(0.02)
                newcomer["observed_s"] = time.monotonic() - submitted
                newcomer["server_s"] = parse_time(c["ended_at"]) - parse_time(c["created_at"])
                newcomer["succeeded"] = c["request_counts"]["succeeded"]
            if a["processing_status"] == "ended" and b["processing_status"] == "ended":
                break
            time.sleep(0.5)

    both = [s for s in samples if s[1] < args.requests and s[2] < args.requests]
    first, last = both[0], both[-1]
    overall = (last[1] - first[1]) / max(1, last[2] - first[2])
    windows = []
    start_at = first
    for sample in both:
        if sample[0] - start_at[0] >= WINDOW:
            windows.append((sample[1] - start_at[1]) / max(1, sample[2] - start_at[2]))
            start_at = sample
    rate = (last[1] - first[1] + last[2] - first[2]) / max(1e-9, last[0] - first[0])
    return {
        "shape": f"PostgreSQL, {args.workers} workers x concurrency {per_worker}"
        if args.postgres
        else "SQLite, one serve",
        "both_busy_s": last[0] - first[0],
        "ratio": overall,
        "window_min": min(windows) if windows else overall,
        "window_max": max(windows) if windows else overall,
        "rate": rate,
        "newcomer": newcomer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per team's batch [20,000]")
    parser.add_argument("--latency", type=float, default=0.1, help="the fake upstream's latency [0.1 s]")
    parser.add_argument("--concurrency", type=int, default=64, help="the backend's concurrency, in total [64]")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL with --workers workers")
    parser.add_argument("--workers", type=int, default=2, help="workers on PostgreSQL [2]")
    parser.add_argument("--newcomer-after", type=float, default=10.0, help="when team-c submits 10 requests [10 s]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="msgbatch-fairness-") as tmp:
        found = run(args, Path(tmp))
    ideal = args.concurrency / args.latency
    c = found["newcomer"]
    print(f"{found['shape']}; 2 x {args.requests:,} requests, latency {args.latency} s, concurrency {args.concurrency}")
    print(f"  both teams busy for {found['both_busy_s']:.1f} s at {found['rate']:,.0f} requests/s (ideal {ideal:,.0f})")
    print(
        f"  split team-a : team-b = {found['ratio']:.2f} : 1 (target 3 ± 0.3); "
        f"per {WINDOW:.0f} s window {found['window_min']:.2f} to {found['window_max']:.2f}"
    )
    if c:
        print(
            f"  team-c's 10 requests: ended {c['observed_s']:.2f} s after the create was sent "
            f"({c['server_s']:.2f} s created_at to ended_at; target 2 s), {c['succeeded']} succeeded"
        )
    print(f"  load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
