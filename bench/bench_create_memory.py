#!/usr/bin/env python
"""Peak memory of `msgbatch serve` under concurrent large creates, with and without the budget.

    .venv/bin/python bench/bench_create_memory.py              # 8 concurrent 55 MB creates (~1 min)
    .venv/bin/python bench/bench_create_memory.py --creates 4 --megabytes 20

For each configuration a fresh `msgbatch serve --no-worker` (SQLite, so that only creates run)
gets N identical 100,000-request creates at once, each from its own thread and connection. The
server's peak RSS is its VmHWM (/proc/PID/status) after the creates; every create's status and
time are reported. Configurations: the default budget (`create_memory_bytes` = 256 MiB, a create
that does not fit waits up to `create_memory_wait` = 10 s, then gets 429), and the budget made
larger than the burst (as if there were none).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from bench_core import MIB, Server, _slices, build_body, loadavg, machine_line, stop_all_servers


def burst(srv: Server, body: bytes, creates: int) -> tuple[list[tuple[int, float]], float]:
    """`creates` concurrent POSTs of `body`: (status, seconds) of each, and the wall time."""
    outcomes: list[tuple[int, float]] = []
    go = threading.Event()

    def one() -> None:
        with httpx.Client(timeout=300) as client:
            go.wait()
            t0 = time.perf_counter()
            headers = {"x-api-key": "bench", "content-type": "application/json", "content-length": str(len(body))}
            resp = client.post(f"{srv.base_url}/v1/messages/batches", content=_slices(body), headers=headers)
            outcomes.append((resp.status_code, time.perf_counter() - t0))

    threads = [threading.Thread(target=one) for _ in range(creates)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    return outcomes, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=8)
    parser.add_argument("--megabytes", type=float, default=55.0, help="size of each create body (10^6 bytes)")
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    body = build_body(args.requests, int(args.megabytes * 1_000_000))
    print(f"load average at start: {loadavg()}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="msgbatch-bench-mem-") as tmp:
        for label, budget in [("default budget (256 MiB)", None), ("no budget (64 GiB)", 64 * 1024 * MIB)]:
            workdir = Path(tmp) / str(len(rows))
            workdir.mkdir()
            srv = Server(workdir, "mem", worker=False)
            if budget is not None:
                config = workdir / "msgbatch.toml"
                config.write_text(f"create_memory_bytes = {budget}\n")
                srv.cmd += ["--config", str(config)]
            with srv.start():
                idle = srv.proc_status_kib("VmRSS")
                outcomes, wall = burst(srv, body, args.creates)
                peak = srv.proc_status_kib("VmHWM")
            statuses = Counter(status for status, _ in outcomes)
            times = sorted(t for _, t in outcomes)
            rows.append(
                f"| {label} | {', '.join(f'{n} x {s}' for s, n in sorted(statuses.items()))} | "
                f"{wall:.1f} s | {statistics.median(times):.1f} s / {times[-1]:.1f} s | "
                f"{idle / 1024:.0f} MiB | **{peak / 1024:.0f} MiB** |"
            )
            print(rows[-1], file=sys.stderr)
    stop_all_servers()
    print(f"\n{args.creates} concurrent creates of {len(body) / 1e6:.1f} MB ({args.requests:,} requests each), "
          f"`serve --no-worker`, SQLite. {machine_line()}. Load average at the end: {loadavg()}.\n")  # fmt: skip
    print("| server | answers | all done in | create time median / max | RSS idle | peak RSS |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
